"""edgegate.audio: loading, mixing down, resampling, and one-line errors for every bad input."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from edgegate.audio import SAMPLE_RATE, describe_audio, load_audio, prepare_audio
from edgegate.errors import AudioError, EdgegateError


def _assert_one_line(exc: pytest.ExceptionInfo[AudioError]) -> str:
    msg = str(exc.value)
    assert msg and "\n" not in msg and "\r" not in msg, repr(msg)
    return msg


def _tone(seconds: float, rate: int, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


# --- prepare_audio ---------------------------------------------------------------------------------


def test_mono_16k_float32_passes_through_as_contiguous_copy() -> None:
    x = _tone(0.5, SAMPLE_RATE)
    out = prepare_audio(x, SAMPLE_RATE)
    assert out.dtype == np.float32 and out.ndim == 1 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, x)
    out[0] = 123.0
    assert x[0] != 123.0, "result must not alias the caller's array"


def test_float64_and_non_contiguous_input() -> None:
    x = _tone(0.25, SAMPLE_RATE).astype(np.float64)
    strided = np.repeat(x, 2)[::2]
    assert not strided.flags.c_contiguous
    out = prepare_audio(strided, SAMPLE_RATE)
    assert out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_allclose(out, x, atol=1e-7)


def test_int16_scaled() -> None:
    x = np.array([0, 16384, -16384, 32767, -32768], dtype=np.int16)
    out = prepare_audio(x, SAMPLE_RATE)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0.0, 0.5, -0.5, 32767 / 32768, -1.0])


def test_int32_and_uint8_scaled() -> None:
    x32 = np.array([0, 2**30, -(2**31)], dtype=np.int32)
    np.testing.assert_allclose(prepare_audio(x32, SAMPLE_RATE), [0.0, 0.5, -1.0])
    x8 = np.array([128, 192, 0, 255], dtype=np.uint8)
    np.testing.assert_allclose(prepare_audio(x8, SAMPLE_RATE), [0.0, 0.5, -1.0, 127 / 128])


def test_stereo_frames_first_mixed_by_mean() -> None:
    left = _tone(0.1, SAMPLE_RATE)
    right = np.zeros_like(left)
    out = prepare_audio(np.stack([left, right], axis=1), SAMPLE_RATE)  # (frames, 2), soundfile layout
    np.testing.assert_allclose(out, left / 2, atol=1e-7)


def test_channel_first_recognised() -> None:
    left = _tone(0.1, SAMPLE_RATE)
    right = -0.5 * left
    out = prepare_audio(np.stack([left, right], axis=0), SAMPLE_RATE)  # (2, frames), torchaudio layout
    assert out.shape == left.shape
    np.testing.assert_allclose(out, (left + right) / 2, atol=1e-7)
    # A (1, frames) row vector is mono, not `frames` one-sample channels.
    np.testing.assert_array_equal(prepare_audio(left[None, :], SAMPLE_RATE), left)


def test_resampled_to_16k_with_duration_kept() -> None:
    out = prepare_audio(_tone(2.0, 44100), 44100)
    assert abs(out.shape[0] - 2 * SAMPLE_RATE) <= 1
    # The tone survives resampling: its spectrum still peaks at 440 Hz.
    spectrum = np.abs(np.fft.rfft(out))
    peak_hz = np.argmax(spectrum) * SAMPLE_RATE / out.shape[0]
    assert abs(peak_hz - 440.0) < 2.0


def test_values_outside_unit_range_are_kept() -> None:
    x = np.array([2.0, -3.0, 0.5], dtype=np.float32)
    np.testing.assert_array_equal(prepare_audio(x, SAMPLE_RATE), x)


@pytest.mark.parametrize("bad", [np.zeros(0, np.float32), np.zeros((0, 2), np.float32), []])
def test_empty_raises(bad: np.ndarray) -> None:
    with pytest.raises(AudioError) as exc:
        prepare_audio(bad, SAMPLE_RATE)
    msg = _assert_one_line(exc)
    assert "audio is empty (0 samples)" in msg


def test_nan_and_inf_counted() -> None:
    x = _tone(0.1, SAMPLE_RATE)
    x[[3, 10, 20]] = [np.nan, np.inf, -np.inf]
    with pytest.raises(AudioError) as exc:
        prepare_audio(x, SAMPLE_RATE)
    msg = _assert_one_line(exc)
    assert "3 non-finite" in msg and "NaN" in msg


@pytest.mark.parametrize("rate", [0, -16000, float("nan")])
def test_bad_sample_rate(rate: float) -> None:
    with pytest.raises(AudioError) as exc:
        prepare_audio(_tone(0.1, SAMPLE_RATE), rate)
    msg = _assert_one_line(exc)
    assert "sample_rate" in msg


def test_max_seconds_enforced() -> None:
    x = _tone(3.0, 8000)
    assert prepare_audio(x, 8000, max_seconds=3.0).shape[0] == 3 * SAMPLE_RATE
    with pytest.raises(AudioError) as exc:
        prepare_audio(x, 8000, max_seconds=2.5)
    msg = _assert_one_line(exc)
    assert "3.00 s" in msg and "max_seconds=2.5" in msg


def test_bad_shapes_and_dtypes() -> None:
    for bad in (np.float32(0.1), np.zeros((2, 3, 4), np.float32), np.array(["a", "b"]), np.ones(4, bool)):
        with pytest.raises(AudioError) as exc:
            prepare_audio(bad, SAMPLE_RATE)
        _assert_one_line(exc)


def test_audio_error_is_an_edgegate_error() -> None:
    with pytest.raises(EdgegateError):
        prepare_audio([], SAMPLE_RATE)


# --- load_audio --------------------------------------------------------------------------------------


def test_stereo_44k1_flac_loads_as_mono_16k(tmp_path) -> None:
    seconds = 1.5
    left = _tone(seconds, 44100, 440.0)
    right = _tone(seconds, 44100, 880.0)
    path = tmp_path / "stereo.flac"
    sf.write(path, np.stack([left, right], axis=1), 44100, subtype="PCM_16")
    out = load_audio(path)
    assert out.dtype == np.float32 and out.ndim == 1 and out.flags.c_contiguous
    assert abs(out.shape[0] - seconds * SAMPLE_RATE) <= 1
    # Both channels are in the mix.
    spectrum = np.abs(np.fft.rfft(out))
    hz = np.fft.rfftfreq(out.shape[0], 1 / SAMPLE_RATE)
    for f in (440.0, 880.0):
        band = spectrum[(hz > f - 5) & (hz < f + 5)].max()
        assert band > 0.2 * spectrum.max()


def test_int16_wav_scaled_like_array(tmp_path) -> None:
    pcm = (np.linspace(-1, 1, 1600) * 32767).astype(np.int16)
    path = tmp_path / "mono.wav"
    sf.write(path, pcm, SAMPLE_RATE, subtype="PCM_16")
    np.testing.assert_allclose(load_audio(str(path)), prepare_audio(pcm, SAMPLE_RATE), atol=1e-7)


def test_missing_file_names_path(tmp_path) -> None:
    path = tmp_path / "nope" / "missing.wav"
    with pytest.raises(AudioError) as exc:
        load_audio(path)
    msg = _assert_one_line(exc)
    assert str(path) in msg and "not found" in msg


def test_directory_rejected(tmp_path) -> None:
    with pytest.raises(AudioError) as exc:
        load_audio(tmp_path)
    assert str(tmp_path) in _assert_one_line(exc)


def test_text_file_named_wav_is_not_decodable(tmp_path) -> None:
    path = tmp_path / "notes.wav"
    path.write_text("this is not audio\nat all\n")
    with pytest.raises(AudioError) as exc:
        load_audio(path)
    msg = _assert_one_line(exc)
    assert msg.startswith(f"cannot decode {path}: ")
    assert "supported: wav, flac, ogg, mp3" in msg


def test_empty_wav_file_names_path(tmp_path) -> None:
    path = tmp_path / "silent.wav"
    sf.write(path, np.zeros((0, 1), np.float32), SAMPLE_RATE)
    with pytest.raises(AudioError) as exc:
        load_audio(path)
    msg = _assert_one_line(exc)
    assert str(path) in msg and "audio is empty (0 samples)" in msg


def test_load_max_seconds_enforced(tmp_path) -> None:
    path = tmp_path / "long.wav"
    sf.write(path, _tone(2.0, 22050), 22050)
    assert load_audio(path, max_seconds=2.0).shape[0] == 2 * SAMPLE_RATE
    with pytest.raises(AudioError) as exc:
        load_audio(path, max_seconds=1.0)
    msg = _assert_one_line(exc)
    assert str(path) in msg and "max_seconds=1" in msg


def test_describe_audio() -> None:
    assert describe_audio(np.zeros(24000, np.float32)) == "1.50 s (24000 samples at 16000 Hz)"


def test_audio_module_does_not_import_torch() -> None:
    # The on-device runtime has no torch; importing edgegate.audio and edgegate.frontend must not need it.
    code = "import sys, edgegate.audio, edgegate.frontend; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
