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
the long-form path plans from the first 30 s before it streams the audio window by window.
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch

from edgegate.adaptation import apply_adaptation
from edgegate.budget import Budget, validate_budget
from edgegate.errors import ModelError
from edgegate.gate_set import GATES_FILE, PREDICTOR_FILE, GateSpec, resolve_gates_dir
from edgegate.models.costs import flop_costs
from edgegate.pipeline import MelFeatures, Transcription, collect, to_samples
from edgegate.plan import Plan, Planner, default_language_codes, language_index, task_index
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
        self.planner = Planner(self.model.gate_names, flop_costs(self.model.dims), self._predict, self.codes)

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

    def plan(self, audio, language: str | None, task: str, budget: float, scope: str | None = None,
             audio_ctx: int | None | str = "trained", sample_rate: int = 16000) -> Plan:
        """The plan of one request: 16-kHz float32 samples (or a file, or its :class:`MelFeatures`)."""
        features = audio if isinstance(audio, MelFeatures) else MelFeatures.of(to_samples(audio, sample_rate),
                                                                              self.model.dims.n_mels)
        ctx = self.audio_ctx if audio_ctx == "trained" else audio_ctx
        the_budget = Budget(validate_budget(budget), scope or self.spec.scope, "flops", self.pinned)
        return self.planner.plan(features.request, language, task, the_budget, ctx)

    def transcribe(self, audio, sample_rate: int = 16000, language: str | None = None, task: str = "transcribe",
                   budget: float = 0.0, scope: str | None = None, audio_ctx: int | None | str = "trained", **kwargs):
        """``segments, info`` as ``WhisperModel.transcribe``, with the modules the predictor and budget pick.

        One plan per request, from the first 30 s of audio (``info.plan``); the other keywords are
        ``WhisperModel.transcribe``'s (temperature, word_timestamps, vad_filter, beam_size, ...).
        """
        from edgegate.audiostream import head_samples

        t0 = time.perf_counter()
        if language is not None:
            language = self.tokenizer.normalize_language(language)
        ctx = self.audio_ctx if audio_ctx == "trained" else audio_ctx
        plan = self.plan(head_samples(audio, sample_rate, 30.0), language, task, budget, scope, ctx)
        t_plan = time.perf_counter() - t0
        segments, info = self.wm.transcribe(audio, sample_rate, language=language, task=task,
                                            mask=None if plan.dense else plan.mask, audio_ctx=ctx, **kwargs)
        info.plan.update(mask=plan.kept, budget=budget)
        info.timings["plan"] = t_plan
        return segments, info

    def detect_language(self, audio, sample_rate: int = 16000):
        """(language, probability, all probabilities) on the dense model: the plan depends on the language."""
        return self.wm.detect_language(audio, sample_rate)

    def transcribe_text(self, audio, sample_rate: int = 16000, **kwargs) -> Transcription:
        """``transcribe()`` run to the end: a ``Transcription`` with the joined text."""
        return collect(*self.transcribe(audio, sample_rate, **kwargs))

    def transcribe_windows(self, audio, sample_rate: int = 16000, language: str | None = None,
                           task: str = "transcribe", budget: float = 0.0, beam_size: int = 1,
                           scope: str | None = None, audio_ctx: int | None | str = "trained") -> Transcription:
        """Like ``WhisperModel.transcribe_windows``, with the modules the predictor and budget pick.

        ``budget`` 0 runs dense (bit-identical to the base model; adapters run only in place of a
        skipped module). The encoder context is trimmed as in training (``audio_ctx="trained"``,
        the margin in ``gates.json``); pass ``None`` for Whisper's full 30 s or another margin.
        Short clips (1-3 s) with a small margin (32) can make Whisper base loop: see
        docs/training.md.
        """
        t0 = time.perf_counter()
        if language is not None:
            language = self.tokenizer.normalize_language(language)
        samples = to_samples(audio, sample_rate)
        features = MelFeatures.of(samples, self.model.dims.n_mels)
        t1 = time.perf_counter()
        plan = self.plan(features, language, task, budget, scope, audio_ctx)
        timings = {"frontend": t1 - t0, "plan": time.perf_counter() - t1, "encoder": 0.0, "decoder": 0.0}
        return self.wm.run_windows(features, plan, language, task, beam_size, timings, t0, plan.kept)


def load_gated(name_or_dir: str | os.PathLike = "whisper-base", model=None, threads: int | None = None,
               pinned: tuple[str, ...] = ()) -> GatedWhisper:
    """Load a gate set: a directory written by ``edgegate train-gates`` or a shipped one by name.

    ``model`` (a ``WhisperModel``, a ``Whisper`` or a path) overrides the model recorded in
    ``gates.json``; its adaptation weights (skip adapters, LoRA, fine-tuned weights) are applied.
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
    apply_adaptation(wm.model, d, spec)
    return GatedWhisper(wm, predictor, spec, pinned=pinned)
