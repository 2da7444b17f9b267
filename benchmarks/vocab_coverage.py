"""Vocabulary shards: coverage of the dense model's greedy tokens, quality when decoding is restricted
to the shard, and the logits graph's time at shard size (issue 11, phase 1).

    edgegate corpus synth --out /tmp/vocab-heldout --per-pair 20 --seed 97 --engine espeak
    python benchmarks/vocab_coverage.py          # table + benchmarks/results/vocab_coverage.json

Shard variants (edgegate.vocabulary.build_shards): ``wfN+texts`` = wordfreq's top N words per language
(lower case and capitalised, bare and after a space) plus the project's sentences (edgegate.data.texts:
fortunes and filled templates); ``wfN`` = the words alone. The held-out synthetic set is spoken from the
same text sources (other draws), so ``wfN`` is the leak-free estimate of how a shard does on text it
never saw; the real clips (LibriVox, cards) are outside both.

Per item (the 10 real clips and every held-out synthetic item, language given, full 30-s context):
the PyTorch model encodes once and decodes greedily (dense); per variant, the share of its tokens
outside the request's shard (translate: the English shard), and, when any is outside, a second greedy
decode with the logits outside the shard masked to -inf (equivalent to computing only the shard's rows;
when every dense token is inside, the restricted argmax is provably the same, so it is not re-run).
Quality: WER (transcribe) / BLEU (translate) per (set, language, task), dense vs restricted.

Timing: ONNX Runtime, LayerNorm + one MatMul over the gathered rows of the fp32 bundle's
``decoder.logits`` weight, at full size and at each shipped shard's size, fp32 and int8 (dynamic), 1
and 2 threads, single-token steps, variants alternating run by run, medians.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from bench_quant_methods import Item, median, ort_session, real_clips, synth_items
from common import write_json_atomic

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "edgegate" / "assets" / "vocab" / "whisper-multilingual-51865.npz"


# -- shards ---------------------------------------------------------------------------------------------
def variant_shards(name: str, tokenizer, n_vocab: int, cache: Path):
    from edgegate.vocabulary import VocabularyShards, build_shards

    path = cache / f"shards-{name}.npz"
    if path.exists():
        return VocabularyShards.load(path, tokenizer, n_vocab)
    n_words = int(name[2:].split("+")[0])
    shards = build_shards(tokenizer, n_vocab, n_words=n_words, use_project_texts=name.endswith("+texts"))
    shards.save(path)
    return shards


# -- decoding ---------------------------------------------------------------------------------------------
class RestrictedState:
    """A decoder state whose logits outside ``allowed`` are -inf (what a shard-sized logits graph gives)."""

    def __init__(self, state, allowed: np.ndarray):
        self.state = state
        self.blocked = ~allowed

    def step(self, tokens: np.ndarray) -> np.ndarray:
        logits = self.state.step(tokens).copy()
        logits[:, self.blocked[: logits.shape[-1]]] = -np.inf
        return logits

    def reorder(self, index: np.ndarray) -> None:
        self.state.reorder(index)


def decoders(model):
    """(encode(audio) -> cross K/V, decode(cross, lang, task, allowed | None) -> tokens) on the PyTorch model."""
    import torch

    from edgegate.decoding import decode
    from edgegate.pipeline import mel_windows, to_samples
    from edgegate.transcriber import TorchDecoderState

    m = model.model
    gates = model.mask_to_gates(None)

    def encode(audio: str):
        window = next(iter(mel_windows(to_samples(audio, 16000), m.dims.n_mels)))
        with torch.inference_mode():
            xa = m.embed_audio(torch.from_numpy(np.ascontiguousarray(window.mel[None])), gates)
            return m.cross_kv(xa, gates)

    def run(cross, lang: str, task: str, allowed: np.ndarray | None) -> list[int]:
        def state():
            s = TorchDecoderState(m, cross, gates)
            return s if allowed is None else RestrictedState(s, allowed)

        return decode(state, model.tokenizer, m.dims.n_vocab, lang, task, 1, m.dims.n_text_ctx // 2).tokens

    return encode, run


def coverage_run(model, items: list[Item], variants: dict, n_vocab: int) -> dict[str, dict]:
    from edgegate.vocabulary import shard_language

    encode, run = decoders(model)
    masks = {}
    for name, shards in variants.items():
        for lang in shards.languages:
            allowed = np.zeros(n_vocab, dtype=bool)
            allowed[shards.shards[lang]] = True
            masks[(name, lang)] = allowed
    recs: dict[str, dict] = {}
    t0 = time.perf_counter()
    for k, it in enumerate(items):
        cross = encode(it.audio)
        dense = run(cross, it.lang, it.task, None)
        rec = {"dense": dense, "text": model.tokenizer.decode(dense).strip(), "variants": {}}
        for name in variants:
            allowed = masks[(name, shard_language(it.lang, it.task))]
            outside = [t for t in dense if not allowed[t]]
            restricted = run(cross, it.lang, it.task, allowed) if outside else dense
            rec["variants"][name] = {"outside": len(outside), "outside_tokens": sorted(set(outside)),
                                     "text": model.tokenizer.decode(restricted).strip(),
                                     "changed": restricted != dense}
        recs[it.id] = rec
        if (k + 1) % 20 == 0 or k + 1 == len(items):
            print(f"# decoded {k + 1}/{len(items)} items ({time.perf_counter() - t0:.0f} s, "
                  f"load {os.getloadavg()[0]:.1f})", flush=True)
    return recs


def summarize(items: list[Item], recs: dict[str, dict], variants: dict) -> dict:
    from edgegate.evaluation import score

    groups: dict[str, list[Item]] = defaultdict(list)
    for it in items:
        groups[f"{it.set}/{it.lang}/{it.task}"].append(it)
    out: dict[str, dict] = {}
    for name in variants:
        rows = {}
        for g, its in sorted(groups.items()):
            refs = [it.reference for it in its]
            lang, task = its[0].lang, its[0].task
            n_tok = sum(len(recs[it.id]["dense"]) for it in its)
            n_out = sum(recs[it.id]["variants"][name]["outside"] for it in its)
            dense_q = score(refs, [recs[it.id]["text"] for it in its], task, lang)
            restr_q = score(refs, [recs[it.id]["variants"][name]["text"] for it in its], task, lang)
            rows[g] = {"items": len(its), "tokens": n_tok, "outside": n_out, "outside_share": n_out / max(1, n_tok),
                       "items_changed": sum(recs[it.id]["variants"][name]["changed"] for it in its),
                       "metric": "WER" if task == "transcribe" else "BLEU", "dense": dense_q,
                       "restricted": restr_q, "delta": restr_q - dense_q}
        out[name] = rows
    return out


def print_summary(summary: dict, sizes: dict) -> None:
    for name, rows in summary.items():
        print(f"\n## {name}: shard sizes {sizes[name]}")
        print(f"{'set/lang/task':28} {'items':>5} {'tokens':>6} {'outside':>7} {'share %':>7} {'changed':>7} "
              f"{'metric':>6} {'dense':>7} {'shard':>7} {'delta':>6}")
        for g, r in rows.items():
            print(f"{g:28} {r['items']:5d} {r['tokens']:6d} {r['outside']:7d} {100 * r['outside_share']:7.2f} "
                  f"{r['items_changed']:7d} {r['metric']:>6} {r['dense']:7.2f} {r['restricted']:7.2f} "
                  f"{r['delta']:+6.2f}")


# -- the logits graph at shard size ---------------------------------------------------------------------------
def logits_graph(weight: np.ndarray, gain: np.ndarray, bias: np.ndarray, rows: np.ndarray | None, path: Path,
                 mode: str = "baked") -> Path:
    """LayerNorm + MatMul over a shard's rows of ``weight`` ((d, n_vocab), as the bundle stores it).

    ``baked``: the gathered rows are the graph's constant (one graph per shard, made at export);
    ``weight-input``: the gathered (d, rows) weight is an input, gathered once per request by the host;
    ``index-input``: the full weight is the constant and the shard's ids an input (a Gather every step).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    d = weight.shape[0]
    n = weight.shape[1] if rows is None else len(rows)
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, d])]
    inits = [numpy_helper.from_array(gain, "g"), numpy_helper.from_array(bias, "b")]
    nodes = [helper.make_node("LayerNormalization", ["x", "g", "b"], ["h"], axis=-1, epsilon=1e-5, name="ln")]
    if mode == "baked":
        inits.append(numpy_helper.from_array(weight if rows is None else np.ascontiguousarray(weight[:, rows]), "w"))
    elif mode == "weight-input":
        inputs.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [d, "rows"]))
    else:
        inits.append(numpy_helper.from_array(weight, "w_full"))
        inputs.append(helper.make_tensor_value_info("ids", TensorProto.INT64, ["rows"]))
        nodes.append(helper.make_node("Gather", ["w_full", "ids"], ["w"], axis=1, name="gather"))
    nodes.append(helper.make_node("MatMul", ["h", "w"], ["logits"], name="logits"))
    graph = helper.make_graph(nodes, "logits", inputs,
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1, n])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def logits_variants(weight, gain, bias, shards, tmp: Path) -> dict[str, tuple[Path, dict, int]]:
    """name -> (graph, extra feed, rows): full and every shard baked (fp32, int8), and the English shard
    fed as a per-request weight input or as an index input (fp32)."""
    from edgegate.export.quantize import quantize_module

    out = {}
    for key, rows in {"full": None, **{lang: shards.shards[lang] for lang in shards.languages}}.items():
        fp32 = logits_graph(weight, gain, bias, rows, tmp / f"{key}.onnx")
        n = weight.shape[1] if rows is None else len(rows)
        out[f"{key}/fp32"] = (fp32, {}, n)
        out[f"{key}/int8"] = (quantize_module(fp32, tmp / f"{key}.int8.onnx", "dynamic").dst, {}, n)
    en = shards.shards["en"].astype(np.int64)
    out["en/fp32/weight-input"] = (logits_graph(weight, gain, bias, en, tmp / "en.w.onnx", "weight-input"),
                                   {"w": np.ascontiguousarray(weight[:, en])}, len(en))
    out["en/fp32/index-input"] = (logits_graph(weight, gain, bias, en, tmp / "en.i.onnx", "index-input"),
                                  {"ids": en}, len(en))
    return out


def bench_logits(bundle: Path, shards, threads: list[int], repeats: int) -> dict:
    import onnx
    from onnx import numpy_helper

    src = onnx.load(str(bundle / "decoder.logits.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in src.graph.initializer}
    weight = next(a for a in inits.values() if a.ndim == 2)
    out: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        variants = logits_variants(weight, inits["ln.weight"], inits["ln.bias"], shards, Path(tmp))
        x = np.random.default_rng(0).standard_normal((1, 1, weight.shape[0])).astype(np.float32)
        en = shards.shards["en"]
        t = time.perf_counter()
        for _ in range(20):
            np.ascontiguousarray(weight[:, en])
        out["_gather_once_ms"] = (time.perf_counter() - t) / 20 * 1e3  # the host's per-request cost of weight-input
        for n in threads:
            sessions = {k: (ort_session(p, n), {"x": x, **extra}) for k, (p, extra, _) in variants.items()}
            times: dict[str, list[float]] = {k: [] for k in sessions}
            order = list(sessions)
            for s, feed in sessions.values():
                s.run(None, feed)
            for r in range(repeats):
                for k in order[r % len(order):] + order[: r % len(order)]:
                    s, feed = sessions[k]
                    t = time.perf_counter()
                    for _ in range(50):
                        s.run(None, feed)
                    times[k].append((time.perf_counter() - t) / 50 * 1e3)
            for k in sessions:
                rec = out.setdefault(k, {"rows": variants[k][2], "precision": k.split("/")[1]})
                rec[f"ms_{n}t"] = median(times[k])
            out.setdefault("_load", {})[f"{n}t"] = os.getloadavg()[0]
    return out


def print_logits(res: dict, threads: list[int]) -> None:
    print("\n## logits graph (LayerNorm + MatMul over the shard's rows), ms per single-token step")
    print(f"{'graph':22} {'rows':>6} " + " ".join(f"{f'ms {n}t':>8} {f'x full {n}t':>10}" for n in threads))
    for k, r in res.items():
        if k.startswith("_"):
            continue
        full = res[f"full/{r['precision']}"]
        print(f"{k:22} {r['rows']:6d} " + " ".join(f"{r[f'ms_{n}t']:8.3f} {r[f'ms_{n}t'] / full[f'ms_{n}t']:10.2f}"
                                                  for n in threads))
    print(f"# host gather of the English shard's weight (once per request): {res['_gather_once_ms']:.2f} ms")


# -- main -------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--heldout", type=Path, default=Path("/tmp/vocab-heldout/manifest.jsonl"))
    ap.add_argument("--bundle", type=Path, default=Path("/tmp/eg-bundle-fp32"), help="fp32 bundle (logits weight)")
    ap.add_argument("--words", default="20000,50000,100000", help="wordfreq list sizes to build shards from")
    ap.add_argument("--ship", default="wf50000+texts", help="variant written to edgegate/assets/vocab ('' = none)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/eg-vocab-work"))
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--limit", type=int, default=None, help="at most this many synthetic items (smoke runs)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "vocab_coverage.json")
    args = ap.parse_args(argv)
    if not args.heldout.exists():
        print(f"error: no held-out manifest {args.heldout}; make it: edgegate corpus synth --out "
              f"{args.heldout.parent} --per-pair 20 --seed 97 --engine espeak", file=sys.stderr)
        return 1
    if not (args.bundle / "decoder.logits.onnx").exists():
        print(f"error: no bundle at {args.bundle}; make one: edgegate export --target cpu --out {args.bundle}",
              file=sys.stderr)
        return 1
    import torch

    from edgegate.transcriber import WhisperModel

    torch.set_num_threads(1)
    model = WhisperModel("whisper-base", threads=1)
    n_vocab = model.model.dims.n_vocab
    args.work.mkdir(parents=True, exist_ok=True)
    names = [f"wf{n}+texts" for n in args.words.split(",")] + [f"wf{n}" for n in args.words.split(",")]
    t0 = time.perf_counter()
    variants = {name: variant_shards(name, model.tokenizer, n_vocab, args.work) for name in names}
    print(f"# built/loaded {len(variants)} shard variants in {time.perf_counter() - t0:.0f} s", flush=True)
    sizes = {name: {lang: int(len(s)) for lang, s in v.shards.items()} for name, v in variants.items()}
    synth = synth_items(args.heldout)[: args.limit]
    items = real_clips() + synth
    recs = coverage_run(model, items, variants, n_vocab)
    summary = summarize(items, recs, variants)
    print_summary(summary, sizes)
    threads = [int(t) for t in args.threads.split(",")]
    ship = variants.get(args.ship) if args.ship else None
    logits = bench_logits(args.bundle, ship or variants[names[0]], threads, args.repeats)
    print_logits(logits, threads)
    result = {"n_vocab": n_vocab, "sizes": sizes, "sources": {k: v.sources for k, v in variants.items()},
              "items": [it.__dict__ for it in items], "summary": summary, "logits_graph": logits,
              "shipped": args.ship or None, "per_item": recs}
    write_json_atomic(args.out, result)
    if ship is not None:
        ship.save(SHIPPED)
        print(f"# shipped {args.ship} -> {SHIPPED} ({SHIPPED.stat().st_size / 1e3:.0f} kB)")
    print(f"# wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
