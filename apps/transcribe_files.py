"""Transcribe audio files, one line per file (or per utterance with --split), with timing.

A batch job on edgegate's public API: the same transcriber object works for a bundle on the
torch-free runtime and for the PyTorch model. With ``--split`` a long recording is first cut
into utterances by the voice-activity detector of the live path (``edgegate.vad``), so that
each utterance is transcribed on its own (no 30-s window boundary through a word, and silence
costs nothing). A bad file prints one error line; the others are still transcribed.

    python apps/transcribe_files.py clips/*.wav --language en
    python apps/transcribe_files.py meeting.flac --split --bundle bundles/whisper-base-cpu --budget 0.3
    python apps/transcribe_files.py a.wav b.wav --jsonl > out.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from edgegate.audio import load_audio
from edgegate.errors import EdgegateError
from edgegate.live import load_transcriber
from edgegate.vad import make_detector, segment_audio


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", help="audio files (wav, flac, ogg, mp3; any rate)")
    parser.add_argument("--bundle", help="bundle directory (torch-free runtime); default: PyTorch whisper-base")
    parser.add_argument("--language", default=None, help="e.g. en (default: detect)")
    parser.add_argument("--task", choices=("transcribe", "translate"), default="transcribe")
    parser.add_argument("--budget", type=float, default=None, help="fraction of the gateable cost to skip")
    parser.add_argument("--split", action="store_true", help="cut each file into utterances with the VAD first")
    parser.add_argument("--jsonl", action="store_true", help="one JSON object per line")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    try:
        transcriber = load_transcriber(bundle=args.bundle, threads=args.threads)
    except EdgegateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    failed, audio_seconds, compute_seconds = 0, 0.0, 0.0
    for path in args.files:
        try:
            samples = load_audio(path)
            # (start, samples) pieces: the whole file, or one per utterance
            pieces = [(0.0, samples)]
            if args.split:
                pieces = [(u.start_s, u.audio) for u in segment_audio(samples, make_detector("auto"))]
            for start, audio in pieces:
                t0 = time.perf_counter()
                # final=True: the long-form decoding of transcribe() (timestamps, fallback, loop guard)
                result = transcriber.transcribe(audio, 16000, language=args.language, task=args.task,
                                                budget=args.budget, final=True)
                seconds = time.perf_counter() - t0
                compute_seconds += seconds
                kept = f"{sum(result.mask)}/{len(result.mask)}" if result.mask is not None else "dense"
                if args.jsonl:
                    print(json.dumps({"file": path, "start": round(start, 3), "text": result.text,
                                      "language": result.language, "seconds": round(seconds, 3),
                                      "modules": kept}, ensure_ascii=False), flush=True)
                elif args.split:
                    print(f"{path} [{start:7.2f}] {result.text}", flush=True)
                else:
                    print(f"{path}: {result.text}", flush=True)
            audio_seconds += len(samples) / 16000
        except EdgegateError as exc:
            failed += 1
            print(f"error: {exc}", file=sys.stderr)
    if audio_seconds:
        print(f"{len(args.files) - failed} files, {audio_seconds:.1f} s of audio in {compute_seconds:.1f} s "
              f"(real-time factor {compute_seconds / audio_seconds:.2f})", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
