"""``edgegate transcribe FILE...``: one line of text per file (or JSON / SRT)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import asdict

import numpy as np

from edgegate.errors import EdgegateError
from edgegate.pipeline import Transcription

HELP = """Transcribe or translate audio files with a (gated) Whisper model.

Any file libsndfile reads (wav, flac, ogg, mp3), any sample rate (resampled to 16 kHz), stereo
is mixed down, long audio is processed in 30-s windows. A bad file prints one error line and
the others are still transcribed; the exit code is 1 if any file failed.

examples:
  edgegate transcribe clip.wav --language en
  edgegate transcribe interview.flac --task translate --format srt
  edgegate transcribe clip.wav --budget 0.25                 # shipped gate predictor, PyTorch
  edgegate transcribe clip.wav --bundle bundles/whisper-base-cpu --budget 0.25   # torch-free runtime

--budget is the fraction of the gateable cost (FLOPs) to skip: 0 = dense, 0.5 = skip half.
With --bundle the torch-free runtime runs the exported bundle (its own predictor and default
budget); without it, the PyTorch model with the gate set of --gates (default: the shipped one).
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
    p.add_argument("--bundle", default=None, metavar="DIR",
                   help="run an exported bundle on the torch-free runtime instead of the PyTorch model")
    p.add_argument("--backend", default="auto", help="runtime backend for --bundle: auto, onnxruntime, executorch")
    p.add_argument("--budget", type=float, default=None,
                   help="fraction of gateable cost to skip, in [0, 1) (default: dense, or the bundle's profile)")
    p.add_argument("--gates", default="whisper-base-decoder",
                   help="gate set for --budget without --bundle: a train-gates output dir or a shipped name "
                        "(default: whisper-base-decoder, the shipped set that holds quality up to ~0.25)")
    p.add_argument("--beam-size", type=int, default=1, help="1 = greedy (default); 5 = Whisper's beam search")
    p.add_argument("--format", choices=("text", "json", "srt"), default="text", help="output format")
    p.add_argument("--max-duration", type=float, default=3600.0, metavar="S",
                   help="refuse files longer than S seconds before decoding them (default: 3600; 0 = no limit)")
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


def load_transcriber(args: argparse.Namespace) -> Callable[[np.ndarray], Transcription]:
    """The one transcription function this invocation uses: runtime bundle, gated or dense PyTorch."""
    opts = {"language": args.language, "task": args.task, "beam_size": args.beam_size}
    if args.bundle:
        from edgegate.runtimes import Session

        session = Session.load(args.bundle, backend=args.backend, budget=args.budget, threads=args.threads)
        return lambda samples: session.transcribe(samples, 16000, **opts)
    from edgegate.models.registry import resolve_model, tokenizer_path
    from edgegate.tokenizer import WhisperTokenizer

    if args.language is not None:  # fail once, before loading weights or reading any file
        WhisperTokenizer.from_file(tokenizer_path(resolve_model(args.model))).normalize_language(args.language)
    if args.budget:
        from edgegate.budget import validate_budget
        from edgegate.gated import load_gated

        budget = validate_budget(args.budget)
        gated = load_gated(args.gates, model=args.model, threads=args.threads)
        # The encoder context the gates were trained with (gates.json): training and inference must agree.
        return lambda samples: gated.transcribe(samples, 16000, budget=budget, **opts)
    from edgegate.transcriber import WhisperModel

    model = WhisperModel(args.model, threads=args.threads)
    return lambda samples: model.transcribe(samples, 16000, **opts)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from edgegate.audio import load_audio

    transcribe = load_transcriber(args)
    failed = 0
    max_seconds = args.max_duration or None
    progress = tqdm(args.files, unit="file", disable=len(args.files) < 2 or not sys.stderr.isatty(), leave=False)
    for path in progress:
        try:
            result = transcribe(load_audio(path, max_seconds=max_seconds))
        except EdgegateError as exc:
            failed += 1
            progress.write(f"error: {exc}", file=sys.stderr)
            continue
        progress.write(format_result(path, result, args.format), file=sys.stdout)
    return 1 if failed else 0
