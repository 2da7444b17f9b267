"""edgegate.frontend (numpy) vs its torch twin and vs Hugging Face's independent Whisper frontend."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from edgegate.errors import AudioError
from edgegate.frontend import (
    HOP_LENGTH,
    N_FRAMES,
    N_SAMPLES,
    SAMPLE_RATE,
    log_mel_spectrogram,
    mel_filters,
    pad_or_trim,
    pooled_stats,
)
from edgegate.frontend_torch import log_mel_spectrogram_torch, pooled_stats_torch


def _noise(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(int(seconds * SAMPLE_RATE))).astype(np.float32)


def _sweep(seconds: float, f0: float = 50.0, f1: float = 7900.0) -> np.ndarray:
    # Linear chirp over nearly the whole band: loud tonal input stresses the quiet bins near the floor.
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    phase = 2 * np.pi * (f0 * t + (f1 - f0) / (2 * seconds) * t**2)
    return (0.8 * np.sin(phase)).astype(np.float32)


SIGNALS = {"noise": _noise(3.0), "sweep": _sweep(4.0)}


# --- numpy vs torch twin -----------------------------------------------------------------------------


@pytest.mark.parametrize("n_mels", [80, 128])
@pytest.mark.parametrize("name", sorted(SIGNALS))
def test_numpy_matches_torch(name: str, n_mels: int) -> None:
    audio = SIGNALS[name]
    ours = log_mel_spectrogram(audio, n_mels)
    theirs = log_mel_spectrogram_torch(torch.from_numpy(audio), n_mels).numpy()
    assert ours.dtype == np.float32 and ours.flags.c_contiguous
    assert ours.shape == theirs.shape == (n_mels, audio.size // HOP_LENGTH)
    assert np.abs(ours - theirs).max() < 1e-4


def test_padding_argument_matches_torch_and_manual_padding() -> None:
    audio = _sweep(1.0)
    ours = log_mel_spectrogram(audio, padding=N_SAMPLES)
    assert ours.shape == (80, (audio.size + N_SAMPLES) // HOP_LENGTH)
    theirs = log_mel_spectrogram_torch(torch.from_numpy(audio), padding=N_SAMPLES).numpy()
    assert np.abs(ours - theirs).max() < 1e-4
    manual = log_mel_spectrogram(np.concatenate([audio, np.zeros(N_SAMPLES, np.float32)]))
    np.testing.assert_array_equal(ours, manual)


def test_torch_batch_is_per_item() -> None:
    quiet = 0.01 * _noise(2.0, seed=1)
    loud = _sweep(2.0)
    batch = torch.from_numpy(np.stack([quiet, loud]))
    out = log_mel_spectrogram_torch(batch)
    assert out.shape == (2, 80, 2 * SAMPLE_RATE // HOP_LENGTH)
    # Per-item max-8 floor: the quiet item is not floored against the loud one.
    for i, audio in enumerate((quiet, loud)):
        assert np.abs(out[i].numpy() - log_mel_spectrogram(audio)).max() < 1e-4


def test_torch_is_differentiable() -> None:
    audio = torch.from_numpy(_noise(0.5)).requires_grad_(True)
    log_mel_spectrogram_torch(audio).sum().backward()
    assert audio.grad is not None and torch.isfinite(audio.grad).all()


# --- vs Hugging Face transformers (independent implementation) --------------------------------------


def _hf_extractor(n_mels: int):
    transformers = pytest.importorskip(
        "transformers", reason="transformers is not installed; it is the independent reference frontend"
    )
    return transformers.WhisperFeatureExtractor(feature_size=n_mels)


@pytest.mark.parametrize("n_mels", [80, 128])
@pytest.mark.parametrize("name", sorted(SIGNALS))
def test_matches_hf_whisper_feature_extractor(name: str, n_mels: int) -> None:
    fe = _hf_extractor(n_mels)
    audio = SIGNALS[name]
    # HF zero-pads the audio to 30 s (padding="max_length"), runs a centred STFT over the 480000 samples
    # (3001 frames), drops the last frame and floors at max-8 over those 3000 frames. The like-for-like
    # call here is therefore: pad the audio to N_SAMPLES first, then compute (480000 // 160 = 3000 frames).
    hf = fe(audio, sampling_rate=SAMPLE_RATE, return_tensors="np")["input_features"][0]
    ours = pad_or_trim(log_mel_spectrogram(pad_or_trim(audio, N_SAMPLES), n_mels), N_FRAMES)
    assert hf.shape == ours.shape == (n_mels, N_FRAMES)
    assert np.abs(ours - hf).max() < 1e-3

    # openai/whisper's own transcribe path instead appends 30 s of zeros and keeps the first 3000 frames;
    # the extra zeros only add floor-level frames, so the result is the same.
    whisper_style = log_mel_spectrogram(audio, n_mels, padding=N_SAMPLES)[:, :N_FRAMES]
    assert np.abs(whisper_style - hf).max() < 1e-3

    # HF's numpy path (used when torch is missing) shares no STFT code with torch.stft.
    np_path = getattr(fe, "_np_extract_fbank_features", None)
    if np_path is not None:
        hf_np = np_path(pad_or_trim(audio, N_SAMPLES)[None, :], "cpu")[0]
        assert np.abs(ours - hf_np).max() < 1e-3


@pytest.mark.parametrize("n_mels", [80, 128])
def test_mel_filters_match_hf(n_mels: int) -> None:
    audio_utils = pytest.importorskip(
        "transformers.audio_utils", reason="transformers is not installed; it is the independent reference"
    )
    hf = audio_utils.mel_filter_bank(
        num_frequency_bins=201,
        num_mel_filters=n_mels,
        min_frequency=0,
        max_frequency=8000,
        sampling_rate=16000,
        norm="slaney",
        mel_scale="slaney",
    ).T
    ours = mel_filters(n_mels)
    assert ours.shape == (n_mels, 201) and ours.dtype == np.float32
    assert np.abs(ours - hf).max() < 1e-6


def test_mel_filters_cached_and_read_only() -> None:
    assert mel_filters(80) is mel_filters(80)
    with pytest.raises(ValueError):
        mel_filters(80)[0, 0] = 1.0
    with pytest.raises(AudioError) as exc:
        mel_filters(64)
    assert "80" in str(exc.value) and "128" in str(exc.value)


# --- shapes, edge cases, speed ----------------------------------------------------------------------


def test_frame_count_and_value_range() -> None:
    for n in (160, 161, 16000, 16159):
        assert log_mel_spectrogram(_noise(n / SAMPLE_RATE)[:n]).shape == (80, n // HOP_LENGTH)
    mel = log_mel_spectrogram(SIGNALS["sweep"])
    # After the max-8 floor and (x + 4) / 4 the spread is at most 2.
    assert mel.max() - mel.min() <= 2.0 + 1e-6


def test_short_and_bad_inputs() -> None:
    assert log_mel_spectrogram(np.zeros(100, np.float32)).shape == (80, 0)
    short = _noise(1.0)[:250]
    np.testing.assert_allclose(
        log_mel_spectrogram(short), log_mel_spectrogram_torch(torch.from_numpy(short)).numpy(), atol=1e-4
    )
    with pytest.raises(AudioError, match="too short"):
        log_mel_spectrogram_torch(torch.zeros(200))
    with pytest.raises(AudioError, match="audio is empty"):
        log_mel_spectrogram(np.zeros(0, np.float32))
    with pytest.raises(AudioError, match="prepare_audio"):
        log_mel_spectrogram(np.zeros((2, 16000), np.float32))
    with pytest.raises(AudioError, match="prepare_audio"):
        log_mel_spectrogram(np.zeros(16000, np.int16))
    with pytest.raises(AudioError, match="padding"):
        log_mel_spectrogram(np.zeros(16000, np.float32), padding=-1)


def test_pad_or_trim() -> None:
    mel = np.ones((80, 10), np.float32)
    padded = pad_or_trim(mel, 15)
    assert padded.shape == (80, 15) and padded[:, 10:].sum() == 0
    assert pad_or_trim(mel, 4).shape == (80, 4)
    assert pad_or_trim(mel).shape == (80, N_FRAMES)
    assert pad_or_trim(mel, 5, axis=0).shape == (5, 10)
    assert pad_or_trim(np.ones(7), N_SAMPLES).shape == (N_SAMPLES,)


def test_log_mel_30s_is_fast() -> None:
    audio = _noise(30.0)
    log_mel_spectrogram(audio)  # warm caches
    best = min(_timed(log_mel_spectrogram, audio) for _ in range(3))
    assert best < 0.1, f"numpy log-mel of 30 s took {best * 1e3:.1f} ms"


def _timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


# --- pooled stats ------------------------------------------------------------------------------------


def test_pooled_stats_numpy() -> None:
    mel = log_mel_spectrogram(SIGNALS["noise"])
    stats = pooled_stats(mel)
    assert stats.shape == (160,) and stats.dtype == np.float32
    np.testing.assert_allclose(stats[:80], mel.mean(axis=1), atol=1e-6)
    np.testing.assert_allclose(stats[80:], mel.std(axis=1), atol=1e-6)
    with pytest.raises(AudioError, match="0 mel frames"):
        pooled_stats(np.zeros((80, 0), np.float32))


def test_pooled_stats_torch_matches_numpy_with_lengths() -> None:
    a = log_mel_spectrogram(SIGNALS["noise"])  # 300 frames
    b = log_mel_spectrogram(SIGNALS["sweep"])  # 400 frames
    batch = torch.from_numpy(np.stack([pad_or_trim(a, b.shape[1]), b]))
    out = pooled_stats_torch(batch, lengths=torch.tensor([a.shape[1], b.shape[1]]))
    assert out.shape == (2, 160)
    assert np.abs(out[0].numpy() - pooled_stats(a)).max() < 1e-5
    assert np.abs(out[1].numpy() - pooled_stats(b)).max() < 1e-5
    # Without lengths: plain population statistics over all frames.
    assert np.abs(pooled_stats_torch(torch.from_numpy(b)).numpy() - pooled_stats(b)).max() < 1e-5


def test_pooled_stats_torch_constant_bins_have_finite_gradient() -> None:
    mel = torch.zeros(1, 80, 50, requires_grad=True)
    stats = pooled_stats_torch(mel, lengths=torch.tensor([30]))
    assert torch.all(stats[:, 80:] == 0)
    stats.sum().backward()
    assert torch.isfinite(mel.grad).all()
