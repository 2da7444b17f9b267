"""A gated Whisper in PyTorch: context + budget -> predictor -> exact plan -> transcription.

    from edgegate.gated import load_gated
    gw = load_gated("whisper-base")            # shipped predictor + skip adapters (edgegate/assets)
    gw = load_gated("runs/gates")              # or the output directory of `edgegate train-gates`
    segments, info = gw.transcribe("talk.wav", language="en", budget=0.25)   # long-form, lazy segments
    info.plan["mask"]                          # kept modules, in gw.gate_names order
    result = gw.transcribe_windows("clip.wav", language="en", budget=0.25)  # 30-s windows, no timestamps

The request path, shared with the torch-free runtime (which re-implements it on numpy):
1. log-mel of the audio padded by 30 s (Whisper's frontend); the *real* frames are those before
   the padding.
2. ``pooled_stats`` of the real frames (per-bin mean and population std).
3. the predictor: ``keep_scores(stats, language_index(lang), task_index(task), budget)``.
4. ``planning_costs``: per-module FLOPs for this utterance's encoder positions (trimmed by
   ``audio_ctx``) and an estimated token count; ``plan_mask`` keeps the highest-scoring modules
   until ``(1 - budget)`` of the in-scope cost is spent.
5. the model runs with that mask; skipped modules are replaced by their skip adapter if any.

The helpers at module level (``language_index``, ``task_index``, ``estimate_tokens``,
``planning_costs``, ``utterance_context``) need only numpy; torch is imported by the class.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgegate.errors import EdgegateError, ModelError

GATES_FILE = "gates.json"
GATES_FORMAT = "edgegate-gates"
ADAPTERS_FILE = "adapters.safetensors"
LORA_FILE = "lora.safetensors"
MODEL_FILE = "model.safetensors"
PREDICTOR_FILE = "predictor.safetensors"
ADAPTERS_FORMAT = "edgegate-skip-adapters"
LORA_FORMAT = "edgegate-lora"
TASK_INDEX = {"transcribe": 0, "translate": 1}
ASSETS_DIR = Path(__file__).resolve().parent / "assets"


def default_language_codes(n_languages: int = 99) -> list[str]:
    """Whisper's language codes in token order; predictor language index = position + 1."""
    from edgegate.tokenizer import LANGUAGES

    return list(LANGUAGES)[:n_languages]


def language_index(language: str | None, codes: list[str] | None = None) -> int:
    """Predictor language index: 0 for unknown / auto-detect, else 1 + the code's position."""
    if not language:
        return 0
    codes = codes if codes is not None else default_language_codes()
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


def planning_costs(dims: Any, n_mel_frames: int, audio_ctx: int | None, duration: float,
                   n_tokens: int | None = None) -> tuple[list[str], np.ndarray]:
    """(gate names, FLOPs per module) for an utterance of ``n_mel_frames`` real mel frames."""
    from edgegate.models.costs import module_costs
    from edgegate.pipeline import encoder_frames

    positions = encoder_frames(min(n_mel_frames, 3000), audio_ctx) // 2
    costs = module_costs(dims, n_frames=positions, n_tokens=n_tokens or estimate_tokens(duration))
    names = list(costs)
    return names, np.array([costs[n].flops for n in names], dtype=np.float64)


def utterance_context(samples: np.ndarray, n_mels: int = 80) -> tuple[np.ndarray, np.ndarray, int]:
    """(log-mel of the first 30-s window (n_mels, 3000), pooled stats of all real frames, real frames)."""
    from edgegate.frontend import N_SAMPLES, log_mel_spectrogram, pooled_stats

    mel = log_mel_spectrogram(samples, n_mels, padding=N_SAMPLES)
    content = max(1, mel.shape[-1] - 3000)
    stats = pooled_stats(mel[:, :content])
    window = mel[:, :3000]
    if window.shape[-1] < 3000:
        window = np.pad(window, ((0, 0), (0, 3000 - window.shape[-1])))
    return window, stats, min(content, 3000)


@dataclass
class GateSpec:
    """What ``gates.json`` records about a trained gate set."""

    model: str
    scope: str = "both"
    adapt: str = "skip-adapters"
    audio_ctx: int | None = None
    adapter_rank: int = 0
    lora_rank: int = 0
    language_codes: list[str] | None = None
    extra: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {"format": GATES_FORMAT, "schema_version": 1, "model": self.model, "scope": self.scope,
             "adapt": self.adapt, "audio_ctx": self.audio_ctx, "adapter_rank": self.adapter_rank,
             "lora_rank": self.lora_rank, "language_codes": self.language_codes}
        d.update(self.extra or {})
        return d

    @classmethod
    def read(cls, path: Path) -> GateSpec:
        try:
            d = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelError(f"cannot read {path} ({exc}); re-run edgegate train-gates") from None
        if d.get("format") != GATES_FORMAT:
            raise ModelError(f"{path} is not an edgegate gates file (format {d.get('format')!r})")
        known = ("model", "scope", "adapt", "audio_ctx", "adapter_rank", "lora_rank", "language_codes")
        extra = {k: v for k, v in d.items() if k not in known + ("format", "schema_version")}
        return cls(**{k: d[k] for k in known if k in d}, extra=extra)


def resolve_gates_dir(name_or_path: str | os.PathLike) -> Path:
    """A trained gate directory, or a shipped one by model name (``whisper-base``)."""
    p = Path(name_or_path).expanduser()
    if p.is_dir() and (p / GATES_FILE).exists():
        return p
    shipped = ASSETS_DIR / str(name_or_path)
    if (shipped / GATES_FILE).exists():
        return shipped
    if p.is_dir():
        raise ModelError(f"{p} has no {GATES_FILE}: pass the --out directory of edgegate train-gates")
    raise ModelError(f"no gate set {str(name_or_path)!r}: not a directory written by edgegate train-gates "
                     f"and not a shipped one ({', '.join(shipped_gate_sets()) or 'none shipped'})")


def shipped_gate_sets() -> list[str]:
    if not ASSETS_DIR.is_dir():
        return []
    return sorted(p.name for p in ASSETS_DIR.iterdir() if (p / GATES_FILE).exists())


# -- weights of the adaptation (torch) ---------------------------------------------------------
def save_adapters(model, path: Path, dtype: str = "float32") -> Path:
    """Skip adapters of ``model`` as safetensors (keys as in ``model.skip_adapters``)."""
    import torch
    from safetensors.torch import save_file

    td = {"float32": torch.float32, "float16": torch.float16}[dtype]
    tensors = {k: v.detach().to("cpu", td).contiguous() for k, v in model.skip_adapters.state_dict().items()}
    names = [n for n in model.gate_names if n.replace(".", "_") in model.skip_adapters]
    rank = next(iter(model.skip_adapters.values())).down.out_features if names else 0
    save_file(tensors, str(path), metadata={"format": ADAPTERS_FORMAT, "names": json.dumps(names),
                                            "rank": str(rank)})
    return path


def load_adapters(model, path: Path) -> None:
    """Attach and fill the skip adapters saved by :func:`save_adapters` (stored fp16 or fp32)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except Exception as exc:
        raise ModelError(f"cannot read skip adapters {path} ({exc}); re-run edgegate train-gates") from None
    if meta.get("format") != ADAPTERS_FORMAT:
        raise ModelError(f"{path} is not an edgegate skip-adapter file")
    names = json.loads(meta["names"])
    unknown = [n for n in names if n not in model.gate_names]
    if unknown:
        raise ModelError(f"{path} has adapters for {unknown[:3]}, which this model does not have: "
                         "the gates were trained for another model")
    model.add_skip_adapters(int(meta["rank"]), names)
    try:
        model.skip_adapters.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"{path} does not match the model ({str(exc).splitlines()[0]})") from None


class GatedWhisper:
    """Model + gate predictor (+ adaptation): ``transcribe(audio, language, task, budget)``."""

    def __init__(self, model, predictor, spec: GateSpec, tokenizer=None, pinned: tuple[str, ...] = ()):
        from edgegate.transcriber import WhisperModel

        self.wm = model if isinstance(model, WhisperModel) else WhisperModel(model, tokenizer)
        self.model = self.wm.model
        self.predictor = predictor.eval()
        self.spec = spec
        self.pinned = tuple(pinned)
        self.codes = spec.language_codes or default_language_codes(predictor.config.n_languages)
        if predictor.config.n_modules != len(self.model.gate_names):
            raise ModelError(f"predictor has {predictor.config.n_modules} gates, the model "
                             f"{len(self.model.gate_names)}: the gates were trained for another model")

    @property
    def gate_names(self) -> list[str]:
        return self.model.gate_names

    @property
    def tokenizer(self):
        return self.wm.tokenizer

    @property
    def audio_ctx(self) -> int | None:
        return self.spec.audio_ctx

    def keep_scores(self, stats: np.ndarray, language: str | None, task: str, budget: float) -> np.ndarray:
        import torch

        with torch.inference_mode():
            s = self.predictor.keep_scores(torch.as_tensor(stats, dtype=torch.float32)[None],
                                           torch.tensor([language_index(language, self.codes)]),
                                           torch.tensor([task_index(task)]),
                                           torch.tensor([float(budget)]))
        return s[0].double().numpy()

    def plan(self, samples: np.ndarray, language: str | None, task: str, budget: float,
             scope: str | None = None, audio_ctx: int | None | str = "trained",
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(keep mask, keep scores, planning costs) for 16-kHz float32 ``samples``."""
        from edgegate.budget import plan_mask, validate_budget

        budget = validate_budget(budget)
        _, stats, n_frames = utterance_context(samples, self.model.dims.n_mels)
        ctx = self.audio_ctx if audio_ctx == "trained" else audio_ctx
        names, costs = planning_costs(self.model.dims, n_frames, ctx, len(samples) / 16000)
        scores = self.keep_scores(stats, language, task, budget)
        mask = plan_mask(names, costs, scores, budget, scope or self.spec.scope, self.pinned)
        return mask, scores, costs

    def transcribe(self, audio, sample_rate: int = 16000, language: str | None = None, task: str = "transcribe",
                   budget: float = 0.0, scope: str | None = None, audio_ctx: int | None | str = "trained", **kwargs):
        """``segments, info`` as ``WhisperModel.transcribe``, with the modules the predictor and budget pick.

        One plan per request, from the first 30 s of audio (``info.plan``); the other keywords are
        ``WhisperModel.transcribe``'s (temperature, word_timestamps, vad_filter, beam_size, ...).
        """
        import time

        from edgegate.audiostream import head_samples

        t0 = time.perf_counter()
        if language is not None:
            language = self.tokenizer.normalize_language(language)
        ctx = self.audio_ctx if audio_ctx == "trained" else audio_ctx
        mask, _, _ = self.plan(head_samples(audio, sample_rate, 30.0), language, task, budget, scope, ctx)
        t_plan = time.perf_counter() - t0
        segments, info = self.wm.transcribe(audio, sample_rate, language=language, task=task,
                                            mask=None if mask.all() else mask, audio_ctx=ctx, **kwargs)
        info.plan.update(mask=[bool(m) for m in mask], budget=budget)
        info.timings["plan"] = t_plan
        return segments, info

    def detect_language(self, audio, sample_rate: int = 16000):
        """(language, probability, all probabilities) on the dense model: the plan depends on the language."""
        return self.wm.detect_language(audio, sample_rate)

    def transcribe_text(self, audio, sample_rate: int = 16000, **kwargs):
        """``transcribe()`` run to the end: a ``Transcription`` with the joined text."""
        from edgegate.pipeline import collect

        return collect(*self.transcribe(audio, sample_rate, **kwargs))

    def transcribe_windows(self, audio, sample_rate: int = 16000, language: str | None = None,
                           task: str = "transcribe", budget: float = 0.0, beam_size: int = 1,
                           scope: str | None = None, audio_ctx: int | None | str = "trained"):
        """Like ``WhisperModel.transcribe_windows``, with the modules the predictor and budget pick.

        ``budget`` 0 runs dense (bit-identical to the base model; adapters run only in place of a
        skipped module). The encoder context is trimmed as in training (``audio_ctx="trained"``,
        the margin in ``gates.json``); pass ``None`` for Whisper's full 30 s or another margin.
        Short clips (1-3 s) with a small margin (32) can make Whisper base loop: see
        docs/training.md.
        """
        import time

        from edgegate.pipeline import to_samples

        t0 = time.perf_counter()
        if language is not None:
            language = self.tokenizer.normalize_language(language)
        samples = to_samples(audio, sample_rate)
        ctx = self.audio_ctx if audio_ctx == "trained" else audio_ctx
        mask, _, _ = self.plan(samples, language, task, budget, scope, ctx)
        t_plan = time.perf_counter() - t0
        result = self.wm.transcribe_windows(samples, 16000, language, task, beam_size,
                                            mask=None if mask.all() else mask, audio_ctx=ctx)
        result.mask = [bool(m) for m in mask]
        result.timings["plan"] = t_plan
        result.timings["total"] = time.perf_counter() - t0
        return result


def load_gated(name_or_dir: str | os.PathLike = "whisper-base", model=None, threads: int | None = None,
               pinned: tuple[str, ...] = ()) -> GatedWhisper:
    """Load a gate set: a directory written by ``edgegate train-gates`` or a shipped one by name.

    ``model`` (a ``WhisperModel``, a ``Whisper`` or a path) overrides the model recorded in
    ``gates.json``; its adaptation weights (skip adapters, LoRA, fine-tuned weights) are applied.
    """
    import torch

    from edgegate.predictor import load_predictor
    from edgegate.transcriber import WhisperModel

    if threads:
        torch.set_num_threads(threads)
    d = resolve_gates_dir(name_or_dir)
    spec = GateSpec.read(d / GATES_FILE)
    predictor, _ = load_predictor(d / PREDICTOR_FILE)
    if model is None:
        wm = WhisperModel(spec.model)
    elif isinstance(model, WhisperModel):
        wm = model
    else:
        wm = WhisperModel(model)
    apply_adaptation(wm.model, d, spec)
    return GatedWhisper(wm, predictor, spec, pinned=pinned)


def apply_adaptation(model, directory: Path, spec: GateSpec) -> None:
    """Put the trained adaptation of ``directory`` into ``model`` (in place)."""
    if spec.adapt == "skip-adapters":
        load_adapters(model, directory / ADAPTERS_FILE)
    elif spec.adapt == "lora":
        from edgegate.training import load_lora_merged

        load_lora_merged(model, directory / LORA_FILE)
    elif spec.adapt == "full":
        from safetensors.torch import load_file

        state = load_file(str(directory / MODEL_FILE))
        missing = model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
        if missing.unexpected_keys:
            raise ModelError(f"{directory / MODEL_FILE} has unexpected weights {missing.unexpected_keys[:3]}")
    elif spec.adapt != "none":
        raise ModelError(f"unknown adaptation {spec.adapt!r} in {directory / GATES_FILE}")
