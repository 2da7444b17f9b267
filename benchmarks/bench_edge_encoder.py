"""Dynamic vs full encoder context on the torch-free runtime, one bundle: quality and time per utterance.

For a bundle with an encoder-context rule (``edgegate export --model whisper-base-edge``, or an edge-adapted
checkpoint): every real clip of pocketsphinx-testdata (and the held-out manifests given) runs dense at full
context (Whisper's 30-s window) and at the bundle's own rule (``auto``: real length + its margin, with the
context tail when the bundle has one), both the plan alone, and at that rule with the SDK's default check
(``auto+fallback``: a window that fails is encoded again on the full 30 s), alternated clip by clip, with the
runtime's per-stage timings.
Per set: word errors (real clips), WER per language and BLEU per language (synthetic), loops (outputs that hit
the token limit). Prints tables, writes JSON.

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

from edgegate.textnorm import NORMALIZER_VERSION

RESULTS = Path(__file__).resolve().parent / "results" / "edge_encoder_runtime.json"
# row -> (audio_ctx, dense_check): the plan alone at both contexts, then the SDK's default check, under which a
# trimmed window that fails is encoded again on the full 30 s
CONTEXTS = {"full": ("full", "off"), "auto": ("auto", "off"), "auto+fallback": ("auto", "loops")}


def items(heldout: list[str]) -> list[dict]:
    from edgegate.data.librivox import real_clips
    from edgegate.data.manifest import read_manifest

    out = [{"set": "real", "id": u, "audio": str(p), "lang": "en", "task": "transcribe", "ref": r}
           for u, p, r in real_clips()]
    for m in heldout:
        out += [{"set": "synth", "id": e.extra.get("id", Path(e.audio).stem), "audio": str(e.audio), "lang": e.lang,
                 "task": e.task, "ref": e.text} for e in read_manifest(m)]
    return out


def score_sets(work: list[dict], runs: dict[str, list[dict]]) -> dict:
    """Scores per set and row of outputs in ``work``'s order."""
    from bench_edge_adaptation import score_set

    sets: dict = {}
    for ctx, rs in runs.items():
        for name in dict.fromkeys(it["set"] for it in work):
            idx = [i for i, it in enumerate(work) if it["set"] == name]
            sets.setdefault(name, {})[ctx] = score_set([work[i] for i in idx], [rs[i] for i in idx])
    return sets


def rescore(path: Path, work: list[dict]) -> dict:
    """An earlier report counted again from its outputs (the items found by id among ``work``)."""
    import json

    report = json.loads(path.read_text())
    by_id = {it["id"]: it for it in work}
    ids = [r.get("id") for r in next(iter(report["outputs"].values()))]
    if missing := [i for i in ids if i not in by_id]:
        raise SystemExit(f"--rescore {path}: {len(missing)} of its items are not in the manifests given (first: "
                         f"{missing[0]}): pass the --heldout manifests it ran on")
    report["sets"] = score_sets([by_id[i] for i in ids], report["outputs"])
    report["normalizer"] = NORMALIZER_VERSION
    return report


def print_sets(report: dict, labels: dict[str, str]) -> None:
    print("\n| set | context | word errors / words | WER % | per language | loops |\n|---|---|---|---|---|---|")
    for name, by_ctx in report["sets"].items():
        for ctx, sc in by_ctx.items():
            per = ", ".join(f"{k} {'BLEU ' + str(g['bleu']) if 'bleu' in g else str(g['wer']) + ' %'}"
                            for k, g in sc["groups"].items())
            fell = f" ({sc['context_fallbacks']} redone at 30 s)" if sc.get("context_fallbacks") else ""
            print(f"| {name} | {labels[ctx]} | {sc['word_errors']} / {sc['ref_words']} | {sc['wer']} | {per} | "
                  f"{sc['loops']}{fell} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, default=None, help="the bundle to run (not with --rescore)")
    ap.add_argument("--heldout", action="append", default=[], help="held-out manifest (repeatable)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--rescore", type=Path, default=None, metavar="JSON",
                    help="run nothing: count an earlier report's outputs again (after a change of edgegate.textnorm) "
                         "with the --heldout manifests it ran on, and write it back in place")
    args = ap.parse_args()

    from tqdm import tqdm

    if args.rescore is not None:
        report = rescore(args.rescore, items(args.heldout))
        write_json_atomic(args.rescore, report)
        print_sets(report, {c: c for c in report["sets"]["real"]})
        return 0
    if args.bundle is None:
        raise SystemExit("--bundle DIR is needed (an edgegate export of a model with an encoder-context rule)")

    from edgegate.runtimes.session import Session

    session = Session.load(args.bundle, threads=args.threads)
    if session.audio_ctx is None:
        raise SystemExit(f"{args.bundle} has no encoder-context rule (decoding.audio_ctx); export an adapted model")
    work = items(args.heldout)
    runs: dict[str, list[dict]] = {c: [] for c in CONTEXTS}
    for it in tqdm(work, unit="utt", file=sys.stderr):
        for ctx, (audio_ctx, check) in CONTEXTS.items():
            budget = 0.0 if session.has_predictor else None
            r = session.transcribe_windows(it["audio"], language=it["lang"], task=it["task"], audio_ctx=audio_ctx,
                                           budget=budget, dense_check=check)
            runs[ctx].append({"id": it["id"], "set": it["set"], "text": r.text, "encoder_s": r.timings["encoder"],
                              "total_s": r.timings["total"], "decoder_s": r.timings["decoder"],
                              "tokens": len(r.tokens), "loop": len(r.tokens) >= session.max_tokens,
                              "context_fallbacks": r.context_fallbacks})
    report: dict = {"bundle": str(args.bundle), "margin": session.audio_ctx, "context_tail": session.context_tail,
                    "threads": args.threads, "load_average": os.getloadavg(), "normalizer": NORMALIZER_VERSION,
                    "rows": {}, "sets": score_sets(work, runs)}
    for ctx in CONTEXTS:
        rs = runs[ctx]
        report["rows"][ctx] = {"encoder_s_median": round(statistics.median(r["encoder_s"] for r in rs), 4),
                               "decoder_s_median": round(statistics.median(r["decoder_s"] for r in rs), 4),
                               "total_s_median": round(statistics.median(r["total_s"] for r in rs), 4), "n": len(rs)}
    full, auto, fb = report["rows"]["full"], report["rows"]["auto"], report["rows"]["auto+fallback"]
    report["encoder_ratio"] = round(auto["encoder_s_median"] / full["encoder_s_median"], 3)
    report["total_ratio"] = round(auto["total_s_median"] / full["total_s_median"], 3)
    report["fallback_total_ratio"] = round(fb["total_s_median"] / full["total_s_median"], 3)
    report["fallback_mean_total_ratio"] = round(statistics.mean(r["total_s"] for r in runs["auto+fallback"])
                                                / statistics.mean(r["total_s"] for r in runs["full"]), 3)
    report["outputs"] = runs
    write_json_atomic(args.out, report)
    trimmed = f"real length + {session.audio_ctx}" + (" + tail" if session.context_tail else "")
    labels = {"full": "full 30 s", "auto": trimmed, "auto+fallback": trimmed + ", failed windows at 30 s"}
    print("| context | encoder s (median) | decoder s (median) | total s (median) |\n|---|---|---|---|")
    for ctx in CONTEXTS:
        r = report["rows"][ctx]
        print(f"| {labels[ctx]} | {r['encoder_s_median']} | {r['decoder_s_median']} | {r['total_s_median']} |")
    print_sets(report, labels)
    print(f"encoder {report['encoder_ratio']}x, total {report['total_ratio']}x (with the fallback: median "
          f"{report['fallback_total_ratio']}x, mean {report['fallback_mean_total_ratio']}x); "
          f"load {report['load_average']} -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
