"""What ``edgegate transcribe`` does with no ``--model``, before and after the default changed (round 2 session 14).

Rows, each the SDK's long-form ``WhisperModel(name).transcribe()`` with its defaults (timestamps, temperature
fallback, previous text as prompt, the loop guard, dense check ``loops``), the language given, PyTorch, 1 thread,
alternated item by item so that machine load hits both alike:
- ``whisper-base``: the former default, Whisper's padded 30-s window;
- ``whisper-base-edge``: the default since session 14, the encoder on the real length + 64 with the context tail,
  a window that fails redone on the full 30 s (``context_fallbacks``).

Items: the 10 real clips of pocketsphinx-testdata and the held-out manifests given (``--heldout``, e.g. the
recipe's ``eval/natural_heldout.jsonl`` and ``eval/translate4_heldout.jsonl``, whose texts are not in training).
Scored as ``bench_edge_adaptation.py`` scores (word errors, BLEU and chrF, paired-bootstrap intervals against
the former default; its "loops" here are segments at the token limit, which the loop guard all but rules
out); per row also the encoder seconds, the wall seconds per item, the windows the fallback redid and the items
where the temperature rose.

    python benchmarks/bench_default_model.py --heldout ~/.cache/edgegate/adapt/eval/natural_heldout.jsonl \\
        --heldout ~/.cache/edgegate/adapt/eval/translate4_heldout.jsonl
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

from common import write_json_atomic

from edgegate.textnorm import NORMALIZER_VERSION

RESULTS = Path(__file__).resolve().parent / "results" / "default_model.json"
ROWS = ("whisper-base", "whisper-base-edge")


def load_items(heldout: list[str], limit: int) -> dict[str, list[dict]]:
    from edgegate.data.librivox import real_clips
    from edgegate.data.manifest import read_manifest

    sets = {"real": [{"id": u, "audio": str(p), "lang": "en", "task": "transcribe", "ref": r}
                     for u, p, r in real_clips()]}
    if not sets["real"]:
        raise SystemExit("the real clips are missing: apt-get install pocketsphinx-testdata")
    synth = [{"id": e.extra.get("id", Path(e.audio).stem), "audio": str(e.audio), "lang": e.lang, "task": e.task,
              "ref": e.text} for m in heldout for e in read_manifest(m)]
    if synth:
        sets["synth"] = synth
    return {k: v[:limit] for k, v in sets.items()} if limit else sets


def run(models: dict, items: list[dict], label: str) -> dict[str, list[dict]]:
    from tqdm import tqdm

    from edgegate.pipeline import collect

    out: dict[str, list[dict]] = {name: [] for name in models}
    for item in tqdm(items, desc=label, unit="utt", file=sys.stderr):
        for name, model in models.items():
            t0 = time.perf_counter()
            r = collect(*model.transcribe(item["audio"], language=item["lang"], task=item["task"]))
            n_tokens = len(r.tokens)
            out[name].append({"id": item["id"], "text": r.text, "n_tokens": n_tokens,
                              # segments at the token limit, not loops: the long-form loop guard cuts a
                              # repeating window before it is printed, and what it cut is not reported
                              "loop": any(len(s.tokens) >= model.max_tokens for s in r.segments),
                              "encoder_s": r.timings.get("encoder", 0.0), "total_s": time.perf_counter() - t0,
                              "context_fallbacks": r.context_fallbacks,
                              "temperature": max((s.temperature for s in r.segments), default=0.0)})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--heldout", action="append", default=[], help="held-out manifest (repeatable)")
    ap.add_argument("--limit", type=int, default=0, help="items per set (quick checks)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    from bench_edge_adaptation import compare_to_base, score_set

    from edgegate.transcriber import WhisperModel

    sets = load_items(args.heldout, args.limit)
    models = {name: WhisperModel(name, threads=1) for name in ROWS}
    for model in models.values():  # untimed: the edge model computes its padding states on first use
        model.transcribe_text(sets["real"][0]["audio"], language="en")
    t0 = time.time()
    results = {name: run(models, items, name) for name, items in sets.items()}
    rows = {}
    for row in ROWS:
        rows[row] = {}
        for s, items in sets.items():
            res = results[s][row]
            rows[row][s] = {**score_set(items, res),
                            "temperature_raised": sum(r["temperature"] > 0 for r in res),
                            "mean_total_s": round(statistics.mean(r["total_s"] for r in res), 4)}
    # compare_to_base reads the former default as "base/full"
    renamed = {s: {("base/full" if k == ROWS[0] else k): v for k, v in r.items()} for s, r in results.items()}
    vs = compare_to_base(sets, renamed)
    report = {"rows_are": "WhisperModel(name).transcribe() defaults, language given, 1 thread",
              "normalizer": NORMALIZER_VERSION, "load_average": os.getloadavg(), "wall_s": round(time.time() - t0, 1),
              "sets": {k: len(v) for k, v in sets.items()}, "rows": rows, "vs_former_default": vs.get(ROWS[1], {}),
              "outputs": results}
    write_json_atomic(args.out, report)
    print("| model | set | word errors / words | WER % | BLEU / chrF | loops | fallbacks to 30 s | temperature raised "
          "| encoder s (median) | s per item (median / mean) |\n|---|---|---|---|---|---|---|---|---|---|")
    for row, per in rows.items():
        for s, r in per.items():
            print(f"| {row} | {s} | {r['word_errors']} / {r['ref_words']} | {r['wer']} | {r.get('bleu_mean', '-')} / "
                  f"{r.get('chrf_mean', '-')} | {r['loops']} | {r['context_fallbacks']} | {r['temperature_raised']} | "
                  f"{r['encoder_s_median']} | {r['total_s_median']} / {r['mean_total_s']} |")
    from edgegate.paired_bootstrap import format_interval

    for s, d in report["vs_former_default"].items():
        parts = [f"{k} {format_interval(v)}" for k, v in d.items() if k != "no_loops"]
        print(f"{ROWS[1]} vs {ROWS[0]} on {s}: " + ", ".join(parts))
    print(f"load average {report['load_average']}, wall {report['wall_s']} s -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
