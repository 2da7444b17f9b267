"""The request plan: where one request (audio, language, task, budget) becomes what runs.

Every path plans here, the PyTorch gated model, the torch-free runtime ``Session``, training
and evaluation, so they cannot drift apart. numpy only: nothing in this module's import
closure imports torch.

1. :class:`RequestFeatures` from the request's one log-mel: the pooled statistics of the real
   frames (per-bin mean and population std; never the 30-s padding), the real frame count of
   the first window and the duration.
2. The encoder length: the window's real frames plus ``audio_ctx`` positions of margin
   (:func:`encoder_frames`; None = Whisper's full 30 s).
3. The predictor, through a tiny callable: ``scores(stats, language index, task index, budget)
   -> keep score per gate`` (a torch module on the PyTorch side, an ONNX graph on the runtime).
4. Planning costs: ``costs(encoder positions, estimated tokens, unit) -> cost per gate`` (FLOPs
   from the model's cost terms, or the bundle's measured milliseconds).
5. The exact budget planner (:meth:`edgegate.budget.Budget.keep_mask`) and the resulting
   :class:`Plan`: keep mask, encoder frames, expected cost.
6. The vocabulary shard, the gate on the output layer: the request's language's shard for
   transcribe, English's for translate (:func:`edgegate.vocabulary.shard_language`), when the
   planner has it on (``vocab_shards``); None = the full vocabulary (language to be detected, a
   language without a default-on shard, or ``full_vocab``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from edgegate.budget import Budget, modules_in_scope
from edgegate.errors import BudgetError, EdgegateError
from edgegate.frontend import N_FRAMES, pooled_stats

TASK_INDEX = {"transcribe": 0, "translate": 1}
# Mel frames per encoder position: Whisper's conv stem halves the frame rate.
MEL_FRAMES_PER_POSITION = 2

ScoreFn = Callable[[np.ndarray, int, int, float], np.ndarray]
CostFn = Callable[..., np.ndarray]  # (encoder positions, decoder tokens, unit="flops") -> cost per gate


def default_language_codes(n_languages: int = 99) -> list[str]:
    """Whisper's language codes in token order; predictor language index = position + 1."""
    from edgegate.tokenizer import LANGUAGES

    return list(LANGUAGES)[:n_languages]


def language_index(language: str | None, codes: Sequence[str] | None = None) -> int:
    """Predictor language index: 0 for unknown / auto-detect, else 1 + the code's position."""
    if not language:
        return 0
    codes = list(codes) if codes is not None else default_language_codes()
    try:
        return codes.index(language) + 1
    except ValueError:
        return 0


def task_index(task: str) -> int:
    if task not in TASK_INDEX:
        raise EdgegateError(f"unknown task {task!r}; use transcribe or translate")
    return TASK_INDEX[task]


def estimate_tokens(duration: float) -> int:
    """Decoder positions planned for an utterance: the 4-token prompt plus ~4 tokens per second.

    The real count is only known after decoding; planning uses this estimate (in training too,
    so the predictor sees the costs it will be planned with).
    """
    return 4 + max(8, int(math.ceil(4.0 * duration)))


def encoder_frames(n_frames: int, audio_ctx: int | None) -> int:
    """Mel frames the encoder sees: the full 30 s, or (trimmed context) the audio plus a margin.

    ``audio_ctx`` is a margin in encoder positions (whisper.cpp's audio_ctx idea); the result is even
    because the conv stem halves the frame count.
    """
    if audio_ctx is None:
        return N_FRAMES
    return min(N_FRAMES, 2 * (-(-n_frames // 2) + audio_ctx))


class RequestFeatures:
    """What planning reads from one request's audio: its whole log-mel (padded by 30 s, as Whisper
    computes it), the frames that hold audio and the duration."""

    def __init__(self, mel: np.ndarray, content: int, duration: float):
        self.mel = mel
        self.content = max(1, int(content))
        self.frames = min(self.content, N_FRAMES)  # real mel frames of the first 30-s window
        self.duration = float(duration)

    @cached_property
    def stats(self) -> np.ndarray:
        """(2 * n_mels,) pooled statistics of every real frame; computed only when a predictor needs them."""
        return pooled_stats(self.mel[:, : self.content])


@dataclass(frozen=True)
class Plan:
    """What runs for one request: the same for every 30-s window of it."""

    mask: np.ndarray  # bool per gate, in gate order (True = the module runs)
    audio_ctx: int | None  # encoder margin in positions; None = Whisper's full 30 s
    encoder_frames: int  # mel frames the encoder sees for the first window
    expected_cost: float | None = None  # in-scope kept cost the planner allowed (None: not planned)
    budget: Budget | None = None
    scores: np.ndarray | None = None
    costs: np.ndarray | None = None
    vocab: str | None = None  # vocabulary shard key (None: full vocabulary)

    def frames_for(self, window_frames: int) -> int:
        """Mel frames the encoder sees for a window with ``window_frames`` real frames."""
        return encoder_frames(window_frames, self.audio_ctx)

    @property
    def kept(self) -> list[bool]:
        return [bool(k) for k in self.mask]

    @property
    def dense(self) -> bool:
        return bool(self.mask.all())


class Planner:
    """Turns requests into plans for one model: its gate names, predictor, costs and language codes."""

    def __init__(self, gate_names: Sequence[str], costs: CostFn, scores: ScoreFn | None = None,
                 language_codes: Sequence[str] | None = None, missing_predictor: str = "no gate predictor",
                 vocab_shards: Sequence[str] = ()):
        self.vocab_shards = tuple(vocab_shards)  # shard keys this model decodes with when a request allows
        self.gate_names = list(gate_names)
        self.costs = costs
        self.scores = scores
        self.language_codes = list(language_codes) if language_codes is not None else default_language_codes()
        self.missing_predictor = missing_predictor

    def check_mask(self, mask: Sequence[bool] | np.ndarray) -> np.ndarray:
        m = np.asarray(mask)
        if m.shape != (len(self.gate_names),):
            raise BudgetError(f"mask must have one value per gateable module ({len(self.gate_names)}), "
                              f"got shape {m.shape}; see session.gate_names")
        if m.dtype != bool and not np.isin(m, (0, 1)).all():
            raise BudgetError("mask values must be booleans (True = run the module)")
        return m.astype(bool)

    def planning_costs(self, features: RequestFeatures, audio_ctx: int | None, unit: str = "flops",
                       n_tokens: int | None = None) -> np.ndarray:
        """Cost per gate for this request: at its encoder positions and (estimated) decoder tokens."""
        positions = encoder_frames(features.frames, audio_ctx) // MEL_FRAMES_PER_POSITION
        return self.costs(positions, n_tokens or estimate_tokens(features.duration), unit=unit)

    def vocab(self, language: str | None, task: str, full_vocab: bool = False) -> str | None:
        """The request's vocabulary shard key, or None for the full vocabulary."""
        if full_vocab or not language or not self.vocab_shards:
            return None
        from edgegate.vocabulary import shard_language

        key = shard_language(language, task)
        return key if key in self.vocab_shards else None

    def fixed(self, mask: Sequence[bool] | np.ndarray | None, features: RequestFeatures,
              audio_ctx: int | None, language: str | None = None, task: str = "transcribe",
              full_vocab: bool = False) -> Plan:
        """The plan of an explicit mask (None = dense); the shard follows ``language``/``task``."""
        m = np.ones(len(self.gate_names), dtype=bool) if mask is None else self.check_mask(mask)
        return Plan(m, audio_ctx, encoder_frames(features.frames, audio_ctx),
                    vocab=self.vocab(language, task, full_vocab))

    def plan(self, features: RequestFeatures, language: str | None, task: str, budget: Budget | None,
             audio_ctx: int | None, full_vocab: bool = False) -> Plan:
        """Plan one request under ``budget`` (None or 0: dense, without calling the predictor)."""
        task_id = task_index(task)
        frames = encoder_frames(features.frames, audio_ctx)
        vocab = self.vocab(language, task, full_vocab)
        if budget is None or budget.value == 0.0:
            return Plan(np.ones(len(self.gate_names), dtype=bool), audio_ctx, frames, budget=budget, vocab=vocab)
        if self.scores is None:
            raise BudgetError(self.missing_predictor)
        scores = np.asarray(self.scores(features.stats, language_index(language, self.language_codes), task_id,
                                        budget.value))
        costs = self.planning_costs(features, audio_ctx, budget.cost_unit)
        mask = budget.keep_mask(self.gate_names, costs, scores)
        in_scope = modules_in_scope(self.gate_names, budget.scope)
        return Plan(mask, audio_ctx, frames, float(costs[mask & in_scope].sum()), budget, scores, costs, vocab)


__all__ = ["Plan", "Planner", "RequestFeatures", "ScoreFn", "CostFn", "TASK_INDEX", "default_language_codes",
           "language_index", "task_index", "estimate_tokens", "encoder_frames"]
