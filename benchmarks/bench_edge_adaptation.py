"""Is dynamic encoder context free after edge adaptation? Original vs adapted whisper-base, full vs dynamic context.

Rows (all on the same items, the configurations alternated item by item so that load from other processes
hits them alike; PyTorch, greedy, language given, 1 thread):
- ``base/full``: the original whisper-base on Whisper's 30-s window (the reference);
- ``base/dyn``: the original at the real length + the margin (it loops on short clips);
- ``edge/full``, ``edge/dyn``: the adapted model (``--edge``: an ``edgegate adapt`` directory or a registered name);
- ``edge/dyn-skip``: the adapted model at dynamic context with the modules of ``--skip`` never run (a static
  cut: is an encoder layer that LayerDrop made droppable free on the held-out set too?);
- ``edge/dyn-fallback``: ``edge/dyn`` with the SDK's default check: a window that still fails (loops, compresses
  too well, hits the token limit) is encoded again on the full 30 s (``context_fallbacks`` counts them). Every
  other row runs the plan alone (``dense_check="off"``).

Sets: the 10 real clips of pocketsphinx-testdata (word errors counted), and the synthetic held-out manifests
(``--heldout``; texts also in a ``--train-manifest`` are dropped, so none was trained on; a training corpus's
``plan.jsonl`` from ``edgegate corpus synth --plan-only`` serves as well as its manifest): corpus WER per
language for transcribe, corpus BLEU and chrF for translate, and loops (outputs that hit the token limit).
Encoder seconds per utterance are the model's own timings (median per row). Every row is also compared with
``base/full`` utterance by utterance: word errors, BLEU and chrF differences with paired-bootstrap 95 %
intervals (:mod:`edgegate.paired_bootstrap`), and again on the translate items where neither side loops (one
looping output moves a corpus BLEU more than the rest together); ``--rescore JSON`` recomputes all of that
from a report's outputs.

    python benchmarks/bench_edge_adaptation.py --edge ~/.cache/edgegate/adapt/runs/edge1 \\
        --heldout H1.jsonl --heldout H2.jsonl --train-manifest T1.jsonl --train-manifest T2.jsonl
    python benchmarks/bench_edge_adaptation.py --rescore benchmarks/results/edge_p3_pytorch.json \
        --heldout H1.jsonl --heldout H2.jsonl --heldout H3.jsonl
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

RESULTS = Path(__file__).resolve().parent / "results" / "edge_adaptation.json"


def load_sets(args) -> dict[str, list[dict]]:
    from edgegate.data.librivox import real_clips
    from edgegate.data.manifest import read_manifest

    sets = {"real": [{"id": u, "audio": str(p), "lang": "en", "task": "transcribe", "ref": r}
                     for u, p, r in real_clips()]}
    seen = set()
    for m in args.train_manifest:
        # only the texts matter: a plan (``corpus synth --plan-only``) or a corpus whose audio is gone will do
        seen |= {e.extra.get("source_text") or e.text for e in read_manifest(m, check_files=False)}
    synth, dropped = [], 0
    for m in args.heldout:
        for e in read_manifest(m):
            spoken = e.extra.get("source_text") or e.text
            if spoken in seen:
                dropped += 1
                continue
            synth.append({"id": e.extra.get("id", Path(e.audio).stem), "audio": str(e.audio), "lang": e.lang,
                          "task": e.task, "ref": e.text, "voice": e.extra.get("voice", "")})
    if dropped:
        print(f"dropped {dropped} held-out items whose text is in a training manifest", file=sys.stderr)
    if synth:
        sets["synth"] = synth
    if args.limit:
        sets = {k: v[: args.limit] for k, v in sets.items()}
    return sets


ROWS = ("base/full", "base/dyn", "edge/full", "edge/dyn", "edge/dyn-skip", "edge/dyn-fallback")


def build_rows(args) -> dict:
    from edgegate.transcriber import WhisperModel

    base = WhisperModel("whisper-base", threads=1)
    edge = WhisperModel(args.edge, threads=1)
    margin = args.margin if args.margin is not None else edge.model.default_audio_ctx
    if margin is None:
        raise SystemExit(f"{args.edge} carries no encoder-context rule: pass --margin")
    names = edge.model.gate_names
    if "edge/dyn-skip" in args.rows and not args.skip:
        raise SystemExit("row edge/dyn-skip needs --skip NAME[,NAME...] (module names of the model's gates)")
    if unknown := set(args.skip) - set(names):
        raise SystemExit(f"--skip: no module {', '.join(sorted(unknown))}; the model's are {', '.join(names)}")
    skip_mask = [n not in args.skip for n in names]
    rows = {"base/full": (base, None, None, "off"), "base/dyn": (base, margin, None, "off"),
            "edge/full": (edge, None, None, "off"), "edge/dyn": (edge, margin, None, "off"),
            "edge/dyn-skip": (edge, margin, skip_mask, "off"), "edge/dyn-fallback": (edge, margin, None, "loops")}
    return {k: v for k, v in rows.items() if k in args.rows}, margin


def reused_outputs(path: Path | None, sets: dict[str, list[dict]], rows: dict, margin: int) -> dict:
    """Outputs of the original model's rows from an earlier run of this script on the same items.

    The original whisper-base does not change between evaluations of successive adaptation checkpoints, so
    its rows are taken from that run (its JSON says so under ``reused_from``) and only the adapted rows run.
    Their encoder times then come from another run: compare them only within a run.
    """
    if path is None:
        return {}
    import json

    old = json.loads(path.read_text())
    if old.get("margin") != margin:
        raise SystemExit(f"--reuse-base {path}: it ran at margin {old.get('margin')}, this run at {margin}")
    out: dict[str, dict[str, list[dict]]] = {}
    for set_name, items in sets.items():
        by_id = {row: {r["id"]: r for r in old["outputs"].get(set_name, {}).get(row, [])} for row in ROWS[:2]}
        for row in ROWS[:2]:
            if row in rows or not by_id[row]:  # run here, or not in that file (then not in this report)
                continue
            got = [by_id[row].get(it["id"]) for it in items]
            if None in got:
                raise SystemExit(f"--reuse-base {path}: row {row} lacks items of set {set_name}; run it again")
            out.setdefault(set_name, {})[row] = got
    return out


def run_items(rows: dict, items: list[dict], max_tokens: int, label: str) -> dict[str, list[dict]]:
    from tqdm import tqdm

    out: dict[str, list[dict]] = {name: [] for name in rows}
    for item in tqdm(items, desc=label, unit="utt", file=sys.stderr):
        for name, (model, ctx, mask, check) in rows.items():
            t0 = time.perf_counter()
            # the plan alone unless the row says otherwise, like mask_probe.py: no fallback hides its failures
            r = model.transcribe_windows(item["audio"], language=item["lang"], task=item["task"], audio_ctx=ctx,
                                         mask=mask, dense_check=check)
            out[name].append({"id": item["id"], "text": r.text, "n_tokens": len(r.tokens),
                              "loop": len(r.tokens) >= max_tokens, "encoder_s": r.timings.get("encoder", 0.0),
                              "total_s": time.perf_counter() - t0, "context_fallbacks": r.context_fallbacks})
    return out


def score_set(items: list[dict], results: list[dict]) -> dict:
    import sacrebleu

    from edgegate.textnorm import word_errors

    summary: dict = {"n": len(items), "loops": sum(r["loop"] for r in results),
                     "context_fallbacks": sum(r.get("context_fallbacks", 0) for r in results),
                     "encoder_s_median": round(statistics.median(r["encoder_s"] for r in results), 4),
                     "total_s_median": round(statistics.median(r["total_s"] for r in results), 4)}
    groups: dict[tuple[str, str], list[int]] = {}
    for i, it in enumerate(items):
        groups.setdefault((it["lang"], it["task"]), []).append(i)
    errors = words = 0
    per = {}
    for (lang, task), idx in sorted(groups.items()):
        refs = [items[i]["ref"] for i in idx]
        hyps = [results[i]["text"] for i in idx]
        if task == "transcribe":
            e, n = word_errors(refs, hyps, lang)
            errors, words = errors + e, words + n
            per[f"{lang}/{task}"] = {"wer": round(100 * e / max(n, 1), 2), "errors": e, "words": n}
        else:
            per[f"{lang}/{task}"] = {"bleu": round(sacrebleu.corpus_bleu(hyps, [refs]).score, 2),
                                     "chrf": round(sacrebleu.corpus_chrf(hyps, [refs]).score, 2)}
    summary.update(word_errors=errors, ref_words=words, wer=round(100 * errors / max(words, 1), 2), groups=per)
    for metric in ("bleu", "chrf"):
        values = [g[metric] for g in per.values() if metric in g]
        if values:
            summary[f"{metric}_mean"] = round(sum(values) / len(values), 2)
    return summary


def compare_to_base(sets: dict[str, list[dict]], results: dict[str, dict[str, list[dict]]]) -> dict:
    """Each row against ``base/full`` on the same items: differences with paired-bootstrap 95 % intervals."""
    from edgegate.paired_bootstrap import paired_bootstrap

    out: dict = {}
    for set_name, items in sets.items():
        base = results[set_name].get("base/full")
        if base is None:
            continue
        for row, res in results[set_name].items():
            if row == "base/full":
                continue
            vs = paired_bootstrap(items, [r["text"] for r in base], [r["text"] for r in res])
            # A looping output (hundreds of unmatched n-grams) swings a corpus BLEU more than all the other
            # items together: the translate items where neither side loops say how the rest compares.
            keep = [i for i, it in enumerate(items) if it["task"] == "translate"
                    and not (base[i]["loop"] or res[i]["loop"])]
            if keep and len(keep) < sum(it["task"] == "translate" for it in items):
                vs["no_loops"] = {"n": len(keep), **paired_bootstrap(
                    [items[i] for i in keep], [base[i]["text"] for i in keep], [res[i]["text"] for i in keep])}
            out.setdefault(row, {})[set_name] = vs
    return out


def format_table(report: dict) -> str:
    from edgegate.paired_bootstrap import format_interval

    lines = ["| row | set | word errors / words | WER % | BLEU / chrF (means over languages) | loops "
             "| encoder s (median) | vs base/full: word errors, BLEU, chrF (95 % interval) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, sets in report["rows"].items():
        for set_name, s in sets.items():
            vs = report.get("vs_base", {}).get(name, {}).get(set_name, {})
            diffs = ", ".join(format_interval(vs[k]) for k in ("word_errors", "bleu_mean", "chrf_mean") if k in vs)
            if nl := vs.get("no_loops"):
                diffs += (f"; the {nl['n']} translate items neither loops on: BLEU {format_interval(nl['bleu_mean'])}, "
                          f"chrF {format_interval(nl['chrf_mean'])}")
            fell = f" ({s['context_fallbacks']} windows redone at 30 s)" if s.get("context_fallbacks") else ""
            lines.append(f"| {name} | {set_name} | {s['word_errors']} / {s['ref_words']} | {s['wer']} | "
                         f"{s.get('bleu_mean', '-')} / {s.get('chrf_mean', '-')} | {s['loops']}{fell} | "
                         f"{s['encoder_s_median']} | {diffs or '-'} |")
    return "\n".join(lines)


def rescore(path: Path, sets: dict[str, list[dict]]) -> dict:
    """An earlier report scored again from its stored outputs (same items, found by id in the manifests)."""
    import json

    report = json.loads(path.read_text())
    by_id = {it["id"]: it for items in sets.values() for it in items}
    items = {}
    for set_name, rows in report["outputs"].items():
        ids = [r["id"] for r in next(iter(rows.values()))]
        if missing := [i for i in ids if i not in by_id]:
            raise SystemExit(f"--rescore {path}: {len(missing)} items of set {set_name} are not in the manifests "
                             f"given (first: {missing[0]}): pass the --heldout manifests it ran on")
        items[set_name] = [by_id[i] for i in ids]
    report["rows"] = {row: {s: score_set(items[s], report["outputs"][s][row]) for s in items if row in
                            report["outputs"][s]} for row in ROWS if any(row in report["outputs"][s] for s in items)}
    report["vs_base"] = compare_to_base(items, report["outputs"])
    report["normalizer"] = NORMALIZER_VERSION
    return report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--edge", default=None, help="adapted model: an edgegate adapt directory or a registered name")
    ap.add_argument("--margin", type=int, default=None, help="dynamic-context margin (default: the model's rule)")
    ap.add_argument("--heldout", action="append", default=[], help="held-out synthetic manifest (repeatable)")
    ap.add_argument("--train-manifest", action="append", default=[],
                    help="training manifest: held-out items with the same text are dropped (repeatable)")
    ap.add_argument("--limit", type=int, default=0, help="items per set (quick checks)")
    ap.add_argument("--rows", default=",".join(ROWS), type=lambda t: tuple(t.split(",")),
                    help=f"rows to run (default all: {','.join(ROWS)})")
    ap.add_argument("--skip", default=(), type=lambda t: tuple(t.split(",")), metavar="NAME[,NAME...]",
                    help="modules row edge/dyn-skip never runs (e.g. encoder.1.attn,encoder.1.mlp)")
    ap.add_argument("--reuse-base", type=Path, default=None, metavar="JSON",
                    help="take the rows of the original model not in --rows from this earlier result (those it has)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--rescore", type=Path, default=None, metavar="JSON",
                    help="run nothing: score this earlier report's outputs again (adds chrF and the paired-bootstrap "
                         "intervals against base/full) and write it back in place; --edge is then not needed")
    args = ap.parse_args()
    if args.rescore is not None:
        args.train_manifest, args.limit = [], 0  # the report's own items, whatever was trained since
        report = rescore(args.rescore, load_sets(args))
        write_json_atomic(args.rescore, report)
        print(format_table(report))
        return 0
    if args.edge is None:
        raise SystemExit("--edge is required (an edgegate adapt directory or a registered name)")

    import torch

    torch.set_num_threads(1)
    if bad := set(args.rows) - set(ROWS):
        raise SystemExit(f"unknown --rows {', '.join(sorted(bad))}: use {', '.join(ROWS)}")
    sets = load_sets(args)
    rows, margin = build_rows(args)
    max_tokens = next(iter(rows.values()))[0].model.dims.n_text_ctx // 2
    reused = reused_outputs(args.reuse_base, sets, rows, margin)
    t0 = time.time()
    results = {name: run_items(rows, items, max_tokens, name) for name, items in sets.items()}
    for set_name, extra in reused.items():
        results[set_name] = {**extra, **results[set_name]}
    all_rows = [r for r in ROWS if any(r in results[s] for s in results)]
    report = {"edge": str(args.edge), "margin": margin, "max_tokens": max_tokens, "skip": list(args.skip),
              "normalizer": NORMALIZER_VERSION,
              "ran_rows": list(rows), "reused_from": str(args.reuse_base) if reused else None,
              "load_average": os.getloadavg(), "wall_s": round(time.time() - t0, 1),
              "sets": {k: len(v) for k, v in sets.items()},
              "rows": {row: {s: score_set(sets[s], results[s][row]) for s in sets} for row in all_rows},
              "vs_base": compare_to_base(sets, results),
              "outputs": results}
    write_json_atomic(args.out, report)
    print(format_table(report))
    print(f"load average {report['load_average']}, wall {report['wall_s']} s -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
