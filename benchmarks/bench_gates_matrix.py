"""Gate sets x budgets in one run: quality, skipped FLOPs and PyTorch latency against dense.

    python benchmarks/bench_gates_matrix.py \
        --gates decoder/none=runs/dec_none --gates both/skip-adapters=runs/both_sa ... \
        --manifest librivox=data/librivox.jsonl --manifest kokoro=data/heldout_kokoro.jsonl \
        --budgets 0,0.25,0.5,0.7 --threads 1

Each gate set goes through ``edgegate.evaluation.evaluate`` (every utterance runs all budgets in
turn, so background load hits every budget alike) and gets its own ``eval.json``, ``eval.md``,
``keep_heatmap.png`` and ``quality.png`` under ``OUT/<label>/``. Then one table, one row per
(gate set, budget): WER on the set named ``librivox`` (real speech, on its own row as the issue
asks), median WER over the synthetic transcribe groups, mean BLEU over the synthetic translate
groups, skipped gateable and model FLOPs, mean PyTorch latency per utterance and its ratio to the
same gate set's budget 0. Also written: ``summary.json``, ``matrix.md``, ``quality.png`` (all
gate sets on one picture) and ``task_keep_diff`` (per module, keep rate under translate minus
under transcribe for the non-English synthetic utterances: what the predictor does differently
per task).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
from common import write_json_atomic

ROOT = Path(__file__).resolve().parents[1]

REAL_SET = "librivox"  # the real-speech set (the 10 pocketsphinx clips or its 5 LibriVox ones)


def parse_pairs(items: list[str], what: str) -> list[tuple[str, str]]:
    out = []
    for it in items:
        label, sep, path = it.partition("=")
        if not sep or not label or not path:
            raise SystemExit(f"error: bad --{what} {it!r}: pass LABEL=PATH")
        out.append((label, path))
    return out


def word_error_counts(utts: list[dict], budget: float, real_set: str = REAL_SET) -> dict:
    """Word errors counted over whole sets at one budget: the real set's, and the synthetic transcribe items'
    summed over languages (a corpus WER: one word is one word, whatever its language's share)."""
    from edgegate.textnorm import word_errors

    out = {"real_errors": 0, "real_words": 0, "synthetic_errors": 0, "synthetic_words": 0}
    by_lang: dict[tuple[bool, str], list[dict]] = {}
    for u in utts:
        if u["budget"] == budget and u["task"] == "transcribe" and u["reference"]:
            by_lang.setdefault((u["set"] == real_set, u["lang"]), []).append(u)
    for (real, lang), us in by_lang.items():
        e, n = word_errors([u["reference"] for u in us], [u["hypothesis"] for u in us], lang)
        key = "real" if real else "synthetic"
        out[f"{key}_errors"] += e
        out[f"{key}_words"] += n
    out["synthetic_wer_corpus"] = round(100 * out["synthetic_errors"] / out["synthetic_words"], 2) \
        if out["synthetic_words"] else None
    return out


def summarize_set(report: dict, budgets: list[float]) -> list[dict]:
    """One row per budget from one gate set's evaluate() report."""
    rows = []
    dense_lat = None
    utts = report["utterances"]
    for b in budgets:
        key = f"{b:g}"
        real, syn_wer, syn_bleu = None, [], []
        for g, per_b in report["groups"].items():
            s, lang, task = g.split("/")
            r = per_b.get(key)
            if r is None or r["value"] is None:
                continue
            if s == REAL_SET:
                real = r
            elif task == "transcribe":
                syn_wer.append(r["value"])
            else:
                syn_bleu.append(r["value"])
        us = [u for u in utts if u["budget"] == b]
        lat = float(np.mean([u["latency_s"] for u in us]))
        if b == 0:
            dense_lat = lat
        sg = [u["skipped_gated"] for u in us if u["skipped_gated"] is not None]
        stt = [u["skipped_total"] for u in us if u["skipped_total"] is not None]
        rows.append({
            "budget": b,
            "librivox_wer": None if real is None else real["value"],
            "librivox_wer_vs_dense": None if real is None else real["vs_dense"],
            "synthetic_wer_median": round(statistics.median(syn_wer), 2) if syn_wer else None,
            "synthetic_bleu_mean": round(float(np.mean(syn_bleu)), 2) if syn_bleu else None,
            "skipped_gated_flops": round(float(np.mean(sg)), 4) if sg else None,
            "skipped_model_flops": round(float(np.mean(stt)), 4) if stt else None,
            "kept_modules": round(float(np.mean([u["kept"] for u in us])), 2),
            "latency_s": round(lat, 4),
            "latency_vs_dense": None if not dense_lat else round(lat / dense_lat, 3),
            **word_error_counts(utts, b),
        })
    return rows


def task_keep_diff(report: dict, budgets: list[float], min_diff: float = 0.02) -> dict[str, dict]:
    """Per budget > 0: keep rate under translate minus under transcribe, same languages, per module."""
    names = report["gate_names"]
    out = {}
    for b in budgets:
        if b == 0:
            continue
        masks: dict[str, list] = {"transcribe": [], "translate": []}
        for u in report["utterances"]:
            if u["budget"] == b and u["set"] != REAL_SET and u["lang"] != "en":
                masks[u["task"]].append(u["mask"])
        if not masks["transcribe"] or not masks["translate"]:
            continue
        diff = np.mean(masks["translate"], 0) - np.mean(masks["transcribe"], 0)
        out[f"{b:g}"] = {n: round(float(d), 3) for n, d in sorted(zip(names, diff, strict=True),
                                                                     key=lambda x: -abs(x[1])) if abs(d) >= min_diff}
    return out


def format_matrix(results: dict) -> str:
    head = ("| gate set | ctx | budget | real WER % | real word errors | vs dense | synthetic WER % (median) "
            "| synthetic WER % (corpus) | synthetic BLEU | skipped gateable FLOPs | skipped model FLOPs | kept "
            "| latency s | vs dense |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]

    def f(v, spec=".1f"):
        return "-" if v is None else format(v, spec)

    for label, res in results.items():
        ctx = "full" if res["audio_ctx"] is None else f"+{res['audio_ctx']}"
        for r in res["rows"]:
            lines.append(
                f"| {label} | {ctx} | {r['budget']:g} | {f(r['librivox_wer'])} | "
                f"{r.get('real_errors', '-')} / {r.get('real_words', '-')} | {f(r['librivox_wer_vs_dense'])} | "
                f"{f(r['synthetic_wer_median'])} | {f(r.get('synthetic_wer_corpus'))} | "
                f"{f(r['synthetic_bleu_mean'])} | "
                f"{f(None if r['skipped_gated_flops'] is None else 100 * r['skipped_gated_flops'])}% | "
                f"{f(None if r['skipped_model_flops'] is None else 100 * r['skipped_model_flops'])}% | "
                f"{r['kept_modules']:.1f} | {r['latency_s']:.2f} | {f(r['latency_vs_dense'], '.2f')} |")
    return "\n".join(lines)


def plot_matrix(results: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for label, res in results.items():
        xs = [r["budget"] for r in res["rows"]]
        for ax, key in zip(axes, ("librivox_wer", "synthetic_wer_median", "synthetic_bleu_mean"), strict=True):
            ys = [np.nan if r[key] is None else r[key] for r in res["rows"]]
            ax.plot(xs, ys, marker="o", label=label)
    axes[0].set(title="LibriVox (real speech)", ylabel="WER %", yscale="symlog")
    axes[1].set(title="synthetic held-out, transcribe (median over languages)", ylabel="WER %", yscale="symlog")
    axes[2].set(title="synthetic held-out, translate to English (mean)", ylabel="BLEU")
    for ax in axes:
        ax.set_xlabel("budget (fraction of in-scope FLOPs skipped)")
        ax.grid(alpha=0.3)
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def evaluate_gate_set(label: str, gates: str, sets: dict, budgets: list[float], audio_ctx: str, threads: int,
                      out: str, progress: bool) -> dict:
    """Evaluate one gate set at every budget; writes OUT/<label>/ and returns its summary."""
    import torch

    from edgegate.commands.eval import _audio_ctx
    from edgegate.evaluation import evaluate, whisper_cost_fn, write_report
    from edgegate.gated import load_gated

    torch.set_num_threads(threads)
    gw = load_gated(gates, threads=threads)
    ctx = _audio_ctx(audio_ctx, gw.audio_ctx)

    def transcribe_fn(audio, lang, task, budget):
        return gw.transcribe_windows(audio, language=lang, task=task, budget=budget, audio_ctx=ctx)

    print(f"== {label}: {gates} (scope {gw.spec.scope}, adapt {gw.spec.adapt}, ctx {ctx})", flush=True)
    cost_fn = whisper_cost_fn(gw.model.dims, ctx, gw.model.context_tail)
    report = evaluate(sets, transcribe_fn, budgets, gw.gate_names, cost_fn, progress=progress)
    report.update(gates=str(gates), audio_ctx=ctx)
    write_report(report, Path(out) / label.replace("/", "_"))
    return {"gates": str(gates), "scope": gw.spec.scope, "adapt": gw.spec.adapt, "audio_ctx": ctx,
            "rows": summarize_set(report, budgets), "task_keep_diff": task_keep_diff(report, budgets)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gates", action="append", required=True, metavar="LABEL=DIR",
                    help="a train-gates output or shipped gate-set name (repeat)")
    ap.add_argument("--manifest", action="append", required=True, metavar="NAME=JSONL",
                    help=f"evaluation set (repeat); the one named {REAL_SET!r} is reported on its own")
    ap.add_argument("--budgets", default="0,0.25,0.5,0.7")
    ap.add_argument("--audio-ctx", default="trained", help="'trained' (each gate set's own), 'none' or N")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gates_matrix"))
    ap.add_argument("--jobs", type=int, default=1, help="gate sets evaluated in parallel processes")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)

    from edgegate.commands.eval import parse_budgets
    from edgegate.data.manifest import read_manifest

    budgets = parse_budgets(args.budgets)
    if 0.0 not in budgets:
        budgets = [0.0, *budgets]  # latency and quality "vs dense" need the dense row
    sets = {name: read_manifest(path) for name, path in parse_pairs(args.manifest, "manifest")}
    out = Path(args.out)
    results: dict[str, dict] = {}
    t0 = time.time()
    jobs = [(label, gates, sets, budgets, args.audio_ctx, args.threads, str(out), not args.no_progress)
            for label, gates in parse_pairs(args.gates, "gates")]
    if args.jobs > 1:  # gate sets in parallel processes; each set's budgets still run side by side
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            futures = {job[0]: pool.submit(evaluate_gate_set, *job) for job in jobs}
            results = {label: f.result() for label, f in futures.items()}
    else:
        for job in jobs:
            results[job[0]] = evaluate_gate_set(*job)
    table = format_matrix(results)
    print(table)
    for label, res in results.items():
        for b, d in res["task_keep_diff"].items():
            if d:
                print(f"{label} budget {b}: translate - transcribe keep rate: "
                      + ", ".join(f"{n} {v:+.2f}" for n, v in list(d.items())[:8]))
    import platform

    write_json_atomic(out / "summary.json", {
        "benchmark": "bench_gates_matrix", "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": platform.platform(), "threads": args.threads, "seconds": round(time.time() - t0, 1),
        "sets": {k: len(v) for k, v in sets.items()}, "budgets": budgets, "results": results})
    (out / "matrix.md").write_text(table + "\n")
    plot_matrix(results, out / "quality.png")
    print(f"wrote {out / 'summary.json'}, {out / 'matrix.md'}, {out / 'quality.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
