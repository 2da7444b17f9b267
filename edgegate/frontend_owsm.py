"""OWSM's frontend in numpy (no torch: the runtime uses it): ESPnet's DefaultFrontend + GlobalMVN.

ESPnet computes, for a window padded or trimmed to ``speech_length`` seconds (no length mask: the
padding is input like any other):
- ``torch.stft``: n_fft 512, a periodic Hann window of ``win_length`` (400) samples centred in the
  512-sample frame, hop 160, centred frames with reflect padding; power spectrum re^2 + im^2;
- log-mel: ``power @ melmat`` (librosa's Slaney filters, 0..fs/2; the matrix is also stored in the
  checkpoint as ``frontend.logmel.melmat``), floored at 1e-10, natural log;
- global MVN: ``(x - mean) / std`` with ``std = sqrt(max(var, 1e-20))`` from ``feats_stats.npz``.

30 s at 16 kHz gives 3001 frames. We compute in float64 and return float32 (ESPnet works in float32;
the difference is far below the parity tolerance).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgegate.errors import AudioError, ModelError


def hann_window(length: int) -> np.ndarray:
    """``torch.hann_window(length)``: periodic, i.e. the first ``length`` points of a ``length + 1`` Hann."""
    return 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(length) / length)


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz (3 mels per 200 Hz), logarithmic above."""
    f = np.asarray(f, dtype=np.float64)
    log_region = f >= 1000.0
    mel = 3.0 * f / 200.0
    step = np.log(6.4) / 27.0
    return np.where(log_region, 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / step, mel)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    step = np.log(6.4) / 27.0
    return np.where(m >= 15.0, 1000.0 * np.exp(step * (m - 15.0)), 200.0 * m / 3.0)


def slaney_mel_filters(sample_rate: int = 16000, n_fft: int = 512, n_mels: int = 80, fmin: float = 0.0,
                       fmax: float | None = None) -> np.ndarray:
    """Triangular Slaney-normalised mel filters (n_fft // 2 + 1, n_mels): ESPnet's ``melmat`` layout."""
    fmax = sample_rate / 2 if fmax is None else fmax
    fft_freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]  # equal area per filter
    return weights.T.astype(np.float32)


def power_spectrum(samples: np.ndarray, n_fft: int = 512, win_length: int = 400, hop_length: int = 160
                   ) -> np.ndarray:
    """|STFT|^2 (frames, n_fft // 2 + 1) with torch.stft's centring, reflect padding and window placement."""
    x = np.asarray(samples, dtype=np.float64)
    pad = n_fft // 2
    if x.shape[-1] <= pad:
        raise AudioError(f"audio of {x.shape[-1]} samples is too short for the OWSM frontend (needs > {pad})")
    x = np.pad(x, (pad, pad), mode="reflect")
    window = np.zeros(n_fft)
    left = (n_fft - win_length) // 2
    window[left: left + win_length] = hann_window(win_length)
    n_frames = 1 + (x.shape[-1] - n_fft) // hop_length
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop_length][:n_frames]
    spec = np.fft.rfft(frames * window, axis=-1)
    return spec.real ** 2 + spec.imag ** 2


def load_stats(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std from ESPnet's ``feats_stats.npz`` (count, sum, sum_square), as GlobalMVN computes them."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as stats:
            count, total, squares = stats["count"], stats["sum"], stats["sum_square"]
    except (OSError, KeyError, ValueError) as exc:
        raise ModelError(f"{path}: not an ESPnet feats_stats.npz with count/sum/sum_square ({exc})") from exc
    mean = total / count
    var = squares / count - mean * mean
    return mean, np.sqrt(np.maximum(var, 1e-20))


class OwsmFrontend:
    """Samples -> (optionally normalised) log-mel features (frames, n_mels), float32."""

    def __init__(self, melmat: np.ndarray, mean: np.ndarray | None = None, std: np.ndarray | None = None,
                 n_fft: int = 512, win_length: int = 400, hop_length: int = 160, sample_rate: int = 16000,
                 speech_length: float = 30.0):
        self.melmat = np.asarray(melmat, dtype=np.float64)
        if self.melmat.shape[0] != n_fft // 2 + 1:
            raise ModelError(f"mel matrix has {self.melmat.shape[0]} rows; n_fft={n_fft} needs {n_fft // 2 + 1}")
        # ESPnet casts its float64 statistics to the features' float32 before using them.
        self.mean = None if mean is None else np.asarray(mean, dtype=np.float32)
        self.std = None if std is None else np.asarray(std, dtype=np.float32)
        self.n_fft, self.win_length, self.hop_length = n_fft, win_length, hop_length
        self.sample_rate = sample_rate
        self.window_samples = int(round(speech_length * sample_rate))

    @property
    def n_mels(self) -> int:
        return self.melmat.shape[1]

    def pad_or_trim(self, samples: np.ndarray) -> np.ndarray:
        """The input window as ESPnet's Speech2Text makes it: zero-padded or cut to ``speech_length``."""
        x = np.asarray(samples, dtype=np.float32)[: self.window_samples]
        return np.pad(x, (0, self.window_samples - x.shape[0]))

    def log_mel(self, samples: np.ndarray) -> np.ndarray:
        power = power_spectrum(samples, self.n_fft, self.win_length, self.hop_length)
        return np.log(np.maximum(power @ self.melmat, 1e-10)).astype(np.float32)

    def normalize(self, feats: np.ndarray) -> np.ndarray:
        if self.mean is None or self.std is None:
            raise ModelError("this OWSM frontend has no feats_stats (mean/std) to normalise with")
        return ((np.asarray(feats, dtype=np.float32) - self.mean) / self.std).astype(np.float32)

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        """Normalised features of one window (``pad_or_trim`` first), ready for the encoder."""
        return self.normalize(self.log_mel(self.pad_or_trim(samples)))
