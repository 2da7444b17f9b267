"""Live microphone transcription in ~100 lines, on edgegate's public API (``edgegate.live``).

What ``edgegate live`` does, stripped to its bones, to read or to copy into your own program:
load a transcriber (a bundle on the torch-free runtime, or the PyTorch model), wrap it in a
``LiveTranscriber`` (voice-activity segmentation, partial and final lines), and iterate over
the events it yields for a source (the microphone, or a file replayed like one).

    python apps/live_transcribe.py --language en                      # default microphone
    python apps/live_transcribe.py --bundle bundles/whisper-base-cpu --budget 0.3
    python apps/live_transcribe.py --input talk.wav --fast            # replay a file

Keys while it runs (in a terminal): + / - change the budget by 0.1, q stops.
"""

from __future__ import annotations

import argparse
import sys

from edgegate.errors import EdgegateError
from edgegate.live import (
    FileSource,
    Final,
    KeyReader,
    LiveTranscriber,
    MicSource,
    Notice,
    Partial,
    load_transcriber,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", help="bundle directory (torch-free runtime); default: PyTorch whisper-base")
    parser.add_argument("--language", default=None, help="e.g. en (default: detect per utterance)")
    parser.add_argument("--budget", type=float, default=None, help="fraction of the gateable cost to skip")
    parser.add_argument("--device", default=None, help="input device index or name")
    parser.add_argument("--input", default=None, help="replay this file instead of the microphone")
    parser.add_argument("--fast", action="store_true", help="with --input: as fast as possible")
    args = parser.parse_args(argv)

    try:
        # 1. The audio source: a microphone, or a file fed through the same queue in 0.1-s blocks.
        if args.input:
            source = FileSource(args.input, realtime=not args.fast)
        else:
            device = int(args.device) if args.device and args.device.isdigit() else args.device
            source = MicSource(device)

        # 2. The model and the live engine around it.
        transcriber = load_transcriber(bundle=args.bundle, threads=2)
        live = LiveTranscriber(transcriber, language=args.language, budget=args.budget)
        live.warmup()
    except EdgegateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    # 3. Keys: the budget can change between utterances, from another thread.
    def on_key(key: str) -> None:
        if key in "+-":
            try:
                print(f"\nbudget {live.step_budget(0.1 if key == '+' else -0.1):.1f}", file=sys.stderr)
            except EdgegateError as exc:
                print(f"\n{exc}", file=sys.stderr)
        elif key == "q":
            live.stop()

    keys = KeyReader(on_key)
    keys.start()  # does nothing when stdin is not a terminal

    # 4. The events: partials overwrite one line, finals are printed for good.
    try:
        for event in live.run(source):
            if isinstance(event, Partial):
                print(f"\r\033[K… {event.text[-100:]}", end="", file=sys.stderr, flush=True)
            elif isinstance(event, Final):
                print("\r\033[K", end="", file=sys.stderr)
                print(f"{event.text}   [{event.latency:.2f} s, {event.modules()}]", flush=True)
            elif isinstance(event, Notice):
                print(f"\r\033[K{event.message}", file=sys.stderr)
    except KeyboardInterrupt:
        pass  # stop() would let the current utterance finish; Ctrl-C here just quits
    finally:
        keys.stop()

    # 5. What it cost.
    print(live.summary.format(), file=sys.stderr)
    return 1 if live.summary.error else 0


if __name__ == "__main__":
    sys.exit(main())
