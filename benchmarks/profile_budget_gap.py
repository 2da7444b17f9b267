"""Profile behind the 0.7-budget gap in bench_runtime.json (benchmarks/results/bench_runtime_gap07_profile.json):
run from the repository root as  python benchmarks/profile_budget_gap.py [REPEATS] [OUT.json].

Where the time goes in forced decoding (same token count) at dense and static budgets, full 30-s context:
per ONNX module wall time (wrapping each module's run), Python glue = phase wall - module time, and the
FLOPs of each part (edgegate.models.costs). One thread, median over clips of the median of repeats."""
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
from bench_runtime import static_mask  # noqa: E402

from edgegate.data.librivox import load_clips  # noqa: E402
from edgegate.models.costs import always_on_costs, module_costs  # noqa: E402
from edgegate.models.whisper_layout import ModelDims  # noqa: E402
from edgegate.pipeline import mel_windows, to_samples  # noqa: E402
from edgegate.plan import encoder_frames  # noqa: E402
from edgegate.runtimes.session import Session  # noqa: E402

REPEATS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
s = Session.load(ROOT / "bundles" / "bench-whisper-base-cpu", threads=1)
acc: dict[str, float] = defaultdict(float)
calls: dict[str, int] = defaultdict(int)
names = {id(m): n for n, m in s.modules.items()}
names.update({id(m): n + ".adapter" for n, m in s.adapters.items()})


def wrap(mod, name):
    orig = mod.run

    def run(feed):
        t0 = time.perf_counter()
        out = orig(feed)
        acc[name] += time.perf_counter() - t0
        calls[name] += 1
        return out
    mod.run = run


seen = set()
for mod in list(s.modules.values()) + list(s.adapters.values()):
    if id(mod) not in seen:
        seen.add(id(mod))
        wrap(mod, names.get(id(mod), "?"))


def group(n):
    if n.startswith("decoder.") and n.endswith(".cross_kv"):
        return "decoder.cross_kv (once)"
    if n.startswith("encoder.") and n.split(".")[1].isdigit():
        return "encoder." + n.split(".")[2]
    if n.startswith("decoder.") and n.split(".")[1].isdigit():
        return "decoder." + n.split(".")[2]
    return n


def forced(clip, mask, tokens):
    acc.clear()
    calls.clear()
    t0 = time.perf_counter()
    w = list(mel_windows(to_samples(str(clip), 16000), s.dims["n_mels"]))[0]
    t1 = time.perf_counter()
    window = s.encode(w.mel[None, :, : encoder_frames(w.n_frames, None)], mask)
    t2 = time.perf_counter()
    enc_mod = sum(acc.values())
    st = s.decoder_state(window, mask)
    st.step(np.array([s.tokenizer.sot_sequence("en")], np.int64))
    for tok in tokens:
        st.step(np.array([[tok]], np.int64))
    t3 = time.perf_counter()
    dec_mod = sum(acc.values()) - enc_mod
    rec = {"total": t3 - t0, "frontend": t1 - t0, "encoder_phase": t2 - t1, "decoder_phase": t3 - t2,
           "encoder_glue": (t2 - t1) - enc_mod, "decoder_glue": (t3 - t2) - dec_mod, "steps": st.steps}
    g = defaultdict(float)
    for n, v in acc.items():
        g[group(n)] += v
    rec["modules"] = dict(g)
    rec["calls"] = sum(calls.values())
    return rec


clips = load_clips()
dense = np.ones(len(s.gate_names), bool)
masks = {"dense": dense, **{str(b): static_mask(s, b)[0] for b in (0.25, 0.5, 0.7)}}
# untimed warm-up + dense transcripts
toks = {}
for utt, wav, _ in clips:
    toks[utt] = s.transcribe_windows(str(wav), language="en", mask=dense, audio_ctx=None).tokens
res = {k: [] for k in masks}
for utt, wav, _ in clips:
    per = {k: [] for k in masks}
    for _ in range(REPEATS):
        for k, m in masks.items():
            per[k].append(forced(wav, m, toks[utt]))
    for k in masks:
        best = sorted(per[k], key=lambda r: r["total"])[len(per[k]) // 2]  # median repeat
        res[k].append({"clip": utt, "tokens": len(toks[utt]), **best})
    print(utt, "done", flush=True)

dims = ModelDims(**s.dims)
out = {"repeats": REPEATS, "threads": 1, "per_clip": res, "flops": {}}
for utt, _, _ in clips:
    n_tok = 4 + len(toks[utt])
    mc = module_costs(dims, 1500, n_tok)
    ao = always_on_costs(dims, 1500, n_tok)
    d = dims.n_text_state
    cross_kv = 4 * 1500 * d * d
    f = {"encoder.stem": ao["encoder.stem"].flops, "encoder.ln_post": ao["encoder.ln_post"].flops,
         "decoder.embed": ao["decoder.embed"].flops, "decoder.logits": ao["decoder.logits"].flops}
    for k, m in masks.items():
        keep = dict(zip(s.gate_names, m, strict=True))
        ff = dict(f)
        for n, c in mc.items():
            if not keep[n]:
                continue
            if n.endswith("cross_attn"):
                ff["decoder.cross_kv (once)"] = ff.get("decoder.cross_kv (once)", 0) + cross_kv
                ff["decoder.cross_attn"] = ff.get("decoder.cross_attn", 0) + c.flops - cross_kv
            else:
                ff[group(n)] = ff.get(group(n), 0) + c.flops
        out["flops"].setdefault(k, []).append(ff)

# summary: median over clips
print()
parts = sorted({p for k in res for r in res[k] for p in r["modules"]} | {"frontend", "encoder_glue", "decoder_glue"})
dense_tot = statistics.median(r["total"] for r in res["dense"])
hdr = f"{'part':26s}" + "".join(f"{k:>16s}" for k in masks)
print("median s per clip (share of dense total) | GFLOP")
print(hdr)
summary = {}
for p in parts:
    line = f"{p:26s}"
    for k in masks:
        v = statistics.median((r[p] if p in ("frontend", "encoder_glue", "decoder_glue")
                               else r["modules"].get(p, 0.0)) for r in res[k])
        fl = statistics.median(f.get(p, 0.0) for f in out["flops"][k]) / 1e9
        summary.setdefault(k, {})[p] = {"s": v, "gflop": fl}
        line += f"  {v:6.3f} {fl:6.2f}G"
    print(line)
line = f"{'TOTAL':26s}"
for k in masks:
    v = statistics.median(r["total"] for r in res[k])
    fl = statistics.median(sum(f.values()) for f in out["flops"][k]) / 1e9
    summary[k]["TOTAL"] = {"s": v, "gflop": fl}
    line += f"  {v:6.3f} {fl:6.2f}G"
print(line)
for k in masks:
    t, f0 = summary[k]["TOTAL"], summary["dense"]["TOTAL"]
    print(f"{k:6s} achieved {100 * (1 - t['s'] / f0['s']):5.1f}%  "
          f"ideal {100 * (1 - t['gflop'] / f0['gflop']):5.1f}%  "
          f"calls/clip {statistics.median(r['calls'] for r in res[k]):.0f}  "
          f"steps {statistics.median(r['steps'] for r in res[k]):.0f}")
out["summary"] = summary
default_out = ROOT / "benchmarks" / "results" / "bench_runtime_gap07_profile.json"
Path(sys.argv[2] if len(sys.argv) > 2 else default_out).write_text(json.dumps(out, indent=1))
