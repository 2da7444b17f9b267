"""Soak test: N utterances through one transcriber, resident memory sampled as it goes.

Transcribes the 5 LibriVox clips of Debian's pocketsphinx-testdata cyclically, ``--n`` times in
all (default 1000), with the torch-free runtime when ``--bundle`` is given, else the PyTorch
model, through the same adapter the live path uses (:func:`edgegate.live.load_transcriber`).
Every ``--every`` utterances it reads VmRSS (and the peak, VmHWM) from /proc/self/status. The
reference point is the RSS after ``--warmup`` utterances (allocator pools, caches and lazily
initialised kernels settle in the first few); the target (DESIGN.md section 6: bounded memory,
no growth over 1,000 utterances) is an end RSS within 5% of it. The least-squares slope of RSS
over the post-warm-up samples (KiB per utterance) is reported too, as is whether every clip
gave the same text each time. Results go to benchmarks/results/soak.json (atomic write).

Exit status: 0 when RSS stayed within the tolerance, 1 when it grew, 2 when the clips or
/proc are missing.

    python benchmarks/soak_runtime.py --n 100                       # PyTorch whisper-base
    python benchmarks/soak_runtime.py --bundle bundles/whisper-base-cpu --budget 0.3
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from common import write_json_atomic

from edgegate.data.librivox import DEFAULT_DIR, load_clips

RESULTS = Path(__file__).resolve().parent / "results" / "soak.json"


def status_kib(field: str) -> int | None:
    """A field of /proc/self/status in KiB (VmRSS, VmHWM), or None where /proc is missing."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--bundle", type=Path, default=None, help="bundle on the torch-free runtime")
    src.add_argument("--model", default="whisper-base", help="PyTorch model (default whisper-base)")
    parser.add_argument("--n", type=int, default=1000, help="utterances in all (default 1000)")
    parser.add_argument("--every", type=int, default=None, help="sample RSS every k utterances (default n/20)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="utterances before the reference RSS (default: max(10, n/10))")
    parser.add_argument("--budget", type=float, default=None, help="budget (bundles with a gate predictor)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    parser.add_argument("--tolerance", type=float, default=0.05, help="allowed RSS growth (default 0.05 = 5%%)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DIR, help="folder with the wavs and 'transcription'")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON results (default {RESULTS})")
    args = parser.parse_args(argv)
    if args.n < 2:
        parser.error("--n must be at least 2")
    every = args.every or max(1, args.n // 20)
    warmup = args.warmup if args.warmup is not None else max(10, args.n // 10)
    warmup = min(warmup, args.n - 1)

    if not (args.data / "transcription").exists():
        print("error: LibriVox clips not found; apt-get install pocketsphinx-testdata or pass --data DIR",
              file=sys.stderr)
        return 2
    if status_kib("VmRSS") is None:
        print("error: /proc/self/status has no VmRSS (not Linux?)", file=sys.stderr)
        return 2

    from edgegate.audio import load_audio
    from edgegate.errors import EdgegateError
    from edgegate.live import load_transcriber
    from edgegate.textnorm import wer

    clips = load_clips(args.data)
    audios = [load_audio(wav) for _, wav, _ in clips]
    rss_start = status_kib("VmRSS")
    try:
        t0 = time.perf_counter()
        transcriber = load_transcriber(args.bundle, args.model, threads=args.threads)
        load_seconds = time.perf_counter() - t0
    except EdgegateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    rss_loaded = status_kib("VmRSS")
    describe = transcriber.describe()
    print(f"{describe}: {args.n} utterances over {len(clips)} clips, RSS every {every}, warm-up {warmup}, "
          f"RSS after load {rss_loaded / 1024:.0f} MiB", file=sys.stderr)

    samples: list[dict] = []
    first_text: dict[int, str] = {}
    changed = 0
    seconds: list[float] = []
    audio_seconds = 0.0
    rss_warm = None
    wall0 = time.perf_counter()
    try:
        for i in range(args.n):
            k = i % len(clips)
            t = time.perf_counter()
            result = transcriber.transcribe(audios[k], 16000, language="en", budget=args.budget)
            seconds.append(time.perf_counter() - t)
            audio_seconds += len(audios[k]) / 16000
            if k not in first_text:
                first_text[k] = result.text
            elif result.text != first_text[k]:
                changed += 1
            done = i + 1
            if done == warmup:
                rss_warm = status_kib("VmRSS")
            if done % every == 0 or done == args.n or done == warmup:
                rss = status_kib("VmRSS")
                samples.append({"utterances": done, "rss_kib": rss, "hwm_kib": status_kib("VmHWM"),
                                "seconds": time.perf_counter() - wall0})
                print(f"  {done:5d}/{args.n}  RSS {rss / 1024:7.1f} MiB  "
                      f"mean {np.mean(seconds[-every:]):.2f} s/utt", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"interrupted after {len(seconds)} utterances", file=sys.stderr)
    except EdgegateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    wall = time.perf_counter() - wall0
    if not samples:
        print("error: no samples were taken", file=sys.stderr)
        return 1

    rss_end = samples[-1]["rss_kib"]
    ref = rss_warm or samples[0]["rss_kib"]
    growth = (rss_end - ref) / ref
    post = [s for s in samples if s["utterances"] >= warmup]
    slope = None
    if len(post) >= 2:
        x = np.array([s["utterances"] for s in post], float)
        y = np.array([s["rss_kib"] for s in post], float)
        slope = float(np.polyfit(x, y, 1)[0])
    refs = [clips[i % len(clips)][2] for i in range(len(clips))]
    hyps = [first_text.get(i, "") for i in range(len(clips))]
    flat = growth <= args.tolerance
    result = {
        "benchmark": "soak",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "transcriber": describe,
        "budget": args.budget,
        "threads": args.threads,
        "utterances": len(seconds),
        "requested": args.n,
        "audio_seconds": audio_seconds,
        "wall_seconds": wall,
        "rtf": sum(seconds) / audio_seconds if audio_seconds else None,
        "seconds_per_utterance": {"mean": float(np.mean(seconds)), "median": float(np.median(seconds)),
                                  "p90": float(np.percentile(seconds, 90)), "max": float(np.max(seconds))},
        "load_seconds": load_seconds,
        "rss_start_kib": rss_start,
        "rss_loaded_kib": rss_loaded,
        "warmup_utterances": warmup,
        "rss_warm_kib": ref,
        "rss_end_kib": rss_end,
        "rss_peak_kib": status_kib("VmHWM"),
        "rss_growth": growth,
        "rss_slope_kib_per_utterance": slope,
        "tolerance": args.tolerance,
        "flat": flat,
        "texts_changed": changed,
        "wer_first_pass": wer(refs, hyps),
        "samples": samples,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "loadavg": os.getloadavg()},
    }
    write_json_atomic(args.output, result)
    print(f"{describe}: {len(seconds)} utterances in {wall:.0f} s (RTF {result['rtf']:.2f}); RSS loaded "
          f"{rss_loaded / 1024:.0f} MiB, after warm-up ({warmup}) {ref / 1024:.1f} MiB, end {rss_end / 1024:.1f} MiB "
          f"({growth * 100:+.2f}%), slope {0.0 if slope is None else slope:+.2f} KiB/utterance, peak "
          f"{result['rss_peak_kib'] / 1024:.0f} MiB; texts changed {changed}; "
          f"{'flat' if flat else 'GREW'} (tolerance {args.tolerance * 100:.0f}%)")
    print(f"wrote {args.output}")
    return 0 if flat else 1


if __name__ == "__main__":
    sys.exit(main())
