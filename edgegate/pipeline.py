"""What every transcriber shares (PyTorch model and torch-free runtime): audio in, 30-s log-mel
windows, segments out. No torch here.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from edgegate.audio import load_audio, prepare_audio
from edgegate.frontend import HOP_LENGTH, N_FRAMES, N_SAMPLES, SAMPLE_RATE, log_mel_spectrogram


@dataclass
class Segment:
    start: float  # seconds
    end: float
    text: str
    tokens: list[int]


@dataclass
class Transcription:
    text: str
    segments: list[Segment]
    language: str
    language_probability: float | None
    duration: float
    task: str = "transcribe"
    mask: list[bool] | None = None  # kept gateable modules (None = dense)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage

    @property
    def tokens(self) -> list[int]:
        return [t for s in self.segments for t in s.tokens]


@dataclass
class MelWindow:
    start: float  # seconds from the start of the audio
    end: float
    mel: np.ndarray  # (n_mels, N_FRAMES), zero-padded like Whisper
    n_frames: int  # frames that hold audio (the rest is padding)


def to_samples(audio: str | np.ndarray, sample_rate: int) -> np.ndarray:
    """A file path or an array, as float32 mono 16 kHz (resampled, mixed down, validated)."""
    if isinstance(audio, str) or hasattr(audio, "__fspath__"):
        return load_audio(audio)
    return prepare_audio(np.asarray(audio), sample_rate)


def mel_windows(samples: np.ndarray, n_mels: int = 80) -> Iterator[MelWindow]:
    """Whisper's 30-s windows over the whole-audio log-mel (computed once, padded by 30 s)."""
    mel = log_mel_spectrogram(samples, n_mels, padding=N_SAMPLES)
    content = mel.shape[-1] - N_FRAMES
    for seek in range(0, max(content, 1), N_FRAMES):
        window = mel[:, seek: seek + N_FRAMES]
        n = min(N_FRAMES, content - seek)
        yield MelWindow(seek * HOP_LENGTH / SAMPLE_RATE, (seek + n) * HOP_LENGTH / SAMPLE_RATE, window, n)


def encoder_frames(n_frames: int, audio_ctx: int | None) -> int:
    """Mel frames the encoder sees: the full 30 s, or (trimmed context) the audio plus a margin.

    ``audio_ctx`` is a margin in encoder positions (whisper.cpp's audio_ctx idea); the result is even
    because the conv stem halves the frame count.
    """
    if audio_ctx is None:
        return N_FRAMES
    return min(N_FRAMES, 2 * (-(-n_frames // 2) + audio_ctx))
