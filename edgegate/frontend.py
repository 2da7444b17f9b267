"""Whisper's log-mel frontend in plain numpy.

This mirrors ``whisper/audio.py`` from openai/whisper step by step so that features computed on the
device (no torch there) match what the model saw in training. The torch twin used for training lives
in :mod:`edgegate.frontend_torch` and shares :func:`mel_filters` with this module.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from edgegate.errors import AudioError

SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
N_MELS = 80
CHUNK_LENGTH = 30
N_SAMPLES = CHUNK_LENGTH * SAMPLE_RATE  # 480000 samples in a 30 s chunk
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000 frames in a mel chunk
N_FREQS = N_FFT // 2 + 1  # 201 rfft bins

SUPPORTED_N_MELS = (80, 128)

__all__ = [
    "SAMPLE_RATE",
    "N_FFT",
    "HOP_LENGTH",
    "N_MELS",
    "CHUNK_LENGTH",
    "N_SAMPLES",
    "N_FRAMES",
    "N_FREQS",
    "SUPPORTED_N_MELS",
    "hann_window",
    "mel_filters",
    "log_mel_spectrogram",
    "pad_or_trim",
    "pooled_stats",
]


def _check_n_mels(n_mels: int) -> None:
    if n_mels not in SUPPORTED_N_MELS:
        raise AudioError(
            f"unsupported n_mels={n_mels}; "
            "Whisper models use 80 (tiny..large-v2) or 128 (large-v3), pass one of those"
        )


# Slaney mel scale as in librosa.hz_to_mel / mel_to_hz with htk=False: linear below 1 kHz, log above.
_F_SP = 200.0 / 3.0
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP  # 15.0
_LOGSTEP = np.log(6.4) / 27.0


def _hz_to_mel(freqs: np.ndarray) -> np.ndarray:
    freqs = np.asarray(freqs, dtype=np.float64)
    mels = freqs / _F_SP
    log_region = freqs >= _MIN_LOG_HZ
    mels[log_region] = _MIN_LOG_MEL + np.log(freqs[log_region] / _MIN_LOG_HZ) / _LOGSTEP
    return mels


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    mels = np.asarray(mels, dtype=np.float64)
    freqs = _F_SP * mels
    log_region = mels >= _MIN_LOG_MEL
    freqs[log_region] = _MIN_LOG_HZ * np.exp(_LOGSTEP * (mels[log_region] - _MIN_LOG_MEL))
    return freqs


@cache
def _mel_filters_cached(n_mels: int) -> np.ndarray:
    # Same arithmetic as librosa.filters.mel(sr=16000, n_fft=400, n_mels=n_mels), which is what
    # openai/whisper's bundled mel_filters.npz was generated with (float32 output).
    fftfreqs = np.linspace(0.0, SAMPLE_RATE / 2, N_FREQS)
    min_mel, max_mel = _hz_to_mel(np.array([0.0, SAMPLE_RATE / 2]))
    mel_f = _mel_to_hz(np.linspace(min_mel, max_mel, n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fftfreqs)
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    # Slaney normalisation: each triangle has unit area in Hz, so wide high bands don't dominate.
    enorm = 2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels])
    weights *= enorm[:, None]
    out = weights.astype(np.float32)
    # The cache hands out the same array to every caller; make accidental in-place edits fail loudly.
    out.setflags(write=False)
    return out


def mel_filters(n_mels: int = N_MELS) -> np.ndarray:
    """Slaney-style mel filterbank, shape ``(n_mels, 201)``, float32, read-only (cached).

    Equal to ``librosa.filters.mel(sr=16000, n_fft=400, n_mels=n_mels)`` (htk=False, norm="slaney").
    """
    _check_n_mels(n_mels)
    return _mel_filters_cached(n_mels)


@cache
def _hann_cached() -> np.ndarray:
    n = np.arange(N_FFT, dtype=np.float64)
    # Periodic (not symmetric) Hann, the torch.hann_window default that whisper uses.
    out = (0.5 - 0.5 * np.cos(2.0 * np.pi * n / N_FFT)).astype(np.float32)
    out.setflags(write=False)
    return out


def hann_window() -> np.ndarray:
    """Periodic Hann window of length ``N_FFT`` (float32, read-only), as ``torch.hann_window(400)``."""
    return _hann_cached()


def _as_mono_float32(audio: np.ndarray) -> np.ndarray:
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise AudioError(
            f"log_mel_spectrogram expects 1-D mono audio, got shape {audio.shape}; "
            "run edgegate.audio.prepare_audio first"
        )
    if not np.issubdtype(audio.dtype, np.floating):
        raise AudioError(
            f"log_mel_spectrogram expects float audio in [-1, 1], got dtype {audio.dtype}; "
            "run edgegate.audio.prepare_audio first"
        )
    return np.ascontiguousarray(audio, dtype=np.float32)


def log_mel_spectrogram(audio: np.ndarray, n_mels: int = N_MELS, padding: int = 0) -> np.ndarray:
    """Whisper log-mel spectrogram of 16 kHz mono float audio, shape ``(n_mels, (len + padding) // 160)``.

    Steps match ``whisper.audio.log_mel_spectrogram``: zero-pad ``padding`` samples at the end, STFT with
    a periodic Hann window and centred reflect padding (``torch.stft`` defaults), drop the last frame,
    power spectrum, mel projection, ``log10(max(x, 1e-10))``, floor at ``max - 8``, then ``(x + 4) / 4``.
    The ``max - 8`` floor is taken over the whole (padded) output, exactly as whisper does.
    """
    _check_n_mels(n_mels)
    x = _as_mono_float32(audio)
    if padding < 0:
        raise AudioError(f"padding must be >= 0 samples, got {padding}; pass 0 or a positive sample count")
    if padding > 0:
        x = np.concatenate([x, np.zeros(padding, dtype=np.float32)])
    if x.size == 0:
        raise AudioError("audio is empty (0 samples); pass at least one sample or use padding=N_SAMPLES")

    # torch.stft(center=True) reflect-pads n_fft // 2 on both sides. np.pad keeps reflecting for inputs
    # shorter than the pad, where torch would refuse; such inputs yield at most one frame anyway.
    half = N_FFT // 2
    padded = np.pad(x, (half, half), mode="reflect")
    n_frames = x.size // HOP_LENGTH  # torch gives 1 + len // hop frames; whisper drops the last one
    if n_frames == 0:
        return np.zeros((n_mels, 0), dtype=np.float32)

    # Strided view: frame i starts at i * HOP_LENGTH. Only the frames we keep are transformed.
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[: n_frames * HOP_LENGTH : HOP_LENGTH]
    # float64 FFT: a float32 one (as torch.stft does) is off by up to ~5e-5 in the output for loud tonal
    # input, in quiet bins near the max-8 floor; float64 costs no measurable time at this size.
    spec = np.fft.rfft(frames.astype(np.float64) * hann_window(), n=N_FFT, axis=-1)  # (n_frames, 201)
    power = spec.real * spec.real + spec.imag * spec.imag
    # (frames, 201) @ (201, n_mels) then transpose: the same product as filters @ power.T, but this
    # operand order keeps OpenBLAS on its fast path (the other is ~10x slower on a busy 2-core CPU).
    mel = (power.astype(np.float32) @ mel_filters(n_mels).T).T  # (n_mels, n_frames)

    log_spec = np.log10(np.maximum(mel, np.float32(1e-10)))
    log_spec = np.maximum(log_spec, log_spec.max() - np.float32(8.0))
    log_spec = (log_spec + np.float32(4.0)) / np.float32(4.0)
    return np.ascontiguousarray(log_spec, dtype=np.float32)


def pad_or_trim(array: np.ndarray, length: int = N_FRAMES, *, axis: int = -1) -> np.ndarray:
    """Zero-pad or trim ``array`` along ``axis`` to ``length`` (as whisper's ``pad_or_trim``).

    Note: the default is ``N_FRAMES`` (for mel spectrograms). For raw audio pass ``length=N_SAMPLES``.
    """
    array = np.asarray(array)
    if length < 0:
        raise AudioError(f"pad_or_trim length must be >= 0, got {length}; pass N_FRAMES or N_SAMPLES")
    current = array.shape[axis]
    if current > length:
        return np.take(array, np.arange(length), axis=axis)
    if current < length:
        pad_widths = [(0, 0)] * array.ndim
        pad_widths[axis] = (0, length - current)
        return np.pad(array, pad_widths)
    return array


def pooled_stats(mel: np.ndarray) -> np.ndarray:
    """Per-mel-bin mean and (population) std over time, concatenated: shape ``(2 * n_mels,)`` float32.

    Pass only the real frames of the utterance (not the padding to 30 s): silence padding would pull
    the mean toward the floor and inflate the std, hiding the acoustic context the gate needs.
    Extra leading (batch) dimensions are kept: ``(..., n_mels, T) -> (..., 2 * n_mels)``.
    """
    mel = np.asarray(mel)
    if mel.ndim < 2:
        raise AudioError(f"pooled_stats expects a (n_mels, frames) mel spectrogram, got shape {mel.shape}")
    if mel.shape[-1] == 0:
        raise AudioError(
            "cannot pool statistics over 0 mel frames; the audio is shorter than one hop (10 ms), "
            "pass longer audio"
        )
    # float64 accumulation: a long utterance has tens of thousands of frames.
    mel64 = mel.astype(np.float64, copy=False)
    mean = mel64.mean(axis=-1)
    std = mel64.std(axis=-1)
    return np.concatenate([mean, std], axis=-1).astype(np.float32)
