"""``edgegate transcribe FILE...``: long-form transcription to text, json, srt, vtt or tsv."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from edgegate.dense_check import DENSE_CHECK, MODES
from edgegate.errors import EdgegateError
from edgegate.formats import EXTENSIONS, FORMATS, render, write_atomic
from edgegate.models.registry import DEFAULT_TRANSCRIBE_MODEL
from edgegate.pipeline import Segment, TranscriptionInfo, as_segments

HELP = """Transcribe or translate audio files with a (gated) Whisper model.

Any file libsndfile reads (wav, flac, ogg, mp3), any sample rate (resampled to 16 kHz), stereo
is mixed down. Audio of any length is decoded window by window as openai-whisper does
(timestamps, seeking to the last complete segment, temperature fallback); a file is read block
by block, so a 2-hour recording does not sit in memory. A bad file prints one error line and the
others are still transcribed; the exit code is 1 if any file failed.

examples:
  edgegate transcribe clip.wav --language en
  edgegate transcribe talk.flac --format srt --vad --output-dir subs/
  edgegate transcribe talk.flac --word-timestamps --format json
  edgegate transcribe interview.flac --task translate --format vtt
  edgegate transcribe clip.wav --budget 0.25                 # shipped gate predictor, PyTorch
  edgegate transcribe clip.wav --bundle bundles/whisper-base-cpu --budget 0.25   # torch-free runtime

--budget is the fraction of the gateable cost (FLOPs) to skip: 0 = dense, 0.5 = skip half.
With --bundle the torch-free runtime runs the exported bundle (its own predictor and default
budget) with the same long-form decoding (word timestamps from the bundle's alignment graphs);
without it, the PyTorch model with the gate set of --gates (default: the shipped one).

--audio-ctx: full = Whisper's 30-s encoder window; auto (default) = the model's own rule
(whisper-base-edge: the real length + 64 positions; a bundle's decoding.audio_ctx, a gate set's
trained margin; full otherwise); N = the real audio length plus N encoder positions (20 ms each).
Trimming needs the context tail of whisper-base-edge (or an edge-adapted model): the plain
whisper-base loops on short clips when its context is trimmed.
"""

AUDIO_CTX_HELP = ("encoder context: full (Whisper's 30 s), auto (the model's or bundle's own rule; default) or N "
                  "(the audio plus N positions of 20 ms); trimming needs whisper-base-edge (its context tail) or an "
                  "edge-adapted model, the plain whisper-base loops on short clips when trimmed")


def audio_ctx_arg(text: str) -> int | str:
    """``--audio-ctx full|auto|N``."""
    value = text.strip().lower()
    if value in ("full", "auto"):
        return value
    if value.isdigit() and int(value) <= 1500:
        return int(value)
    raise argparse.ArgumentTypeError(f"expected full, auto or a margin N of 0..1500 encoder positions, got {text!r}")


def _temperatures(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number or a comma-separated list of numbers: {text!r}") from None
    if not values or any(not 0 <= v <= 2 for v in values):
        raise argparse.ArgumentTypeError(f"temperatures must lie in [0, 2], got {text!r}")
    return values


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("transcribe", help="transcribe or translate audio files", description=HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", metavar="FILE", help="audio files")
    p.add_argument("--model", default=DEFAULT_TRANSCRIBE_MODEL,
                   help="registered model name or a checkpoint path: CTranslate2 dir, transformers dir, "
                        f"OpenAI .pt, OWSM (ESPnet) dir (default: {DEFAULT_TRANSCRIBE_MODEL}, whisper-base as shipped "
                        "with the install, its encoder on the real audio length; whisper-base: always 30 s)")
    p.add_argument("--language", default=None,
                   help="language code or name (en, de, German...); default: detect from the first 30 s")
    p.add_argument("--task", choices=("transcribe", "translate"), default="transcribe",
                   help="transcribe in the spoken language, or translate to English")
    p.add_argument("--bundle", default=None, metavar="DIR",
                   help="run an exported bundle on the torch-free runtime instead of the PyTorch model")
    p.add_argument("--backend", default="auto", help="runtime backend for --bundle: auto, onnxruntime, executorch")
    p.add_argument("--budget", type=float, default=None,
                   help="fraction of gateable cost to skip, in [0, 1) (default: dense, or the bundle's profile)")
    p.add_argument("--gates", default=None,
                   help="gate set for --budget without --bundle: a train-gates output dir or a shipped name "
                        "(default: the shipped set trained on --model: whisper-base-decoder, which holds quality "
                        "up to ~0.25, or whisper-base-edge-decoder for whisper-base-edge)")
    p.add_argument("--beam-size", type=int, default=1, help="1 = greedy (default); 5 = Whisper's beam search")
    p.add_argument("--format", choices=FORMATS, default="text", help="output format (default: text)")
    p.add_argument("--output-dir", default=None, metavar="DIR",
                   help="write one file per input into DIR (NAME.txt/.json/.srt/.vtt/.tsv, written atomically) "
                        "instead of printing")
    p.add_argument("--word-timestamps", action="store_true", help="time every word (cross-attention + DTW)")
    p.add_argument("--vad", action="store_true",
                   help="decode only the speech found by a voice-activity detector (Silero if installed, "
                        "else the energy detector); times stay those of the original audio")
    p.add_argument("--temperature", type=_temperatures, default=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0), metavar="T[,T...]",
                   help="decoding temperature, or the fallback sequence (default: 0,0.2,0.4,0.6,0.8,1)")
    p.add_argument("--condition-on-previous-text", action=argparse.BooleanOptionalAction, default=True,
                   help="prompt each window with the text before it (default: on)")
    p.add_argument("--initial-prompt", default=None, metavar="TEXT", help="text to prompt the first window with")
    p.add_argument("--dense-check", choices=MODES, default=DENSE_CHECK,
                   help="loops (default) = a window that loops is decoded again: by the dense decoder (with "
                        "--budget), then on the full 30-s window when the encoder context is trimmed (--audio-ctx); "
                        "all = the gated decoder's end of text is checked too (better transcripts, slower); "
                        "off = the plan alone, no fallback")
    p.add_argument("--audio-ctx", type=audio_ctx_arg, default="auto", metavar="full|auto|N", help=AUDIO_CTX_HELP)
    p.add_argument("--max-duration", type=float, default=None, metavar="S",
                   help="refuse files longer than S seconds before decoding them (default: no limit)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.set_defaults(func=run)


Transcribe = Callable[[str], tuple[Iterator[Segment], TranscriptionInfo]]


def load_transcriber(args: argparse.Namespace) -> Transcribe:
    """The one transcription function this invocation uses: runtime bundle, gated or dense PyTorch."""
    opts: dict[str, Any] = {"language": args.language, "task": args.task, "beam_size": args.beam_size,
                            "audio_ctx": args.audio_ctx}
    long_opts = {"temperature": args.temperature, "word_timestamps": args.word_timestamps, "vad_filter": args.vad,
                 "condition_on_previous_text": args.condition_on_previous_text,
                 "initial_prompt": args.initial_prompt, "dense_check": args.dense_check}
    if args.bundle:
        return _bundle_transcriber(args, {**opts, **long_opts})
    from edgegate.models.owsm_config import is_owsm_dir
    from edgegate.models.registry import resolve_model, tokenizer_path
    from edgegate.tokenizer import WhisperTokenizer

    if is_owsm_dir(resolve_model(args.model)):
        return _owsm_transcriber(args, opts)
    if args.language is not None:  # fail once, before loading weights or reading any file
        WhisperTokenizer.from_file(tokenizer_path(resolve_model(args.model))).normalize_language(args.language)
    if args.budget:
        from edgegate.budget import validate_budget
        from edgegate.gate_set import default_gate_set
        from edgegate.gated import load_gated

        budget = validate_budget(args.budget)
        gated = load_gated(args.gates or default_gate_set(args.model), model=args.model, threads=args.threads)
        # The encoder context the gates were trained with (gates.json): training and inference must agree.
        return lambda path: gated.transcribe(path, budget=budget, **opts, **long_opts)
    from edgegate.transcriber import WhisperModel

    model = WhisperModel(args.model, threads=args.threads)
    return lambda path: model.transcribe(path, **opts, **long_opts)


def _bundle_transcriber(args: argparse.Namespace, opts: dict[str, Any]) -> Transcribe:
    """The runtime Session: the same long-form transcribe() as the PyTorch model."""
    from edgegate.runtimes import Session

    session = Session.load(args.bundle, backend=args.backend, budget=args.budget, threads=args.threads)
    if args.language is not None:  # fail once, before reading any file
        session.tokenizer.normalize_language(args.language)
    if args.word_timestamps and session.alignment is None:  # fail once, before reading any file
        from edgegate.runtimes.alignment import missing

        raise missing(session.bundle)
    return lambda path: session.transcribe(path, **opts)


def _fixed_window_transcriber(run: Callable[..., Any], opts: dict[str, Any]) -> Transcribe:
    """A fixed-window ``run(samples, rate, **opts) -> Transcription`` in the ``(segments, info)`` shape."""
    from edgegate.audio import load_audio

    def transcribe(path: str) -> tuple[Iterator[Segment], TranscriptionInfo]:
        return as_segments(run(load_audio(path), 16000, **opts))

    return transcribe


def _owsm_transcriber(args: argparse.Namespace, opts: dict[str, Any]) -> Transcribe:
    """An OWSM (ESPnet) checkpoint directory, dense, on the PyTorch path: fixed windows without timestamps."""
    from edgegate.models.owsm_transcriber import OwsmModel

    if args.budget or args.word_timestamps or args.vad or args.initial_prompt:
        raise EdgegateError("--budget, --word-timestamps, --vad and --initial-prompt are Whisper-only for now; "
                            "drop them for an OWSM model")
    opts = {k: v for k, v in opts.items() if k != "audio_ctx"}  # OWSM's encoder always sees its whole window
    model = OwsmModel(args.model, threads=args.threads)
    if args.language is not None:  # fail once, before reading any file
        model.tokenizer.normalize_language(args.language)
    return _fixed_window_transcriber(model.transcribe, opts)


def _check_duration(path: str, max_seconds: float | None) -> None:
    if not max_seconds:
        return
    from edgegate.audiostream import FileSource

    source = FileSource(path)
    if source.duration > max_seconds:
        raise EdgegateError(f"{path}: audio is {source.duration:.2f} s long, over the --max-duration "
                            f"{max_seconds:g} limit; raise or drop --max-duration")


def transcribe_file(path: str, transcribe: Transcribe, show_progress: bool) -> tuple[list[Segment], TranscriptionInfo]:
    """Run one file to the end, with a progress bar over its audio duration (and ETA) on a terminal."""
    from tqdm import tqdm

    segments, info = transcribe(path)
    out: list[Segment] = []
    with tqdm(total=round(info.duration, 2), unit="s", disable=not show_progress, leave=False,
              desc=Path(path).name, bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} s [{elapsed}<{remaining}]") as bar:
        for segment in segments:
            out.append(segment)
            bar.update(max(0.0, min(segment.end, info.duration) - bar.n))
        bar.update(max(0.0, info.duration - bar.n))
    return out, info


def run(args: argparse.Namespace) -> int:
    transcribe = load_transcriber(args)
    failed = 0
    tty = sys.stderr.isatty()
    for path in args.files:
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                _check_duration(path, args.max_duration)
                segments, info = transcribe_file(path, transcribe, tty)
            for w in caught:
                print(f"warning: {w.message}", file=sys.stderr)
        except EdgegateError as exc:
            failed += 1
            print(f"error: {exc}", file=sys.stderr)
            continue
        text = render(args.format, segments, info, {"file": path})
        if args.output_dir:
            target = Path(args.output_dir) / f"{Path(path).stem}.{EXTENSIONS[args.format]}"
            write_atomic(target, text)
            print(f"wrote {target}", file=sys.stderr)
        else:
            print(text, file=sys.stdout, flush=True)
    return 1 if failed else 0
