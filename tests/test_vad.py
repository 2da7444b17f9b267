"""Voice-activity segmentation (edgegate.vad) on synthetic signals with known boundaries."""

from __future__ import annotations

import numpy as np
import pytest

from edgegate.errors import EdgegateError
from edgegate.vad import (
    FRAME,
    SAMPLE_RATE,
    EnergyDetector,
    Segmenter,
    VadConfig,
    make_detector,
    segment_audio,
    silero_model_path,
)

SR = SAMPLE_RATE
TOL = 2 * FRAME / SR  # boundaries are frame-aligned (32 ms); allow two frames


def tone(seconds: float, amp: float = 0.3, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def silence(seconds: float, noise_db: float | None = None, seed: int = 0) -> np.ndarray:
    n = int(seconds * SR)
    if noise_db is None:
        return np.zeros(n, np.float32)
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(n) * 10 ** (noise_db / 20)).astype(np.float32)


def spans(utts) -> list[tuple[float, float]]:
    return [(u.start_s, u.end_s) for u in utts]


def assert_spans(got, want):
    assert len(got) == len(want), f"got {got}, want {want}"
    for (a, b), (c, d) in zip(got, want, strict=True):
        assert abs(a - c) <= TOL and abs(b - d) <= TOL, f"got {got}, want {want}"


def test_tone_bursts_give_segments_with_pre_roll_and_post_pad():
    cfg = VadConfig()
    x = np.concatenate([silence(1.0), tone(1.5), silence(1.0), tone(2.0), silence(1.0)])
    utts = segment_audio(x, EnergyDetector(), cfg)
    assert_spans(spans(utts), [(1.0 - cfg.pre_roll, 2.5 + cfg.post_pad), (3.5 - cfg.pre_roll, 5.5 + cfg.post_pad)])
    for u in utts:
        assert not u.forced
        assert len(u.audio) == u.end - u.start
        assert abs(u.speech_end / SR - (u.end_s - cfg.post_pad)) <= TOL


def test_click_shorter_than_min_speech_is_ignored():
    x = np.concatenate([silence(1.0), tone(0.08), silence(1.0), tone(1.0), silence(1.0)])
    assert_spans(spans(segment_audio(x)), [(2.08 - 0.3, 3.08 + 0.2)])


def test_short_pause_stays_inside_long_pause_splits():
    x = np.concatenate([silence(0.5), tone(1.0), silence(0.3), tone(1.0), silence(0.8), tone(1.0), silence(1.0)])
    got = spans(segment_audio(x, config=VadConfig(min_silence=0.5)))
    assert_spans(got, [(0.2, 2.8 + 0.2), (3.6 - 0.3, 4.6 + 0.2)])


def test_hysteresis_keeps_a_fading_sound_and_needs_the_on_threshold_to_start():
    det = EnergyDetector(on=12.0, off=6.0)
    # 9 dB above a -60 dBFS noise floor: between off and on, so it never starts speech ...
    quiet = tone(1.0, amp=10 ** (-51 / 20) * np.sqrt(2))
    x = np.concatenate([silence(2.0, -60), quiet + silence(1.0, -60, seed=1), silence(1.0, -60, seed=2)])
    assert segment_audio(x, det) == []
    # ... but it keeps an utterance that started loud going.
    loud = tone(0.5, amp=10 ** (-30 / 20) * np.sqrt(2))
    y = np.concatenate([silence(2.0, -60), loud, quiet + silence(1.0, -60, seed=1), silence(1.0, -60, seed=2)])
    assert_spans(spans(segment_audio(y, EnergyDetector(on=12.0, off=6.0))), [(1.7, 3.5 + 0.2)])


def test_segments_over_background_noise():
    x = np.concatenate([silence(1.5, -50), tone(1.0) + silence(1.0, -50, 1), silence(1.5, -50, 2),
                        tone(1.0, amp=0.05) + silence(1.0, -50, 3), silence(1.0, -50, 4)])
    assert_spans(spans(segment_audio(x)), [(1.2, 2.7), (3.7, 5.2)])


def test_max_utterance_cuts_and_continues():
    x = np.concatenate([silence(0.5), tone(2.5), silence(1.0)])
    utts = segment_audio(x, config=VadConfig(max_utterance=1.0))
    assert [u.forced for u in utts] == [True, True, False]
    assert utts[0].duration == pytest.approx(1.0, abs=TOL)
    # Contiguous: the next utterance starts where the cut was.
    assert utts[1].start == utts[0].end and utts[2].start == utts[1].end
    assert utts[2].end_s == pytest.approx(3.0 + 0.2, abs=TOL)


def test_block_size_does_not_change_the_result():
    x = np.concatenate([silence(0.7), tone(1.2), silence(0.9), tone(0.6), silence(0.6)])
    ref = spans(segment_audio(x, block=1600))
    for block in (1, 160, 511, 7777, len(x)):
        assert spans(segment_audio(x, block=block)) == ref


def test_stream_ending_in_speech_is_flushed():
    seg = Segmenter(EnergyDetector())
    assert seg.push(np.concatenate([silence(0.5), tone(1.0)])) == []
    assert seg.in_speech
    (utt,) = seg.flush()
    assert utt.start_s == pytest.approx(0.2, abs=TOL) and utt.end_s == pytest.approx(1.5, abs=TOL)
    assert seg.flush() == []


def test_buffer_is_bounded_during_long_silence():
    seg = Segmenter(EnergyDetector())
    for _ in range(300):  # 30 s of silence in 0.1-s blocks
        seg.push(silence(0.1))
    assert len(seg._buf) <= 5 * SR
    assert seg.samples_pushed == 30 * SR


def test_config_validation():
    with pytest.raises(EdgegateError, match="min_silence"):
        VadConfig(min_silence=-1).validate()
    with pytest.raises(EdgegateError, match="post_pad"):
        VadConfig(min_silence=0.1, post_pad=0.2).validate()
    with pytest.raises(EdgegateError, match="unknown VAD"):
        make_detector("webrtc")


def test_auto_detector_falls_back_to_energy_when_silero_is_missing(monkeypatch):
    import edgegate.vad as vad

    monkeypatch.setattr(vad, "silero_model_path", lambda: None)
    assert vad.make_detector("auto").name == "energy"


@pytest.mark.parametrize("kind", ["energy", "silero"])
def test_librivox_clips_joined_by_silence_give_one_segment_each(kind, librivox):
    import soundfile as sf

    if kind == "silero" and silero_model_path() is None:
        pytest.skip("silero-vad is not installed")
    parts, bounds, t = [silence(0.5)], [], 0.5
    for path, _ in librivox:
        clip, rate = sf.read(path, dtype="float32")
        assert rate == SR
        parts += [clip, silence(1.5)]
        bounds.append((t, t + len(clip) / SR))
        t += len(clip) / SR + 1.5
    utts = segment_audio(np.concatenate(parts), make_detector(kind))
    assert len(utts) == len(bounds), spans(utts)
    for u, (a, b) in zip(utts, bounds, strict=True):
        # Each segment lies around its clip (clips have some lead-in/out noise).
        assert a - 0.5 <= u.start_s <= a + 0.8 and b - 0.8 <= u.end_s <= b + 0.5, (spans(utts), bounds)
