"""Audio loading and normalisation to what Whisper expects: float32 mono 16 kHz.

numpy + soundfile + soxr only: this module is part of the torch-free on-device runtime.
Every bad input raises :class:`edgegate.errors.AudioError` with a one-line message naming the
problem and the fix.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from edgegate.errors import AudioError

SAMPLE_RATE = 16000

# A 2-D array whose first axis is at most this long (and shorter than the second) is taken to be
# channel-first (channels, frames); see prepare_audio.
_MAX_CHANNEL_FIRST = 8

_SUPPORTED = "supported: wav, flac, ogg, mp3 (anything libsndfile reads)"

__all__ = ["SAMPLE_RATE", "prepare_audio", "load_audio", "describe_audio"]


def _one_line(text: str) -> str:
    # Messages are printed as a single "error: ..." line by the CLI; libsndfile reasons can hold newlines.
    return " ".join(str(text).split())


def _to_float(x: np.ndarray) -> np.ndarray:
    """Scale integer PCM to [-1, 1); pass floats through as float32."""
    kind = x.dtype.kind
    if kind == "f":
        return x.astype(np.float32, copy=False)
    if kind in "iu":
        bits = x.dtype.itemsize * 8
        full_scale = float(2 ** (bits - 1))
        # float64 for the arithmetic: int32 values need more than float32's 24-bit mantissa.
        out = x.astype(np.float64)
        if kind == "u":
            out -= full_scale  # unsigned PCM (e.g. 8-bit WAV) is centred on 2**(bits-1)
        return (out / full_scale).astype(np.float32)
    if kind == "b":
        raise AudioError("audio has dtype bool; pass float samples in [-1, 1] or integer PCM")
    raise AudioError(f"audio has unsupported dtype {x.dtype}; pass float samples in [-1, 1] or integer PCM")


def _mix_down(x: np.ndarray) -> np.ndarray:
    if x.ndim == 1:
        return x
    if x.ndim != 2:
        raise AudioError(
            f"audio must be 1-D (frames,) or 2-D (frames, channels), got shape {x.shape}; "
            "pass one clip at a time"
        )
    rows, cols = x.shape
    # soundfile gives (frames, channels). Many other libraries (torchaudio, librosa) give
    # (channels, frames); a short first axis next to a longer second one can only sensibly be that.
    if rows <= _MAX_CHANNEL_FIRST and cols > rows:
        x = x.T
    if x.shape[1] == 1:
        return x[:, 0]
    return x.mean(axis=1, dtype=np.float32)


def prepare_audio(samples: np.ndarray, sample_rate: int, *, max_seconds: float | None = None) -> np.ndarray:
    """Convert audio to float32 mono 16 kHz, C-contiguous, as Whisper expects.

    ``samples`` may be 1-D, or 2-D (frames, channels) as soundfile returns; channels are mixed down by
    their mean. A 2-D array of shape (channels, frames) with channels <= 8 and frames > channels is
    recognised as channel-first (as torchaudio and librosa return) and mixed down the same way.
    Integer PCM is scaled to [-1, 1): int16 / 32768, int32 / 2**31, uint8 centred on 128 / 128.
    Float values outside [-1, 1] are left as they are (no clipping). Other sample rates are
    resampled with soxr (quality "HQ").

    Raises AudioError for empty audio, NaN/Inf samples, a non-positive sample rate, or audio longer
    than ``max_seconds``.
    """
    x = np.asarray(samples)
    if x.ndim == 0:
        raise AudioError("audio is a scalar, not an array of samples; pass a 1-D array of samples")
    if x.size == 0:
        raise AudioError(
            f"audio is empty (0 samples); pass a non-empty recording (got array shape {x.shape})"
        )

    try:
        rate = float(sample_rate)
    except (TypeError, ValueError):
        raise AudioError(
            f"sample_rate must be a number in Hz, got {sample_rate!r}; pass e.g. 16000"
        ) from None
    if not np.isfinite(rate) or rate <= 0:
        raise AudioError(
            f"sample_rate must be > 0 Hz, got {sample_rate!r}; pass the rate the audio was recorded at"
        )

    x = _to_float(x)
    n_bad = int(np.count_nonzero(~np.isfinite(x)))
    if n_bad:
        raise AudioError(
            f"audio contains {n_bad} non-finite (NaN or Inf) samples out of {x.size}; "
            "fix or drop the corrupted samples before transcribing"
        )

    x = _mix_down(x)
    # Checked before resampling so an over-long file costs nothing to reject.
    duration = x.shape[0] / rate
    if max_seconds is not None:
        if not max_seconds > 0:
            raise AudioError(f"max_seconds must be > 0, got {max_seconds!r}; pass a positive limit or None")
        if duration > max_seconds:
            raise AudioError(
                f"audio is {duration:.2f} s long, over the max_seconds={max_seconds:g} limit; "
                "split it into shorter clips or raise the limit (max_seconds, or --max-duration on the CLI)"
            )

    if rate != SAMPLE_RATE:
        x = soxr.resample(np.ascontiguousarray(x, dtype=np.float32), rate, SAMPLE_RATE, quality="HQ")
        if x.size == 0:
            raise AudioError(
                f"audio is empty after resampling {sample_rate} Hz -> {SAMPLE_RATE} Hz (too few samples); "
                "pass a longer recording"
            )
    # A fresh array: callers may mutate the result without touching their input (and vice versa).
    return np.array(x, dtype=np.float32, order="C", copy=True)


def audio_file(path: str | os.PathLike[str]) -> Path:
    """``path`` as a Path, or a one-line AudioError when it is missing or a directory."""
    p = Path(path)
    if not p.exists():
        hint = "" if p.is_absolute() else f" (relative to {Path.cwd()})"
        raise AudioError(f"audio file not found: {p}; check the path{hint}")
    if p.is_dir():
        raise AudioError(f"audio path is a directory, not a file: {p}; pass the path of one audio file")
    return p


def load_audio(path: str | os.PathLike[str], *, max_seconds: float | None = None) -> np.ndarray:
    """Read an audio file with soundfile and return float32 mono 16 kHz samples (see prepare_audio)."""
    p = audio_file(path)

    try:
        with sf.SoundFile(str(p)) as f:
            rate = f.samplerate
            # Reject over-long files from the header, before decoding them into memory.
            if max_seconds is not None and max_seconds > 0 and f.frames > 0 and f.frames / rate > max_seconds:
                raise AudioError(
                    f"{p}: audio is {f.frames / rate:.2f} s long, "
                    f"over the max_seconds={max_seconds:g} limit; "
                    "split it into shorter clips or raise the limit (max_seconds, or --max-duration on the CLI)"
                )
            data = f.read(dtype="float32", always_2d=True)
    except AudioError:
        raise
    except (sf.LibsndfileError, sf.SoundFileError, RuntimeError, OSError) as exc:
        reason = getattr(exc, "error_string", None) or str(exc) or type(exc).__name__
        reason = reason.strip().rstrip(".")  # libsndfile ends reasons with "."; ours continues after it
        raise AudioError(_one_line(f"cannot decode {p}: {reason}; {_SUPPORTED}")) from exc

    try:
        return prepare_audio(data, rate, max_seconds=max_seconds)
    except AudioError as exc:
        # Same message, but say which file: a batch job needs to know which input was bad.
        raise AudioError(_one_line(f"{p}: {exc}")) from exc


def describe_audio(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> str:
    """Short human description, e.g. ``"3.25 s (52000 samples at 16000 Hz)"``."""
    n = int(np.asarray(samples).shape[0]) if np.ndim(samples) else 0
    return f"{n / sample_rate:.2f} s ({n} samples at {sample_rate} Hz)"
