"""On-the-fly audio augmentation, so that hours of synthetic speech do not teach the model one studio.

``Augmenter(rng).apply(samples)`` draws a chain per call: speed 0.9-1.1 (resampled, pitch moves with
it as in a tape), room reverberation (a synthetic exponentially decaying impulse response), band
limiting (telephone-like or a low-pass), a lossy codec round trip (OGG/Vorbis or MP3 through
soundfile, in memory), additive noise at 10-30 dB SNR (white, pink or brown), and a gain. Each
step is applied with its own probability; every draw comes from the given ``numpy`` generator, so
a seeded run is reproducible. numpy, soxr and soundfile only.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16000


@dataclass(frozen=True)
class AugmentConfig:
    p_speed: float = 0.5
    speed: tuple[float, float] = (0.9, 1.1)
    p_reverb: float = 0.3
    rt60: tuple[float, float] = (0.15, 0.7)  # seconds
    p_band: float = 0.2
    p_codec: float = 0.2
    p_noise: float = 0.5
    snr_db: tuple[float, float] = (10.0, 30.0)
    p_gain: float = 0.5
    gain_db: tuple[float, float] = (-12.0, 6.0)


def change_speed(x: np.ndarray, factor: float) -> np.ndarray:
    """Play ``factor`` times faster (shorter), as resampling does."""
    import soxr

    return soxr.resample(x, SAMPLE_RATE * factor, SAMPLE_RATE).astype(np.float32)


def reverberate(x: np.ndarray, rt60: float, rng: np.random.Generator) -> np.ndarray:
    """Convolve with a decaying-noise room response (60 dB down after ``rt60`` s); level kept."""
    n = max(16, int(rt60 * SAMPLE_RATE))
    t = np.arange(n) / SAMPLE_RATE
    ir = rng.standard_normal(n) * np.exp(-6.9 * t / rt60)
    ir[0] = 1.0  # the direct path
    size = 1 << int(np.ceil(np.log2(len(x) + n)))
    y = np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(ir, size), size)[: len(x)]
    peak_in, peak_out = np.abs(x).max(), np.abs(y).max()
    return (y * (peak_in / peak_out if peak_out > 0 else 1.0)).astype(np.float32)


def band_limit(x: np.ndarray, low_hz: float, high_hz: float) -> np.ndarray:
    spec = np.fft.rfft(x)
    freqs = np.fft.rfftfreq(len(x), 1 / SAMPLE_RATE)
    spec[(freqs < low_hz) | (freqs > high_hz)] = 0
    return np.fft.irfft(spec, len(x)).astype(np.float32)


def codec_round_trip(x: np.ndarray, fmt: str) -> np.ndarray:
    """Encode to ``fmt`` (``ogg`` Vorbis or ``mp3``) and back, in memory; same length out."""
    import soundfile as sf

    subtype = {"ogg": "VORBIS", "mp3": "MPEG_LAYER_III"}[fmt]
    buf = io.BytesIO()
    sf.write(buf, np.clip(x, -1, 1), SAMPLE_RATE, format=fmt.upper(), subtype=subtype)
    buf.seek(0)
    y, _ = sf.read(buf, dtype="float32")
    y = y[: len(x)]
    return np.pad(y, (0, len(x) - len(y))) if len(y) < len(x) else y


def coloured_noise(n: int, colour: str, rng: np.random.Generator) -> np.ndarray:
    white = rng.standard_normal(n)
    if colour == "white":
        return white
    spec = np.fft.rfft(white)
    f = np.maximum(np.fft.rfftfreq(n, 1 / SAMPLE_RATE), 20.0)
    spec /= np.sqrt(f) if colour == "pink" else f
    noise = np.fft.irfft(spec, n)
    return noise / (noise.std() + 1e-12)


def add_noise(x: np.ndarray, snr_db: float, colour: str, rng: np.random.Generator) -> np.ndarray:
    power = float(np.mean(x.astype(np.float64) ** 2))
    if power <= 0:
        return x
    noise = coloured_noise(len(x), colour, rng)
    return (x + noise * np.sqrt(power / 10 ** (snr_db / 10))).astype(np.float32)


class Augmenter:
    """A random augmentation chain per call (see the module docstring)."""

    def __init__(self, rng: np.random.Generator, config: AugmentConfig | None = None):
        self.rng = rng
        self.cfg = config or AugmentConfig()

    def apply(self, x: np.ndarray) -> np.ndarray:
        c, r = self.cfg, self.rng
        x = np.asarray(x, dtype=np.float32)
        if r.random() < c.p_speed:
            x = change_speed(x, r.uniform(*c.speed))
        if r.random() < c.p_reverb:
            x = reverberate(x, r.uniform(*c.rt60), r)
        if r.random() < c.p_band:
            x = band_limit(x, 300.0, 3400.0) if r.random() < 0.5 else band_limit(x, 0.0, r.uniform(3500, 6500))
        if r.random() < c.p_codec:
            x = codec_round_trip(x, "ogg" if r.random() < 0.5 else "mp3")
        if r.random() < c.p_noise:
            x = add_noise(x, r.uniform(*c.snr_db), ("white", "pink", "brown")[r.integers(3)], r)
        if r.random() < c.p_gain:
            x = x * np.float32(10 ** (r.uniform(*c.gain_db) / 20))
        return np.clip(x, -1.0, 1.0).astype(np.float32)
