"""`edgegate transcribe` long-form options on real weights: formats into --output-dir, a truncated file's
warning, the no-limit default, bad input still one line each, the gated model's segments API."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from edgegate.cli import main
from edgegate.textnorm import wer

pytest.importorskip("torch")
pytestmark = pytest.mark.slow


def test_output_dir_formats_and_truncated_file_warning(librivox, tmp_path, capsys):
    clip, ref = librivox[1]
    data, rate = sf.read(str(clip), dtype="int16")
    sf.write(tmp_path / "whole.wav", data, rate, subtype="PCM_16")
    raw = (tmp_path / "whole.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(raw[: 44 + 2 * (len(data) * 3 // 4)])
    out = tmp_path / "out"
    for fmt, ext in [("tsv", "tsv"), ("vtt", "vtt"), ("json", "json"), ("text", "txt")]:
        capsys.readouterr()
        assert main(["transcribe", str(tmp_path / "whole.wav"), str(tmp_path / "cut.wav"), "--language", "en",
                     "--temperature", "0", "--format", fmt, "--output-dir", str(out)]) == 0
        err = capsys.readouterr().err
        warnings = [line for line in err.splitlines() if line.startswith("warning:")]
        assert len(warnings) == 1 and f"promises {len(data)} samples" in warnings[0], err
        assert f"holds {len(data) * 3 // 4}" in warnings[0]
        assert (out / f"whole.{ext}").exists() and (out / f"cut.{ext}").exists()
    assert not list(out.glob(".*"))  # no temp file left behind
    tsv = (out / "whole.tsv").read_text().splitlines()
    assert tsv[0] == "start\tend\ttext" and len(tsv) >= 2 and int(tsv[-1].split("\t")[1]) <= 3100
    assert (out / "whole.vtt").read_text().startswith("WEBVTT\n\n00:0")
    doc = json.loads((out / "whole.json").read_text())
    assert doc["language"] == "en" and doc["segments"][0]["tokens"] and doc["windows"] == 1
    assert wer([ref], [(out / "whole.txt").read_text().strip()]) <= 0.15


def test_no_default_duration_limit_but_an_explicit_one_is_kept(tmp_path, capsys):
    long = tmp_path / "long.flac"
    with sf.SoundFile(long, "w", 16000, 1, format="FLAC") as f:
        f.write(np.zeros(16000 * 65, dtype=np.int16))
    assert main(["transcribe", str(long), "--language", "en", "--max-duration", "60"]) == 1
    assert "65.00 s long" in capsys.readouterr().err
    assert main(["transcribe", str(long), "--language", "en", "--vad"]) == 0  # silence only: no speech, no error
    assert capsys.readouterr().out.strip() == ""


def test_gated_model_yields_segments_with_its_plan(librivox):
    from edgegate.gated import load_gated

    clip, ref = librivox[0]
    gw = load_gated("whisper-base-decoder", threads=2)
    segments, info = gw.transcribe(str(clip), language="en", budget=0.25, temperature=0.0)
    segments = list(segments)
    assert segments and all(s.mask == info.plan["mask"] for s in segments)
    assert info.plan["mask"] is not None and not all(info.plan["mask"]) and info.plan["budget"] == 0.25
    assert wer([ref], [" ".join(s.text for s in segments)]) <= 0.2
    language, probability, probs = gw.detect_language(str(clip))
    assert language == "en" and probability == max(probs.values()) and len(probs) > 90
