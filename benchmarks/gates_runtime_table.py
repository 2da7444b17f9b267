"""One table per bundle evaluation: word errors, BLEU, skipped FLOPs and measured ms, median latency per budget.

Reads what ``edgegate eval --bundle B --budgets ...`` wrote (eval.json) and the bundle's measured cost table
(``edgegate profile B``), counts word errors over whole sets (real clips; synthetic transcribe items summed over
languages), sums what the dense check did (edgegate.dense_check), and writes the table as JSON beside eval.json
(``budget_table.json``).

    python benchmarks/gates_runtime_table.py benchmarks/results/gates_edge_decoder_runtime/eval.json BUNDLE
    python benchmarks/gates_runtime_table.py --rescore benchmarks/results/gates_edge_decoder_runtime/budget_table.json

``--rescore`` counts the word errors of an earlier table again from the eval.json beside it (after a change of
:mod:`edgegate.textnorm`), keeping its measured columns: the bundle it was profiled on need not exist any more.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from common import write_json_atomic

LANGS = ("en", "de", "es", "fr", "it")


def rows(report: dict, ms: dict[str, float]) -> list[dict]:
    import sacrebleu
    from bench_gates_matrix import word_error_counts

    names, out, dense = report["gate_names"], [], None
    for b in report["budgets"]:
        us = [u for u in report["utterances"] if u["budget"] == b]
        med = statistics.median(u["latency_s"] for u in us)
        dense = med if b == 0 else dense
        counts = word_error_counts(report["utterances"], b, real_set="real")
        bleus = []
        for lang in LANGS:
            st = [u for u in us if u["set"] != "real" and u["lang"] == lang and u["task"] == "translate"]
            if st:
                bleus.append(sacrebleu.corpus_bleu([u["hypothesis"] for u in st], [[u["reference"] for u in st]]).score)
        skipped_ms = statistics.mean(sum(ms[n] for n, k in zip(names, u["mask"], strict=True) if not k) for u in us)
        checked = [u["dense_check"] for u in us if u.get("dense_check")]
        check = {k: sum(c[k] for c in checked) for k in checked[0]} if checked else None
        out.append({"budget": b, **counts, "dense_check": check,
                    "synthetic_bleu_mean": round(statistics.mean(bleus), 2) if bleus else None,
                    "skipped_gateable_flops": round(statistics.mean(u["skipped_gated"] for u in us), 4),
                    "skipped_measured_ms": round(skipped_ms, 2), "gateable_ms": round(sum(ms[n] for n in names), 2),
                    "median_latency_s": round(med, 4), "latency_vs_dense": round(med / dense, 3)})
    return out


def rescore(table_path: Path) -> dict:
    """The table at ``table_path`` with its word-error columns counted again from the eval.json beside it."""
    from bench_gates_matrix import word_error_counts

    from edgegate.textnorm import NORMALIZER_VERSION

    table = json.loads(table_path.read_text())
    report = json.loads(table_path.with_name("eval.json").read_text())
    for row in table["rows"]:
        row.update(word_error_counts(report["utterances"], row["budget"], real_set="real"))
    table["normalizer"] = NORMALIZER_VERSION
    return table


def print_table(report: dict, table: list[dict]) -> None:
    print(f"dense check: {report.get('dense_check', 'off')}")
    print("| budget | real word errors | synthetic word errors (WER) | synthetic BLEU | skipped gateable FLOPs "
          "| skipped measured ms | median latency ms | vs dense | windows redone / end checks / overruled |\n"
          "|---|---|---|---|---|---|---|---|---|")
    for r in table:
        c = r.get("dense_check")
        check = "-" if c is None else f"{c['redone']} / {c['end_checks']} / {c['overruled']}"
        print(f"| {r['budget']:g} | {r['real_errors']} / {r['real_words']} | {r['synthetic_errors']} "
              f"({r['synthetic_wer_corpus']} %) | {r['synthetic_bleu_mean']} | "
              f"{100 * r['skipped_gateable_flops']:.1f} % | "
              f"{r['skipped_measured_ms']} of {r['gateable_ms']} | {1000 * r['median_latency_s']:.1f} | "
              f"{r['latency_vs_dense']} | {check} |")


def main() -> int:
    from edgegate.textnorm import NORMALIZER_VERSION

    if len(sys.argv) == 3 and sys.argv[1] == "--rescore":
        path = Path(sys.argv[2])
        table = rescore(path)
        write_json_atomic(path, table)
        print_table(json.loads(path.with_name("eval.json").read_text()), table["rows"])
        return 0
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    path, bundle = Path(sys.argv[1]), Path(sys.argv[2])
    report = json.loads(path.read_text())
    manifest = json.loads((bundle / "manifest.json").read_text())
    ms = manifest["costs"].get("ms")
    if not ms:
        raise SystemExit(f"{bundle} has no measured cost table: run edgegate profile {bundle}")
    table = rows(report, ms)
    write_json_atomic(path.with_name("budget_table.json"), {"eval": str(path), "bundle": str(bundle),
                                                           "profiled": manifest["costs"].get("ms_meta"), "rows": table,
                                                           "normalizer": NORMALIZER_VERSION})
    print_table(report, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
