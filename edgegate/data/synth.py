"""Synthetic multilingual corpus: plan -> speech -> JSONL manifest.

``build_corpus(out_dir, languages, tasks, n_per_pair, seed)`` makes a deterministic plan of
utterances (text, language, task, engine, voice, speed, pitch, reference) for every
(language, task) pair, synthesises each into ``out_dir/audio/<lang>/<id>.wav`` and writes
``out_dir/manifest.jsonl``:

- transcribe: ``text`` = the spoken sentence;
- translate (non-English languages only; Whisper translates into English): ``text`` = the English
  reference, ``source_text`` = the spoken sentence.

The same arguments give the same plan and bit-identical audio (``sox -D``). Builds resume: a
wav is only ever renamed into place when complete, so an item whose wav exists is skipped;
leftover ``*.tmp.wav`` files from an interrupted run are removed. Item ids end in a hash of
what is spoken and how, so a changed plan never reuses a stale file. The manifest is written
atomically at the end from the plan.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import wave
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from edgegate.data import texts, tts
from edgegate.data.manifest import DataError, ManifestEntry, write_manifest

SUPPORTED_LANGUAGES = texts.LANGUAGES
TASKS = ("transcribe", "translate")
ENGINE_CHOICES = ("espeak", "kokoro", "kokoro-blend", "all")
_TASK_TAG = {"transcribe": "asr", "translate": "st"}
SPEED_RANGE = (0.85, 1.20)
PITCH_RANGE = (30, 70)


class CorpusError(DataError):
    """The corpus builder was given something it cannot use."""


@dataclass(frozen=True)
class PlanItem:
    id: str
    lang: str
    task: str
    text: str  # what is spoken
    reference: str  # transcribe: = text; translate: the English translation
    engine: str
    voice: str
    speed: float
    pitch: int
    source: str  # where the text came from

    def wav_path(self, out_dir: Path) -> Path:
        return Path(out_dir) / "audio" / self.lang / f"{self.id}.wav"


def _split(value: str | Iterable[str], what: str) -> list[str]:
    items = [v.strip() for v in value.split(",")] if isinstance(value, str) else [str(v).strip() for v in value]
    items = [v for v in items if v]
    if not items:
        raise CorpusError(f"no {what} given")
    return list(dict.fromkeys(items))


def resolve_engines(engine: str | Sequence[str]) -> list[str]:
    """``espeak``, ``kokoro`` or ``all`` (espeak plus Kokoro when its packages are installed)."""
    names = _split(engine, "TTS engine")
    out: list[str] = []
    for name in names:
        if name not in ENGINE_CHOICES:
            raise CorpusError(f"unknown TTS engine {name!r}; use one of {', '.join(ENGINE_CHOICES)}")
        if name == "all":
            out.append("espeak")
            if tts.kokoro_available():
                out.append("kokoro")
            else:
                print("note: Kokoro not installed, using espeak-ng only (pip install "
                      + " ".join(tts.kokoro_missing()) + ")", file=sys.stderr)
        else:
            out.append(name)
    return list(dict.fromkeys(out))


def validate_languages(languages: str | Iterable[str]) -> list[str]:
    langs = _split(languages, "language")
    bad = [lang for lang in langs if lang not in SUPPORTED_LANGUAGES]
    if bad:
        raise CorpusError(f"unknown language {', '.join(bad)}; supported: {', '.join(SUPPORTED_LANGUAGES)}")
    return langs


def validate_tasks(tasks: str | Iterable[str]) -> list[str]:
    names = _split(tasks, "task")
    bad = [t for t in names if t not in TASKS]
    if bad:
        raise CorpusError(f"unknown task {', '.join(bad)}; use transcribe and/or translate")
    return names


def _item_id(lang: str, task: str, index: int, engine: str, voice: str, speed: float, pitch: int,
             text: str) -> str:
    key = json.dumps([engine, voice, speed, pitch, text], ensure_ascii=False)
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:10]
    return f"{lang}-{_TASK_TAG[task]}-{index:05d}-{digest}"


def _voices(engine: str, lang: str, voice_filter: VoiceFilter | None = None) -> list[str]:
    if engine == "espeak":
        base = tts.ESPEAK_LANG_VOICES[lang]
        voices = [f"{b}+{v}" for b in base for v in tts.ESPEAK_VARIANTS]
    elif engine == "kokoro-blend":
        voices = list(tts.KOKORO_BLENDS)
    else:
        voices = list(tts.KOKORO_VOICES)
    return voice_filter.apply(voices) if voice_filter else voices


@dataclass(frozen=True)
class VoiceFilter:
    """Which voices a corpus may use, so that a held-out set can have voices training never heard.

    Patterns match a voice name when they occur in it: ``+f5`` matches every espeak language voice
    with variant f5, ``jm_kumo`` one Kokoro voice.
    """

    only: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def apply(self, voices: list[str]) -> list[str]:
        kept = [v for v in voices if (not self.only or any(p in v for p in self.only))
                and not any(p in v for p in self.exclude)]
        return kept

    def describe(self) -> str:
        return f"only {','.join(self.only) or 'any'}, excluding {','.join(self.exclude) or 'none'}"


def plan_corpus(languages: str | Iterable[str], tasks: str | Iterable[str], n_per_pair: int, seed: int = 0,
                engines: str | Sequence[str] = ("espeak",), text_sources: Sequence[str] = texts.SOURCES,
                text_files: Mapping[str, str | os.PathLike] | None = None,
                voice_filter: VoiceFilter | None = None) -> list[PlanItem]:
    """The deterministic list of utterances; no audio is made.

    ``engines`` are resolved names (``espeak``, ``kokoro``); items alternate among them at random.
    ``text_files`` maps a language to a text file (one sentence per line) used for its
    transcribe items instead of the built-in sources. ``voice_filter`` restricts the voices.
    """
    langs = validate_languages(languages)
    task_list = validate_tasks(tasks)
    if isinstance(n_per_pair, bool) or not isinstance(n_per_pair, int) or n_per_pair < 1:
        raise CorpusError(f"items per (language, task) must be a positive integer, got {n_per_pair!r}")
    engine_list = resolve_engines(engines)
    for name in engine_list:
        if name not in tts.ENGINES:
            raise CorpusError(f"unknown TTS engine {name!r}; use one of {', '.join(tts.ENGINES)}")
    for name in engine_list:
        for lang in langs:
            if not _voices(name, lang, voice_filter):
                raise CorpusError(f"no {name} voice for {lang} is left by the voice filter "
                                  f"({voice_filter.describe()}): loosen --voices/--exclude-voices")
    text_files = dict(text_files or {})
    for lang in text_files:
        if lang not in langs:
            raise CorpusError(f"text file given for {lang}, which is not among the languages "
                              f"({', '.join(langs)})")
    pairs = [(lang, task) for lang in langs for task in task_list if not (task == "translate" and lang == "en")]
    if not pairs:
        raise CorpusError("nothing to build: translate is into English, so it needs a non-English "
                          "language (add e.g. --languages de) or the transcribe task")
    plan: list[PlanItem] = []
    for lang, task in pairs:
        if task == "translate":
            items = texts.translation_pairs(lang, n_per_pair, seed)
        else:
            items = texts.transcribe_texts(lang, n_per_pair, seed, sources=text_sources,
                                           text_file=text_files.get(lang))
        rng = random.Random(f"edgegate-voices:{seed}:{lang}:{task}")
        for index, item in enumerate(items):
            engine = engine_list[rng.randrange(len(engine_list))]
            voice = rng.choice(_voices(engine, lang, voice_filter))
            speed = round(rng.uniform(*SPEED_RANGE), 2)
            pitch = rng.randint(*PITCH_RANGE)
            plan.append(PlanItem(
                id=_item_id(lang, task, index, engine, voice, speed, pitch, item.text),
                lang=lang, task=task, text=item.text, reference=item.reference, engine=engine,
                voice=voice, speed=speed, pitch=pitch, source=item.source,
            ))
    return plan


def _duration(path: Path) -> float:
    with wave.open(str(path), "rb") as w:
        return round(w.getnframes() / w.getframerate(), 3)


def plan_entry(out_dir: str | os.PathLike, item: PlanItem, duration: float | None = None) -> ManifestEntry:
    """The manifest entry of one planned utterance (``duration`` once its audio exists)."""
    extra: dict = {"id": item.id}
    if item.task == "translate":
        extra["source_text"] = item.text
    extra.update(engine=item.engine, voice=item.voice, speed=item.speed, pitch=item.pitch)
    if duration is not None:
        extra["duration"] = duration
    extra["text_source"] = item.source
    return ManifestEntry(audio=str(item.wav_path(Path(out_dir))), lang=item.lang, task=item.task,
                         text=item.reference, extra=extra)


def manifest_entries(out_dir: str | os.PathLike, plan: Sequence[PlanItem]) -> list[ManifestEntry]:
    """Manifest entries for a plan whose audio exists."""
    out = Path(out_dir)
    entries = []
    for item in plan:
        wav = item.wav_path(out)
        if not wav.is_file():
            raise CorpusError(f"audio for {item.id} is missing ({wav}); rerun the build to make it")
        entries.append(plan_entry(out, item, _duration(wav)))
    return entries


def _clean_partials(out: Path, langs: Iterable[str]) -> int:
    removed = 0
    for lang in langs:
        folder = out / "audio" / lang
        if folder.is_dir():
            for p in folder.glob("*.tmp.wav"):
                p.unlink()
                removed += 1
    return removed


def write_plan(out_dir: str | os.PathLike, languages: str | Iterable[str] = SUPPORTED_LANGUAGES,
               tasks: str | Iterable[str] = TASKS, n_per_pair: int = 50, seed: int = 0,
               engines: str | Sequence[str] = ("espeak",), text_sources: Sequence[str] = texts.SOURCES,
               text_files: Mapping[str, str | os.PathLike] | None = None,
               voice_filter: VoiceFilter | None = None) -> Path:
    """Write ``out_dir/plan.jsonl``: what :func:`build_corpus` with these arguments would make, no audio.

    Its audio paths are where the build would put the wavs; read it with ``check_files=False``.
    """
    plan = plan_corpus(languages, tasks, n_per_pair, seed, engines, text_sources, text_files, voice_filter)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return write_manifest(out / "plan.jsonl", [plan_entry(out, item) for item in plan])


def build_corpus(out_dir: str | os.PathLike, languages: str | Iterable[str] = SUPPORTED_LANGUAGES,
                 tasks: str | Iterable[str] = TASKS, n_per_pair: int = 50, seed: int = 0,
                 engines: str | Sequence[str] = ("espeak",), progress: bool = True, workers: int = 2,
                 text_sources: Sequence[str] = texts.SOURCES,
                 text_files: Mapping[str, str | os.PathLike] | None = None,
                 voice_filter: VoiceFilter | None = None) -> Path:
    """Build (or resume) a synthetic corpus in ``out_dir``; returns the manifest's path.

    Raises ``CorpusError``/``TextSourceError``/``TTSError`` (all ``EdgegateError``) with the fix.
    """
    plan = plan_corpus(languages, tasks, n_per_pair, seed, engines, text_sources, text_files, voice_filter)
    engine_objs = {name: tts.get_engine(name) for name in sorted({it.engine for it in plan})}
    out = Path(out_dir)
    for lang in sorted({it.lang for it in plan}):
        (out / "audio" / lang).mkdir(parents=True, exist_ok=True)
    _clean_partials(out, {it.lang for it in plan})
    todo = [it for it in plan if not it.wav_path(out).is_file()]

    def work(item: PlanItem) -> None:
        engine_objs[item.engine].synthesize(item.text, item.lang, item.voice, item.speed, item.pitch,
                                            item.wav_path(out))

    from tqdm import tqdm

    bar = tqdm(total=len(plan), initial=len(plan) - len(todo), unit="utt", desc="synthesising",
               disable=not progress, file=sys.stderr)
    try:
        if todo:
            with ThreadPoolExecutor(max_workers=max(1, int(workers))) as pool:
                futures = {pool.submit(work, item) for item in todo}
                try:
                    for fut in as_completed(futures):
                        fut.result()  # re-raises the first failure
                        bar.update(1)
                except BaseException:
                    for fut in futures:
                        fut.cancel()
                    raise
    finally:
        bar.close()
    return write_manifest(out / "manifest.jsonl", manifest_entries(out, plan))
