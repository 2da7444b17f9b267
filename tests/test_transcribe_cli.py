"""`edgegate transcribe` on real weights and real speech, and its handling of bad input."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("torch")

from edgegate.cli import main  # noqa: E402
from edgegate.errors import AudioError, EdgegateError  # noqa: E402
from edgegate.textnorm import wer  # noqa: E402


@pytest.mark.slow
def test_transcribe_librivox_clip_real_weights(librivox, capsys):
    path, ref = librivox[1]
    assert main(["transcribe", str(path), "--language", "en", "--threads", "2"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    assert wer([ref], out) <= 0.1


@pytest.mark.slow
def test_stereo_44k_is_mixed_down_and_resampled(librivox, base_model, tmp_path):
    from edgegate.audio import load_audio

    path, ref = librivox[4]
    mono = load_audio(path)
    import soxr

    stereo = np.stack([soxr.resample(mono, 16000, 44100)] * 2, axis=1)
    flac = tmp_path / "stereo.flac"
    sf.write(flac, stereo, 44100)
    result = base_model.transcribe_windows(str(flac), language="en")
    assert wer([ref], [result.text]) <= 0.1
    assert abs(result.duration - len(mono) / 16000) < 0.01
    # The same array passed in memory at its own sample rate gives the same text.
    assert base_model.transcribe_windows(stereo, sample_rate=44100, language="en").text == result.text


@pytest.mark.slow
def test_language_detection_and_beam_search(librivox, base_model):
    path, ref = librivox[2]
    greedy = base_model.transcribe_windows(str(path))
    assert greedy.language == "en" and greedy.language_probability > 0.9
    beam = base_model.transcribe_windows(str(path), language="en", beam_size=5)
    assert wer([ref], [beam.text]) <= 0.15


@pytest.mark.slow
def test_all_gates_on_gives_dense_tokens_on_real_weights(librivox, base_model):
    path, _ = librivox[0]
    dense = base_model.transcribe_windows(str(path), language="en")
    on = base_model.transcribe_windows(str(path), language="en", mask=[True] * len(base_model.gate_names))
    assert on.tokens == dense.tokens and len(dense.tokens) > 10


@pytest.mark.slow
def test_long_audio_is_windowed(librivox, base_model):
    from edgegate.audio import load_audio

    clips = [load_audio(p) for p, _ in librivox]
    audio = np.concatenate(clips + clips)  # ~49 s: two windows
    result = base_model.transcribe_windows(audio, language="en")
    assert len(result.segments) == 2
    assert result.segments[1].start == pytest.approx(30.0)
    assert result.segments[1].end == pytest.approx(len(audio) / 16000, abs=0.02)
    assert all(s.text for s in result.segments)


def test_bad_audio_arrays_are_rejected(base_model):
    with pytest.raises(AudioError, match="empty"):
        base_model.transcribe_windows(np.zeros(0, dtype=np.float32))
    nan = np.zeros(16000, dtype=np.float32)
    nan[10] = np.nan
    with pytest.raises(AudioError, match="NaN|non-finite"):
        base_model.transcribe_windows(nan)
    with pytest.raises(EdgegateError, match="valid codes: en, zh"):
        base_model.transcribe_windows(np.zeros(16000, dtype=np.float32), language="klingon")


def test_cli_bad_files_one_line_each_and_good_files_still_run(tmp_path, capsys):
    garbage = tmp_path / "notes.wav"
    garbage.write_text("this is not audio")
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), 16000)
    nan = tmp_path / "nan.wav"
    sf.write(nan, np.full(1600, np.nan, dtype=np.float32), 16000, subtype="FLOAT")
    good = tmp_path / "tone.wav"
    sf.write(good, (0.1 * np.sin(np.arange(16000) / 10)).astype(np.float32), 16000)
    missing = tmp_path / "missing.wav"
    rc = main(["transcribe", str(garbage), str(empty), str(nan), str(missing), str(good), "--language", "en"])
    captured = capsys.readouterr()
    assert rc == 1
    errors = captured.err.strip().splitlines()
    assert len(errors) == 4
    for name, line in zip(["notes.wav", "empty.wav", "nan.wav", "missing.wav"], errors, strict=True):
        assert line.startswith("error: ") and name in line
    assert captured.out.count("\n") == 1  # the good file was transcribed (a pure tone: no speech, an empty line)


def test_cli_unknown_language_is_one_line(capsys):
    assert main(["transcribe", "x.wav", "--language", "xx"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown language 'xx'; valid codes:") and "\n" not in err


@pytest.mark.parametrize("command", ["transcribe", "live"])
def test_audio_ctx_values_and_one_line_errors(command, capsys):
    from edgegate.cli import build_parser

    parser = build_parser()
    head = [command, "x.wav"] if command == "transcribe" else [command]
    assert parser.parse_args(head).audio_ctx == "auto"
    for text, value in (("full", "full"), ("AUTO", "auto"), ("64", 64), ("0", 0)):
        assert parser.parse_args([*head, "--audio-ctx", text]).audio_ctx == value
    for bad in ("half", "-3", "1.5", "2000"):
        with pytest.raises(SystemExit):
            parser.parse_args([*head, "--audio-ctx", bad])
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert "--audio-ctx: expected full, auto or a margin N of 0..1500" in err and repr(bad) in err
    help_text = parser._subparsers._group_actions[0].choices[command].format_help()
    assert "loops on short clips when trimmed" in " ".join(help_text.split())


def test_cli_bundle_runs_the_long_form_decoding_with_word_times(tmp_path, capsys):
    import json

    from edgegate.export.core import export_bundle

    from tiny import noise_clip, tiny_whisper

    bundle = export_bundle(tmp_path / "tiny", "cpu", tiny_whisper(), progress=False, log=lambda m: None)
    wav = tmp_path / "clip.wav"
    sf.write(wav, noise_clip(3.0), 16000)
    capsys.readouterr()
    assert main(["transcribe", str(wav), "--bundle", str(bundle), "--language", "en", "--temperature", "0",
                 "--word-timestamps", "--format", "json", "--audio-ctx", "16", "--threads", "1"]) == 0
    doc = json.loads(capsys.readouterr().out)
    # the random model fails its trimmed window, which is then encoded again on the full 30 s
    assert doc["plan"]["audio_ctx"] == 16 and doc["context_fallbacks"] == 1 and doc["windows"] == 2
    assert doc["segments"]
    assert all(s["words"] is not None for s in doc["segments"]) and doc["decoder_steps"] > 1
    assert set(doc["timings"]) >= {"frontend", "plan", "encoder", "decoder", "total"}


@pytest.mark.slow
def test_budget_without_gates_uses_the_set_trained_on_the_model(librivox, monkeypatch, capsys):
    import edgegate.gated as gated

    seen = []
    real = gated.load_gated
    monkeypatch.setattr(gated, "load_gated", lambda name, **kw: seen.append(name) or real(name, **kw))
    path, ref = librivox[1]
    assert main(["transcribe", str(path), "--model", "whisper-base-edge", "--budget", "0.1", "--language", "en",
                 "--threads", "2"]) == 0
    assert seen == ["whisper-base-edge-decoder"]
    assert wer([ref], [capsys.readouterr().out.strip()]) <= 0.2
