"""--vad on the long recording with 20 s of silence inserted: the same text, times mapped to the original
audio, and the silence costs no encoder window and no decoder step (counted, not timed)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from edgegate.cli import main
from edgegate.vad import silero_model_path
from edgegate.vad_filter import VadOptions

pytest.importorskip("torch")

from test_longform_recording import SR, long_recording  # noqa: E402

pytestmark = pytest.mark.slow
INSERT_AFTER = 4  # the silence goes after the 5th clip


def as_dicts(segments):
    return [{"start": s.start, "end": s.end, "text": s.text} for s in segments]


@pytest.mark.parametrize("detector", ["silero", "energy"])
def test_vad_skips_inserted_silence(detector, base_model, tmp_path, capsys):
    if detector == "silero" and silero_model_path() is None:
        pytest.skip("silero-vad is not installed (pip install --no-deps silero-vad==6.2.3)")
    plain, padded = long_recording(), long_recording(silence_after=INSERT_AFTER)
    segments, a = base_model.transcribe(plain.samples, language="en", vad_filter=True,
                                        vad_options=VadOptions(detector=detector))
    a_segments = as_dicts(segments)
    if detector == "silero":  # the CLI flag (auto picks Silero when installed), streaming from the file
        path = tmp_path / "padded.wav"
        sf.write(path, padded.samples, SR, subtype="PCM_16")
        capsys.readouterr()
        assert main(["transcribe", str(path), "--language", "en", "--vad", "--format", "json"]) == 0
        b = json.loads(capsys.readouterr().out)
        b_segments, b_counts = b["segments"], (b["windows"], b["decoder_steps"])
        b_duration, b_after = b["duration"], b["duration_after_vad"]
        assert b["options"]["vad_detector"] == "silero"
    else:
        segments, b = base_model.transcribe(padded.samples, language="en", vad_filter=True,
                                            vad_options=VadOptions(detector=detector))
        b_segments = as_dicts(segments)
        b_counts, b_duration, b_after = (b.windows, b.decoder_steps), b.duration, b.duration_after_vad
    assert [s["text"] for s in b_segments] == [s["text"] for s in a_segments] and len(a_segments) >= 8
    assert b_counts == (a.windows, a.decoder_steps)  # 20 s more audio, not one step more
    assert b_duration - a.duration == pytest.approx(20.0, abs=1e-3)
    assert a.duration_after_vad < 0.75 * a.duration and abs(b_after - a.duration_after_vad) < 0.5
    cut = plain.ends[INSERT_AFTER]
    for sa, sb in zip(a_segments, b_segments, strict=True):
        shift = 20.0 if sa["start"] > cut else 0.0
        assert abs(sb["end"] - sa["end"] - (20.0 if sa["end"] > cut + 0.5 else 0.0)) < 0.3, (sa, sb)
        assert abs(sb["start"] - sa["start"] - shift) < 0.3 or sa["start"] <= cut < sa["end"], (sa, sb)
    # Mapped to the original audio: each clip's words are in a segment that overlaps the clip.
    for start, end in zip(padded.starts, padded.ends, strict=True):
        assert any(s["start"] < end and s["end"] > start for s in b_segments)
    assert all(s["end"] <= len(padded.samples) / SR + 0.01 for s in b_segments)
    silence = (padded.ends[INSERT_AFTER] + 0.5, padded.starts[INSERT_AFTER + 1] - 0.5)
    assert not any(silence[0] <= s["start"] and s["end"] <= silence[1] for s in b_segments)
    assert np.all(np.diff([s["start"] for s in b_segments]) >= 0)
