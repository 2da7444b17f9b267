"""Audio as a re-readable stream of 16-kHz float32 mono blocks, so a long file never sits in memory whole.

A :class:`SampleSource` can be opened any number of times (long-form transcription reads a file
two or three times: VAD, the log-mel maximum, the windows); each pass holds one block at a time.
numpy + soundfile + soxr only (part of the torch-free runtime).
"""

from __future__ import annotations

import os
import struct
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from edgegate.audio import SAMPLE_RATE, _one_line, audio_file, prepare_audio
from edgegate.errors import AudioError

BLOCK_SECONDS = 30.0
_SUPPORTED = "supported: wav, flac, ogg, mp3 (anything libsndfile reads)"


class AudioWarning(UserWarning):
    """Audio that can be used but is not what its file claims (e.g. truncated)."""


class SampleSource:
    """An in-memory signal (already float32 mono 16 kHz) with the same interface as a file stream."""

    def __init__(self, samples: np.ndarray):
        self.samples = samples
        self.n_samples = len(samples)

    @property
    def duration(self) -> float:
        return self.n_samples / SAMPLE_RATE

    def open(self, block: int = int(BLOCK_SECONDS * SAMPLE_RATE)) -> Iterator[np.ndarray]:
        for i in range(0, self.n_samples, block):
            yield self.samples[i:i + block]


def wav_header_frames(path: Path) -> int | None:
    """Frames a RIFF/WAVE header promises (data chunk bytes / block align); None if not a WAV."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            block_align = None
            while True:
                chunk = f.read(8)
                if len(chunk) < 8:
                    return None
                cid, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
                if cid == b"fmt ":
                    fmt = f.read(size)
                    block_align = struct.unpack("<H", fmt[12:14])[0] if len(fmt) >= 14 else None
                    size = 0
                elif cid == b"data":
                    return size // block_align if block_align else None
                f.seek(size + (size & 1), os.SEEK_CUR)
    except OSError:
        return None


class FileSource:
    """A sound file read block by block (mixed down, resampled to 16 kHz with soxr's streaming resampler).

    Opening checks the file as ``load_audio`` does (missing, directory, undecodable, empty) and
    warns once (:class:`AudioWarning`) when a WAV header promises more samples than the file holds.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = p = audio_file(path)
        with self._sound_file() as f:
            self.rate, self.frames = f.samplerate, f.frames
        if self.frames <= 0:
            raise AudioError(f"{p}: audio is empty (0 samples); pass a non-empty recording")
        promised = wav_header_frames(p)
        if promised is not None and promised > self.frames:
            warnings.warn(AudioWarning(
                f"{p}: truncated file: the header promises {promised} samples ({promised / self.rate:.2f} s), "
                f"the file holds {self.frames} ({self.frames / self.rate:.2f} s); transcribing what is there"),
                stacklevel=2)
        self.n_samples = int(round(self.frames * SAMPLE_RATE / self.rate))  # exact after the first pass

    @property
    def duration(self) -> float:
        return self.n_samples / SAMPLE_RATE

    def _sound_file(self) -> sf.SoundFile:
        try:
            return sf.SoundFile(str(self.path))
        except (sf.LibsndfileError, sf.SoundFileError, RuntimeError, OSError) as exc:
            reason = (getattr(exc, "error_string", None) or str(exc) or type(exc).__name__).strip().rstrip(".")
            raise AudioError(_one_line(f"cannot decode {self.path}: {reason}; {_SUPPORTED}")) from exc

    def open(self, block: int = int(BLOCK_SECONDS * SAMPLE_RATE)) -> Iterator[np.ndarray]:
        """Fresh pass over the file: float32 mono 16-kHz blocks; raises AudioError on NaN/Inf samples."""
        resampler = None if self.rate == SAMPLE_RATE else soxr.ResampleStream(
            self.rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
        n_in = max(1, int(block * self.rate / SAMPLE_RATE))
        total, seen = 0, 0
        with self._sound_file() as f:
            while True:
                try:
                    data = f.read(n_in, dtype="float32", always_2d=True)
                except (sf.LibsndfileError, RuntimeError) as exc:
                    raise AudioError(_one_line(f"cannot decode {self.path}: {exc}; {_SUPPORTED}")) from exc
                last = len(data) < n_in
                x = self._mono(data, seen) if len(data) else np.zeros(0, np.float32)
                seen += len(data)
                if resampler is not None:
                    x = resampler.resample_chunk(x, last=last)
                total += len(x)
                if len(x):
                    yield x
                if last:
                    break
        self.n_samples = total

    def _mono(self, data: np.ndarray, offset: int) -> np.ndarray:
        bad = ~np.isfinite(data)
        if bad.any():
            first = offset + int(np.argmax(bad.any(axis=1)))
            raise AudioError(f"{self.path}: audio contains non-finite (NaN or Inf) samples (first at "
                             f"{first / self.rate:.2f} s); fix or drop the corrupted samples before transcribing")
        return data[:, 0].copy() if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float32)


def open_source(audio: str | os.PathLike[str] | np.ndarray, sample_rate: int = SAMPLE_RATE,
                ) -> SampleSource | FileSource:
    """A path streams from disk; an array is validated and converted (``prepare_audio``) in memory."""
    if isinstance(audio, (str, os.PathLike)):
        return FileSource(audio)
    return SampleSource(prepare_audio(np.asarray(audio), sample_rate))


def head_samples(audio: str | os.PathLike[str] | np.ndarray, sample_rate: int = SAMPLE_RATE,
                 seconds: float = 30.0) -> np.ndarray:
    """The first ``seconds`` of a path or an array as 16-kHz float32 (reads no more of a file than that)."""
    n = int(seconds * SAMPLE_RATE)
    source = open_source(audio, sample_rate)
    return np.concatenate([np.zeros(0, np.float32), *[next(source.open(n), np.zeros(0, np.float32))]])[:n]
