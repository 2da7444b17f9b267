"""The torch-free runtime: ``Session.load(bundle).transcribe(audio)``.

    from edgegate.runtimes.session import Session
    session = Session.load("bundles/whisper-base-cpu")          # verifies every file's SHA-256 first
    segments, info = session.transcribe("talk.wav", word_timestamps=True)   # long-form, lazy segments
    for s in segments:
        print(f"[{s.start:.2f} -> {s.end:.2f}] {s.text}")
    print(info.language, info.plan["kept"], info.timings)
    result = session.transcribe_windows("clip.wav", language="en")   # fixed 30-s windows -> Transcription

Per request (``transcribe``: :func:`edgegate.longform.transcribe_long`, the loop every model
shares; ``transcribe_windows``: fixed windows): log-mel frontend (numpy, once) -> the request's
plan (:mod:`edgegate.plan`: the bundle's predictor and cost terms, the exact budget planner) ->
the runner list of that plan (:mod:`edgegate.runtimes.execution`: kept modules, skip adapters in
place of skipped ones, cross-attention K/V only for kept cross-attention) -> the decoding of
:mod:`edgegate.decoding` over the per-step runners with their KV caches.

Thread safety: a Session may serve several threads at once. Per-request data lives in the call;
the shared runner-list cache is locked; each backend's graphs are safe to run concurrently (ONNX
Runtime sessions are; the ExecuTorch and TensorRT modules serialise their own calls).

Nothing here (or in what it imports) imports torch.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgegate.budget import Budget, validate_budget
from edgegate.context_tail import TailCache, extend_window, frame_axes, padding_mel
from edgegate.dense_check import DENSE_CHECK, DenseCheck, check_mode
from edgegate.errors import BudgetError, EdgegateError
from edgegate.longform import (
    DEFAULT_TEMPERATURES,
    ModelPorts,
    build_options,
    detect_first_window,
    mel_source,
    plan_info,
    prepare_audio_source,
    resolve_audio_ctx,
    transcribe_long,
)
from edgegate.pipeline import (
    MelFeatures,
    Segment,
    Transcription,
    TranscriptionInfo,
    collect,
    to_samples,
    transcribe_windows,
)
from edgegate.plan import Plan, Planner, RequestFeatures, default_language_codes, language_index, task_index
from edgegate.runtimes.alignment import Alignment
from edgegate.runtimes.alignment import missing as missing_alignment
from edgegate.runtimes.backends.base import Backend, Module
from edgegate.runtimes.backends.registry import choose_backend, create_backend
from edgegate.runtimes.bundle import Bundle
from edgegate.runtimes.execution import (
    EncodedWindow,
    GraphDecoderState,
    RunnerList,
    complete_window,
    run_window,
    runner_list,
    window_env,
)
from edgegate.runtimes.family import load_frontend, load_tokenizer, owsm_segments, owsm_session_planner, transcribe_owsm
from edgegate.runtimes.latency import measured_gate_ms
from edgegate.runtimes.schema import LOGITS
from edgegate.runtimes.vocab_logits import VocabLogits
from edgegate.tokenizer import TASKS, WhisperTokenizer

RUNNER_CACHE = 64  # runner lists kept per session: per-request masks vary, memory stays bounded
_EMPTY = RequestFeatures(np.zeros((80, 1), np.float32), 1, 0.0)  # no audio left (VAD): a dense plan, nothing runs


class Session:
    """A loaded bundle on one backend. Create with :meth:`Session.load`."""

    def __init__(self, bundle: Bundle, backend: Backend, tokenizer: WhisperTokenizer,
                 modules: dict[str, Module], adapters: dict[str, Module], predictor: Module | None,
                 budget: Budget | None, vocab_logits: VocabLogits | None = None):
        self.bundle = bundle
        self.backend = backend
        self.tokenizer = tokenizer
        self.modules = modules
        self.adapters = adapters  # gate name -> skip adapter
        self.predictor = predictor
        self.budget = budget
        self.frontend: Any = None  # the family's numpy frontend when it is not Whisper's (Session.load sets it)
        self.dims: dict[str, int] = dict(bundle.dims)
        self.limits = bundle.limits
        self.gate_names: list[str] = bundle.gate_names
        decoding = bundle.decoding
        self.audio_ctx: int | None = decoding.get("audio_ctx")
        # Trimmed windows get the padding's values appended (edgegate.context_tail), computed per mask on first use.
        self.context_tail = bool(decoding.get("context_tail", False))
        self._tails = TailCache(self._padding_values)
        self.max_tokens = int(decoding.get("max_tokens", self.limits.text_positions // 2))
        self._gate_terms = [bundle.gate_terms[n] for n in self.gate_names]
        decoder_side = {g for m in bundle.modules if m.stage != "encoder" for g in m.gates}
        self._decoder_gates = np.array([n in decoder_side for n in self.gate_names], dtype=bool)
        self._always_on_terms = list(bundle.always_on_terms.values())
        self._runners: dict[bytes, RunnerList] = {}
        self._lock = threading.Lock()
        pred = bundle.predictor or {}
        codes = pred.get("language_codes") or default_language_codes(
            int(pred.get("config", {}).get("n_languages", 99)))
        # Through the instance attribute: costs may be replaced on a session (tests spy on them).
        self.vocab_logits = vocab_logits  # the vocabulary shards' logits graphs (None: full vocabulary only)
        self._logits_module = next((m.name for m in bundle.modules if any(t.value == LOGITS for t in m.outputs)),
                                   None)
        self.planner = Planner(self.gate_names, lambda *a, **k: self.costs(*a, **k),
                               self._predict if predictor is not None else None, codes,
                               missing_predictor=self._no_predictor(),
                               vocab_shards=vocab_logits.keys if vocab_logits is not None else ())

    # -- loading -----------------------------------------------------------------------------
    @classmethod
    def load(cls, bundle: str | Path | Bundle, backend: str = "auto", budget: float | Budget | None = None,
             threads: int | None = None, device: str | None = None, verify: bool = True,
             options: dict[str, Any] | None = None, full_vocab: bool = False) -> Session:
        """Open, verify and load a bundle.

        ``backend``: "auto" (the profile's order, first installed) or a name ("onnxruntime").
        ``budget``: default budget for :meth:`transcribe` (a float in [0, 1) or a Budget); None
        uses the bundle's (its profile's, when it has a predictor) or runs dense.
        ``threads``/``device`` override the profile's. Every file's SHA-256 is checked before
        any backend is created; a failing bundle raises one-line :class:`BundleError`.
        ``full_vocab``: never use the bundle's vocabulary shards (every request decodes over the
        full vocabulary).
        """
        b = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle, verify=verify)
        profile = b.profile
        default_budget = cls._default_budget(b, budget)
        name = choose_backend(backend, profile.get("backends") or ["onnxruntime"], b.module_format)
        be = create_backend(name, threads=threads or profile.get("threads"),
                            precision=profile.get("precision", "fp32"),
                            device=device or profile.get("device", "auto"), options=options)
        be.prepare(b.path, b.graphs(), b.axis_bounds(be.max_batch, be.max_step_tokens))
        tokenizer = load_tokenizer(b)  # the model family's (runtimes/family.py)
        modules: dict[str, Module] = {}
        adapters: dict[str, Module] = {}
        for m in b.modules:
            modules[m.name] = be.load(b.path / m.file, m.name, m.method)
            if m.adapter_graph is not None and m.gate is not None:
                adapters[m.gate] = be.load(b.path / m.adapter, m.adapter_graph.name, m.adapter_method)
        pred = b.predictor
        predictor = be.load(b.path / pred["file"], "predictor", pred.get("method")) if pred else None
        vocab = None if full_vocab else VocabLogits.of(b, be, tokenizer)
        session = cls(b, be, tokenizer, modules, adapters, predictor, default_budget, vocab)
        session.frontend = load_frontend(b)  # None: Whisper's log-mel (edgegate.frontend)
        if session.frontend is not None:  # OWSM plans at its full window's encoder positions
            session.planner = owsm_session_planner(session)
        return session

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

    def _no_predictor(self) -> str:
        return (f"bundle {self.bundle.path} has no gate predictor; re-export it with edgegate export --gates PATH "
                "(or pass an explicit mask)")

    # -- planning ----------------------------------------------------------------------------
    def costs(self, n_frames: int = 1500, n_tokens: int = 32, unit: str = "flops") -> np.ndarray:
        """Per-gate cost in plan order at this utterance shape: FLOPs, or the bundle's measured ms.

        FLOPs come from the manifest's cost terms; ms from ``edgegate profile`` (``costs.ms``),
        rescaled from the measured shape to ``n_frames``/``n_tokens`` by
        :func:`edgegate.runtimes.latency.measured_ms`.
        """
        if unit == "ms":
            return measured_gate_ms(self.bundle, self.gate_names, n_frames, n_tokens)
        return np.array([t.at(n_frames, n_tokens) for t in self._gate_terms], dtype=np.float64)

    def always_on_flops(self, n_frames: int, n_tokens: int) -> float:
        """FLOPs of the parts that always run (stem, norms, embedding, logits) at this shape."""
        return float(sum(t.at(n_frames, n_tokens) for t in self._always_on_terms))

    def keep_scores(self, stats: np.ndarray, language: str | None, task: str, budget: float) -> np.ndarray:
        """The predictor's keep probability per gateable module (needs a bundle with a predictor)."""
        return self._predict(stats, language_index(language, self.planner.language_codes), task_index(task), budget)

    def _predict(self, stats: np.ndarray, language: int, task: int, budget: float) -> np.ndarray:
        if self.predictor is None:
            raise BudgetError(self._no_predictor())
        feed = {"stats": np.asarray(stats, dtype=np.float32).reshape(1, -1),
                "lang": np.array([language], dtype=np.int64), "task": np.array([task], dtype=np.int64),
                "budget": np.array([budget], dtype=np.float32)}
        return self.predictor.run(feed)[0][0]

    def plan(self, features: MelFeatures | RequestFeatures, language: str | None, task: str,
             budget: float | Budget | None = None, audio_ctx: int | None | str = "bundle") -> Plan:
        """The plan of one request under ``budget`` (None: the session's default), as every path plans."""
        spec = self.budget if budget is None else self._as_budget(self.bundle, budget)
        request = features.request if isinstance(features, MelFeatures) else features
        return self.planner.plan(request, language, task, spec, self.audio_ctx if audio_ctx == "bundle" else audio_ctx)

    def check_mask(self, mask: Sequence[bool] | np.ndarray) -> np.ndarray:
        return self.planner.check_mask(mask)

    # -- running -----------------------------------------------------------------------------
    def runner_list(self, mask: np.ndarray, vocab: str | None = None) -> RunnerList:
        """The runners of a keep mask and vocabulary shard (cached): see
        :func:`edgegate.runtimes.execution.runner_list`; a shard swaps the logits graph for its own."""
        key = np.asarray(mask, dtype=bool).tobytes() + (vocab or "").encode()
        with self._lock:
            runners = self._runners.get(key)
        if runners is None:
            modules = self.modules
            if vocab is not None and self.vocab_logits is not None and self._logits_module is not None:
                modules = {**self.modules, self._logits_module: self.vocab_logits.module(vocab)}
            runners = runner_list(self.bundle.modules, self.gate_names, mask, modules, self.adapters,
                                  self.limits.state)
            with self._lock:
                if len(self._runners) >= RUNNER_CACHE:
                    self._runners.clear()
                self._runners[key] = runners
        return runners

    def encode(self, mel: np.ndarray, mask: np.ndarray, keep_env: bool = False) -> dict[str, np.ndarray]:
        """mel (1, n_mels, frames) -> the window's values the decoder reads (audio features' cross K/V).

        A trimmed window of a bundle with ``decoding.context_tail`` gets the padding's values appended,
        so the decoder reads a full window (edgegate.context_tail). ``keep_env``: an :class:`EncodedWindow`
        that keeps every per-window value, for :meth:`dense_window`."""
        runners = self.runner_list(mask)
        env = window_env(runners, mel)
        window = self._with_tail({k: env[k] for k in runners.window_values}, runners, mask, mel.shape[-1])
        return EncodedWindow(window, env) if keep_env else window

    def _with_tail(self, window: dict[str, np.ndarray], runners: RunnerList, mask: np.ndarray,
                   n_frames: int) -> dict[str, np.ndarray]:
        full = self.limits.encoder_positions * self.limits.mel_frames_per_position
        if not self.context_tail or n_frames >= full:
            return window
        axes = frame_axes([t for r in runners.per_window for t in r.outputs], runners.window_values)
        return extend_window(window, self._tails.get(np.asarray(mask, dtype=bool).tobytes()), axes)

    def _encoder(self, keep: np.ndarray, check: DenseCheck | None) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
        """encode(mel) under ``keep``: keeping the window's values for the dense check when there is one."""
        if check is None:
            return lambda mel: self.encode(mel, keep)
        return lambda mel: self.encode(mel, keep, keep_env=True)

    def dense_mask(self, mask: np.ndarray) -> np.ndarray | None:
        """``mask`` with every decoder-side gate kept: what its dense check runs (None: nothing is skipped there)."""
        dense = np.asarray(mask, dtype=bool) | self._decoder_gates
        return None if bool(np.array_equal(dense, mask)) else dense

    def dense_window(self, window: EncodedWindow, mask: np.ndarray, dense: np.ndarray) -> dict[str, np.ndarray]:
        """What the dense check's decoder reads of a window encoded under ``mask``: its encoder output through
        the cross-attention K/V producers the plan skipped (the encoder does not run again). Computed once per
        window: an end-checked pass and the window's dense redo (and its temperature fallback) share them."""
        if window.dense is None:
            target = self.runner_list(dense)
            values = complete_window(window.env, self.runner_list(mask), target)
            window.dense = self._with_tail(values, target, dense, window.env["mel"].shape[-1])
        return window.dense

    def dense_check(self, mask: np.ndarray, vocab: str | None = None, mode: str | bool = DENSE_CHECK
                    ) -> DenseCheck | None:
        """The dense check of a plan in ``mode`` (edgegate.dense_check); None when it is off or the plan skips no
        decoder module."""
        mode = check_mode(mode)
        dense = None if mode == "off" else self.dense_mask(mask)
        if dense is None:
            return None
        return DenseCheck(lambda w: self.decoder_state(self.dense_window(w, mask, dense), dense, vocab),
                          self.tokenizer.eot, end=mode == "all", chunk=self.backend.max_step_tokens)

    def _padding_values(self, key: bytes) -> dict[str, np.ndarray]:
        mask = np.frombuffer(key, dtype=bool)
        full = self.limits.encoder_positions * self.limits.mel_frames_per_position
        return run_window(self.runner_list(mask), padding_mel(self.limits.n_mels, full))

    def decoder_state(self, window: dict[str, np.ndarray], mask: np.ndarray,
                      vocab: str | None = None) -> GraphDecoderState:
        return GraphDecoderState(self.runner_list(mask, vocab), window, self.limits.text_positions)

    # -- long-form transcription (edgegate.longform, as WhisperModel.transcribe) ---------------
    def resolve_audio_ctx(self, audio_ctx: int | str | None) -> int | None:
        """"auto" (and the older "bundle") = the bundle's ``decoding.audio_ctx``; "full"/None = 30 s; N = margin."""
        return resolve_audio_ctx("auto" if audio_ctx == "bundle" else audio_ctx, self.audio_ctx)

    @property
    def alignment(self) -> Alignment | None:
        """The bundle's word-timestamp graphs (None: exported without them), loaded on first use."""
        if not hasattr(self, "_alignment"):
            self._alignment = Alignment.of(self.bundle, self.backend)
        return self._alignment

    def ports(self, mask: Sequence[bool] | np.ndarray | None = None, word_timestamps: bool = False,
              vocab: str | None = None, dense_check: str | bool = "off") -> ModelPorts:
        """encode / make_state (/ align) over this bundle with ``mask`` and vocabulary shard ``vocab``
        (see ``edgegate.longform``); ``dense_check``: the plan's dense check mode (edgegate.dense_check)."""
        keep = np.ones(len(self.gate_names), dtype=bool) if mask is None else self.check_mask(mask)
        check = self.dense_check(keep, vocab, dense_check)
        align = None
        if word_timestamps:
            if self.alignment is None:
                raise missing_alignment(self.bundle)
            align = self.alignment.aligner(self.runner_list(keep), lambda w: self.decoder_state(w, keep),
                                           self.backend.max_step_tokens, self.backend.max_batch)
        return ModelPorts(self._encoder(keep, check), lambda w: self.decoder_state(w, keep, vocab), self.tokenizer,
                          self.limits.n_vocab, self.limits.text_positions, align, check,
                          context_fallback=check_mode(dense_check) != "off")

    def _check_request(self, language: str | None, task: str, mask: Any, budget: Any) -> str | None:
        if mask is not None and budget is not None:
            raise BudgetError("pass either mask or budget, not both")
        if task not in TASKS:
            raise EdgegateError(f"unknown task {task!r}; use one of: {', '.join(TASKS)}")
        return None if language is None else self.tokenizer.normalize_language(language)

    def transcribe(self, audio: str | Path | np.ndarray, sample_rate: int = 16000, language: str | None = None,
                   task: str = "transcribe", beam_size: int = 1,
                   temperature: float | Sequence[float] = DEFAULT_TEMPERATURES,
                   word_timestamps: bool = False, vad_filter: bool = False, budget: float | Budget | None = None,
                   mask: Sequence[bool] | np.ndarray | None = None, audio_ctx: int | str | None = "auto",
                   vad_options: Any = None, dense_check: str | bool = DENSE_CHECK,
                   **options: Any) -> tuple[Iterator[Segment], TranscriptionInfo]:
        """``segments, info`` for audio of any length, exactly as ``WhisperModel.transcribe``: timestamps,
        seeking, temperature fallback, the loop guard, optional word times (the bundle's alignment
        graphs) and VAD, through :func:`edgegate.longform.transcribe_long`.

        One plan per request from the first 30 s of its log-mel: ``mask`` (one bool per
        ``gate_names`` entry) fixes the kept modules, else ``budget`` (or the session's default) is
        planned from the predictor's scores; passing both is an error. ``audio_ctx``: "auto" = the
        bundle's rule (``decoding.audio_ctx``; None = full), "full", or a margin N. Further keywords
        are :class:`edgegate.longform.LongformOptions` fields (condition_on_previous_text,
        initial_prompt, prefix, best_of, thresholds, ...). ``info.plan`` has the mask, kept/skipped
        modules, encoder frames and budget; ``info.timings`` frontend, plan, encoder, decoder, total.
        ``dense_check``: how the dense decoder watches a plan that skips decoder modules (edgegate.dense_check):
        "loops" (default: a looping or failed window is decoded again densely), "all" (its end of text checked
        too) or "off"; ``info.dense_check`` counts what it did.
        """
        if self.frontend is not None:  # OWSM: its own fixed windows (no timestamps or seeking yet)
            return owsm_segments(self, audio, sample_rate, language, task, beam_size, mask, budget,
                                 word_timestamps, vad_filter)
        language = self._check_request(language, task, mask, budget)
        ctx = self.resolve_audio_ctx(audio_ctx)
        opts = build_options(language, task, beam_size, temperature, word_timestamps, ctx, options)
        if word_timestamps and self.alignment is None:
            raise missing_alignment(self.bundle)
        spec = self.budget if budget is None else self._as_budget(self.bundle, budget)

        def planner(request: RequestFeatures | None) -> tuple[ModelPorts, list[bool], dict]:
            if mask is not None:
                plan = self.planner.fixed(mask, request or _EMPTY, ctx, language, task)
            else:
                plan = self.planner.plan(request or _EMPTY, language, task, spec if request else None, ctx)
            info = plan_info(self.gate_names, plan.kept, ctx)
            info["budget"] = None if plan.budget is None else plan.budget.value
            return self.ports(plan.mask, word_timestamps, plan.vocab, dense_check), plan.kept, info

        return transcribe_long(audio, None, opts, self.limits.n_mels, sample_rate, vad_filter, vad_options,
                               planner=planner)

    def transcribe_text(self, audio: str | Path | np.ndarray, sample_rate: int = 16000, **kwargs: Any
                        ) -> Transcription:
        """``transcribe()`` run to the end: the joined text with every segment (same keywords)."""
        return collect(*self.transcribe(audio, sample_rate, **kwargs))

    def detect_language(self, audio: str | Path | np.ndarray, sample_rate: int = 16000,
                        mask: Sequence[bool] | np.ndarray | None = None, audio_ctx: int | str | None = "auto",
                        ) -> tuple[str, float, dict[str, float]]:
        """(language, its probability, every language's probability) from the first 30 s (dense unless ``mask``)."""
        source, _, duration, _ = prepare_audio_source(audio, sample_rate, False)
        info = TranscriptionInfo("", None, duration, duration, None)
        mel = mel_source(source, self.limits.n_mels) if source.n_samples else None
        if mel is None:
            raise EdgegateError("no audio to detect a language in")
        language, probs = detect_first_window(mel, self.ports(mask), self.resolve_audio_ctx(audio_ctx), info)
        return language, probs[language], probs

    # -- fixed 30-s windows without timestamps (the short-utterance path) ----------------------
    def transcribe_windows(self, audio: str | Path | np.ndarray, sample_rate: int = 16000,
                           language: str | None = None, task: str = "transcribe", beam_size: int = 1,
                           mask: Sequence[bool] | np.ndarray | None = None, budget: float | Budget | None = None,
                           audio_ctx: int | None | str = "auto", dense_check: str | bool = DENSE_CHECK
                           ) -> Transcription:
        """Transcribe (or translate to English) in fixed 30-s windows without timestamps (one segment each).

        The same decoding as ``WhisperModel.transcribe_windows`` (their tokens can be compared) and what
        live partials use. ``mask``/``budget``/``audio_ctx`` as in :meth:`transcribe`. ``result.mask``
        lists the kept modules; ``result.timings`` has frontend, predictor (predictor + planning),
        encoder (+ cross K/V), decoder and total seconds; ``dense_check`` as in :meth:`transcribe`
        (``result.dense_check`` counts).
        """
        if self.frontend is not None:  # OWSM: its own fixed windows, same runner lists and decoding
            return transcribe_owsm(self, audio, sample_rate, language, task, beam_size, mask, budget)
        t0 = time.perf_counter()
        language = self._check_request(language, task, mask, budget)
        ctx = self.resolve_audio_ctx(audio_ctx)
        features = MelFeatures.of(to_samples(audio, sample_rate), self.limits.n_mels)
        t1 = time.perf_counter()
        timings = {"frontend": t1 - t0, "predictor": 0.0, "encoder": 0.0, "decoder": 0.0}
        plan = self.planner.fixed(mask, features.request, ctx, language, task) if mask is not None else \
            self.plan(features, language, task, budget, ctx)
        timings["predictor"] = time.perf_counter() - t1
        keep = plan.mask
        check = self.dense_check(keep, plan.vocab, dense_check)
        return transcribe_windows(features, plan, self._encoder(keep, check),
                                  lambda window: self.decoder_state(window, keep, plan.vocab), self.tokenizer,
                                  self.limits.n_vocab, language, task, beam_size, self.max_tokens, timings, t0,
                                  plan.kept, check, check_mode(dense_check) != "off")

    # -- info --------------------------------------------------------------------------------
    @property
    def has_predictor(self) -> bool:
        return self.predictor is not None

    def describe(self) -> str:
        budget = "dense" if self.budget is None else f"budget {self.budget.value:g} ({self.budget.scope})"
        return (f"{self.bundle.path.name}: {len(self.modules)} modules, {len(self.adapters)} adapters, "
                f"{'predictor' if self.predictor else 'no predictor'}, {budget}; {self.backend.describe()}")


__all__ = ["Session"]
