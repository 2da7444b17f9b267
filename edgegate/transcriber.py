"""The PyTorch model's public API: ``WhisperModel(...).transcribe(audio)``, faster-whisper style.

    from edgegate.transcriber import WhisperModel
    model = WhisperModel("whisper-base")
    result = model.transcribe("clip.wav", language="en")
    print(result.text)
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from edgegate.models.loaders import load_whisper
from edgegate.models.registry import resolve_model, tokenizer_path
from edgegate.models.whisper import Gate, Whisper
from edgegate.pipeline import MelFeatures, Transcription, to_samples, transcribe_windows
from edgegate.plan import Plan, encoder_frames
from edgegate.tokenizer import WhisperTokenizer


class TorchDecoderState:
    """Decoder KV caches for one utterance on the PyTorch model (see ``edgegate.decoding``)."""

    def __init__(self, model: Whisper, cross_kv: list, gates: list[Gate]):
        self.model = model
        self.cross_kv = cross_kv
        self.gates = gates
        self.cache: dict = {}

    def step(self, tokens: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            logits = self.model.decode(torch.from_numpy(tokens), self.cross_kv, self.gates, self.cache)
        return logits[:, -1].float().numpy()

    def reorder(self, index: np.ndarray) -> None:
        idx = torch.from_numpy(index)
        for key, value in self.cache.items():
            if isinstance(key, int):
                self.cache[key] = (value[0].index_select(0, idx), value[1].index_select(0, idx))
        n = len(index)
        # Every row attends to the same audio: grow the cross K/V by broadcasting, not copying.
        self.cross_kv = [None if kv is None else (kv[0][:1].expand(n, -1, -1, -1), kv[1][:1].expand(n, -1, -1, -1))
                         for kv in self.cross_kv]


class WhisperModel:
    """A gated Whisper in PyTorch with its tokenizer."""

    def __init__(self, model: str | Path | Whisper = "whisper-base", tokenizer: WhisperTokenizer | None = None,
                 threads: int | None = None):
        if threads:
            torch.set_num_threads(threads)
        if isinstance(model, Whisper):
            self.model = model.eval()
            self.tokenizer = tokenizer or WhisperTokenizer.from_file(tokenizer_path(resolve_model("whisper-base")))
        else:
            path = resolve_model(model)
            self.model = load_whisper(path)
            self.tokenizer = tokenizer or WhisperTokenizer.from_file(tokenizer_path(path))

    @property
    def gate_names(self) -> list[str]:
        return self.model.gate_names

    def mask_to_gates(self, mask: list[bool] | np.ndarray | None) -> list[Gate]:
        if mask is None:
            return self.model.split_gates(None)
        return self.model.split_gates(torch.as_tensor(np.asarray(mask, dtype=bool)))

    def transcribe(self, audio: str | Path | np.ndarray, sample_rate: int = 16000, language: str | None = None,
                   task: str = "transcribe", beam_size: int = 1, mask: list[bool] | np.ndarray | None = None,
                   audio_ctx: int | None = None) -> Transcription:
        """Transcribe (or translate to English) audio of any length in 30-s windows.

        ``mask`` keeps (True) or skips (False) each module of ``gate_names``; ``audio_ctx`` trims the
        encoder context to the audio plus that many positions (None = Whisper's full 30 s).
        """
        t0 = time.perf_counter()
        if language is not None:
            language = self.tokenizer.normalize_language(language)
        samples = to_samples(audio, sample_rate)
        t_front = time.perf_counter()
        features = MelFeatures.of(samples, self.model.dims.n_mels)
        timings = {"frontend": time.perf_counter() - t_front, "encoder": 0.0, "decoder": 0.0}
        keep = np.ones(len(self.gate_names), dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
        plan = Plan(keep, audio_ctx, encoder_frames(features.request.frames, audio_ctx))
        return self.run(features, plan, language, task, beam_size, timings, t0,
                        None if mask is None else [bool(m) for m in mask])

    def run(self, features: MelFeatures, plan: Plan, language: str | None, task: str, beam_size: int,
            timings: dict[str, float], t0: float, mask: list[bool] | None) -> Transcription:
        """Transcribe a request whose log-mel and plan are already computed (the gated model's path)."""
        gates = self.mask_to_gates(None if plan.dense else plan.mask)

        def encode(mel: np.ndarray) -> list:
            with torch.inference_mode():
                xa = self.model.embed_audio(torch.from_numpy(np.ascontiguousarray(mel)), gates)
                return self.model.cross_kv(xa, gates)

        return transcribe_windows(features, plan, encode, lambda cross: TorchDecoderState(self.model, cross, gates),
                                  self.tokenizer, self.model.dims.n_vocab, language, task, beam_size,
                                  self.model.dims.n_text_ctx // 2, timings, t0, mask)
