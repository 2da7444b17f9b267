"""What word timestamps cost on the torch-free runtime: the same clips with word_timestamps off and on.

    python benchmarks/bench_word_timestamps.py [--bundle DIR] [--threads 1] [--repeats 3]
        [--out benchmarks/results/word_timestamps.json]

The 10 real clips of pocketsphinx-testdata (librivox/ and cards/), each transcribed by
``Session.transcribe`` (greedy, temperature 0, English) on a dense whisper-base ONNX Runtime bundle
(exported to a temp dir unless --bundle is given). Per clip, the median of --repeats wall times
with the alignment off and on, the decoder calls, and the time spent inside the alignment pass
itself (a teacher-forced pass over the window's text through the step graphs, plus the bundle's
``<layer>.align`` graphs and the logits graph on every position). With word_timestamps off the
alignment graphs are never loaded, so the plain decoder steps are the graphs they always were.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_json_atomic  # noqa: E402

from edgegate.data.librivox import DEFAULT_DIR, load_clips  # noqa: E402

SR = 16000


def clips() -> list[tuple[str, Path]]:
    libri = [(wav.stem, wav) for _, wav, _ in load_clips(DEFAULT_DIR)]
    cards = sorted((DEFAULT_DIR.parent / "cards").glob("*.wav"))
    return libri + [(p.stem, p) for p in cards]


def timed_align(session) -> dict[str, float]:
    """Wrap the session's ports so that every alignment pass adds its seconds to the returned counter."""
    spent = {"seconds": 0.0, "calls": 0}
    plain = session.ports

    def ports(*args, **kwargs):
        p = plain(*args, **kwargs)
        if p.align is not None:
            inner = p.align

            def align(window, tokens):
                t0 = time.perf_counter()
                try:
                    return inner(window, tokens)
                finally:
                    spent["seconds"] += time.perf_counter() - t0
                    spent["calls"] += 1

            p.align = align
        return p

    session.ports = ports
    return spent


def run_clip(session, spent: dict, path: Path, word_timestamps: bool, repeats: int) -> dict:
    times, align_s = [], []
    for _ in range(repeats):
        before = spent["seconds"]
        t0 = time.perf_counter()
        segments, info = session.transcribe(str(path), language="en", temperature=0.0,
                                            word_timestamps=word_timestamps)
        segments = list(segments)
        times.append(time.perf_counter() - t0)
        align_s.append(spent["seconds"] - before)
    words = sum(len(s.words or []) for s in segments)
    return {"seconds": statistics.median(times), "align_seconds": statistics.median(align_s),
            "decoder_calls": info.decoder_steps, "segments": len(segments), "words": words,
            "text": " ".join(s.text.strip() for s in segments)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default=None, help="a dense whisper-base ONNX bundle (default: export one)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/word_timestamps.json")
    args = parser.parse_args(argv)

    from edgegate.runtimes.session import Session

    items = clips()
    if not items:
        print("error: pocketsphinx-testdata is not installed (apt-get install pocketsphinx-testdata)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="edgegate-wt-") as tmp:
        bundle = args.bundle
        if bundle is None:
            from edgegate.export.core import export_bundle

            bundle = export_bundle(Path(tmp) / "base-cpu", "cpu", "whisper-base", progress=False)
        session = Session.load(bundle, threads=args.threads)
        spent = timed_align(session)
        align_bytes = sum(int(session.bundle.manifest["files"][g["file"]]["bytes"])
                          for g in session.bundle.manifest["alignment"]["graphs"])
        session.transcribe_text(str(items[0][1]), language="en", temperature=0.0, word_timestamps=True)  # warm-up
        rows = []
        for name, path in items:
            off = run_clip(session, spent, path, False, args.repeats)
            on = run_clip(session, spent, path, True, args.repeats)
            duration = float(session.transcribe(str(path), language="en")[1].duration)
            rows.append({"clip": name, "audio_seconds": round(duration, 3), "off": off, "on": on,
                         "same_text": off["text"] == on["text"],
                         "overhead": round(on["seconds"] / off["seconds"] - 1.0, 4)})
            print(f"{name:28s} {duration:6.2f} s audio  off {off['seconds']:.3f} s  on {on['seconds']:.3f} s  "
                  f"(align {on['align_seconds']:.3f} s, {on['words']} words)", flush=True)
        total_off = sum(r["off"]["seconds"] for r in rows)
        total_on = sum(r["on"]["seconds"] for r in rows)
        total_align = sum(r["on"]["align_seconds"] for r in rows)
        result = {
            "command": "python benchmarks/bench_word_timestamps.py " + " ".join(argv or sys.argv[1:]),
            "bundle": str(bundle) if args.bundle else "whisper-base, edgegate export --target cpu (temp dir)",
            "backend": session.backend.describe(), "threads": args.threads, "repeats": args.repeats,
            "machine": f"{platform.machine()}, {platform.processor() or 'cpu'} (shared, busy 2-core box)",
            "alignment_graph_bytes": align_bytes, "bundle_bytes": session.bundle.total_bytes(),
            "total": {"audio_seconds": round(sum(r["audio_seconds"] for r in rows), 3),
                      "off_seconds": round(total_off, 3), "on_seconds": round(total_on, 3),
                      "align_seconds": round(total_align, 3), "overhead": round(total_on / total_off - 1.0, 4),
                      "all_same_text": all(r["same_text"] for r in rows)},
            "clips": rows,
        }
    write_json_atomic(Path(args.out), result)
    t = result["total"]
    print(f"total: off {t['off_seconds']:.2f} s, on {t['on_seconds']:.2f} s (+{100 * t['overhead']:.1f} %), "
          f"alignment pass {t['align_seconds']:.2f} s; alignment graphs {align_bytes / 1e6:.1f} MB "
          f"of {result['bundle_bytes'] / 1e6:.0f} MB; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
