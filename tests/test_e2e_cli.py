"""End to end, as a user runs it: export a cpu bundle, transcribe a stereo 44.1-kHz FLAC with it,
replay two utterances through `edgegate live --input`, and feed `transcribe` garbage."""

from __future__ import annotations

import re

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("torch")

from edgegate.audio import load_audio  # noqa: E402
from edgegate.cli import main  # noqa: E402
from edgegate.textnorm import wer  # noqa: E402


@pytest.fixture(scope="module")
def cpu_bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("e2e") / "whisper-base-cpu"
    assert main(["export", "--target", "cpu", "--out", str(out), "--no-progress"]) == 0
    assert (out / "manifest.json").exists()
    return out


@pytest.mark.slow
def test_export_then_transcribe_stereo_flac(cpu_bundle, librivox, tmp_path, capsys):
    import soxr

    path, ref = librivox[0]
    mono = load_audio(path)
    stereo = np.stack([soxr.resample(mono, 16000, 44100)] * 2, axis=1)
    flac = tmp_path / "clip-44k-stereo.flac"
    sf.write(flac, stereo, 44100)
    capsys.readouterr()
    assert main(["transcribe", str(flac), "--bundle", str(cpu_bundle), "--language", "en", "--threads", "2"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and wer([ref], out) <= 0.15


@pytest.mark.slow
def test_live_input_two_utterances(cpu_bundle, librivox, tmp_path, capsys):
    (p1, r1), (p2, r2) = librivox[1], librivox[4]
    gap = np.zeros(int(1.5 * 16000), dtype=np.float32)
    audio = np.concatenate([gap[:8000], load_audio(p1), gap, load_audio(p2), gap])
    wav = tmp_path / "two.wav"
    sf.write(wav, audio, 16000)
    capsys.readouterr()
    rc = main(["live", "--bundle", str(cpu_bundle), "--input", str(wav), "--fast", "--language", "en",
               "--no-partials", "--threads", "2"])
    assert rc == 0
    lines = [ln for ln in capsys.readouterr().out.strip().splitlines() if ln.strip()]
    assert len(lines) == 2, lines
    texts = [re.sub(r"^\[[^\]]*\]\s*", "", ln).split("  (latency")[0] for ln in lines]
    assert wer([r1], [texts[0]]) <= 0.15, texts[0]
    assert wer([r2], [texts[1]]) <= 0.15, texts[1]


@pytest.mark.slow
def test_transcribe_garbage_files(cpu_bundle, librivox, tmp_path, capsys):
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), 16000)
    text = tmp_path / "readme.wav"
    text.write_text("not audio at all\n")
    nan = tmp_path / "nan.wav"
    sf.write(nan, np.full(16000, np.nan, dtype=np.float32), 16000, subtype="FLOAT")
    long = tmp_path / "two-hours.flac"
    with sf.SoundFile(long, "w", 16000, 1, format="FLAC") as f:  # silence compresses to almost nothing
        block = np.zeros(16000 * 600, dtype=np.int16)
        for _ in range(12):
            f.write(block)
    good, ref = librivox[3]
    capsys.readouterr()
    rc = main(["transcribe", str(empty), str(text), str(long), str(nan), str(good),
               "--bundle", str(cpu_bundle), "--language", "en", "--max-duration", "3600"])
    captured = capsys.readouterr()
    assert rc == 1
    errors = captured.err.strip().splitlines()
    assert [e.split(":")[0] for e in errors] == ["error"] * 4, errors
    for name, line in zip(["empty.wav", "readme.wav", "two-hours.flac", "nan.wav"], errors, strict=True):
        assert name in line
    assert "7200" in errors[2] and "--max-duration" in errors[2]
    out = captured.out.strip().splitlines()
    assert len(out) == 1 and wer([ref], out) <= 0.15
