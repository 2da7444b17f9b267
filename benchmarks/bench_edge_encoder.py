"""Encoder time per utterance on the torch-free runtime: dynamic vs full encoder context, one bundle.

For an edge-adapted bundle (``edgegate export --model <adapt dir>``): every real clip of
pocketsphinx-testdata (and the held-out manifests given) runs dense at full context (Whisper's 30-s
window) and at the bundle's own rule (``auto``: real length + its margin), the two alternated clip by
clip, with the runtime's per-stage timings. Prints a table, writes JSON.

    python benchmarks/bench_edge_encoder.py --bundle ~/.cache/edgegate/adapt/bundles/edge3000-dec \\
        [--heldout H.jsonl] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

from common import write_json_atomic

RESULTS = Path(__file__).resolve().parent / "results" / "edge_encoder_runtime.json"
CONTEXTS = ("full", "auto")


def items(heldout: list[str]) -> list[dict]:
    from edgegate.data.librivox import real_clips
    from edgegate.data.manifest import read_manifest

    out = [{"set": "real", "audio": str(p), "lang": "en", "task": "transcribe", "ref": r} for _, p, r in real_clips()]
    for m in heldout:
        out += [{"set": "synth", "audio": str(e.audio), "lang": e.lang, "task": e.task, "ref": e.text}
                for e in read_manifest(m)]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", required=True, type=Path)
    ap.add_argument("--heldout", action="append", default=[], help="held-out manifest (repeatable)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    from tqdm import tqdm

    from edgegate.runtimes.session import Session
    from edgegate.textnorm import word_errors

    session = Session.load(args.bundle, threads=args.threads)
    if session.audio_ctx is None:
        raise SystemExit(f"{args.bundle} has no encoder-context rule (decoding.audio_ctx); export an adapted model")
    work = items(args.heldout)
    runs: dict[str, list[dict]] = {c: [] for c in CONTEXTS}
    for it in tqdm(work, unit="utt", file=sys.stderr):
        for ctx in CONTEXTS:
            budget = 0.0 if session.has_predictor else None
            r = session.transcribe_windows(it["audio"], language=it["lang"], task=it["task"], audio_ctx=ctx,
                                           budget=budget)
            runs[ctx].append({"text": r.text, "encoder_s": r.timings["encoder"], "total_s": r.timings["total"],
                              "decoder_s": r.timings["decoder"], "tokens": len(r.tokens)})
    report: dict = {"bundle": str(args.bundle), "margin": session.audio_ctx, "threads": args.threads,
                    "load_average": os.getloadavg(), "rows": {}}
    real = [i for i, it in enumerate(work) if it["set"] == "real"]
    for ctx in CONTEXTS:
        rs = runs[ctx]
        errors, words = word_errors([work[i]["ref"] for i in real], [rs[i]["text"] for i in real], "en")
        report["rows"][ctx] = {"encoder_s_median": round(statistics.median(r["encoder_s"] for r in rs), 4),
                               "total_s_median": round(statistics.median(r["total_s"] for r in rs), 4),
                               "real_word_errors": errors, "real_words": words, "n": len(rs)}
    full, auto = report["rows"]["full"], report["rows"]["auto"]
    report["encoder_ratio"] = round(auto["encoder_s_median"] / full["encoder_s_median"], 3)
    report["total_ratio"] = round(auto["total_s_median"] / full["total_s_median"], 3)
    report["outputs"] = runs
    write_json_atomic(args.out, report)
    print("| context | encoder s (median) | total s (median) | real word errors |\n|---|---|---|---|")
    for ctx in CONTEXTS:
        r = report["rows"][ctx]
        label = "full 30 s" if ctx == "full" else f"real length + {session.audio_ctx}"
        print(f"| {label} | {r['encoder_s_median']} | {r['total_s_median']} | {r['real_word_errors']} / "
              f"{r['real_words']} |")
    print(f"encoder {report['encoder_ratio']}x, total {report['total_ratio']}x; load {report['load_average']} "
          f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
