"""Issue 11's one-run acceptance benchmark: edgegate's int8 / dynamic-context / shard / gated rows against
faster-whisper on the same whisper-base weights, the same items, alternated item by item.

    edgegate export --target cpu --precision fp32 --audio-ctx full --out /tmp/t11r/fp32
    edgegate export --target cpu --audio-ctx full --out /tmp/t11r/int8                      # int8 (cpu default)
    edgegate export --target cpu --gates whisper-base-decoder --out /tmp/t11r/int8-gated-dec
    edgegate export --target android --audio-ctx full --out /tmp/t11r/android-int8            # ExecuTorch int8
    python benchmarks/bench_speed.py --bundles /tmp/t11r

Rows (greedy, beam 1, no timestamps, VAD off, the language given):
  fw-int8, fw-float32        faster-whisper (CTranslate2) on the CTranslate2 weights edgegate's registry holds
  eg-fp32                    edgegate fp32 modules, full 30-s context, full vocabulary
  eg-int8                    int8 modules, full context, full vocabulary
  eg-int8-ctx                + dynamic encoder context (the audio + ``--margin`` positions; the original model
                             until the edge-adapted one lands)
  eg-int8-ctx-vocab          + the vocabulary shard of the request (en/de/es/it and translate; fr full)
  eg-int8-ctx-vocab-gates@B  + the shipped decoder gate set at budget B (its predictor plans per request)
  et-int8                    ExecuTorch int8 .pte (XNNPACK), full context, full vocabulary

Items: the 10 real clips (pocketsphinx-testdata) and ``--per-pair`` synthetic held-out items per (language,
task) of a Kokoro manifest. Pass 1: every item at 1 thread; pass 2 (``--threads2-items``): the real clips and
the first synthetic items at 2 threads. In each pass the rows are rotated item by item, so machine load
(recorded per item: the machine is shared with training) falls on every row alike. Resident memory after
warm-up is measured per row in a fresh process (``--rss``). Writes ``results/bench_speed.json`` and
``results/bench_speed.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from bench_quant_methods import Item, real_clips, synth_items, word_errors  # noqa: E402
from common import FASTER_WHISPER_DECODING, write_json_atomic  # noqa: E402

RESULTS = Path(__file__).parent / "results"
KOKORO = Path.home() / ".cache/edgegate/adapt/corpus/kokoro_heldout2/manifest.jsonl"
RUNAWAY = 200  # tokens: an utterance of these items never needs that many (a decoding loop)
ESPEAK = Path.home() / ".cache/edgegate/adapt/corpus/espeak_heldout/manifest.jsonl"


def median(xs: list[float]) -> float:
    xs = [x for x in xs if x is not None]
    return float(statistics.median(xs)) if xs else float("nan")


# -- rows -------------------------------------------------------------------------------------------
class FasterWhisper:
    def __init__(self, compute_type: str, threads: int, model: str = "whisper-base"):
        import faster_whisper

        from edgegate.models.registry import resolve_model

        self.fw = faster_whisper.WhisperModel(str(resolve_model(model)), device="cpu", compute_type=compute_type,
                                              cpu_threads=threads, num_workers=1)

    def __call__(self, it: Item) -> dict[str, Any]:
        t0 = time.perf_counter()
        segments, _ = self.fw.transcribe(it.audio, **{**FASTER_WHISPER_DECODING, "language": it.lang,
                                                      "task": it.task})
        segments = list(segments)  # the generator decodes: consume it inside the timing
        seconds = time.perf_counter() - t0
        tokens = [t for s in segments for t in s.tokens]
        return {"text": " ".join(s.text.strip() for s in segments).strip(), "n_tokens": len(tokens),
                "seconds": seconds}


class Edgegate:
    def __init__(self, bundle: Path, threads: int, full_vocab: bool, audio_ctx: int | None,
                 budget: float | None = None, backend: str = "onnxruntime"):
        from edgegate.runtimes.session import Session

        self.session = Session.load(bundle, backend=backend, threads=threads, full_vocab=full_vocab,
                                    budget=budget if budget is not None else 0.0)
        self.audio_ctx, self.budget = audio_ctx, budget

    def __call__(self, it: Item) -> dict[str, Any]:
        t0 = time.perf_counter()
        r = self.session.transcribe_windows(it.audio, language=it.lang, task=it.task, audio_ctx=self.audio_ctx)
        seconds = time.perf_counter() - t0
        tm = r.timings
        return {"text": r.text, "n_tokens": len(r.tokens), "seconds": seconds, "frontend": tm["frontend"],
                "predictor": tm["predictor"], "encoder": tm["encoder"], "decoder": tm["decoder"],
                "skipped": None if r.mask is None else sum(not k for k in r.mask)}


def row_specs(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Row name -> how to build it (kind + arguments); rows whose bundle is missing are left out."""
    b = args.bundles
    rows: dict[str, dict[str, Any]] = {
        "fw-int8": {"kind": "fw", "compute_type": "int8"},
        "fw-float32": {"kind": "fw", "compute_type": "float32"},
        "eg-fp32": {"kind": "eg", "bundle": b / "fp32", "full_vocab": True, "audio_ctx": None},
        "eg-int8": {"kind": "eg", "bundle": b / "int8", "full_vocab": True, "audio_ctx": None},
        "eg-int8-ctx": {"kind": "eg", "bundle": b / "int8", "full_vocab": True, "audio_ctx": args.margin},
        "eg-int8-ctx-vocab": {"kind": "eg", "bundle": b / "int8", "full_vocab": False, "audio_ctx": args.margin},
    }
    for budget in args.budgets:
        rows[f"eg-int8-ctx-vocab-gates@{budget:g}"] = {"kind": "eg", "bundle": b / "int8-gated-dec",
                                                       "full_vocab": False, "audio_ctx": args.margin,
                                                       "budget": budget}
    rows["et-int8"] = {"kind": "eg", "bundle": b / "android-int8", "full_vocab": True, "audio_ctx": None,
                       "backend": "executorch"}
    keep = set(args.rows.split(",")) if args.rows else None
    return {k: v for k, v in rows.items() if (keep is None or k in keep)
            and (v["kind"] == "fw" or (Path(v["bundle"]) / "manifest.json").is_file())}


def build(spec: dict[str, Any], threads: int):
    if spec["kind"] == "fw":
        return FasterWhisper(spec["compute_type"], threads)
    return Edgegate(Path(spec["bundle"]), threads, spec["full_vocab"], spec["audio_ctx"], spec.get("budget"),
                    spec.get("backend", "onnxruntime"))


# -- one pass ---------------------------------------------------------------------------------------
def run_pass(specs: dict[str, dict[str, Any]], items: list[Item], threads: int) -> dict[str, dict[str, dict]]:
    """Every row on every item, rows rotated per item; each row warmed up on the first item first."""
    rows = {name: build(spec, threads) for name, spec in specs.items()}
    for row in rows.values():
        row(items[0])
        row(items[-1])  # a second shape (and a second language's shard) before timing
    names = list(rows)
    recs: dict[str, dict[str, dict]] = {n: {} for n in names}
    for i, it in enumerate(items):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            rec = rows[name](it)
            rec["load"] = os.getloadavg()[0]
            recs[name][it.id] = rec
        if (i + 1) % 10 == 0 or i + 1 == len(items):
            print(f"# {threads} thread(s): {i + 1}/{len(items)} items, load {os.getloadavg()[0]:.1f}", flush=True)
    return recs


def summarize(recs: dict[str, dict], items: list[Item]) -> dict[str, dict[str, Any]]:
    from edgegate.evaluation import score

    out = {}
    real = [it for it in items if it.set == "real"]
    synth = [it for it in items if it.set == "synth"]
    for name, rec in recs.items():
        errs = [word_errors(it.reference, rec[it.id]["text"], it.lang) for it in real]
        groups = {}
        for key in sorted({(it.lang, it.task) for it in synth}):
            g = [it for it in synth if (it.lang, it.task) == key]
            groups[f"{key[0]}/{key[1]}"] = round(score([it.reference for it in g], [rec[it.id]["text"] for it in g],
                                                       key[1], key[0]), 2)
        item_wer = [score([it.reference], [rec[it.id]["text"]], "transcribe", it.lang)
                    for it in synth if it.task == "transcribe"]
        wer = [v for k, v in groups.items() if k.endswith("transcribe")]
        bleu = [v for k, v in groups.items() if k.endswith("translate")]
        tokens = sum(rec[it.id]["n_tokens"] for it in items)
        stage = {s: median([rec[it.id].get(s) for it in items]) for s in ("frontend", "predictor", "encoder")}
        dec = [rec[it.id].get("decoder") for it in items]
        out[name] = {
            "median_s": median([rec[it.id]["seconds"] for it in items]),
            "median_s_real": median([rec[it.id]["seconds"] for it in real]),
            "median_s_synth": median([rec[it.id]["seconds"] for it in synth]),
            "real_word_errors": sum(e for e, _ in errs), "real_words": sum(n for _, n in errs),
            "synth": groups, "synth_wer_mean": round(statistics.mean(wer), 2) if wer else None,
            "synth_bleu_mean": round(statistics.mean(bleu), 2) if bleu else None,
            # robust to the loops that dominate a group's WER: the median item's WER, and the runaway count
            "synth_wer_item_median": round(median(item_wer), 2) if item_wer else None,
            "runaways": sum(rec[it.id]["n_tokens"] >= RUNAWAY for it in items),
            "stages_median_s": stage,
            "decoder_ms_per_token": (1e3 * sum(dec) / max(1, tokens)) if None not in dec else None,
            "tokens": tokens, "load_median": median([rec[it.id]["load"] for it in items]),
            "skipped_median": median([rec[it.id].get("skipped") for it in items]),
        }
    return out


# -- memory (fresh process per row) -----------------------------------------------------------------
RSS_CHILD = """
import json, sys
sys.path.insert(0, {bench!r})
from bench_speed import build
from bench_quant_methods import real_clips
spec = json.loads(sys.argv[1])
row = build(spec, 1)
for it in real_clips()[:3]:
    row(it)
fields = dict(l.split(":", 1) for l in open("/proc/self/status") if ":" in l)
mb = {{k: int(fields[v].split()[0]) / 1024 for k, v in (("rss_mb", "VmRSS"), ("hwm_mb", "VmHWM"))}}
print(json.dumps(mb))
"""


def rss_after_warmup(spec: dict[str, Any]) -> dict[str, float] | None:
    code = RSS_CHILD.format(bench=str(Path(__file__).parent))
    spec = {k: (str(v) if isinstance(v, Path) else v) for k, v in spec.items()}
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True,
                          timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        print(f"# rss child failed: {proc.stderr.strip().splitlines()[-1:]}", flush=True)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bundle_mb(spec: dict[str, Any]) -> float | None:
    if spec["kind"] != "eg":
        return None
    return round(sum(p.stat().st_size for p in Path(spec["bundle"]).iterdir() if p.is_file()) / 1e6, 1)


# -- report -----------------------------------------------------------------------------------------
def fmt(v: float | None, k: int = 1) -> str:
    return "-" if v is None or v != v else f"{v:.{k}f}"


def table(summary: dict[str, dict], sizes: dict, rss: dict, threads: int, base: str = "fw-int8") -> str:
    ref = summary.get(base, {}).get("median_s")
    fp32 = summary.get("eg-fp32", {}).get("median_s")
    head = ("| row | median s/item | vs fw-int8 | vs eg-fp32 | real word errors | synth WER (mean of groups) | "
            "synth WER (median item) | synth BLEU (mean) | runaways | frontend ms | predictor+plan ms | encoder s | "
            "decoder ms/token | bundle MB | RSS MB |")
    lines = [f"**{threads} thread(s)**", "", head, "|" + "---|" * 15]
    for name, s in summary.items():
        st = s["stages_median_s"]
        dec = s["decoder_ms_per_token"]
        lines.append(
            f"| {name} | {s['median_s']:.3f} | {fmt(s['median_s'] / ref if ref else None, 2)} | "
            f"{fmt(s['median_s'] / fp32 if fp32 else None, 2)} | {s['real_word_errors']} / {s['real_words']} | "
            f"{fmt(s['synth_wer_mean'])} | {fmt(s.get('synth_wer_item_median'))} | {fmt(s['synth_bleu_mean'])} | "
            f"{s.get('runaways', '-')} | "
            f"{fmt(st['frontend'] and 1e3 * st['frontend'])} | "
            f"{fmt(st['predictor'] and 1e3 * st['predictor'], 2)} | {fmt(st['encoder'], 3)} | {fmt(dec, 2)} | "
            f"{fmt(sizes.get(name))} | {fmt((rss.get(name) or {}).get('rss_mb'), 0)} |")
    return "\n".join(lines)


def resummarize(path: Path) -> int:
    """Summaries and tables again from a run's records (e.g. after a new summary column)."""
    data = json.loads(path.read_text())
    known = {it.id: it for it in real_clips() + synth_items(Path(data["manifest"]))}
    for p in data["passes"].values():
        p["summary"] = summarize(p["records"], [known[i] for i in p["items"]])
    data["table_md"] = "\n\n".join(table(p["summary"], data["bundle_mb"], data["rss_after_warmup"], int(t))
                                    for t, p in data["passes"].items())
    write_json_atomic(path, data)
    path.with_suffix(".md").write_text(data["table_md"] + "\n")
    print(data["table_md"])
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundles", type=Path, default=Path("/tmp/t11r"))
    ap.add_argument("--manifest", type=Path, default=KOKORO if KOKORO.is_file() else ESPEAK)
    ap.add_argument("--per-pair", type=int, default=12, help="synthetic items per (language, task)")
    ap.add_argument("--threads2-items", type=int, default=18, help="synthetic items also run at 2 threads")
    ap.add_argument("--margin", type=int, default=250, help="dynamic context: encoder positions after the audio")
    ap.add_argument("--budgets", type=float, nargs="*", default=[0.1, 0.25])
    ap.add_argument("--rows", default="", help="comma-separated subset of rows")
    ap.add_argument("--no-rss", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS / "bench_speed.json")
    ap.add_argument("--resummarize", action="store_true", help="recompute summaries and tables of --out, no runs")
    args = ap.parse_args(argv)
    if args.resummarize:
        return resummarize(args.out)

    specs = row_specs(args)
    real = real_clips()
    synth = synth_items(args.manifest, args.per_pair)
    items = real + synth
    print(f"# rows: {', '.join(specs)}; {len(real)} real + {len(synth)} synthetic items ({args.manifest})", flush=True)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    passes = {}
    for threads, its in ((1, items), (2, real + synth[: args.threads2_items])):
        recs = run_pass(specs, its, threads)
        passes[threads] = {"items": [it.id for it in its], "summary": summarize(recs, its), "records": recs}
    sizes = {n: bundle_mb(s) for n, s in specs.items()}
    rss = {} if args.no_rss else {n: rss_after_warmup(s) for n, s in specs.items()}
    md = "\n\n".join(table(p["summary"], sizes, rss, t) for t, p in passes.items())
    out = {"benchmark": "bench_speed", "started_utc": started,
           "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "command": " ".join(sys.argv), "platform": platform.platform(), "cpu_count": os.cpu_count(),
           "manifest": str(args.manifest), "margin": args.margin,
           "rows": {n: {k: str(v) if isinstance(v, Path) else v for k, v in s.items()} for n, s in specs.items()},
           "bundle_mb": sizes, "rss_after_warmup": rss, "passes": passes, "table_md": md}
    write_json_atomic(args.out, out)
    args.out.with_suffix(".md").write_text(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
