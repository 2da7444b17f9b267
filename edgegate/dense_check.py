"""The dense check of a gated decoder: the full decoder, over the same encoder output, catches two failures.

A decoder with skipped modules fails in two ways (round 2: at budget 0.5 most of the gated edge decoder's
worst outputs were loops, and about half its other word errors were words missing at the end):

- **Loops** (mode ``loops``, the default). A gated decoder whose text starts repeating itself
  (:func:`edgegate.repetition.ends_in_loop`, asked after every step) is stopped there, and a window whose gated
  result loops or fails the fallback thresholds is decoded again by the dense decoder
  (:func:`edgegate.longform.decode_with_fallback`, :func:`edgegate.pipeline.transcribe_windows`) instead of only
  at a higher temperature. It costs nothing until a window fails, and then less than the loop would have.
- **End of text** (mode ``all``: loops too). When the gated decoder's greedy choice is ``<|endoftext|>``, the
  dense decoder is fed the tokens it has not seen yet in one multi-token pass and, when its own choice
  differs, that choice is taken and decoding goes on. Every checked request pays for the K/V projections of
  the skipped cross-attentions and a replay, which on the int8 runtime cost more than a decoder budget of 0.5
  saves (docs/adaptation.md, round 2 session 10), so it is opt-in.

The same modes (all but ``off``) give a trimmed encoder context its fallback: a window encoded on the real
length plus a margin whose result still fails the test below is encoded again on Whisper's full 30 s and
decoded over that (``context_fallbacks`` in the results; :func:`edgegate.pipeline.transcribe_windows`,
:func:`edgegate.longform.decode_with_fallback`). An edge-adapted model rarely needs it; the original model
on a trimmed context loops on most short clips and then costs a second encoder pass.

Greedy decoding (batch 1) is checked; beam search and best-of sampling (batch > 1) run the gated decoder
unchecked. Torch-free: the PyTorch model and the runtime share it through their ``ModelPorts``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from edgegate.decoding import DecodeResult, DecoderState
from edgegate.errors import EdgegateError
from edgegate.repetition import ends_in_loop, find_repetition

MODES = ("off", "loops", "all")
DENSE_CHECK = "loops"  # what gated requests get unless a caller asks otherwise (transcribe/eval: --dense-check)

MAX_OVERRULES = 4  # per window: after that the gated end of text stands

# The window-level failure test of the fixed-window path (no temperature fallback there): openai-whisper's
# compression-ratio threshold, the long-form loop guard's repetition limit, and the token limit reached.
COMPRESSION_RATIO = 2.4
REPETITION_LIMIT = 4


@dataclass
class CheckCounts:
    """What the dense check did in one request: end-of-text checks, how many it overruled, loops cut, windows
    decoded again by the dense decoder."""

    end_checks: int = 0
    overruled: int = 0
    loops_cut: int = 0
    redone: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def _only(token: int, like: np.ndarray) -> np.ndarray:
    """Logits that leave one choice: ``token``."""
    out = np.full_like(like, -np.inf)
    out[:, token] = 0.0
    return out


def check_mode(mode: str | bool) -> str:
    """A dense-check mode, checked: ``off``, ``loops`` or ``all`` (True = ``all``, False = ``off``)."""
    if isinstance(mode, bool):
        return "all" if mode else "off"
    if mode not in MODES:
        raise EdgegateError(f"unknown dense check {mode!r}; use one of: {', '.join(MODES)}")
    return mode


class CheckedState:
    """A ``DecoderState``: the gated state's logits, except that a loop is cut and, with ``end``, an end of text
    the dense decoder disagrees with is overruled.

    ``make_dense()`` builds the dense state on the first end check; ``chunk`` bounds the tokens per replay call
    (the runtime's graphs take at most ``max_step_tokens`` at once; None: any number).
    """

    def __init__(self, gated: DecoderState, make_dense: Callable[[], DecoderState], eot: int,
                 counts: CheckCounts | None = None, chunk: int | None = None, end: bool = True):
        self.gated, self.make_dense, self.eot, self.end = gated, make_dense, eot, end
        self.counts = counts if counts is not None else CheckCounts()
        self.chunk = chunk
        self.dense: DecoderState | None = None
        self.unseen: list[np.ndarray] = []  # tokens fed to the gated state since the dense state last stepped
        self.sampled: list[int] = []  # tokens fed after the prompt step (the loop test reads them)
        self.overruled = 0
        self.prompted = False  # the first step feeds the prompt, the later ones what was sampled
        self.checking = True  # off once the batch grows (beams, best-of samples)

    def step(self, tokens: np.ndarray) -> np.ndarray:
        logits = self.gated.step(tokens)
        if not self.checking or tokens.shape[0] != 1:
            self.checking = False
            return logits
        if self.end:
            self.unseen.append(np.asarray(tokens, dtype=np.int64))
        if self.prompted:
            self.sampled.extend(int(t) for t in tokens[0])
            if ends_in_loop(self.sampled, self.eot, REPETITION_LIMIT):
                # End the window here: the caller's failure test sees the loop and the dense decoder redoes it,
                # before the loop runs to the token limit.
                self.counts.loops_cut += 1
                self.checking = False
                return _only(self.eot, logits)
        self.prompted = True
        if not self.end or int(np.argmax(logits[0])) != self.eot:
            return logits
        dense = self._replay()
        self.counts.end_checks += 1
        if int(np.argmax(dense[0])) != self.eot:
            self.counts.overruled += 1
            self.overruled += 1
            # A gated decoder that keeps wanting to stop where the dense one goes on is not helped by more checks.
            self.checking = self.overruled < MAX_OVERRULES
            return dense
        return logits

    def _replay(self) -> np.ndarray:
        if self.dense is None:
            self.dense = self.make_dense()
        pending = np.concatenate(self.unseen, axis=1)
        self.unseen = []
        size = pending.shape[1] if self.chunk is None else self.chunk
        logits = None
        for start in range(0, pending.shape[1], size):
            logits = self.dense.step(pending[:, start:start + size])
        return logits

    def reorder(self, index: np.ndarray) -> None:
        self.gated.reorder(index)
        self.checking = False  # the dense state would have to follow every row: beams run unchecked


@dataclass
class DenseCheck:
    """The dense decoder of one request's plan: ``dense_state(cross)`` decodes an encoded window with every
    decoder module; ``end``: check the end of text too (mode ``all``); ``chunk`` bounds the tokens of one
    decoder call (None: any)."""

    dense_state: Callable[[Any], DecoderState]
    eot: int
    end: bool = False
    counts: CheckCounts = field(default_factory=CheckCounts)
    chunk: int | None = None

    def states(self, make_state: Callable[[Any], DecoderState], cross: Any) -> Callable[[], DecoderState]:
        """A factory of checked gated states over ``cross``."""
        return lambda: CheckedState(make_state(cross), lambda: self.dense_state(cross), self.eot, self.counts,
                                    self.chunk, self.end)

    def dense_states(self, cross: Any) -> Callable[[], DecoderState]:
        """A factory of dense states over ``cross`` (a window redone), counted."""
        self.counts.redone += 1
        return lambda: self.dense_state(cross)


def failed(result: DecodeResult, eot: int, max_tokens: int) -> bool:
    """Whether a greedy result of the fixed-window path looks broken: it loops, compresses too well, or ran
    to the token limit."""
    return (len(result.tokens) >= max_tokens or result.compression_ratio > COMPRESSION_RATIO
            or find_repetition(result.tokens, eot, REPETITION_LIMIT) is not None)


__all__ = ["MODES", "DENSE_CHECK", "check_mode", "CheckCounts", "CheckedState", "DenseCheck", "failed"]
