"""``edgegate transcribe FILE...``: one line of text per file (or JSON / SRT)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from edgegate.errors import EdgegateError
from edgegate.pipeline import Transcription

HELP = """Transcribe or translate audio files with a (gated) Whisper model.

Any file libsndfile reads (wav, flac, ogg, mp3), any sample rate (resampled to 16 kHz), stereo
is mixed down, long audio is processed in 30-s windows. A bad file prints one error line and
the others are still transcribed; the exit code is 1 if any file failed.

examples:
  edgegate transcribe clip.wav --language en
  edgegate transcribe interview.flac --task translate --format srt
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("transcribe", help="transcribe or translate audio files", description=HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", metavar="FILE", help="audio files")
    p.add_argument("--model", default="whisper-base",
                   help="registered model name or a checkpoint path: CTranslate2 dir, transformers dir, "
                        "OpenAI .pt (default: whisper-base, shipped with the install)")
    p.add_argument("--language", default=None,
                   help="language code or name (en, de, German...); default: detect from the first 30 s")
    p.add_argument("--task", choices=("transcribe", "translate"), default="transcribe",
                   help="transcribe in the spoken language, or translate to English")
    p.add_argument("--beam-size", type=int, default=1, help="1 = greedy (default); 5 = Whisper's beam search")
    p.add_argument("--format", choices=("text", "json", "srt"), default="text", help="output format")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.set_defaults(func=run)


def _srt_time(t: float) -> str:
    ms = int(round(t * 1000))
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"


def format_result(path: str, result: Transcription, fmt: str) -> str:
    if fmt == "json":
        data = asdict(result)
        data["file"] = path
        return json.dumps(data, ensure_ascii=False)
    if fmt == "srt":
        return "\n".join(f"{i}\n{_srt_time(s.start)} --> {_srt_time(s.end)}\n{s.text}\n"
                         for i, s in enumerate(result.segments, start=1))
    return result.text


def run(args: argparse.Namespace) -> int:
    from edgegate.models.registry import resolve_model, tokenizer_path
    from edgegate.tokenizer import WhisperTokenizer

    if args.language is not None:  # fail once, before loading weights or reading any file
        WhisperTokenizer.from_file(tokenizer_path(resolve_model(args.model))).normalize_language(args.language)
    from edgegate.transcriber import WhisperModel

    model = WhisperModel(args.model, threads=args.threads)
    failed = 0
    for path in args.files:
        try:
            result = model.transcribe(path, language=args.language, task=args.task, beam_size=args.beam_size)
        except EdgegateError as exc:
            failed += 1
            print(f"error: {exc}", file=sys.stderr)
            continue
        print(format_result(path, result, args.format), flush=True)
    return 1 if failed else 0
