"""The torch-free runtime: ``Session.load(bundle).transcribe(audio)``.

    from edgegate.runtimes.session import Session
    session = Session.load("bundles/whisper-base-cpu")          # verifies every file's SHA-256 first
    result = session.transcribe("clip.wav", language="en")      # -> edgegate.pipeline.Transcription
    print(result.text, result.mask, result.timings)

Per utterance: log-mel frontend (numpy) -> gate predictor (if the bundle has one and a budget is
set) -> exact budget planner (:func:`edgegate.budget.plan_mask`) -> the kept encoder modules (a
skipped module with a skip adapter runs its adapter instead) -> cross-attention K/V only for the
kept cross-attention modules -> :func:`edgegate.decoding.decode` over a numpy
:class:`BundleDecoderState` that runs the kept decoder modules with their KV caches.

Nothing here (or in what it imports) imports torch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgegate.budget import Budget, validate_budget
from edgegate.errors import BudgetError, BundleError, EdgegateError
from edgegate.frontend import HOP_LENGTH, N_FRAMES, SAMPLE_RATE, pooled_stats
from edgegate.gated import default_language_codes, estimate_tokens, language_index, task_index
from edgegate.models.costs import module_costs
from edgegate.pipeline import MelWindow, Transcription, encoder_frames, mel_windows, to_samples, transcribe_windows
from edgegate.runtimes.backends.base import Backend, Module
from edgegate.runtimes.backends.registry import choose_backend, create_backend
from edgegate.runtimes.bundle import Bundle, ModuleSpec
from edgegate.runtimes.profiling import measured_ms
from edgegate.tokenizer import TASKS, WhisperTokenizer


class _Dims:
    """The manifest's model dims as attributes (what edgegate.models.costs expects)."""

    def __init__(self, d: dict[str, int]):
        self.__dict__.update(d)


def _step_fn(module: Module | None, adapter: Module | None) -> Callable[[np.ndarray], np.ndarray] | None:
    """x -> x for one residual module: the module if kept, its adapter if skipped, None = identity."""
    runner = module or adapter
    if runner is None:
        return None
    return lambda x: runner.run({"x": x})[0]


class BundleDecoderState:
    """Decoder KV caches for one utterance over the kept modules (an ``edgegate.decoding.DecoderState``)."""

    def __init__(self, session: Session, cross_kv: list[tuple[np.ndarray, np.ndarray] | None], mask: np.ndarray):
        self.s = session
        self.cross_kv = cross_kv
        self.layers = session._decoder_plan(mask)
        n = session.dims["n_text_layer"]
        self.k: list[np.ndarray | None] = [None] * n
        self.v: list[np.ndarray | None] = [None] * n
        self.offset = 0
        self.steps = 0

    def step(self, tokens: np.ndarray) -> np.ndarray:
        tokens = np.ascontiguousarray(tokens, dtype=np.int64)
        b, t = tokens.shape
        if self.offset + t > self.s.dims["n_text_ctx"]:
            raise BundleError(f"decoding ran past the model's {self.s.dims['n_text_ctx']} text positions")
        positions = np.arange(self.offset, self.offset + t, dtype=np.int64)
        x = self.s._embed.run({"tokens": tokens, "positions": positions})[0]
        heads, head_dim = self.s._text_heads
        for i, (self_attn, self_fallback, cross, cross_fallback, mlp) in enumerate(self.layers):
            if self_attn is not None:
                k, v = self.k[i], self.v[i]
                if k is None:
                    k = v = np.zeros((b, heads, 0, head_dim), dtype=np.float32)
                x, self.k[i], self.v[i] = self_attn.run({"x": x, "k_cache": k, "v_cache": v})
            elif self_fallback is not None:
                x = self_fallback(x)
            if cross is not None:
                ck, cv = self.cross_kv[i]
                x = cross.run({"x": x, "k": ck, "v": cv})[0]
            elif cross_fallback is not None:
                x = cross_fallback(x)
            if mlp is not None:
                x = mlp(x)
        self.offset += t
        self.steps += 1
        return self.s._logits.run({"x": x})[0]

    def reorder(self, index: np.ndarray) -> None:
        index = np.asarray(index, dtype=np.int64)
        for i in range(len(self.k)):
            if self.k[i] is not None:
                self.k[i] = np.ascontiguousarray(self.k[i][index])
                self.v[i] = np.ascontiguousarray(self.v[i][index])
        # Cross K/V keep batch 1: the cross-attention graphs broadcast it over the beams.


class Session:
    """A loaded bundle on one backend. Create with :meth:`Session.load`."""

    def __init__(self, bundle: Bundle, backend: Backend, tokenizer: WhisperTokenizer,
                 modules: dict[str, Module], adapters: dict[str, Module], predictor: Module | None,
                 budget: Budget | None):
        self.bundle = bundle
        self.backend = backend
        self.tokenizer = tokenizer
        self.modules = modules
        self.adapters = adapters
        self.predictor = predictor
        self.budget = budget
        self.dims: dict[str, int] = dict(bundle.dims)
        self.gate_names: list[str] = bundle.gate_names
        self._gate_index = {n: i for i, n in enumerate(self.gate_names)}
        self._embed = modules["decoder.embed"]
        self._logits = modules["decoder.logits"]
        self._text_heads = (self.dims["n_text_head"], self.dims["n_text_state"] // self.dims["n_text_head"])
        self._plans: dict[bytes, list] = {}
        self.audio_ctx: int | None = bundle.manifest.get("decoding", {}).get("audio_ctx")
        self.max_tokens = int(bundle.manifest.get("decoding", {}).get("max_tokens", self.dims["n_text_ctx"] // 2))

    # -- loading -----------------------------------------------------------------------------
    @classmethod
    def load(cls, bundle: str | Path | Bundle, backend: str = "auto", budget: float | Budget | None = None,
             threads: int | None = None, device: str | None = None, verify: bool = True,
             options: dict[str, Any] | None = None) -> Session:
        """Open, verify and load a bundle.

        ``backend``: "auto" (the profile's order, first installed) or a name ("onnxruntime").
        ``budget``: default budget for :meth:`transcribe` (a float in [0, 1) or a Budget); None
        uses the bundle's (its profile's, when it has a predictor) or runs dense.
        ``threads``/``device`` override the profile's. Every file's SHA-256 is checked before
        any backend is created; a failing bundle raises one-line :class:`BundleError`.
        """
        b = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle, verify=verify)
        profile = b.profile
        default_budget = cls._default_budget(b, budget)
        name = choose_backend(backend, profile.get("backends") or ["onnxruntime"],
                              b.manifest.get("module_format", "onnx"))
        be = create_backend(name, threads=threads or profile.get("threads"),
                            precision=profile.get("precision", "fp32"),
                            device=device or profile.get("device", "auto"), options=options)
        be.prepare(b.path, b.modules)
        tokenizer = WhisperTokenizer.from_file(b.tokenizer_file)
        modules: dict[str, Module] = {}
        adapters: dict[str, Module] = {}
        for m in b.modules:
            modules[m.name] = be.load(b.path / m.file, m.name, m.method)
            if m.adapter:
                adapters[m.gate or m.name] = be.load(b.path / m.adapter, f"{m.name}.adapter", m.adapter_method)
        pred = b.predictor
        predictor = be.load(b.path / pred["file"], "predictor", pred.get("method")) if pred else None
        for required in ("encoder.stem", "encoder.ln_post", "decoder.embed", "decoder.logits"):
            if required not in modules:
                raise BundleError(f"{b.path}: manifest lists no {required} module; re-export the bundle")
        return cls(b, be, tokenizer, modules, adapters, predictor, default_budget)

    @staticmethod
    def _default_budget(b: Bundle, budget: float | Budget | None) -> Budget | None:
        if budget is None:
            spec = b.budget
            return Budget.from_profile({"budget": spec}) if spec and b.predictor else None
        out = Session._as_budget(b, budget)
        if out.value > 0 and not b.predictor:
            raise BudgetError(f"budget {out.value:g} needs a gate predictor, but bundle {b.path} has none; "
                              "re-export it with edgegate export --gates PATH (or pass an explicit mask)")
        return out

    @staticmethod
    def _as_budget(b: Bundle, budget: float | Budget) -> Budget:
        if isinstance(budget, Budget):
            return budget
        value = validate_budget(budget)
        spec = b.budget or {}
        prof = b.profile
        return Budget(value, spec.get("scope", prof.get("scope", "both")),
                      spec.get("cost_unit", prof.get("cost_unit", "flops")),
                      tuple(spec.get("pinned", prof.get("pinned", ()))))

    # -- planning ----------------------------------------------------------------------------
    def costs(self, n_frames: int = 1500, n_tokens: int = 32, unit: str = "flops") -> np.ndarray:
        """Per-gate cost in plan order at this utterance shape: FLOPs, or the bundle's measured ms.

        ms come from ``edgegate profile`` (``costs.ms``), rescaled from the profiled shape to
        ``n_frames``/``n_tokens`` by :func:`edgegate.runtimes.profiling.measured_ms`.
        """
        if unit == "ms":
            costs = self.bundle.manifest["costs"]
            table = costs.get("ms")
            if not table:
                raise BudgetError(f"this budget counts milliseconds but bundle {self.bundle.path} has no measured "
                                  f"cost table; run: edgegate profile {self.bundle.path} (on the target device), "
                                  "or use cost_unit flops")
            missing = [n for n in self.gate_names if n not in table]
            if missing:
                raise BudgetError(f"the measured cost table of bundle {self.bundle.path} lacks {', '.join(missing)}; "
                                  f"re-run: edgegate profile {self.bundle.path}")
            ms = measured_ms(costs, _Dims(self.dims), n_frames, n_tokens)
            return np.array([ms[n] for n in self.gate_names], dtype=np.float64)
        c = module_costs(_Dims(self.dims), n_frames, n_tokens)
        return np.array([c[n].flops for n in self.gate_names], dtype=np.float64)

    def keep_scores(self, stats: np.ndarray, language: str | None, task: str, budget: float) -> np.ndarray:
        """The predictor's keep probability per gateable module (needs a bundle with a predictor)."""
        if self.predictor is None:
            raise BudgetError(f"bundle {self.bundle.path} has no gate predictor; re-export it with "
                              "edgegate export --gates PATH (or pass an explicit mask)")
        pred = self.bundle.predictor or {}
        codes = pred.get("language_codes") or default_language_codes(
            int(pred.get("config", {}).get("n_languages", 99)))
        feed = {"stats": np.asarray(stats, dtype=np.float32).reshape(1, -1),
                "lang": np.array([language_index(language, codes)], dtype=np.int64),
                "task": np.array([task_index(task)], dtype=np.int64),
                "budget": np.array([budget], dtype=np.float32)}
        return self.predictor.run(feed)[0][0]

    def plan(self, windows: Sequence[MelWindow], language: str | None, task: str,
             budget: float | Budget | None = None, audio_ctx: int | None = None,
             duration: float | None = None) -> np.ndarray:
        """The keep-mask for one utterance under ``budget`` (None: the session's default).

        Planned exactly as the PyTorch ``edgegate.gated.GatedWhisper.plan``: pooled stats of the
        real frames, FLOPs at the utterance's encoder positions (after ``audio_ctx``) and
        ``estimate_tokens(duration)`` decoder positions, then ``plan_mask``.
        """
        spec = self.budget if budget is None else self._as_budget(self.bundle, budget)
        n = len(self.gate_names)
        if spec is None or spec.value == 0.0:
            return np.ones(n, dtype=bool)
        real = [w.mel[:, : w.n_frames] for w in windows if w.n_frames > 0]
        stats = pooled_stats(np.concatenate(real, axis=1) if real else windows[0].mel[:, :1])
        scores = self.keep_scores(stats, language, task, spec.value)
        frames = encoder_frames(min(windows[0].n_frames, N_FRAMES), audio_ctx) // 2
        if duration is None:
            duration = sum(w.n_frames for w in windows) * HOP_LENGTH / SAMPLE_RATE
        costs = self.costs(frames, estimate_tokens(duration), unit=spec.cost_unit)
        return spec.plan(self.gate_names, costs, scores)

    def check_mask(self, mask: Sequence[bool] | np.ndarray) -> np.ndarray:
        m = np.asarray(mask)
        if m.shape != (len(self.gate_names),):
            raise BudgetError(f"mask must have one value per gateable module ({len(self.gate_names)}), "
                              f"got shape {m.shape}; see session.gate_names")
        if m.dtype != bool and not np.isin(m, (0, 1)).all():
            raise BudgetError("mask values must be booleans (True = run the module)")
        return m.astype(bool)

    def _kept(self, mask: np.ndarray, gate: str) -> bool:
        return bool(mask[self._gate_index[gate]])

    def _decoder_plan(self, mask: np.ndarray) -> list:
        key = mask.tobytes()
        if key not in self._plans:
            if len(self._plans) >= 64:  # per-utterance masks vary: keep memory bounded
                self._plans.clear()
            layers = []
            for i in range(self.dims["n_text_layer"]):
                names = (f"decoder.{i}.self_attn", f"decoder.{i}.cross_attn", f"decoder.{i}.mlp")
                kept = [self._kept(mask, n) for n in names]
                sa = self.modules[names[0]] if kept[0] else None
                sa_fb = None if kept[0] else _step_fn(None, self.adapters.get(names[0]))
                ca = self.modules[names[1]] if kept[1] else None
                ca_fb = None if kept[1] else _step_fn(None, self.adapters.get(names[1]))
                mlp = _step_fn(self.modules[names[2]] if kept[2] else None,
                               None if kept[2] else self.adapters.get(names[2]))
                layers.append((sa, sa_fb, ca, ca_fb, mlp))
            self._plans[key] = layers
        return self._plans[key]

    # -- running -----------------------------------------------------------------------------
    def encode(self, mel: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, list]:
        """mel (1, n_mels, frames) -> audio features and the cross K/V of the kept cross-attention."""
        x = self.modules["encoder.stem"].run({"mel": np.ascontiguousarray(mel, dtype=np.float32)})[0]
        for i in range(self.dims["n_audio_layer"]):
            for kind in ("attn", "mlp"):
                name = f"encoder.{i}.{kind}"
                if self._kept(mask, name):
                    x = self.modules[name].run({"x": x})[0]
                elif name in self.adapters:
                    x = self.adapters[name].run({"x": x})[0]
        xa = self.modules["encoder.ln_post"].run({"x": x})[0]
        cross = []
        for i in range(self.dims["n_text_layer"]):
            if self._kept(mask, f"decoder.{i}.cross_attn"):
                k, v = self.modules[f"decoder.{i}.cross_kv"].run({"xa": xa})
                cross.append((k, v))
            else:
                cross.append(None)
        return xa, cross

    def decoder_state(self, cross_kv: list, mask: np.ndarray) -> BundleDecoderState:
        return BundleDecoderState(self, cross_kv, mask)

    def transcribe(self, audio: str | Path | np.ndarray, sample_rate: int = 16000, language: str | None = None,
                   task: str = "transcribe", beam_size: int = 1, mask: Sequence[bool] | np.ndarray | None = None,
                   budget: float | Budget | None = None, audio_ctx: int | None | str = "bundle") -> Transcription:
        """Transcribe (or translate to English) audio of any length in 30-s windows.

        ``mask`` (one bool per ``gate_names`` entry) fixes the kept modules; otherwise ``budget``
        (or the session's default) is planned from the predictor's scores. Passing both is an
        error. ``audio_ctx`` trims the encoder context as ``WhisperModel.transcribe`` does; the
        default "bundle" uses the bundle's (its gate set's; None = full 30 s). ``result.mask`` lists
        the kept modules; ``result.timings`` has frontend, predictor (predictor + planning),
        encoder (+ cross K/V), decoder and total seconds.
        """
        t0 = time.perf_counter()
        if mask is not None and budget is not None:
            raise BudgetError("pass either mask or budget, not both")
        if task not in TASKS:
            raise EdgegateError(f"unknown task {task!r}; use one of: {', '.join(TASKS)}")
        if language is not None:
            language = self.tokenizer.normalize_language(language)
        if audio_ctx == "bundle":
            audio_ctx = self.audio_ctx
        samples = to_samples(audio, sample_rate)
        windows = list(mel_windows(samples, self.dims["n_mels"]))
        t1 = time.perf_counter()
        timings = {"frontend": t1 - t0, "predictor": 0.0, "encoder": 0.0, "decoder": 0.0}
        keep = self.check_mask(mask) if mask is not None else \
            self.plan(windows, language, task, budget, audio_ctx, len(samples) / SAMPLE_RATE)
        timings["predictor"] = time.perf_counter() - t1
        return transcribe_windows(windows, lambda mel: self.encode(mel, keep)[1],
                                  lambda cross: self.decoder_state(cross, keep), self.tokenizer, self.dims["n_vocab"],
                                  language, task, beam_size, self.max_tokens, audio_ctx, len(samples) / 16000,
                                  [bool(k) for k in keep], timings, t0)

    # -- info --------------------------------------------------------------------------------
    @property
    def has_predictor(self) -> bool:
        return self.predictor is not None

    def describe(self) -> str:
        budget = "dense" if self.budget is None else f"budget {self.budget.value:g} ({self.budget.scope})"
        return (f"{self.bundle.path.name}: {len(self.modules)} modules, {len(self.adapters)} adapters, "
                f"{'predictor' if self.predictor else 'no predictor'}, {budget}; {self.backend.describe()}")

    def module_specs(self) -> list[ModuleSpec]:
        return list(self.bundle.modules)
