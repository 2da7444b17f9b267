"""OWSM's input windows and the window loop every OWSM transcriber shares (numpy, no torch).

The PyTorch model (``edgegate.models.owsm_transcriber``) and the torch-free runtime
(``edgegate.runtimes.family``) both cut the audio here, plan here and decode each window with
:func:`edgegate.decoding.decode`, so their tokens can be compared:

- windows: consecutive ``speech_length`` (30-s) chunks, each zero-padded to the full window as
  ESPnet's ``Speech2Text`` does (OWSM has no length mask); a tail under 0.2 s after a full window is
  dropped (ESPnet's ``decode_long``);
- the request's features for the gate predictor: pooled statistics of the normalised features of
  the real (unpadded) frames of every window;
- the plan: OWSM always runs the full window, so planning costs are taken at the window's encoder
  positions, whatever the audio's length;
- decoding: the prompt ``<sos> <lang> <task> <notimestamps>``, at most one token per encoder position
  (ESPnet's ``maxlenratio=0``); without a language it is identified once on the first window.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from functools import cached_property
from typing import Any

import numpy as np

from edgegate.frontend_owsm import OwsmFrontend
from edgegate.pipeline import Segment, Transcription
from edgegate.plan import Planner, RequestFeatures

MIN_LAST_WINDOW = 0.2  # seconds: a shorter tail after a full window is dropped (ESPnet's decode_long)


def subsampled(frames: int) -> int:
    """Encoder positions of conv2d x4 subsampling for ``frames`` feature frames."""
    return ((frames - 1) // 2 - 1) // 2


class OwsmWindows:
    """One request's audio as OWSM input windows: (start seconds, samples) and their features."""

    def __init__(self, samples: np.ndarray, frontend: OwsmFrontend):
        self.samples = samples
        self.frontend = frontend
        self.duration = len(samples) / frontend.sample_rate
        size, sr = frontend.window_samples, frontend.sample_rate
        self.chunks: list[tuple[float, np.ndarray]] = []
        for start in range(0, max(len(samples), 1), size):
            chunk = samples[start: start + size]
            if self.chunks and len(chunk) < MIN_LAST_WINDOW * sr:
                break
            self.chunks.append((start / sr, chunk))

    def real_frames(self, chunk: np.ndarray) -> int:
        """Feature frames of a chunk before padding (centred STFT frames of its samples)."""
        return min(1 + len(chunk) // self.frontend.hop_length, 1 + self.frontend.window_samples //
                   self.frontend.hop_length)

    @cached_property
    def features(self) -> list[np.ndarray]:
        """Normalised features (frames, n_mels) of every padded window."""
        return [self.frontend(chunk) for _, chunk in self.chunks]

    @cached_property
    def request(self) -> RequestFeatures:
        """What the planner reads: the real frames' normalised features, as (n_mels, frames)."""
        real = [f[: self.real_frames(c)].T for f, (_, c) in zip(self.features, self.chunks, strict=True)]
        mel = np.concatenate(real, axis=1) if real else np.zeros((self.frontend.n_mels, 1), np.float32)
        return RequestFeatures(mel, mel.shape[1], self.duration)


def owsm_planner(gate_names: Sequence[str], costs: Callable[..., np.ndarray], positions: int,
                 scores: Callable | None, language_codes: Sequence[str], missing_predictor: str) -> Planner:
    """The planner of an OWSM: costs at the full window's ``positions`` (OWSM never trims its input)."""
    def at_window(_positions: int, tokens: int, unit: str = "flops") -> np.ndarray:
        return costs(positions, tokens, unit=unit)

    return Planner(gate_names, at_window, scores, language_codes, missing_predictor=missing_predictor)


def transcribe_owsm_windows(windows: OwsmWindows, encode: Callable[[np.ndarray], Any],
                            make_state: Callable[[Any], Any], tokenizer: Any, n_vocab: int, language: str | None,
                            task: str, beam_size: int, timings: dict[str, float], t0: float,
                            mask: list[bool] | None = None) -> Transcription:
    """Decode every window: ``encode(features (1, frames, n_mels))`` -> what ``make_state`` needs."""
    from edgegate.decoding import decode

    segments: list[Segment] = []
    probability = None
    sr = windows.frontend.sample_rate
    t1 = time.perf_counter()
    feats = windows.features
    timings["frontend"] = timings.get("frontend", 0.0) + time.perf_counter() - t1
    for (start, chunk), f in zip(windows.chunks, feats, strict=True):
        t2 = time.perf_counter()
        encoded = encode(f[None])
        t3 = time.perf_counter()
        result = decode(lambda e=encoded: make_state(e), tokenizer, n_vocab, language, task, beam_size,
                        max_tokens=subsampled(f.shape[0]))
        timings["encoder"] = timings.get("encoder", 0.0) + t3 - t2
        timings["decoder"] = timings.get("decoder", 0.0) + time.perf_counter() - t3
        if language is None:
            language, probability = result.language, result.language_probs.get(result.language)
        segments.append(Segment(id=len(segments), start=start, end=start + len(chunk) / sr,
                                text=tokenizer.decode(result.tokens), tokens=result.tokens,
                                avg_logprob=result.avg_logprob, mask=mask))
    timings["total"] = time.perf_counter() - t0
    text = " ".join(s.text for s in segments if s.text)
    return Transcription(text=text, segments=segments, language=language or "", language_probability=probability,
                         duration=windows.duration, task=task, mask=mask, timings=timings)


__all__ = ["OwsmWindows", "owsm_planner", "transcribe_owsm_windows", "subsampled", "MIN_LAST_WINDOW"]
