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

from edgegate.decoding import decode
from edgegate.models.owsm import Owsm
from edgegate.models.owsm_loader import OwsmCheckpoint, load_owsm
from edgegate.models.whisper import Gate
from edgegate.pipeline import Segment, Transcription, to_samples
from edgegate.transcriber import MaskedModel, TorchDecoderState

MIN_LAST_WINDOW = 0.2  # seconds: a shorter tail after a full window is dropped (ESPnet's decode_long)


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
        size = self.frontend.window_samples
        sr = self.frontend.sample_rate
        out = []
        for start in range(0, max(len(samples), 1), size):
            chunk = samples[start: start + size]
            if out and len(chunk) < MIN_LAST_WINDOW * sr:
                break
            out.append((start / sr, chunk))
        return out

    def encode(self, feats: np.ndarray, gates: list[Gate]) -> tuple[list, int]:
        """Cross-attention K/V of one window's features (frames, n_mels) and its number of encoder positions."""
        with torch.inference_mode():
            xa = self.model.embed_audio(torch.from_numpy(feats)[None], gates)
            return self.model.cross_kv(xa, gates), xa.shape[1]

    def transcribe(self, audio: str | Path | np.ndarray, sample_rate: int = 16000, language: str | None = None,
                   task: str = "transcribe", beam_size: int = 1,
                   mask: list[bool] | np.ndarray | None = None) -> Transcription:
        """Transcribe (or translate to English) audio of any length; ``mask`` keeps/skips ``gate_names``."""
        t0 = time.perf_counter()
        if language is not None:
            language = self.tokenizer.normalize_language(language)
        self.tokenizer.task_token(task)  # an unknown task fails before any audio is processed
        samples = to_samples(audio, sample_rate)
        gates = self.mask_to_gates(mask)
        segment_mask = None if mask is None else [bool(m) for m in mask]
        timings = {"frontend": 0.0, "encoder": 0.0, "decoder": 0.0}
        segments, probability = [], None
        sr = self.frontend.sample_rate
        for start, chunk in self.windows(samples):
            t1 = time.perf_counter()
            feats = self.frontend(chunk)
            t2 = time.perf_counter()
            cross, positions = self.encode(feats, gates)
            t3 = time.perf_counter()
            result = decode(lambda c=cross: TorchDecoderState(self.model, c, gates), self.tokenizer,
                            self.model.dims.n_vocab, language, task, beam_size, max_tokens=positions)
            timings["frontend"] += t2 - t1
            timings["encoder"] += t3 - t2
            timings["decoder"] += time.perf_counter() - t3
            if language is None:
                language, probability = result.language, result.language_probs.get(result.language)
            end = start + len(chunk) / sr
            segments.append(Segment(id=len(segments), start=start, end=end, text=self.tokenizer.decode(result.tokens),
                                    tokens=result.tokens, avg_logprob=result.avg_logprob, mask=segment_mask))
        timings["total"] = time.perf_counter() - t0
        text = " ".join(s.text for s in segments if s.text)
        return Transcription(text=text, segments=segments, language=language or "",
                             language_probability=probability, duration=len(samples) / sr, task=task,
                             mask=segment_mask, timings=timings)
