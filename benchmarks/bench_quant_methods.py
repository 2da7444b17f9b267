"""Int8 methods for a whisper-base bundle's per-module ONNX graphs, side by side (issue 11, phase 1).

    edgegate export --target cpu --out /tmp/eg-bundle-fp32
    edgegate corpus synth --out /tmp/vocab-heldout --per-pair 20 --seed 97 --engine espeak
    python benchmarks/bench_quant_methods.py        # table + benchmarks/results/quant_methods.json

1. Capture: the fp32 bundle runs (runtime Session, full 30-s context) on 5 synthetic items, one per
   language (calibration feeds for ``qdq``), and on one real LibriVox clip (evaluation feeds); every
   module's inputs are recorded.
2. Modules: each representative module graph (layer 0 of each kind, the cross K/V projection and
   the vocabulary projection) is written in every variant of VARIANTS with
   ``edgegate.export.quantize.quantize_module``; per variant: file size, the ops ORT runs after its
   graph optimisations, the error on the real clip's feeds (relative L2 error of the module's
   residual contribution ``out - x``; logits: top-1 agreement and max |diff|), and latency at 1 and 2
   threads (encoder modules at 1500 positions, decoder modules one single-token step at the real
   clip's mid-utterance cache length). Variants alternate run by run (the order rotates every
   repeat); medians of ``--repeats``; the load average is recorded at every repeat.
3. End to end: a whole bundle per CONFIGS entry (every module file quantised, manifest hashes
   updated) transcribes the 10 real clips (LibriVox + cards of pocketsphinx-testdata) and
   ``--synth-per-pair`` held-out synthetic items per (language, task) (full context, greedy, 1
   thread): real-clip word errors, synthetic WER/BLEU, tokens identical to fp32, median times.
   Configurations alternate in chunks of items (all bundles' arenas do not fit in memory at once).

The machine is shared (a niced training job and other agents): compare ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from common import write_json_atomic

ROOT = Path(__file__).resolve().parents[1]
CARDS_DIR = Path("/usr/share/pocketsphinx/test/data/cards")
# name -> (quantize_module method, options); None = the fp32 graph as exported
VARIANTS: dict[str, tuple[str, dict] | None] = {
    "fp32": None,
    "dynamic": ("dynamic", {}),
    "dynamic-rr": ("dynamic", {"reduce_range": True}),
    "dynamic-u8": ("dynamic", {"weight_type": "uint8"}),
    "qdq": ("qdq", {}),
    "nbits8": ("nbits8", {"block_size": 32}),
    "nbits8-b128": ("nbits8", {"block_size": 128}),
    "nbits4": ("nbits4", {"block_size": 32}),
    "fp16": ("fp16", {}),
}
MODULES = ("encoder.0.attn", "encoder.0.mlp", "decoder.0.cross_kv", "decoder.0.self_attn", "decoder.0.cross_attn",
           "decoder.0.mlp", "decoder.logits")
# end-to-end bundles: name -> (variant for encoder-side graphs, variant for per-token decoder graphs)
CONFIGS = {"fp32": ("fp32", "fp32"), "dynamic": ("dynamic", "dynamic"), "dynamic-rr": ("dynamic-rr", "dynamic-rr"),
           "qdq": ("qdq", "qdq"), "nbits8": ("nbits8", "nbits8"), "nbits4": ("nbits4", "nbits4"),
           "dynamic+nbits8": ("dynamic", "nbits8")}


# -- evaluation items -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Item:
    id: str
    audio: str
    lang: str
    task: str
    reference: str
    set: str  # "real" or "synth"


def real_clips() -> list[Item]:
    """The 10 real clips of pocketsphinx-testdata: 5 LibriVox utterances and 5 'cards' commands."""
    from edgegate.data.librivox import find_librivox_dir, load_clips

    folder = find_librivox_dir()
    items = [Item(utt, str(wav), "en", "transcribe", ref, "real") for utt, wav, ref in (load_clips(folder) if folder
                                                                                       else [])]
    tfile = CARDS_DIR / "cards.transcription"
    if tfile.exists():
        for line in tfile.read_text().splitlines():
            text, _, utt = line.rpartition("(")
            utt = utt.strip().rstrip(")").strip()
            ref = " ".join(text.replace("<s>", " ").replace("</s>", " ").split())
            if (CARDS_DIR / f"{utt}.wav").exists():
                items.append(Item(f"cards-{utt}", str(CARDS_DIR / f"{utt}.wav"), "en", "transcribe", ref, "real"))
    return items


def synth_items(manifest: Path, per_pair: int | None = None, skip: int = 0) -> list[Item]:
    """Items of an ``edgegate corpus synth`` manifest, ``per_pair`` per (language, task) after ``skip``."""
    seen: Counter = Counter()
    items = []
    for line in manifest.read_text().splitlines():
        e = json.loads(line)
        key = (e["lang"], e["task"])
        seen[key] += 1
        if seen[key] <= skip or (per_pair is not None and seen[key] > skip + per_pair):
            continue
        items.append(Item(e["id"], str(manifest.parent / e["audio"]), e["lang"], e["task"], e["text"], "synth"))
    return items


def word_errors(ref: str, hyp: str, lang: str) -> tuple[int, int]:
    """(errors, reference words) on edgegate.textnorm-normalised text."""
    from edgegate.textnorm import normalize, wer

    n = len(normalize(ref, lang).split())
    rate = wer([ref], [hyp], lang)
    return (len(normalize(hyp, lang).split()) if n == 0 else round(rate * n)), n


def median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


# -- capture ------------------------------------------------------------------------------------------
def capture(session, items: list[Item], steps_per_item: int = 12) -> dict[str, list[dict]]:
    """Every module's feeds while the fp32 session transcribes ``items`` (decoder: the first steps)."""
    feeds: dict[str, list[dict]] = {}
    originals = {}
    count: Counter = Counter()
    for name, mod in session.modules.items():
        originals[name] = mod.run

        def recording(feed, _name=name, _run=mod.run):
            if count[_name] < steps_per_item:
                feeds.setdefault(_name, []).append(dict(feed))
                count[_name] += 1
            return _run(feed)

        mod.run = recording
    try:
        for item in items:
            count.clear()
            session.transcribe_windows(item.audio, language=item.lang, task=item.task, audio_ctx=None)
    finally:
        for name, mod in session.modules.items():
            mod.run = originals[name]
    return feeds


# -- module-level measurement ---------------------------------------------------------------------------
def ort_session(path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def optimized_ops(path: Path) -> dict[str, int]:
    """The op histogram ORT runs after its graph optimisations (shape plumbing left out)."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        nodes = onnx.load(so.optimized_model_filepath).graph.node
    plumbing = {"Constant", "Shape", "Gather", "Unsqueeze", "Concat", "Reshape", "Transpose", "Slice", "Cast", "Range"}
    return dict(Counter(n.op_type for n in nodes if n.op_type not in plumbing))


def write_variant(src: Path, dst: Path, variant: str, calibration: list[dict] | None) -> None:
    from edgegate.export.quantize import quantize_module

    spec = VARIANTS[variant]
    if spec is None:
        shutil.copyfile(src, dst)
        return
    method, opts = spec
    quantize_module(src, dst, method, calibration=calibration if method == "qdq" else None, **opts)


def module_error(name: str, ref_outs: list[list[np.ndarray]], outs: list[list[np.ndarray]],
                 feeds: list[dict]) -> dict:
    if name == "decoder.logits":
        top1 = [int(np.argmax(r[0][0])) == int(np.argmax(o[0][0])) for r, o in zip(ref_outs, outs, strict=True)]
        diff = max(float(np.abs(r[0] - o[0]).max()) for r, o in zip(ref_outs, outs, strict=True))
        return {"top1_agreement": float(np.mean(top1)), "max_abs_diff": diff}
    num = den = 0.0
    for f, r, o in zip(feeds, ref_outs, outs, strict=True):
        base = f.get("x", 0.0) if name != "decoder.0.cross_kv" else 0.0
        num += float(np.sum((o[0] - r[0]) ** 2))
        den += float(np.sum((r[0] - base) ** 2))
    return {"rel_err": (num / den) ** 0.5 if den else float("nan")}


def timing_feed(name: str, feeds: list[dict]) -> dict:
    """Encoder: the (1500-position) feed; decoder: the last recorded single-token step."""
    steps = [f for f in feeds if next(iter(f.values())).shape[1] == 1 or name == "decoder.0.cross_kv"]
    return (steps or feeds)[-1]


def bench_modules(bundle: Path, work: Path, calib: dict, evals: dict, threads: list[int], repeats: int) -> dict:
    out: dict[str, dict] = {}
    for name in MODULES:
        src = bundle / f"{name}.onnx"
        paths = {}
        for v in VARIANTS:
            paths[v] = work / "modules" / f"{name}.{v}.onnx"
            paths[v].parent.mkdir(parents=True, exist_ok=True)
            write_variant(src, paths[v], v, calib.get(name))
        rec = {v: {"bytes": paths[v].stat().st_size, "ops": optimized_ops(paths[v])} for v in VARIANTS}
        feeds = evals[name]
        ref = ort_session(paths["fp32"], 1)
        ref_outs = [ref.run(None, f) for f in feeds]
        for v in VARIANTS:
            s = ort_session(paths[v], 1)
            rec[v].update(module_error(name, ref_outs, [s.run(None, f) for f in feeds], feeds))
        feed = timing_feed(name, feeds)
        for n in threads:
            sessions = {v: ort_session(paths[v], n) for v in VARIANTS}
            times: dict[str, list[float]] = {v: [] for v in VARIANTS}
            loads = []
            order = list(VARIANTS)
            for s in sessions.values():
                s.run(None, feed)  # warm-up: arena growth, first-run kernel selection
            t = time.perf_counter()
            sessions["fp32"].run(None, feed)
            # ~50 ms per timed sample: sub-millisecond decoder steps need many calls to rise above timer noise
            inner = int(min(400, max(1, 0.05 // max(time.perf_counter() - t, 1e-5))))
            for r in range(repeats):
                rot = order[r % len(order):] + order[: r % len(order)]
                for v in rot:
                    t = time.perf_counter()
                    for _ in range(inner):
                        sessions[v].run(None, feed)
                    times[v].append((time.perf_counter() - t) / inner * 1e3)
                loads.append(os.getloadavg()[0])
            for v in VARIANTS:
                rec[v][f"ms_{n}t"] = median(times[v])
                rec[v][f"x_fp32_{n}t"] = median(times[v]) / median(times["fp32"])
            rec.setdefault("_load", {})[f"{n}t"] = loads
        shape = {k: list(a.shape) for k, a in feed.items()}
        out[name] = {"timing_feed_shapes": shape, "calls_per_sample": inner, "variants": rec}
        print_module(name, rec, threads, shape)
    return out


def print_module(name: str, rec: dict, threads: list[int], shape: dict) -> None:
    print(f"\n## {name}  (timed on {shape}; load {[round(np.mean(v), 1) for v in rec['_load'].values()]})")
    cols = " ".join(f"{f'ms {n}t':>9} {f'x{n}t':>6}" for n in threads)
    print(f"{'variant':12} {'MB':>6} {'error':>22} {cols}  ops")
    for v in VARIANTS:
        r = rec[v]
        err = (f"top1 {r['top1_agreement']:.3f} dmax {r['max_abs_diff']:.3f}" if "top1_agreement" in r
               else f"rel err {r['rel_err']:.4f}")
        ts = " ".join(f"{r[f'ms_{n}t']:9.2f} {r[f'x_fp32_{n}t']:6.2f}" for n in threads)
        ops = ",".join(f"{k}:{c}" for k, c in r["ops"].items() if k not in ("Add", "Mul", "Div", "Erf", "Sub"))
        print(f"{v:12} {r['bytes'] / 1e6:6.2f} {err:>22} {ts}  {ops}")


# -- end to end -------------------------------------------------------------------------------------------
def build_bundle(bundle: Path, dst: Path, config: str, calib: dict) -> Path:
    """A copy of ``bundle`` with every module graph in the config's variants (manifest hashes updated)."""
    from edgegate.runtimes.bundle import sha256_file

    if (dst / "manifest.json").exists():
        return dst
    enc_v, dec_v = CONFIGS[config]
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    manifest = json.loads((bundle / "manifest.json").read_text())
    for m in manifest["modules"]:
        # per-token graphs (stage decoder_step: embed, self/cross attention, mlp, logits) vs the rest
        variant = dec_v if m["stage"] == "decoder_step" else enc_v
        write_variant(bundle / m["file"], tmp / m["file"], variant, calib.get(m["name"]))
    for rel in manifest["files"]:
        if not (tmp / rel).exists():
            shutil.copyfile(bundle / rel, tmp / rel)
        manifest["files"][rel] = {"sha256": sha256_file(tmp / rel), "bytes": (tmp / rel).stat().st_size}
    manifest["provenance"].setdefault("notes", []).append(f"bench_quant_methods config {config}: {CONFIGS[config]}")
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, dst)
    return dst


def bench_e2e(bundle: Path, work: Path, calib: dict, items: list[Item], threads: int, chunk: int) -> dict:
    from edgegate.runtimes.session import Session

    dirs = {c: build_bundle(bundle, work / f"bundle-{c}", c, calib) for c in CONFIGS}
    recs: dict[str, dict[str, dict]] = {c: {} for c in CONFIGS}
    order = list(CONFIGS)
    for start in range(0, len(items), chunk):
        part = items[start: start + chunk]
        k = (start // chunk) % len(order)
        for c in order[k:] + order[:k]:
            session = Session.load(dirs[c], threads=threads)
            # warm-up
            session.transcribe_windows(part[0].audio, language=part[0].lang, task=part[0].task, audio_ctx=None)
            for it in part:
                r = session.transcribe_windows(it.audio, language=it.lang, task=it.task, audio_ctx=None)
                recs[c][it.id] = {"text": r.text, "tokens": r.tokens, "seconds": r.timings["total"],
                                  "encoder_s": r.timings["encoder"], "decoder_s": r.timings["decoder"],
                                  "load": os.getloadavg()[0]}
            del session
        print(f"# e2e: {min(start + chunk, len(items))}/{len(items)} items", flush=True)
    return summarize_e2e(dirs, recs, items)


def summarize_e2e(dirs: dict[str, Path], recs: dict[str, dict[str, dict]], items: list[Item]) -> dict:
    from edgegate.evaluation import score

    out = {}
    ref = recs["fp32"]
    for c, rec in recs.items():
        real = [it for it in items if it.set == "real"]
        errs = [word_errors(it.reference, rec[it.id]["text"], it.lang) for it in real]
        groups: dict[str, float] = {}
        for key in sorted({(it.lang, it.task) for it in items if it.set == "synth"}):
            g = [it for it in items if it.set == "synth" and (it.lang, it.task) == key]
            groups[f"{key[0]}/{key[1]}"] = score([it.reference for it in g], [rec[it.id]["text"] for it in g],
                                                 key[1], key[0])
        tokens = sum(len(rec[it.id]["tokens"]) for it in items)
        out[c] = {
            "bundle_mb": sum(p.stat().st_size for p in dirs[c].iterdir()) / 1e6,
            "real_word_errors": sum(e for e, _ in errs), "real_words": sum(n for _, n in errs),
            "synth_score": groups,
            "same_tokens_as_fp32": float(np.mean([rec[it.id]["tokens"] == ref[it.id]["tokens"] for it in items])),
            "median_s": median([rec[it.id]["seconds"] for it in items]),
            "median_encoder_s": median([rec[it.id]["encoder_s"] for it in items]),
            "decoder_ms_per_token": 1e3 * sum(rec[it.id]["decoder_s"] for it in items) / max(1, tokens),
            "items": rec,
        }
    return out


def print_e2e(e2e: dict, threads: int) -> None:
    print(f"\n## end to end ({threads} thread(s), full context; median over items)")
    groups = sorted(next(iter(e2e.values()))["synth_score"])
    print(f"{'config':16} {'MB':>6} {'real err':>8} {'same tok':>8} {'med s':>6} {'enc s':>6} {'dec ms/t':>8}  "
          + " ".join(f"{g:>14}" for g in groups))
    for c, r in e2e.items():
        print(f"{c:16} {r['bundle_mb']:6.1f} {r['real_word_errors']:8d} {r['same_tokens_as_fp32']:8.2f} "
              f"{r['median_s']:6.2f} {r['median_encoder_s']:6.2f} {r['decoder_ms_per_token']:8.2f}  "
              + " ".join(f"{r['synth_score'][g]:14.1f}" for g in groups))


# -- main -------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, default=Path("/tmp/eg-bundle-fp32"), help="fp32 cpu bundle")
    ap.add_argument("--heldout", type=Path, default=Path("/tmp/vocab-heldout/manifest.jsonl"),
                    help="manifest of edgegate corpus synth --seed 97 (calibration + synthetic e2e items)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/eg-quant-work"), help="where variants and bundles go")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--synth-per-pair", type=int, default=4, help="synthetic e2e items per (language, task); 0: none")
    ap.add_argument("--no-e2e", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "quant_methods.json")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if not (args.bundle / "manifest.json").exists():
        print(f"error: no bundle at {args.bundle}; make one: edgegate export --target cpu --out {args.bundle}",
              file=sys.stderr)
        return 1
    if not args.heldout.exists():
        print(f"error: no held-out manifest {args.heldout}; make it: edgegate corpus synth --out "
              f"{args.heldout.parent} --per-pair 20 --seed 97 --engine espeak", file=sys.stderr)
        return 1
    import onnxruntime as ort

    from edgegate.runtimes.session import Session

    threads = [int(t) for t in args.threads.split(",")]
    args.work.mkdir(parents=True, exist_ok=True)
    real = real_clips()
    if not real:
        print("error: no real clips (apt-get install pocketsphinx-testdata)", file=sys.stderr)
        return 1
    # calibration: one synthetic item per language, from the end of the manifest (never an e2e item)
    calib_items = [next(it for it in reversed(synth_items(args.heldout)) if it.lang == lang and it.task == "transcribe")
                   for lang in ("en", "de", "es", "fr", "it")]
    fp32 = Session.load(args.bundle, threads=1)
    t0 = time.perf_counter()
    calib = capture(fp32, calib_items, steps_per_item=6)
    evals = capture(fp32, [real[0]], steps_per_item=24)
    del fp32
    print(f"# captured feeds in {time.perf_counter() - t0:.0f} s; onnxruntime {ort.__version__}, "
          f"cpu flags: {cpu_flags()}", flush=True)
    modules = bench_modules(args.bundle, args.work, calib, evals, threads, args.repeats)
    result = {"onnxruntime": ort.__version__, "python": platform.python_version(), "cpu_flags": cpu_flags(),
              "calibration_items": [it.id for it in calib_items], "eval_item": real[0].id,
              "repeats": args.repeats, "modules": modules}
    write_json_atomic(args.out, result)
    if not args.no_e2e:
        items = real + (synth_items(args.heldout, args.synth_per_pair) if args.synth_per_pair else [])
        e2e = bench_e2e(args.bundle, args.work, calib, items, threads=1, chunk=5)
        print_e2e(e2e, 1)
        result["e2e"] = {"threads": 1, "items": [it.__dict__ for it in items], "configs": CONFIGS, "results": e2e}
        write_json_atomic(args.out, result)
    print(f"\n# wrote {args.out}")
    return 0


def cpu_flags() -> list[str]:
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_fp16", "amx_int8")
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return []
    return [f for f in wanted if f in flags.split()]


if __name__ == "__main__":
    sys.exit(main())
