"""Quality, skipped FLOPs and latency of a gated model across budgets, per (set, language, task).

The model is reached only through ``transcribe_fn(audio, language, task, budget) -> Transcription``
(with ``.mask`` = kept modules and ``.timings["total"]``), so the PyTorch ``GatedWhisper`` and the
torch-free runtime's ``Session`` are evaluated the same way. No torch here.

Metrics: WER (%, Whisper-style normalisation from :mod:`edgegate.textnorm`) for ``transcribe``,
BLEU (sacrebleu, default 13a tokenisation) for ``translate``; both also against the dense
output (budget 0) when budget 0 is evaluated, which isolates what gating changed from what the
base model gets wrong anyway. Skipped FLOPs are counted with the tokens really decoded.
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgegate.errors import EdgegateError

TranscribeFn = Callable[[str, str, str, float], Any]
# result, entry -> (gateable FLOPs per module in gate order, always-on FLOPs)
CostFn = Callable[[Any], tuple[np.ndarray, float]]


@dataclass
class Utterance:
    set: str
    audio: str
    lang: str
    task: str
    budget: float
    reference: str | None
    hypothesis: str
    kept: int
    n_modules: int
    skipped_gated: float | None  # fraction of the gateable FLOPs skipped
    skipped_total: float | None  # fraction of the whole model's FLOPs skipped
    latency_s: float
    duration_s: float
    mask: list[bool] | None
    dense_check: dict[str, int] | None = None  # what the dense check did (edgegate.dense_check), when it ran
    context_fallbacks: int = 0  # windows of a trimmed context decoded again at the full 30 s


def request_cost_fn(gate_costs: Callable[..., np.ndarray], always_on: Callable[[int, int], float],
                    audio_ctx: int | None) -> CostFn:
    """Cost function of a model: FLOPs of each gate and of the always-on parts, for the tokens really decoded.

    ``gate_costs(positions, tokens)`` and ``always_on(positions, tokens)`` come from the model's cost
    terms (the PyTorch model's :func:`edgegate.models.costs.flop_costs`, or a bundle's manifest).
    """
    from edgegate.plan import encoder_frames

    def cost(result) -> tuple[np.ndarray, float]:
        n_frames = max(1, min(3000, int(math.ceil(result.duration * 100))))
        n_tokens = 4 + len(result.tokens) + 1
        positions = encoder_frames(n_frames, audio_ctx) // 2
        return gate_costs(positions, n_tokens), float(always_on(positions, n_tokens))

    return cost


def whisper_cost_fn(dims: Any, audio_ctx: int | None, context_tail: bool = False) -> CostFn:
    """Cost function for a Whisper model (``dims`` needs ModelDims' fields; no torch needed)."""
    from edgegate.models.costs import always_on_costs, flop_costs

    def always_on(positions: int, tokens: int) -> float:
        return sum(c.flops for c in always_on_costs(dims, positions, tokens).values())

    return request_cost_fn(flop_costs(dims, context_tail), always_on, audio_ctx)


def _group(u: Utterance) -> str:
    return f"{u.set}/{u.lang}/{u.task}"


def score(refs: list[str], hyps: list[str], task: str, lang: str) -> float:
    """WER in percent for transcribe, BLEU for translate (to English)."""
    if task == "transcribe":
        from edgegate.textnorm import wer

        return 100.0 * wer(refs, hyps, lang)
    import sacrebleu

    return float(sacrebleu.corpus_bleu(hyps, [refs]).score)


def evaluate(sets: dict[str, Sequence[Any]], transcribe_fn: TranscribeFn, budgets: Sequence[float],
             gate_names: Sequence[str], cost_fn: CostFn | None = None, progress: bool = True,
             log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run every utterance of every set at every budget; return the JSON-ready report.

    ``sets`` maps a set name to manifest entries (``audio``, ``lang``, ``task``, ``text``).
    """
    return evaluate_variants(sets, {"": transcribe_fn}, budgets, gate_names, cost_fn, progress, log)[""]


def evaluate_variants(sets: dict[str, Sequence[Any]], variants: Mapping[str, TranscribeFn], budgets: Sequence[float],
                      gate_names: Sequence[str], cost_fn: CostFn | None = None, progress: bool = True,
                      log: Callable[[str], None] | None = None) -> dict[str, dict[str, Any]]:
    """:func:`evaluate` for several ways of transcribing (variant name -> function), side by side: each
    utterance and budget runs every variant back to back, so that their latencies share the machine's load.
    One report per variant."""
    if not budgets:
        raise EdgegateError("no budgets to evaluate: pass e.g. --budgets 0,0.1,0.25,0.5")
    jobs = [(name, e, b) for name, entries in sets.items() for e in entries for b in budgets]
    if not jobs:
        raise EdgegateError("nothing to evaluate: the manifests have no entries")
    it = jobs
    bar = None
    if progress:
        from tqdm import tqdm

        it = bar = tqdm(jobs, desc="eval", unit="utt", dynamic_ncols=True)
    utts: dict[str, list[Utterance]] = {v: [] for v in variants}
    n = len(gate_names)
    for name, e, b in it:
        for variant, transcribe_fn in variants.items():
            t0 = time.perf_counter()
            r = transcribe_fn(e.audio, e.lang, e.task, float(b))
            latency = r.timings.get("total", time.perf_counter() - t0) if getattr(r, "timings", None) else \
                time.perf_counter() - t0
            mask = list(r.mask) if r.mask is not None else [True] * n
            sg = st = None
            if cost_fn is not None:
                costs, fixed = cost_fn(r)
                skipped = float(np.sum(costs[~np.asarray(mask, dtype=bool)]))
                sg = skipped / float(np.sum(costs))
                st = skipped / (float(np.sum(costs)) + fixed)
            utts[variant].append(Utterance(name, str(e.audio), e.lang, e.task, float(b), e.text, r.text,
                                           int(sum(mask)), n, sg, st, float(latency), float(r.duration),
                                           [bool(m) for m in mask], getattr(r, "dense_check", None),
                                           getattr(r, "context_fallbacks", 0)))
            if log is not None:
                log(f"[{name} {e.lang} {e.task} b={b:g}{' ' + variant if variant else ''}] {r.text}")
    if bar is not None:
        bar.close()
    return {v: summarize(us, budgets, gate_names) for v, us in utts.items()}


def summarize(utts: list[Utterance], budgets: Sequence[float], gate_names: Sequence[str]) -> dict[str, Any]:
    by: dict[tuple[str, float], list[Utterance]] = defaultdict(list)
    for u in utts:
        by[(_group(u), u.budget)].append(u)
    dense = {(_group(u), u.audio): u.hypothesis for u in utts if u.budget == 0.0}
    groups: dict[str, dict[str, Any]] = {}
    keep_rate: dict[str, dict[str, list[float]]] = {}
    for (g, b), us in sorted(by.items()):
        task, lang = us[0].task, us[0].lang
        with_ref = [u for u in us if u.reference]
        row: dict[str, Any] = {
            "n": len(us), "metric": "wer" if task == "transcribe" else "bleu",
            "value": round(score([u.reference for u in with_ref], [u.hypothesis for u in with_ref], task, lang), 2)
            if with_ref else None,
            "vs_dense": None,
            "skipped_gated_flops": _mean([u.skipped_gated for u in us]),
            "skipped_total_flops": _mean([u.skipped_total for u in us]),
            "kept_modules": round(float(np.mean([u.kept for u in us])), 2),
            "latency_s": round(float(np.mean([u.latency_s for u in us])), 4),
            "rtf": round(sum(u.latency_s for u in us) / max(1e-9, sum(u.duration_s for u in us)), 4),
        }
        pairs = [(dense[(g, u.audio)], u.hypothesis) for u in us if (g, u.audio) in dense]
        if pairs and b != 0.0:
            row["vs_dense"] = round(score([p[0] for p in pairs], [p[1] for p in pairs], task, lang), 2)
        groups.setdefault(g, {})[f"{b:g}"] = row
        masks = np.array([u.mask for u in us], dtype=float)
        keep_rate.setdefault(g, {})[f"{b:g}"] = [round(v, 4) for v in masks.mean(0).tolist()]
    overall = {}
    for b in budgets:
        us = [u for u in utts if u.budget == float(b)]
        overall[f"{b:g}"] = {"skipped_gated_flops": _mean([u.skipped_gated for u in us]),
                             "skipped_total_flops": _mean([u.skipped_total for u in us]),
                             "kept_modules": round(float(np.mean([u.kept for u in us])), 2) if us else None,
                             "latency_s": round(float(np.mean([u.latency_s for u in us])), 4) if us else None}
        checked = [u.dense_check for u in us if u.dense_check]
        if checked:
            overall[f"{b:g}"]["dense_check"] = {k: sum(c[k] for c in checked) for k in checked[0]}
        overall[f"{b:g}"]["context_fallbacks"] = sum(u.context_fallbacks for u in us)
    return {"budgets": [float(b) for b in budgets], "gate_names": list(gate_names), "groups": groups,
            "overall": overall, "keep_rate": keep_rate, "utterances": [asdict(u) for u in utts]}


def _mean(xs: list[float | None]) -> float | None:
    xs = [x for x in xs if x is not None]
    return round(float(np.mean(xs)), 4) if xs else None


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def format_table(report: dict[str, Any]) -> str:
    """A Markdown table: one row per (set, language, task, budget)."""
    head = ("| set | lang | task | budget | n | WER % / BLEU | vs dense | skipped gateable FLOPs "
            "| skipped model FLOPs | kept modules | latency s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for g, rows in report["groups"].items():
        s, lang, task = g.split("/")
        for b, r in rows.items():
            metric = ("WER " if r["metric"] == "wer" else "BLEU ") + _fmt(r["value"], ".1f")
            vs = ("" if r["vs_dense"] is None else ("WER " if r["metric"] == "wer" else "BLEU ")) + \
                _fmt(r["vs_dense"], ".1f")
            lines.append(f"| {s} | {lang} | {task} | {b} | {r['n']} | {metric} | {vs} | "
                         f"{_pct(r['skipped_gated_flops'])} | {_pct(r['skipped_total_flops'])} | "
                         f"{r['kept_modules']:.1f} | {r['latency_s']:.2f} |")
    return "\n".join(lines)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def plot_keep_heatmap(report: dict[str, Any], path: str | Path) -> Path:
    """How often each module is kept, per (set, language, task); one panel per non-zero budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = [f"{b:g}" for b in report["budgets"] if b > 0] or [f"{b:g}" for b in report["budgets"]]
    groups = list(report["keep_rate"])
    names = report["gate_names"]
    fig, axes = plt.subplots(len(budgets), 1, figsize=(max(8, 0.32 * len(names) + 3),
                                                       (0.4 * len(groups) + 2.2) * len(budgets)),
                             squeeze=False, layout="constrained")
    im = None
    for ax, b in zip(axes[:, 0], budgets, strict=True):
        data = np.array([report["keep_rate"][g].get(b, [np.nan] * len(names)) for g in groups])
        im = ax.imshow(data, aspect="auto", vmin=0, vmax=1, cmap="viridis")
        ax.set_yticks(range(len(groups)), groups, fontsize=7)
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
        ax.set_title(f"budget {b}: fraction of utterances that keep each module", fontsize=9)
    fig.colorbar(im, ax=axes[:, 0].tolist(), shrink=0.6, label="kept")
    path = Path(path)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_quality(report: dict[str, Any], path: str | Path) -> Path:
    """WER (transcribe) and BLEU (translate) against the budget, one line per (set, language)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for g, rows in report["groups"].items():
        s, lang, task = g.split("/")
        xs = [float(b) for b in rows]
        ys = [rows[b]["value"] for b in rows]
        if all(y is None for y in ys):
            continue
        ax = axes[0] if task == "transcribe" else axes[1]
        ax.plot(xs, [np.nan if y is None else y for y in ys], marker="o", label=f"{s}/{lang}")
    axes[0].set(title="transcribe", xlabel="budget (fraction of gateable FLOPs skipped)", ylabel="WER %")
    axes[1].set(title="translate to English", xlabel="budget (fraction of gateable FLOPs skipped)",
                ylabel="BLEU")
    for ax in axes:
        if ax.lines:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(report: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """``eval.json``, ``eval.md`` (the table), ``keep_heatmap.png`` and ``quality.png`` in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "eval.json", "table": out / "eval.md"}
    paths["json"].write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    paths["table"].write_text(format_table(report) + "\n")
    paths["heatmap"] = plot_keep_heatmap(report, out / "keep_heatmap.png")
    paths["quality"] = plot_quality(report, out / "quality.png")
    return paths
