"""A gated Whisper in PyTorch: context + budget -> predictor -> exact plan -> transcription.

    from edgegate.gated import load_gated
    gw = load_gated("whisper-base")            # shipped predictor + skip adapters (edgegate/assets)
    gw = load_gated("runs/gates")              # or the output directory of `edgegate train-gates`
    segments, info = gw.transcribe("talk.wav", language="en", budget=0.25)   # long-form, lazy segments
    info.plan["mask"]                          # kept modules, in gw.gate_names order
    result = gw.transcribe_windows("clip.wav", language="en", budget=0.25)  # 30-s windows, no timestamps

A request is planned by :mod:`edgegate.plan`, exactly as the torch-free runtime plans it; the
model then runs with that mask, skipped modules replaced by their skip adapter if any
(:mod:`edgegate.adaptation`). On the fixed-window path the log-mel is computed once per request;
the long-form path plans from the first 30 s of the log-mel it streams window by window (one log-mel).
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch

from edgegate.adaptation import apply_adaptation
from edgegate.budget import Budget, validate_budget
from edgegate.dense_check import DENSE_CHECK
from edgegate.errors import ModelError
from edgegate.gate_set import GATES_FILE, PREDICTOR_FILE, GateSpec, resolve_gates_dir
from edgegate.longform import DEFAULT_TEMPERATURES, build_options, plan_info, resolve_audio_ctx, transcribe_long
from edgegate.models.costs import flop_costs
from edgegate.pipeline import MelFeatures, Transcription, collect, to_samples
from edgegate.plan import Plan, Planner, RequestFeatures, default_language_codes, language_index, task_index
from edgegate.transcriber import WhisperModel


class GatedWhisper:
    """Model + gate predictor (+ adaptation): ``transcribe(audio, language, task, budget)``."""

    def __init__(self, model, predictor, spec: GateSpec, tokenizer=None, pinned: tuple[str, ...] = ()):
        self.wm = model if isinstance(model, WhisperModel) else WhisperModel(model, tokenizer)
        self.model = self.wm.model
        self.predictor = predictor.eval()
        self.spec = spec
        self.pinned = tuple(pinned)
        self.codes = spec.language_codes or default_language_codes(predictor.config.n_languages)
        if predictor.config.n_modules != len(self.model.gate_names):
            raise ModelError(f"predictor has {predictor.config.n_modules} gates, the model "
                             f"{len(self.model.gate_names)}: the gates were trained for another model")
        # an ms gate set plans with the table it was trained on, so its plans match its training
        costs = flop_costs(self.model.dims, self.model.context_tail, spec.measured_costs)
        self.planner = Planner(self.model.gate_names, costs, self._predict, self.codes)

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
        """The predictor's keep probability per module for one request."""
        return self._predict(stats, language_index(language, self.codes), task_index(task), budget)

    def _predict(self, stats: np.ndarray, language: int, task: int, budget: float) -> np.ndarray:
        with torch.inference_mode():
            s = self.predictor.keep_scores(torch.as_tensor(stats, dtype=torch.float32)[None],
                                           torch.tensor([language]), torch.tensor([task]),
                                           torch.tensor([float(budget)]))
        return s[0].double().numpy()

    def _budget(self, budget: float, scope: str | None) -> Budget:
        """A request's budget: the gate set's scope unless given, in the unit the gates were trained on."""
        return Budget(validate_budget(budget), scope or self.spec.scope, self.spec.cost_unit, self.pinned)

    def plan(self, audio, language: str | None, task: str, budget: float, scope: str | None = None,
             audio_ctx: int | None | str = "auto", sample_rate: int = 16000) -> Plan:
        """The plan of one request: 16-kHz float32 samples (or a file, or its :class:`MelFeatures`)."""
        features = audio if isinstance(audio, MelFeatures) else MelFeatures.of(to_samples(audio, sample_rate),
                                                                              self.model.dims.n_mels)
        ctx = resolve_audio_ctx("auto" if audio_ctx == "trained" else audio_ctx, self.audio_ctx)
        the_budget = self._budget(budget, scope)
        return self.planner.plan(features.request, language, task, the_budget, ctx)

    def transcribe(self, audio, sample_rate: int = 16000, language: str | None = None, task: str = "transcribe",
                   budget: float = 0.0, scope: str | None = None, audio_ctx: int | str | None = "auto",
                   beam_size: int = 1, temperature=DEFAULT_TEMPERATURES, word_timestamps: bool = False,
                   vad_filter: bool = False, vad_options=None, dense_check: str | bool = DENSE_CHECK, **options):
        """``segments, info`` as ``WhisperModel.transcribe``, with the modules the predictor and budget pick.

        One plan per request, from the first 30 s of the log-mel the windows are cut from (computed
        once; ``info.plan``); the other keywords are ``WhisperModel.transcribe``'s. ``audio_ctx``
        "auto" (or "trained") is the gate set's margin (``gates.json``), "full" Whisper's 30 s. ``dense_check``:
        how the dense decoder watches a plan ("loops", "all" or "off": edgegate.dense_check).
        """
        if language is not None:
            language = self.tokenizer.normalize_language(language)
        ctx = resolve_audio_ctx("auto" if audio_ctx == "trained" else audio_ctx, self.audio_ctx)
        opts = build_options(language, task, beam_size, temperature, word_timestamps, ctx, options)
        the_budget = self._budget(budget, scope)

        def planner(request: RequestFeatures | None):
            if request is None:  # no audio left to decode (the VAD found no speech)
                mask = [True] * len(self.gate_names)
            else:
                mask = self.planner.plan(request, language, task, the_budget, ctx).kept
            info = plan_info(self.gate_names, mask, ctx)
            info["budget"] = budget
            return self.wm.ports(None if all(mask) else mask, dense_check), mask, info

        return transcribe_long(audio, None, opts, self.model.dims.n_mels, sample_rate, vad_filter, vad_options,
                               planner=planner)

    def detect_language(self, audio, sample_rate: int = 16000):
        """(language, probability, all probabilities) on the dense model: the plan depends on the language."""
        return self.wm.detect_language(audio, sample_rate)

    def transcribe_text(self, audio, sample_rate: int = 16000, **kwargs) -> Transcription:
        """``transcribe()`` run to the end: a ``Transcription`` with the joined text."""
        return collect(*self.transcribe(audio, sample_rate, **kwargs))

    def transcribe_windows(self, audio, sample_rate: int = 16000, language: str | None = None,
                           task: str = "transcribe", budget: float = 0.0, beam_size: int = 1,
                           scope: str | None = None, audio_ctx: int | None | str = "auto",
                           dense_check: str | bool = DENSE_CHECK) -> Transcription:
        """Like ``WhisperModel.transcribe_windows``, with the modules the predictor and budget pick.

        ``budget`` 0 runs dense (bit-identical to the base model; adapters run only in place of a
        skipped module). The encoder context is trimmed as in training (``audio_ctx="auto"``,
        the margin in ``gates.json``); pass ``None`` for Whisper's full 30 s or another margin.
        Short clips (1-3 s) with a small margin (32) can make Whisper base loop: see
        docs/training.md. ``dense_check`` as in :meth:`transcribe`.
        """
        t0 = time.perf_counter()
        if language is not None:
            language = self.tokenizer.normalize_language(language)
        samples = to_samples(audio, sample_rate)
        features = MelFeatures.of(samples, self.model.dims.n_mels)
        t1 = time.perf_counter()
        plan = self.plan(features, language, task, budget, scope, audio_ctx)
        timings = {"frontend": t1 - t0, "plan": time.perf_counter() - t1, "encoder": 0.0, "decoder": 0.0}
        return self.wm.run_windows(features, plan, language, task, beam_size, timings, t0, plan.kept, dense_check)


def load_gated(name_or_dir: str | os.PathLike = "whisper-base", model=None, threads: int | None = None,
               pinned: tuple[str, ...] = (), adaptation: bool = True) -> GatedWhisper:
    """Load a gate set: a directory written by ``edgegate train-gates`` or a shipped one by name.

    ``model`` (a ``WhisperModel``, a ``Whisper`` or a path) overrides the model recorded in
    ``gates.json``; its adaptation weights (skip adapters, LoRA, fine-tuned weights) are applied unless
    ``adaptation`` is False (only the predictor and its plans: what edge adaptation trains a model for).
    """
    from edgegate.predictor import load_predictor

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
    if adaptation:
        apply_adaptation(wm.model, d, spec)
    return GatedWhisper(wm, predictor, spec, pinned=pinned)
