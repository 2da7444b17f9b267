"""``edgegate live``: transcribe the microphone (or replay a file) with partial and final lines."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from edgegate.commands.transcribe import AUDIO_CTX_HELP, audio_ctx_arg
from edgegate.dense_check import DENSE_CHECK, MODES
from edgegate.errors import EdgegateError
from edgegate.models.registry import DEFAULT_TRANSCRIBE_MODEL

HELP = """Live transcription from a microphone, one line per utterance.

Audio is captured with PortAudio (sounddevice) at 16 kHz mono (or the device's rate, resampled),
cut into utterances by a voice-activity detector (Silero VAD when the silero-vad wheel is
installed, else an energy detector with hysteresis), and transcribed by a bundle on the
torch-free runtime (--bundle) or the PyTorch model (--model). While someone speaks, the
utterance so far is re-transcribed about once a second on one updating line (shown when
stderr is a terminal); when they stop, the final line is printed with the latency from the
end of speech to the text and the number of modules that ran. At the end (Ctrl-C, 'q', or the
end of --input) a summary: utterances, audio seconds, real-time factor, median latency.

keys (when stdin is a terminal):  + / -  raise / lower the budget by 0.1 (bundles with a gate
predictor);  q  stop after the current utterance.  Ctrl-C also stops; twice quits at once.

--input FILE replays a file through exactly the same path as the microphone (a reader thread
feeds the same queue in 0.1-s blocks) at real-time pace; add --fast to replay as fast as the
model allows, with latencies measured on a simulated clock (what a real-time run would see).

examples:
  edgegate live --list-devices
  edgegate live --bundle bundles/whisper-base-cpu --language en --budget 0.3
  edgegate live --model whisper-base --device 2 --language en
  edgegate live --input meeting.wav --fast --language en --format jsonl
"""


def _device(value: str) -> int | str:
    return int(value) if value.strip().lstrip("-").isdigit() else value


def _seconds(value: str) -> float:
    try:
        v = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {value!r}") from None
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {value!r}")
    return v


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--bundle", metavar="DIR", default=None,
                     help="bundle written by edgegate export, run on the torch-free runtime")
    src.add_argument("--model", default=None,
                     help="PyTorch model: a registered name or checkpoint path (default: whisper-base-edge)")
    p.add_argument("--language", default=None, help="language code or name (default: detect per utterance)")
    p.add_argument("--task", choices=("transcribe", "translate"), default="transcribe",
                   help="transcribe in the spoken language, or translate to English")
    p.add_argument("--budget", type=float, default=None,
                   help="fraction of the gateable cost to skip, in [0, 1) (default: the bundle's profile; "
                        "needs a bundle with a gate predictor); change it while running with + and -")
    p.add_argument("--device", type=_device, default=None, metavar="N",
                   help="input device index or name substring (default: the system's default input)")
    p.add_argument("--list-devices", action="store_true", help="list the audio input devices and exit")
    p.add_argument("--input", metavar="FILE", default=None,
                   help="replay an audio file instead of the microphone (same path, real-time pace)")
    p.add_argument("--fast", action="store_true",
                   help="with --input: replay as fast as possible, latencies on a simulated clock")
    p.add_argument("--vad", choices=("auto", "energy", "silero"), default="auto",
                   help="voice-activity detector (auto: silero when installed, else energy)")
    p.add_argument("--min-silence", type=_seconds, default=0.5, metavar="S",
                   help="a pause this long ends an utterance (default 0.5)")
    p.add_argument("--max-utterance", type=_seconds, default=25.0, metavar="S",
                   help="cut utterances longer than this (default 25)")
    p.add_argument("--no-partials", action="store_true", help="only final lines, no re-transcription while speaking")
    p.add_argument("--partial-interval", type=_seconds, default=1.0, metavar="S",
                   help="re-transcribe the growing utterance every S seconds of audio (default 1.0)")
    p.add_argument("--audio-ctx", type=audio_ctx_arg, default="auto", metavar="full|auto|N",
                   help=AUDIO_CTX_HELP + "; much faster on short utterances")
    p.add_argument("--dense-check", choices=MODES, default=None,
                   help=f"{DENSE_CHECK} (default) = an utterance that loops is decoded again: by the dense decoder "
                        "(with a budget), on the full 30-s window (a trimmed context); all = the gated decoder's end "
                        "of text is checked too; off = the plan alone")
    p.add_argument("--format", choices=("text", "jsonl"), default="text",
                   help="text: '[start -> end] text  (latency, modules)'; jsonl: one JSON object per event")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for the model (default: all cores)")
    p.add_argument("--backend", default="auto", help="runtime backend for --bundle (default: the profile's first)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("live", help="live transcription from a microphone (or a replayed file)", description=HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run)


def list_devices(console) -> int:
    from edgegate.live import NO_DEVICE_MESSAGE, list_input_devices

    try:
        devices = list_input_devices()
    except EdgegateError as exc:
        console.info(f"{NO_DEVICE_MESSAGE} ({exc})")
        return 1
    if not devices:
        console.info(NO_DEVICE_MESSAGE)
        return 1
    print("input devices (use --device N):", file=console.out)
    for d in devices:
        mark = "  (default)" if d["default"] else ""
        print(f"  {d['index']:3d}  {d['name']}  [{d['hostapi']}, {d['channels']} ch, "
              f"{d['default_samplerate']:.0f} Hz]{mark}", file=console.out)
    return 0


# --------------------------------------------------------------------------- run


def _source(args: argparse.Namespace):
    """The audio source, opened before the model loads: a bad file or a missing device fails in a second."""
    from edgegate.live import NO_DEVICE_MESSAGE, FileSource, MicSource, list_input_devices

    if args.fast and not args.input:
        raise EdgegateError("--fast only applies to --input FILE replay; drop --fast or add --input FILE")
    if args.input:
        return FileSource(args.input, realtime=not args.fast)
    if not list_input_devices():
        raise EdgegateError(NO_DEVICE_MESSAGE)
    return MicSource(args.device)


def _live(args: argparse.Namespace, vad_config):
    from edgegate.live import LiveTranscriber, load_transcriber

    transcriber = load_transcriber(args.bundle, args.model or DEFAULT_TRANSCRIBE_MODEL, threads=args.threads,
                                   backend=args.backend)
    return LiveTranscriber(transcriber, language=args.language, task=args.task, budget=args.budget, vad=args.vad,
                           vad_config=vad_config, partials=not args.no_partials,
                           partial_interval=args.partial_interval, audio_ctx=args.audio_ctx,
                           partial_ctx=args.audio_ctx, dense_check=args.dense_check)


def run(args: argparse.Namespace, console=None) -> int:
    from edgegate.live import Console, KeyReader, budget_keys, show_event
    from edgegate.vad import VadConfig

    console = console or Console(args.format)
    if args.list_devices:
        return list_devices(console)
    vad_config = VadConfig(min_silence=args.min_silence, max_utterance=args.max_utterance,
                           post_pad=min(0.2, args.min_silence)).validate()
    source = _source(args)
    live = _live(args, vad_config)
    warm = live.warmup()  # also validates --language and --budget before the microphone opens
    interrupted = {"n": 0}

    def on_sigint(signum, frame):
        interrupted["n"] += 1
        if interrupted["n"] > 1:
            raise KeyboardInterrupt
        console.info("stopping after the current utterance (Ctrl-C again to quit now)")
        live.stop()

    keys = KeyReader(budget_keys(live, console))
    old_handler = None
    if threading.current_thread() is threading.main_thread():
        old_handler = signal.signal(signal.SIGINT, on_sigint)
    try:
        has_keys = keys.start()
        default = getattr(live.transcriber, "default_budget", None)
        budget = f"{live.budget:.1f}" if live.budget is not None else (
            "dense" if default is None else f"{default:.1f} (profile)")
        console.info(f"model: {live.describe()}; vad: {live.detector.name}; budget: {budget}; warm-up {warm:.1f} s"
                     + ("; keys: + / - budget, q quit" if has_keys else "") + "; Ctrl-C stops")
        for event in live.run(source):
            show_event(console, event)
    except KeyboardInterrupt:  # the second Ctrl-C: quit now, but still say what was done
        console.info("interrupted")
        console.info(live.summary.format())
        return 130
    finally:
        keys.stop()
        if old_handler is not None:
            signal.signal(signal.SIGINT, old_handler)
    summary = live.summary
    console.info(summary.format())
    return 1 if summary.error else 0


def main(argv: list[str] | None = None) -> int:
    """``python -m edgegate.commands.live ...`` = ``edgegate live ...`` (same parsing and error handling)."""
    from edgegate.cli import main as cli_main

    return cli_main(["live", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
