"""Long-form parity with openai-whisper==20250625 on the >= 60-s recording of the 10 real clips.

Greedy, temperature 0, with and without condition_on_previous_text: the same segment texts and
timestamps within 0.02 s; word_timestamps: >= 95 % of word times within 0.1 s. Plus the
recording-level checks: WER no worse than the mean per-clip WER + 1 point, every clip's first
word within 0.5 s of its true start (CLI, --word-timestamps --format json), real SRT cues.

``BACKENDS`` builds the model under test: the PyTorch ``WhisperModel`` and the torch-free runtime
``Session`` on an ONNX Runtime bundle exported from the same weights (its word times come from the
bundle's alignment graphs).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from edgegate.cli import main
from edgegate.textnorm import wer

pytest.importorskip("torch")
whisper = pytest.importorskip("whisper", reason="test dependency openai-whisper==20250625 (pip install .[dev])")

from test_longform_recording import SR, long_recording, openai_whisper_model  # noqa: E402

pytestmark = pytest.mark.slow


def pytorch_backend(base_model, tmp_path_factory):
    return base_model


_sessions: dict = {}


def runtime_backend(base_model, tmp_path_factory):
    """The torch-free Session on a dense whisper-base bundle (ONNX Runtime), exported once per run."""
    from edgegate.runtimes.session import Session

    if "base" not in _sessions:
        from edgegate.export.core import export_bundle
        from edgegate.models.registry import resolve_model, tokenizer_path

        out = tmp_path_factory.mktemp("longform") / "base-cpu"
        path = export_bundle(out, "cpu", base_model.model, tokenizer=tokenizer_path(resolve_model("whisper-base")),
                             precision="fp32", progress=False, log=lambda m: None)
        _sessions["base"] = Session.load(path, threads=2, full_vocab=True)
    return _sessions["base"]


BACKENDS = {"pytorch": pytorch_backend, "runtime": runtime_backend}


@pytest.fixture(scope="module")
def recording():
    return long_recording()


@pytest.fixture(scope="module")
def reference(base_model):
    return openai_whisper_model(base_model)


_cache: dict = {}


def openai_result(reference, recording, **options):
    key = tuple(sorted(options.items()))
    if key not in _cache:
        _cache[key] = whisper.transcribe(reference, recording.samples, temperature=0.0, fp16=False, **options)
    return _cache[key]


def spoken(segments):
    return [(s["start"], s["end"], s["text"]) for s in segments if s["text"].strip()]


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("condition", [True, False])
def test_segments_match_openai_whisper(backend, condition, base_model, reference, recording, tmp_path_factory):
    model = BACKENDS[backend](base_model, tmp_path_factory)
    segments, info = model.transcribe(recording.samples, temperature=0.0, condition_on_previous_text=condition)
    ours = [(s.start, s.end, s.text) for s in segments]
    theirs = spoken(openai_result(reference, recording, condition_on_previous_text=condition)["segments"])
    assert info.language == "en" and info.duration == pytest.approx(len(recording.samples) / SR)
    assert len(ours) >= 10, ours
    assert [t for _, _, t in ours] == [t for _, _, t in theirs]
    for (a0, a1, _), (b0, b1, _) in zip(ours, theirs, strict=True):
        assert abs(a0 - b0) <= 0.02 and abs(a1 - b1) <= 0.02, (a0, a1, b0, b1)
    if condition:
        hypothesis = " ".join(t for _, _, t in ours)
        per_clip = [wer([ref], [model.transcribe_text(clip, language="en", temperature=0.0).text])
                    for clip, ref in zip(recording.clips, recording.references, strict=True)]
        assert wer([recording.reference], [hypothesis]) <= float(np.mean(per_clip)) + 1.0, (hypothesis, per_clip)


def close_words(ours, theirs) -> int:
    return sum(a["word"] == b["word"] and abs(a["start"] - b["start"]) <= 0.1 and abs(a["end"] - b["end"]) <= 0.1
               for a, b in zip(ours, theirs, strict=True))


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_word_timestamps_match_openai_whisper(backend, base_model, reference, recording, tmp_path_factory):
    model = BACKENDS[backend](base_model, tmp_path_factory)
    segments, info = model.transcribe(recording.samples, language="en", temperature=0.0, word_timestamps=True)
    ours = [{"word": w.word, "start": w.start, "end": w.end} for s in segments for w in s.words]
    theirs = [w for s in openai_result(reference, recording, word_timestamps=True)["segments"] for w in s["words"]]
    assert len(ours) == len(theirs) > 50
    assert close_words(ours, theirs) >= 0.95 * len(theirs), close_words(ours, theirs)


def test_cli_word_timestamps_match_openai_whisper_and_find_every_clip(reference, recording, tmp_path, capsys):
    path = tmp_path / "long.wav"
    sf.write(path, recording.samples, SR, subtype="PCM_16")  # the same int16 samples the reference reads
    capsys.readouterr()
    assert main(["transcribe", str(path), "--language", "en", "--temperature", "0", "--word-timestamps",
                 "--format", "json", "--threads", "2"]) == 0
    data = json.loads(capsys.readouterr().out)
    ours = [w for s in data["segments"] for w in s["words"]]
    theirs = [w for s in openai_result(reference, recording, word_timestamps=True)["segments"] for w in s["words"]]
    assert len(ours) == len(theirs) > 50
    assert close_words(ours, theirs) >= 0.95 * len(theirs), close_words(ours, theirs)
    for start, end in zip(recording.starts, recording.ends, strict=True):
        first = next(w for w in ours if start - 1.0 <= (w["start"] + w["end"]) / 2 <= end)
        assert abs(first["start"] - start) <= 0.5, (first, start)


def test_cli_srt_has_a_cue_per_sentence_not_per_window(recording, tmp_path, capsys):
    path = tmp_path / "long.wav"
    sf.write(path, recording.samples, SR, subtype="PCM_16")
    out = tmp_path / "subs"
    assert main(["transcribe", str(path), "--language", "en", "--format", "srt", "--output-dir", str(out),
                 "--threads", "2"]) == 0
    cues = (out / "long.srt").read_text().strip().split("\n\n")
    assert len(cues) >= 10
    spans = []
    for cue in cues:
        index, times, text = cue.split("\n", 2)
        a, b = (sum(float(x) * m for x, m in zip(t.replace(",", ".").split(":"), (3600, 60, 1), strict=True))
                for t in times.split(" --> "))
        spans.append((a, b))
        assert text.strip() and 0 < b - a < 15, cue
    assert all(b0 <= a1 + 1e-6 for (_, b0), (a1, _) in zip(spans, spans[1:], strict=False))
