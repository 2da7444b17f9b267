"""``edgegate report RESULTS_OR_BUNDLE``: gate-usage heatmap, quality- and latency-vs-budget plots
and a Markdown summary, from an ``edgegate eval`` result or by evaluating a bundle."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from edgegate.errors import EdgegateError

HELP = """Turn evaluation results into pictures and a Markdown summary.

RESULTS_OR_BUNDLE is either an eval.json written by `edgegate eval` (or the directory holding
it), or an exported bundle: then the bundle is first evaluated with the torch-free runtime on
--manifest (default: the 5 LibriVox clips of Debian's pocketsphinx-testdata) at --budgets.

Writes to --out: keep_heatmap.png (how often each module is kept, per language and task),
quality.png (WER / BLEU vs budget), latency.png (latency vs budget), report.md.

examples:
  edgegate report results/eval/eval.json --out results/eval
  edgegate report bundles/whisper-base-cpu --budgets 0,0.25,0.5 --out results/bundle-report
"""

def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="plots and a Markdown summary from eval results or a bundle",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", metavar="RESULTS_OR_BUNDLE", help="eval.json (or its folder), or a bundle directory")
    p.add_argument("--out", default=None, metavar="DIR", help="output folder (default: beside eval.json)")
    p.add_argument("--manifest", action="append", default=None, metavar="JSONL",
                   help="manifests to evaluate a bundle on (default: LibriVox clips)")
    p.add_argument("--budgets", default="0,0.25,0.5", help="budgets to evaluate a bundle at")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def librivox_manifest(path: Path) -> Path:
    """A manifest of the LibriVox clips with their transcripts (pocketsphinx-testdata)."""
    from edgegate.data.librivox import load_clips
    from edgegate.data.manifest import ManifestEntry, write_manifest

    clips = load_clips()
    if not clips:
        raise EdgegateError("no --manifest given and pocketsphinx-testdata is not installed: "
                            "apt-get install pocketsphinx-testdata, or pass --manifest data.jsonl")
    entries = [ManifestEntry(str(wav), "en", "transcribe", ref) for _, wav, ref in clips]
    write_manifest(path, entries)
    return path


def plot_latency(report: dict[str, Any], path: Path) -> Path:
    """Mean latency against the budget, one line per (set, language, task)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for group, rows in report["groups"].items():
        ax.plot([float(b) for b in rows], [r["latency_s"] for r in rows.values()], marker="o", label=group)
    ax.set(xlabel="budget (fraction of gateable FLOPs skipped)", ylabel="mean latency per utterance (s)",
           title="latency vs budget")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def branch_table(report: dict[str, Any]) -> list[str]:
    """E-Branchformer models (OWSM): how often the attention vs the cgMLP branches are kept, per group and budget."""
    names = report["gate_names"]
    kinds = {k: [i for i, n in enumerate(names) if n.startswith("encoder.") and n.endswith(f".{k}")]
             for k in ("attn", "cgmlp")}
    if not kinds["cgmlp"]:
        return []
    lines = ["## Attention vs cgMLP branches (E-Branchformer)\n",
             "Mean keep rate over the encoder layers' attention and cgMLP branches.\n",
             "| group | budget | attention kept | cgMLP kept |", "|---|---|---|---|"]
    for group, by_budget in report["keep_rate"].items():
        for b, rates in by_budget.items():
            a, c = (sum(rates[i] for i in kinds[k]) / len(kinds[k]) for k in ("attn", "cgmlp"))
            lines.append(f"| {group} | {b} | {100 * a:.0f}% | {100 * c:.0f}% |")
    return lines + [""]


def summary_markdown(report: dict[str, Any], source: str) -> str:
    from edgegate.evaluation import format_table

    lines = [f"# edgegate report\n\nSource: `{source}`\n", "## Overall\n",
             "| budget | skipped gateable FLOPs | skipped model FLOPs | kept modules | mean latency s |",
             "|---|---|---|---|---|"]
    for b, r in report["overall"].items():
        sg, st = r["skipped_gated_flops"], r["skipped_total_flops"]
        lines.append(f"| {b} | {'-' if sg is None else f'{100 * sg:.1f}%'} | "
                     f"{'-' if st is None else f'{100 * st:.1f}%'} | {r['kept_modules']} | {r['latency_s']} |")
    lines += ["", "## Per set, language and task\n", format_table(report), "", *branch_table(report),
              "![gate usage](keep_heatmap.png)", "", "![quality vs budget](quality.png)", "",
              "![latency vs budget](latency.png)", ""]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from edgegate.evaluation import plot_keep_heatmap, plot_quality

    src = Path(args.source)
    if not src.exists():
        raise EdgegateError(f"{src}: no such file or directory; pass an eval.json or a bundle directory")
    if src.is_dir() and (src / "manifest.json").exists():
        out = Path(args.out or f"{src.name}-report")
        with tempfile.TemporaryDirectory() as tmp:
            manifests = args.manifest or [str(librivox_manifest(Path(tmp) / "librivox.jsonl"))]
            from edgegate.cli import main

            argv = ["eval", "--bundle", str(src), "--budgets", args.budgets, "--out", str(out)]
            for m in manifests:
                argv += ["--manifest", m]
            if args.no_progress:
                argv.append("--no-progress")
            if main(argv) != 0:
                return 1
        results = out / "eval.json"
    else:
        results = src / "eval.json" if src.is_dir() else src
        out = Path(args.out) if args.out else results.parent
    try:
        report = json.loads(results.read_text())
        report["groups"], report["overall"], report["keep_rate"]  # noqa: B018 - shape check
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EdgegateError(f"{results}: not an `edgegate eval` result ({exc}); run edgegate eval first") from None
    out.mkdir(parents=True, exist_ok=True)
    plot_keep_heatmap(report, out / "keep_heatmap.png")
    plot_quality(report, out / "quality.png")
    plot_latency(report, out / "latency.png")
    md = out / "report.md"
    tmp_md = md.with_suffix(".md.tmp")
    tmp_md.write_text(summary_markdown(report, str(src)))
    tmp_md.replace(md)
    print(f"wrote {md} and 3 PNGs in {out}")
    return 0
