"""``OwsmModel(dir).transcribe(audio)``: an OWSM checkpoint directory on the PyTorch path.

    from edgegate.models.owsm_transcriber import OwsmModel
    model = OwsmModel("owsm_v3.1_ebf_base")      # the directory as downloaded
    print(model.transcribe("clip.wav", language="en").text)

Audio is cut into consecutive windows of the checkpoint's ``speech_length`` (30 s), each padded with
zeros to the full window as ESPnet's ``Speech2Text`` does (OWSM has no length mask). Decoding is the
project's (``edgegate.decoding``): greedy is ESPnet's beam 1, at most one token per encoder position
(ESPnet's ``maxlenratio=0``); beam search is Whisper's ranking, not ESPnet's. Without a language, it
is identified once on the first window, as Speech2Language does (softmax over the language tokens
after ``<sos>``).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from edgegate.models.owsm import Owsm
from edgegate.models.owsm_loader import OwsmCheckpoint, load_owsm
from edgegate.models.owsm_windows import OwsmWindows, transcribe_owsm_windows
from edgegate.models.whisper import Gate
from edgegate.pipeline import Transcription, to_samples
from edgegate.transcriber import MaskedModel, TorchDecoderState


class OwsmModel(MaskedModel):
    """A gated OWSM in PyTorch with its tokenizer and numpy frontend."""

    def __init__(self, model: str | Path | OwsmCheckpoint, threads: int | None = None):
        if threads:
            torch.set_num_threads(threads)
        self.checkpoint = model if isinstance(model, OwsmCheckpoint) else load_owsm(model)
        self.model: Owsm = self.checkpoint.model.eval()
        self.tokenizer = self.checkpoint.tokenizer
        self.frontend = self.checkpoint.frontend

    def windows(self, samples: np.ndarray) -> list[tuple[float, np.ndarray]]:
        """(start seconds, samples) of each input window."""
        return OwsmWindows(samples, self.frontend).chunks

    def encode(self, feats: np.ndarray, gates: list[Gate]) -> list:
        """Source-attention K/V of one window's features ((1, frames, n_mels) or (frames, n_mels))."""
        x = torch.from_numpy(np.ascontiguousarray(feats))
        with torch.inference_mode():
            xa = self.model.embed_audio(x if x.dim() == 3 else x[None], gates)
            return self.model.cross_kv(xa, gates)

    def transcribe(self, audio: str | Path | np.ndarray, sample_rate: int = 16000, language: str | None = None,
                   task: str = "transcribe", beam_size: int = 1,
                   mask: list[bool] | np.ndarray | None = None) -> Transcription:
        """Transcribe (or translate to English) audio of any length; ``mask`` keeps/skips ``gate_names``."""
        t0 = time.perf_counter()
        if language is not None:
            language = self.tokenizer.normalize_language(language)
        self.tokenizer.task_token(task)  # an unknown task fails before any audio is processed
        windows = OwsmWindows(to_samples(audio, sample_rate), self.frontend)
        gates = self.mask_to_gates(mask)
        kept = None if mask is None else [bool(m) for m in mask]
        return transcribe_owsm_windows(windows, lambda f: self.encode(f, gates),
                                       lambda cross: TorchDecoderState(self.model, cross, gates), self.tokenizer,
                                       self.model.dims.n_vocab, language, task, beam_size, {}, t0, kept)
