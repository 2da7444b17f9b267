"""The ONNX Runtime measurements behind docs/speed.md's integration choices (issue 11, phase 1): memory
of a bundle's sessions under allocator settings, one vs two copies of the token embedding, and what a
decoder step's cost grows with (cache length, encoder positions, IO binding).

    python benchmarks/bench_ort_design.py     # tables + benchmarks/results/quant_methods_ort_design.json

A. Sessions: each (bundle, allocator mode) runs in a fresh process: ``Session.load`` (1 thread), then
   the runtime transcribes 2 real LibriVox clips at the full 30-s context; RSS/PSS/anonymous memory
   (``/proc/self/smaps_rollup``) after load and after the clips, and the second clip's seconds.
   Modes: ``default`` (what the runtime does today: one CPU arena per session), ``no-arena``
   (``enable_cpu_mem_arena = False``), ``env-arena`` (one arena registered on the ORT environment,
   ``session.use_env_allocators = 1`` on every session), ``env-arena-exact`` (the same with
   ``arena_extend_strategy = kSameAsRequested``). Bundles: the fp32 export and the int8 ``dynamic``
   bundle bench_quant_methods.py builds.
B. Token embedding: the embedding table as the embed graph (a Gather) and the logits graph (a MatMul)
   use it: ``fp32-two-copies`` (today's bundle files), ``int8-two-copies`` (GatherBlockQuantized and
   MatMulNBits, 8-bit blocks of 32, each file with its own copy) and ``int8-one-file`` (both graphs
   point at ONE external-data file holding the same bytes); memory after one embed call and 200
   logits steps, the logits step time, and the host's cost of gathering the shipped English shard's
   rows from that table (what a per-request shard weight costs).
C. Decoder step mechanics (1 thread, fp32 and int8 bundles, layer 0): self-attention step time vs the
   cache length it concatenates onto (1 .. 440 positions), cross-attention step time vs encoder
   positions (250, 500, 1500) with ``run()`` on numpy arrays vs IO binding with the K/V bound once
   as OrtValues (resident) and a preallocated output; variants alternate, medians of ``--repeats``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from common import write_json_atomic

ROOT = Path(__file__).resolve().parents[1]
MODES = ("default", "no-arena", "env-arena", "env-arena-exact")
EMBEDDINGS = ("fp32-two-copies", "int8-two-copies", "int8-one-file")
BLOCK = 32


def memory() -> dict[str, float]:
    out = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        parts = line.split()
        if parts[0] in ("Rss:", "Pss:", "Anonymous:"):
            out[parts[0][:-1].lower() + "_mb"] = int(parts[1]) / 1024
    return out


# -- A: sessions under allocator modes -----------------------------------------------------------------
def apply_mode(mode: str) -> None:
    """Patch the runtime's ORT session options for ``mode`` (a measurement, not a runtime setting)."""
    import onnxruntime as ort

    from edgegate.runtimes.backends import ort as backend

    if mode.startswith("env-arena"):
        info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        strategy = 1 if mode == "env-arena-exact" else 0  # 0 kNextPowerOfTwo, 1 kSameAsRequested
        ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, strategy, -1, -1))
    original = backend.OrtBackend._options

    def options(self):
        so = original(self)
        if mode == "no-arena":
            so.enable_cpu_mem_arena = False
        elif mode.startswith("env-arena"):
            so.add_session_config_entry("session.use_env_allocators", "1")
        return so

    backend.OrtBackend._options = options


def sessions_child(bundle: Path, mode: str) -> dict:
    from edgegate.data.librivox import find_librivox_dir, load_clips
    from edgegate.runtimes.session import Session

    apply_mode(mode)
    base = memory()
    session = Session.load(bundle, threads=1)
    loaded = memory()
    clips = load_clips(find_librivox_dir())[:2]
    seconds = []
    for _, wav, _ in clips:
        t = time.perf_counter()
        session.transcribe_windows(str(wav), language="en", audio_ctx=None)
        seconds.append(time.perf_counter() - t)
    after = memory()
    return {"sessions": len(session.modules), "base": base, "loaded": loaded, "after_2_clips": after,
            "second_clip_s": seconds[-1]}


# -- B: one or two copies of the token embedding --------------------------------------------------------------
def _quantized_table(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric 8-bit blocks of BLOCK along the model dim, stored as uint8 with zero point 128 (the layout
    MatMulNBits and GatherBlockQuantized both read: B [N, K/BLOCK, BLOCK] = data [N, K] byte for byte)."""
    n, k = weight.shape
    blocks = weight.reshape(n, k // BLOCK, BLOCK)
    scale = np.maximum(np.abs(blocks).max(-1), 1e-12) / 127.0
    q = (np.clip(np.round(blocks / scale[..., None]), -127, 127) + 128).astype(np.uint8)
    return q.reshape(n, k), scale.astype(np.float32)


def write_embedding_graphs(bundle: Path, out: Path, variant: str) -> tuple[Path, Path]:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if variant == "fp32-two-copies":
        return bundle / "decoder.embed.onnx", bundle / "decoder.logits.onnx"
    embed = onnx.load(str(bundle / "decoder.embed.onnx"))
    table = numpy_helper.to_array(next(i for i in embed.graph.initializer if i.name == "token_embedding.weight"))
    n, k = table.shape
    q, scale = _quantized_table(table)
    ms = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    e_init = [numpy_helper.from_array(q, "table"), numpy_helper.from_array(scale, "scales")]
    l_init = [numpy_helper.from_array(q.reshape(n, k // BLOCK, BLOCK), "table"),
              numpy_helper.from_array(scale.reshape(-1), "scales")]
    e_graph = helper.make_graph(
        [helper.make_node("GatherBlockQuantized", ["table", "tokens", "scales"], ["x"], domain="com.microsoft",
                          gather_axis=0, quantize_axis=1, block_size=BLOCK, bits=8)],
        "embed", [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["batch", "tokens"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "tokens", k])], e_init)
    l_graph = helper.make_graph(
        [helper.make_node("MatMulNBits", ["x", "table", "scales"], ["logits"], domain="com.microsoft", K=k, N=n,
                          bits=8, block_size=BLOCK, accuracy_level=4)],
        "logits", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, k])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1, n])], l_init)
    models = [helper.make_model(g, opset_imports=ms, ir_version=8) for g in (e_graph, l_graph)]
    out.mkdir(parents=True, exist_ok=True)
    paths = (out / "embed.onnx", out / "logits.onnx")
    if variant == "int8-one-file":
        data = out / "token_embedding.bin"
        data.write_bytes(q.tobytes() + scale.tobytes())
        spans = {"table": (0, q.nbytes), "scales": (q.nbytes, scale.nbytes)}
        for m in models:
            for init in m.graph.initializer:
                off, length = spans[init.name]
                init.ClearField("raw_data")
                init.data_location = TensorProto.EXTERNAL
                for key, value in (("location", data.name), ("offset", str(off)), ("length", str(length))):
                    init.external_data.add(key=key, value=value)
    for m, p in zip(models, paths, strict=True):
        onnx.save(m, str(p))
    return paths


def embedding_child(bundle: Path, work: Path, variant: str) -> dict:
    import onnxruntime as ort

    embed_path, logits_path = write_embedding_graphs(bundle, work / variant, variant)
    base = memory()
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    embed = ort.InferenceSession(str(embed_path), so, providers=["CPUExecutionProvider"])
    logits = ort.InferenceSession(str(logits_path), so, providers=["CPUExecutionProvider"])
    feed = {"tokens": np.array([[50258, 50259, 50359, 50363]], np.int64)}
    if "positions" in [i.name for i in embed.get_inputs()]:
        feed["positions"] = np.arange(4, dtype=np.int64)
    embed.run(None, feed)
    x = np.random.default_rng(0).standard_normal((1, 1, 512)).astype(np.float32)
    logits.run(None, {"x": x})
    t = time.perf_counter()
    for _ in range(200):
        logits.run(None, {"x": x})
    ms = (time.perf_counter() - t) / 200 * 1e3
    after = memory()
    files = sorted({embed_path, logits_path} | set(embed_path.parent.glob("*.bin")))
    return {"delta": {k: after[k] - base[k] for k in after}, "logits_ms": ms,
            "disk_mb": sum(p.stat().st_size for p in files) / 1e6, "shard_gather_ms": shard_gather_ms(bundle, variant)}


def shard_gather_ms(bundle: Path, variant: str) -> float | None:
    """Host cost of gathering the English shard's rows from the (n_vocab, d) table, once per request."""
    import onnx
    from onnx import numpy_helper

    from edgegate.vocabulary import VocabularyShards

    path = ROOT / "edgegate" / "assets" / "vocab" / "whisper-multilingual-51865.npz"
    if not path.exists():
        return None
    rows = VocabularyShards.load(path).shards["en"]
    embed = onnx.load(str(bundle / "decoder.embed.onnx"))
    table = numpy_helper.to_array(next(i for i in embed.graph.initializer if i.name == "token_embedding.weight"))
    if variant != "fp32-two-copies":
        table = _quantized_table(table)[0]
    np.take(table, rows, axis=0)
    t = time.perf_counter()
    for _ in range(10):
        np.take(table, rows, axis=0)
    return (time.perf_counter() - t) / 10 * 1e3


# -- C: decoder step mechanics --------------------------------------------------------------------------
def _session(path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _bound(session, feed: dict, output: str):
    """IO binding with every input bound once as an OrtValue and a preallocated output buffer."""
    import onnxruntime as ort

    io = session.io_binding()
    keep = {k: ort.OrtValue.ortvalue_from_numpy(v) for k, v in feed.items()}
    for k, v in keep.items():
        io.bind_ortvalue_input(k, v)
    out = ort.OrtValue.ortvalue_from_numpy(np.empty_like(feed["x"]))
    io.bind_ortvalue_output(output, out)
    return lambda: session.run_with_iobinding(io), (keep, out)


def step_mechanics(bundles: dict[str, Path], repeats: int) -> dict:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 1, 512)).astype(np.float32)
    calls: dict[str, object] = {}
    keep = []
    for tag, d in bundles.items():
        sa, ca = _session(d / "decoder.0.self_attn.onnx"), _session(d / "decoder.0.cross_attn.onnx")
        for past in (1, 50, 200, 440):
            kv = rng.standard_normal((1, 8, past, 64)).astype(np.float32)
            feed = {"x": x, "k_cache": kv, "v_cache": kv.copy()}
            calls[f"{tag}/self_attn/past {past}/run"] = lambda s=sa, f=feed: s.run(None, f)
        for frames in (250, 500, 1500):
            kv = rng.standard_normal((1, 8, frames, 64)).astype(np.float32)
            feed = {"x": x, "k": kv, "v": kv.copy()}
            calls[f"{tag}/cross_attn/frames {frames}/run"] = lambda s=ca, f=feed: s.run(None, f)
            call, held = _bound(ca, feed, "x_out")
            keep.append(held)
            calls[f"{tag}/cross_attn/frames {frames}/iobinding"] = call
    times: dict[str, list[float]] = {k: [] for k in calls}
    order = list(calls)
    for call in calls.values():
        call()
    for r in range(repeats):
        for k in order[r % len(order):] + order[: r % len(order)]:
            t = time.perf_counter()
            for _ in range(50):
                calls[k]()
            times[k].append((time.perf_counter() - t) / 50 * 1e3)
    return {k: float(np.median(v)) for k, v in times.items()}


def run_child(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, timeout=900,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, default=Path("/tmp/eg-bundle-fp32"))
    ap.add_argument("--int8-bundle", type=Path, default=Path("/tmp/eg-quant-work/bundle-dynamic"),
                    help="int8 bundle (bench_quant_methods.py builds it)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/eg-memory-work"))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "quant_methods_ort_design.json")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--only", choices=("sessions", "embedding", "steps"), default=None)
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        kind, *rest = args.child
        res = sessions_child(Path(rest[0]), rest[1]) if kind == "sessions" else \
            embedding_child(Path(rest[0]), Path(rest[1]), rest[2])
        print(json.dumps(res))
        return 0
    result: dict = {"sessions": {}, "embedding": {}, "steps": {}}
    bundles = {"fp32": args.bundle, "int8-dynamic": args.int8_bundle}
    bundles = {k: v for k, v in bundles.items() if (v / "manifest.json").exists()}
    if args.only in (None, "steps"):
        result["steps"] = step_mechanics(bundles, args.repeats)
        print(f"{'decoder step (layer 0, 1 thread)':52} {'ms':>7}")
        for k, v in result["steps"].items():
            print(f"{k:52} {v:7.3f}")
        print(flush=True)
    if args.only not in (None, "sessions"):
        bundles = {}
    print(f"{'bundle':14} {'mode':16} {'sessions':>8} {'RSS load':>9} {'RSS 2 clips':>11} {'anon':>7} {'clip 2 s':>8}")
    for name, path in bundles.items():
        for mode in MODES:
            r = run_child(["sessions", str(path), mode])
            result["sessions"][f"{name}/{mode}"] = r
            if "error" in r:
                print(f"{name:14} {mode:16} error: {r['error']}")
                continue
            print(f"{name:14} {mode:16} {r['sessions']:8d} {r['loaded']['rss_mb']:9.0f} "
                  f"{r['after_2_clips']['rss_mb']:11.0f} {r['after_2_clips']['anonymous_mb']:7.0f} "
                  f"{r['second_clip_s']:8.2f}", flush=True)
    print(f"\n{'embedding':18} {'disk MB':>8} {'+RSS MB':>8} {'+anon MB':>8} {'logits ms':>9} {'en gather ms':>12}")
    for variant in EMBEDDINGS if args.only in (None, "embedding") else ():
        r = run_child(["embedding", str(args.bundle), str(args.work), variant])
        result["embedding"][variant] = r
        if "error" in r:
            print(f"{variant:18} error: {r['error']}")
            continue
        print(f"{variant:18} {r['disk_mb']:8.1f} {r['delta']['rss_mb']:8.1f} {r['delta']['anonymous_mb']:8.1f} "
              f"{r['logits_ms']:9.2f} {r['shard_gather_ms'] or float('nan'):12.1f}")
    write_json_atomic(args.out, result)
    print(f"# wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
