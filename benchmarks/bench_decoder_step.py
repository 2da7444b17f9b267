"""Where a decoder step's time goes on the runtime, and whether fewer graph calls would buy anything.

Issue 11 item 4 asks for lean decoder steps: the fewest graph calls per step that keep gating
exact, no per-step K/V concatenation, ORT's fusions where they are faster. Before building any of
it into bundles this script measures, on one bundle and side by side (the variants alternate step
by step, medians over ``--steps``):

- ``runtime``: the runtime's own step (:class:`edgegate.runtimes.execution.GraphDecoderState`,
  today: 2 + 3 x n_layers graph calls per token), split per module kind (embed, self_attn,
  cross_attn, mlp, logits over the full vocabulary and over the request's shard);
- ``per-module``: the same gated modules alone (no embed / logits), the reference of the next two;
- ``fused-if``: ALL gated decoder-step modules in one ONNX graph, each under an ``If`` on its gate
  (then: the module; else: its skip adapter or identity), so one session serves every mask and
  gating stays exact (the skipped branch does not run): 1 call instead of 3 x n_layers;
- ``fused-static``: the kept modules of one mask inlined into one graph without ``If`` (what a
  graph per mask would give: the floor of call overhead; not servable for per-request masks
  without a session per mask).

The fused graphs are built here with ``onnx`` (the export extra) from the bundle's own module
files (same int8 weights), checked against the per-module chain (outputs must match), and timed
at a dynamic context (``--frames``, the cross-attention length) and full 1500, at the cache
lengths ``--past`` (the K/V concatenation grows with it). Writes
``benchmarks/results/decoder_step.json`` and prints a table.

    edgegate export --target cpu --out /tmp/int8
    python benchmarks/bench_decoder_step.py --bundle /tmp/int8 --threads 1
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import write_json_atomic  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "decoder_step.json"
GATED_KINDS = ("self_attn", "cross_attn", "mlp")


# -- fused graphs -------------------------------------------------------------------------------
class _Fuser:
    """Builds one graph from module graphs; values are versioned (x@0, x@1, ...) to keep SSA."""

    def __init__(self, bundle: Path):
        self.bundle = bundle
        self.version: dict[str, int] = {}
        self.inputs: dict[str, dict] = {}
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.opsets: dict[str, int] = {}
        self.ir_version = 0

    def cur(self, value: str) -> str:
        return f"{value}@{self.version[value]}"

    def read(self, t: dict) -> str:
        if t["value"] not in self.version:
            self.version[t["value"]] = 0
            self.inputs[t["value"]] = t
        return self.cur(t["value"])

    def write(self, value: str) -> str:
        self.version[value] = self.version.get(value, 0) + 1
        return self.cur(value)

    def inline(self, file: str, prefix: str, in_map: dict[str, str]) -> tuple[list[Any], list[str]]:
        import onnx

        model = onnx.load(str(self.bundle / file))
        self.ir_version = max(self.ir_version, model.ir_version)
        for o in model.opset_import:
            self.opsets[o.domain] = max(self.opsets.get(o.domain, 0), o.version)
        g = model.graph
        names = {i.name: in_map[i.name] for i in g.input}
        for init in g.initializer:  # weights live in the outer graph: a branch reads them from its scope
            names[init.name] = init.name = prefix + init.name
            self.inits.append(init)
        nodes = []
        for n in g.node:
            node = onnx.NodeProto()
            node.CopyFrom(n)
            node.name = prefix + n.name
            del node.input[:]
            del node.output[:]
            node.input.extend([names.get(x, prefix + x) if x else "" for x in n.input])
            for x in n.output:
                names[x] = prefix + x
            node.output.extend(names[x] for x in n.output)
            nodes.append(node)
        return nodes, [names[o.name] for o in g.output]

    def add_module(self, index: int, spec: dict, keep: bool | None) -> None:
        """``keep=None``: under an If on keep[index]; True: inlined; False: its skip (adapter/identity) inlined."""
        from onnx import TensorProto, helper

        in_map = {t["name"]: self.read(t) for t in spec["inputs"]}

        def branch(kind: str) -> tuple[list[Any], list[str]]:
            if kind == "then":
                return self.inline(spec["file"], spec["name"] + "/", in_map)
            nodes, produced = [], {}
            adapter = spec.get("adapter")
            if adapter:
                amap = {t["name"]: in_map[t["name"]] for t in adapter["inputs"]}
                nodes, outs = self.inline(adapter["file"], spec["name"] + ".adapter/", amap)
                produced = {t["value"]: o for t, o in zip(adapter["outputs"], outs, strict=True)}
            outs = []
            for t in spec["outputs"]:  # a skipped module passes its input of the same value through
                outs.append(produced.get(t["value"]) or next(in_map[i["name"]] for i in spec["inputs"]
                                                               if i["value"] == t["value"]))
            return nodes, outs

        targets = [self.write(t["value"]) for t in spec["outputs"]]
        if keep is not None:
            nodes, outs = branch("then" if keep else "else")
            self.nodes += nodes + [helper.make_node("Identity", [o], [v]) for o, v in zip(outs, targets, strict=True)]
            return
        graphs = {}
        for kind in ("then", "else"):
            nodes, outs = branch(kind)
            names = [f"{spec['name']}/{kind}.{t['name']}" for t in spec["outputs"]]
            nodes += [helper.make_node("Identity", [o], [n]) for o, n in zip(outs, names, strict=True)]
            graphs[kind] = helper.make_graph(nodes, f"{spec['name']}.{kind}", [],
                                             [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names])
        self.inits.append(helper.make_tensor(f"gate_index.{index}", TensorProto.INT64, [], [index]))
        self.nodes.append(helper.make_node("Gather", ["keep", f"gate_index.{index}"], [f"cond.{index}"], axis=0))
        self.nodes.append(helper.make_node("If", [f"cond.{index}"], targets, name=spec["name"],
                                           then_branch=graphs["then"], else_branch=graphs["else"]))

    def save(self, path: Path, n_gates: int, outputs: list[str]) -> list[str]:
        import onnx
        from onnx import TensorProto, helper

        dtypes = {"float32": TensorProto.FLOAT, "int64": TensorProto.INT64}
        ins = [helper.make_tensor_value_info("keep", TensorProto.BOOL, [n_gates])]
        ins += [helper.make_tensor_value_info(f"{v}@0", dtypes[t["dtype"]], t["shape"]) for v, t in self.inputs.items()]
        outs = []
        for v in outputs:
            self.nodes.append(helper.make_node("Identity", [self.cur(v)], [f"{v}.out"]))
            outs.append(helper.make_tensor_value_info(f"{v}.out", TensorProto.FLOAT, None))
        graph = helper.make_graph(self.nodes, "decoder.step", ins, outs, initializer=self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in self.opsets.items()])
        model.ir_version = self.ir_version
        onnx.save(model, str(path))
        return [f"{v}@0" for v in self.inputs]


def fused_graph(bundle: Path, specs: list[dict], out: Path, mask: np.ndarray | None) -> tuple[list[str], list[str]]:
    """One graph of ``specs``: under If per gate (``mask`` None) or the kept modules of ``mask`` inlined."""
    f = _Fuser(bundle)
    for i, spec in enumerate(specs):
        f.add_module(i, spec, None if mask is None else bool(mask[i]))
    outputs = sorted(v for v in f.version if f.version[v] > 0)
    return f.save(out, len(specs), outputs), outputs


def run_chain(chain: list, env0: dict[str, np.ndarray]) -> np.ndarray:
    env = dict(env0)
    for r in chain:
        r(env)
    return env["x"]


def run_fused(sess: Any, ins: list[str], outs: list[str], env0: dict[str, np.ndarray], keep: np.ndarray
              ) -> np.ndarray:
    feed = {n: env0[n.split("@")[0]] for n in ins}
    feed["keep"] = keep
    return sess.run(feed)[outs.index("x")]


# -- measurement --------------------------------------------------------------------------------
def median_ms(xs: list[float]) -> float:
    return round(1e3 * statistics.median(xs), 3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--bundle", type=Path, required=True, help="an ONNX bundle (int8: the cpu default)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--frames", type=int, nargs="+", default=[300, 1500],
                        help="cross-attention lengths (default 300 = a ~5-s clip + margin, and 1500 = 30 s)")
    parser.add_argument("--past", type=int, nargs="+", default=[5, 100, 220], help="self-attention cache lengths")
    parser.add_argument("--steps", type=int, default=150, help="timed steps per variant and setting")
    parser.add_argument("--keep", type=float, default=0.5, help="share of gated modules kept in the masked rows")
    parser.add_argument("--shard", default="en", help="vocabulary shard for the shard-logits row")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    try:
        import onnx  # noqa: F401
    except ImportError:
        print("error: building the fused graphs needs onnx: pip install 'edgegate[export]'", file=sys.stderr)
        return 2
    from edgegate.runtimes.session import Session

    session = Session.load(args.bundle, backend="onnxruntime", threads=args.threads)
    manifest = session.bundle.manifest
    specs = [s for s in manifest["modules"] if s["stage"] == "decoder_step" and s["kind"] in GATED_KINDS]
    names = list(session.gate_names)
    d = int(specs[0]["inputs"][0]["shape"][-1])
    rng = np.random.default_rng(0)
    masked = np.ones(len(names), dtype=bool)
    step_gates = [names.index(s["gate"]) for s in specs]
    drop = rng.choice(step_gates, size=int(round((1 - args.keep) * len(step_gates))), replace=False)
    masked[drop] = False
    masks = {"dense": np.ones(len(names), dtype=bool), f"keep {args.keep:g}": masked}

    tmp = Path(tempfile.mkdtemp(prefix="eg-step-"))
    t0 = time.perf_counter()
    ins_if, outs_if = fused_graph(args.bundle, specs, tmp / "fused_if.onnx", None)
    fused_if = session.backend.load(tmp / "fused_if.onnx")  # the runtime's own session options
    fused_static = {}
    for label, mask in masks.items():
        sub = np.array([mask[names.index(s["gate"])] for s in specs])
        ins, outs = fused_graph(args.bundle, specs, tmp / f"fused_{label}.onnx", sub)
        fused_static[label] = (session.backend.load(tmp / f"fused_{label}.onnx"), ins, outs)
    build_s = time.perf_counter() - t0
    size_mb = {p.name: round(p.stat().st_size / 1e6, 1) for p in tmp.glob("*.onnx")}
    load = os.getloadavg()
    rows: list[dict] = []
    for frames in args.frames:
        for past in args.past:
            env0: dict[str, np.ndarray] = {"x": rng.standard_normal((1, 1, d), dtype=np.float32)}
            for s in specs:
                for t in s["inputs"]:
                    if t["value"] != "x" and t["value"] not in env0:
                        shape = [1 if a in ("batch", "kv_batch") else a for a in t["shape"]]
                        shape = [frames if a == "frames" else past if a == "past" else a for a in shape]
                        env0[t["value"]] = rng.standard_normal(shape, dtype=np.float32)
            for label, mask in masks.items():
                runners = session.runner_list(mask)
                chain = [r for r in runners.per_step if r.spec is not None and r.spec.kind in GATED_KINDS]
                sub = np.array([mask[names.index(s["gate"])] for s in specs])
                static, ins_s, outs_s = fused_static[label]

                variants = {"per-module": partial(run_chain, chain, env0),
                            "fused-if": partial(run_fused, fused_if, ins_if, outs_if, env0, sub),
                            "fused-static": partial(run_fused, static, ins_s, outs_s, env0, sub)}
                ref = variants["per-module"]()
                diffs = {k: float(np.abs(f() - ref).max()) for k, f in variants.items() if k != "per-module"}
                # The runtime's whole step (embed, modules, logits) on a window of `frames` and a cache of `past`.
                window = {k: v for k, v in env0.items() if k.startswith("cross_")}
                times: dict[str, list[float]] = defaultdict(list)
                for vocab in (None, args.shard):
                    state = session.decoder_state(window, mask, vocab=vocab)
                    state.step(np.array([[50258, 50259, 50359, 50363]]))
                    for s in runners.state:
                        state.state[s.value] = env0[s.value]  # the cache length under test
                    kind_times: dict[str, list[float]] = defaultdict(list)
                    for i in range(args.steps):
                        env = dict(state.window)
                        env.update(state.state)
                        env["tokens"] = np.array([[440 + i % 50]], dtype=np.int64)
                        env["positions"] = np.array([past], dtype=np.int64)
                        t_step = time.perf_counter()
                        for r in state.runners.per_step:
                            t = time.perf_counter()
                            r(env)
                            kind = r.spec.kind if r.spec is not None else r.name
                            kind_times[kind].append(time.perf_counter() - t)
                        row_name = "runtime" if vocab is None else f"runtime, {vocab} shard"
                        times[row_name].append(time.perf_counter() - t_step)
                        for f_name, f in variants.items():
                            if vocab is None:  # alternate with the runtime's steps: load falls on all alike
                                t = time.perf_counter()
                                f()
                                times[f_name].append(time.perf_counter() - t)
                    if vocab is None:
                        per_kind = {k: round(median_ms(v) * len(v) / args.steps, 3) for k, v in kind_times.items()}
                    else:
                        per_kind["logits (shard)"] = median_ms(kind_times["logits"])
                row = {"frames": frames, "past": past, "mask": label, "kept_step_modules": int(sub.sum()),
                       "of": len(sub), "graph_calls_per_step": len(runners.per_step),
                       "median_ms": {k: median_ms(v) for k, v in times.items()},
                       "runtime_ms_per_kind": per_kind, "max_abs_diff_vs_per_module": diffs}
                rows.append(row)
                m = row["median_ms"]
                print(f"frames {frames:5d} past {past:4d} {label:9s}: runtime step {m['runtime']:.2f} ms "
                      f"(shard {m[f'runtime, {args.shard} shard']:.2f}); gated modules: "
                      f"per-module {m['per-module']:.2f}, "
                      f"fused-if {m['fused-if']:.2f}, fused-static {m['fused-static']:.2f} ms; "
                      f"diff {max(diffs.values()):.1e}; per kind {per_kind}", flush=True)
    result = {"benchmark": "decoder_step", "bundle": str(args.bundle), "threads": args.threads,
              "steps": args.steps, "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "platform": platform.platform(), "cpus": os.cpu_count(), "loadavg_before": load,
              "loadavg_after": os.getloadavg(), "fused_build_s": round(build_s, 1), "fused_graph_mb": size_mb,
              "rows": rows}
    write_json_atomic(args.output, result)
    print(f"load average {load[0]:.1f} -> {os.getloadavg()[0]:.1f}; fused graphs {size_mb} MB; wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
