"""Runtime benchmark: PyTorch eager vs one monolithic ONNX graph vs edgegate's per-module runtime,
dense and under budgets, on the 5 LibriVox clips, same machine, one run.

    python benchmarks/bench_runtime.py                 # table + benchmarks/results/bench_runtime.json
    python benchmarks/bench_runtime.py --threading     # also: ONNX Runtime thread-pool modes

Rows (each clip runs every row in turn, so background load hits all rows alike; medians over clips):
- torch-eager-dense          edgegate.transcriber.WhisperModel (PyTorch), dense
- onnx-monolithic-dense      one encoder graph + one cross-K/V graph + one decoder-step graph (ORT)
- edgegate-dense             the bundle's per-module graphs, all gates on (ORT)
- edgegate-budget-B          B in 0.25/0.5/0.7: masks from the bundle's gate predictor when it has
                             one, else a static cost-ranked mask (the costliest modules skipped
                             first, planned exactly by edgegate.budget.keep_mask); the output says which
Budget rows report free decoding (what a user gets: text, WER, tokens, latency) and forced
decoding (the decoder fed the dense transcript's tokens, so every row does the same number of
steps): achieved saving = 1 - forced latency / dense forced latency, next to the FLOP-proportional
ideal = skipped FLOPs / all FLOPs (gateable + always-on) at the clip's token count.
--cost-unit ms plans the static masks (and the predictor's, through the budget) with the bundle's
measured ms (edgegate profile; profiled here first, into the bundle, when it has no table) and adds
the time-proportional ideal = skipped ms / all ms (gateable + always-on) at the clip's token count.
Extra rows (EXTRA_ROWS; "n/a" when the package is missing):
- executorch-xnnpack[-budget-0.5] the same model exported for android (one .pte, XNNPACK), all gates on / budget 0.5
- faster-whisper-int8/-float32   faster-whisper (CTranslate2) on the same weights (the registry's CTranslate2
                                 directory), greedy, language en, no VAD, no timestamps; always the full 30-s
                                 context (CTranslate2 pads every window to 3000 frames), whatever --audio-ctx says
Every row is timed from the wav path to the text (audio loading included), with the same thread count.
Clips and references: edgegate.data.librivox.load_clips; WER: corpus-level on edgegate.textnorm-normalised text.
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
from collections.abc import Callable
from pathlib import Path

import numpy as np
from common import faster_whisper_transcriber, write_json_atomic

from edgegate.data.librivox import find_librivox_dir, load_clips
from edgegate.textnorm import wer

ROOT = Path(__file__).resolve().parents[1]
BUDGETS = (0.25, 0.5, 0.7)


# -- helpers -------------------------------------------------------------------------------------
def median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


# -- the monolithic dense ONNX baseline ----------------------------------------------------------
class MonoDecoderState:
    def __init__(self, mono: MonoSession, cross: list[np.ndarray]):
        self.m, self.cross = mono, cross
        self.caches: list[np.ndarray] | None = None
        self.offset = 0

    def step(self, tokens: np.ndarray) -> np.ndarray:
        b, t = tokens.shape
        if self.caches is None:
            empty = np.zeros((b, self.m.heads, 0, self.m.head_dim), np.float32)
            self.caches = [empty] * (2 * self.m.n_layers)
        feed = {"tokens": np.ascontiguousarray(tokens, np.int64),
                "positions": np.arange(self.offset, self.offset + t, dtype=np.int64)}
        feed.update(zip(self.m.cache_names, self.caches, strict=True))
        feed.update(zip(self.m.cross_names, self.cross, strict=True))
        out = self.m.step.run(feed)
        self.caches = list(out[1:])
        self.offset += t
        return out[0]

    def reorder(self, index: np.ndarray) -> None:
        if self.caches is not None:
            self.caches = [np.ascontiguousarray(c[index]) for c in self.caches]


class MonoSession:
    def __init__(self, paths: dict[str, Path], dims: dict, tokenizer, threads: int):
        from edgegate.runtimes.backends.ort import OrtBackend

        be = OrtBackend(threads=threads, device="cpu")
        self.encoder = be.load(paths["encoder"])
        self.cross_kv = be.load(paths["cross_kv"])
        self.step = be.load(paths["decoder_step"])
        self.n_layers = dims["n_text_layer"]
        self.heads = dims["n_text_head"]
        self.head_dim = dims["n_text_state"] // self.heads
        self.cache_names = [n for n in self.step.input_names if "_cache" in n]
        self.cross_names = [n for n in self.step.input_names if n.startswith("cross_")]
        self.dims, self.tokenizer = dims, tokenizer

    def transcribe(self, audio: str, language: str = "en", audio_ctx: int | None = None) -> dict:
        from edgegate.decoding import decode
        from edgegate.pipeline import mel_windows, to_samples
        from edgegate.plan import encoder_frames

        t0 = time.perf_counter()
        windows = list(mel_windows(to_samples(audio, 16000), self.dims["n_mels"]))
        tokens: list[int] = []
        t_enc = t_dec = 0.0
        for w in windows:
            t1 = time.perf_counter()
            mel = w.mel[None, :, : encoder_frames(w.n_frames, audio_ctx)]
            xa = self.encoder.run({"mel": np.ascontiguousarray(mel)})[0]
            cross = self.cross_kv.run({"xa": xa})
            t2 = time.perf_counter()
            r = decode(lambda c=cross: MonoDecoderState(self, c), self.tokenizer, self.dims["n_vocab"], language,
                       "transcribe", 1, max_tokens=self.dims["n_text_ctx"] // 2)
            t_enc += t2 - t1
            t_dec += time.perf_counter() - t2
            tokens += r.tokens
        total = time.perf_counter() - t0
        return {"tokens": tokens, "text": self.tokenizer.decode(tokens).strip(), "total": total,
                "encoder": t_enc, "decoder": t_dec}


# -- forced decoding on the edgegate session -----------------------------------------------------
def forced_run(session, audio: str, mask: np.ndarray, tokens: list[int], language: str = "en",
               audio_ctx: int | None = None) -> dict:
    """Encoder + cross K/V + a decoder fed ``tokens`` (the dense transcript): equal step counts."""
    from edgegate.pipeline import mel_windows, to_samples
    from edgegate.plan import encoder_frames

    t0 = time.perf_counter()
    windows = list(mel_windows(to_samples(audio, 16000), session.dims["n_mels"]))
    w = windows[0]
    t1 = time.perf_counter()
    window = session.encode(w.mel[None, :, : encoder_frames(w.n_frames, audio_ctx)], mask)
    t2 = time.perf_counter()
    state = session.decoder_state(window, mask)
    state.step(np.array([session.tokenizer.sot_sequence(language)], np.int64))
    for tok in tokens:
        state.step(np.array([[tok]], np.int64))
    t3 = time.perf_counter()
    return {"total": t3 - t0, "frontend": t1 - t0, "encoder": t2 - t1, "decoder": t3 - t2}


def static_mask(session, budget: float, scope: str = "both", unit: str = "flops") -> tuple[np.ndarray, float]:
    from edgegate.budget import keep_mask

    costs = session.costs(1500, unit=unit)
    t0 = time.perf_counter()
    mask = keep_mask(session.gate_names, costs, -costs, budget, scope)
    return mask, time.perf_counter() - t0


def duration_s(path: str) -> float:
    import soundfile as sf

    return sf.info(path).duration


def flops_total(session, n_tokens: int, n_frames: int = 1500) -> tuple[np.ndarray, float]:
    g = session.costs(n_frames, n_tokens)
    return g, float(g.sum() + session.always_on_flops(n_frames, n_tokens))


def ms_total(session, n_tokens: int, n_frames: int = 1500) -> tuple[np.ndarray, float]:
    """(measured ms per gate, ms of the whole utterance) at this shape, from the bundle's profile."""
    from edgegate.runtimes.latency import measured_ms

    costs, b = session.bundle.manifest["costs"], session.bundle
    gate = measured_ms(costs, b.gate_terms, n_frames, n_tokens)
    always = sum(measured_ms(costs, b.always_on_terms, n_frames, n_tokens, always_on=True).values())
    g = np.array([gate[n] for n in session.gate_names])
    return g, float(g.sum() + always)


def ensure_ms_profile(bundle_dir: Path, threads: int):
    """The session, after profiling the bundle into its manifest if it has no measured ms yet."""
    from edgegate.runtimes.latency import format_latency_table, measure_latency, write_latency_table
    from edgegate.runtimes.session import Session

    session = Session.load(bundle_dir, threads=threads)
    meta = session.bundle.manifest["costs"].get("ms_meta")
    if session.bundle.manifest["costs"].get("ms"):
        if meta and meta.get("threads") != threads:
            print(f"# note: the bundle was profiled with {meta.get('threads')} threads, this run uses {threads}",
                  flush=True)
        return session
    t0 = time.perf_counter()
    prof = measure_latency(session)
    write_latency_table(bundle_dir, prof)
    print(f"# profiled {bundle_dir.name} in {time.perf_counter() - t0:.0f} s (edgegate profile, {threads} threads):",
          flush=True)
    terms = {**session.bundle.gate_terms, **session.bundle.always_on_terms}
    print("\n".join(f"#   {line}" for line in format_latency_table(prof, terms, session.gate_names).splitlines()),
          flush=True)
    return Session.load(bundle_dir, threads=threads)


# -- rows to come --------------------------------------------------------------------------------
def _executorch_session(args):
    """The ExecuTorch (XNNPACK) session of the same model and gate set: an android bundle, one .pte."""
    from edgegate.runtimes.backends.registry import is_available

    if not is_available("executorch"):
        return None
    if "executorch" not in _ET:
        from edgegate.export.executorch_export import export_executorch_bundle
        from edgegate.runtimes.bundle import Bundle
        from edgegate.runtimes.session import Session

        gates = resolve_gates(args)
        out = ROOT / "bundles" / f"bench-{Path(args.model).name}-android{'-gated' if gates else ''}"
        try:
            Bundle.open(out)
        except Exception:
            t0 = time.perf_counter()
            export_executorch_bundle(out, "android", args.model, gates=gates, force=True, progress=False)
            print(f"# exported {out.name} in {time.perf_counter() - t0:.0f} s", flush=True)
        _ET["executorch"] = Session.load(out, backend="executorch", threads=args.threads)
    return _ET["executorch"]


_ET: dict = {}


def resolve_gates(args) -> str | None:
    """--gates as a gate-set name/path or None: auto = the model's shipped set if it has one."""
    if args.gates == "auto":
        from edgegate.gate_set import shipped_gate_sets

        return Path(args.model).name if Path(args.model).name in shipped_gate_sets() else None
    return None if args.gates == "none" else args.gates


def _executorch_runner(args, clips: list[str], budget: float | None) -> Callable[[str], dict] | None:
    s = _executorch_session(args)
    if s is None:
        return None
    ctx = {"bundle": s.audio_ctx, "none": None}.get(args.audio_ctx)
    if args.audio_ctx not in ("bundle", "none"):
        ctx = int(args.audio_ctx)
    dense = np.ones(len(s.gate_names), bool)

    def run(clip: str) -> dict:
        if budget is None:
            r = s.transcribe_windows(clip, language="en", mask=dense, audio_ctx=ctx)
        elif s.has_predictor:
            r = s.transcribe_windows(clip, language="en", budget=budget, audio_ctx=ctx)
        else:
            r = s.transcribe_windows(clip, language="en", mask=static_mask(s, budget)[0], audio_ctx=ctx)
        return {"text": r.text, "tokens": len(r.tokens), **r.timings}

    run(clips[0])  # warm-up, not timed
    return run


def executorch_row(args, clips: list[str]) -> Callable[[str], dict] | None:
    """ExecuTorch (XNNPACK), all gates on (None when executorch is not installed)."""
    return _executorch_runner(args, clips, None)


def executorch_budget_row(args, clips: list[str]) -> Callable[[str], dict] | None:
    """ExecuTorch (XNNPACK) at budget 0.5 (predictor masks, else the static FLOP-ranked mask)."""
    return _executorch_runner(args, clips, 0.5)


def _faster_whisper_runner(args, clips: list[str], compute_type: str) -> Callable[[str], dict] | None:
    """faster-whisper (CTranslate2, CPU) on the registry's CTranslate2 directory of the same weights: greedy,
    language en, no VAD, no timestamps, ``args.threads`` threads; timed from the wav path to the text like the
    other rows. None when faster-whisper is not installed or the model is not a CTranslate2 directory."""
    try:
        transcribe = faster_whisper_transcriber(args.model, compute_type, args.threads)
    except ImportError:
        return None
    except Exception as e:  # e.g. a checkpoint that is not a CTranslate2 directory
        print(f"# faster-whisper {compute_type}: not run ({type(e).__name__}: {e})", flush=True)
        return None

    def run(clip: str) -> dict:
        t0 = time.perf_counter()
        text, n_tokens = transcribe(clip)
        return {"text": text, "tokens": n_tokens, "total": time.perf_counter() - t0}

    run(clips[0])  # warm-up, not timed
    return run


def faster_whisper_int8_row(args, clips: list[str]) -> Callable[[str], dict] | None:
    """faster-whisper int8 (its usual CPU setting)."""
    return _faster_whisper_runner(args, clips, "int8")


def faster_whisper_float32_row(args, clips: list[str]) -> Callable[[str], dict] | None:
    """faster-whisper float32 (the same precision as the ONNX rows)."""
    return _faster_whisper_runner(args, clips, "float32")


EXTRA_ROWS: dict[str, Callable] = {"executorch-xnnpack": executorch_row,
                                   "executorch-xnnpack-budget-0.5": executorch_budget_row,
                                   "faster-whisper-int8": faster_whisper_int8_row,
                                   "faster-whisper-float32": faster_whisper_float32_row}


# -- thread-pool modes ---------------------------------------------------------------------------
THREADING_SCRIPT = r'''
import json, statistics, sys, time
from edgegate.runtimes.session import Session
bundle, threads, clips = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
t0 = time.perf_counter()
s = Session.load(bundle, threads=threads)
load = time.perf_counter() - t0
s.transcribe_windows(clips[0], language="en")
ts, dec = [], []
for c in clips:
    r = s.transcribe_windows(c, language="en")
    ts.append(r.timings["total"]); dec.append(r.timings["decoder"])
print(json.dumps({"load_s": load, "median_s": statistics.median(ts), "decoder_median_s": statistics.median(dec),
                  "sessions": len(s.modules) + len(s.adapters)}))
'''


def bench_threading(bundle: Path, threads: int, clips: list[str]) -> dict:
    out = {}
    for mode in ("session", "global", "spin"):
        use = clips if mode != "spin" else clips[:1]  # spinning pools are ~10x slower: one clip is enough
        env = {**os.environ, "EDGEGATE_ORT_THREADING": mode}
        proc = subprocess.run([sys.executable, "-c", THREADING_SCRIPT, str(bundle), str(threads), *use],
                              capture_output=True, text=True, env=env, timeout=1800)
        if proc.returncode != 0:
            out[mode] = {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
        else:
            out[mode] = {**json.loads(proc.stdout.strip().splitlines()[-1]), "clips": len(use)}
        print(f"  threading={mode:8s} {out[mode]}", flush=True)
    return out


# -- main ----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="whisper-base")
    ap.add_argument("--bundle", default=None, help="existing bundle (default: export to bundles/bench-<model>-cpu)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", type=Path, default=None,
                    help="folder with the LibriVox wavs and 'transcription' (default: pocketsphinx-testdata's)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_runtime.json"))
    ap.add_argument("--gates", default="auto",
                    help="gate set or predictor to export with (auto: the shipped gate set for the model if any; "
                         "none: no predictor, budget rows use static FLOP-ranked masks)")
    ap.add_argument("--audio-ctx", default="bundle",
                    help="encoder context for every row: bundle (the gate set's), none (full 30 s) or an int")
    ap.add_argument("--threading", action="store_true", help="also compare ONNX Runtime thread-pool modes")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch row")
    ap.add_argument("--cost-unit", choices=("flops", "ms"), default="flops",
                    help="what budgets count: FLOPs, or the bundle's measured ms (profiled first if missing)")
    args = ap.parse_args(argv)

    import torch

    from edgegate.budget import Budget
    from edgegate.export.core import export_bundle
    from edgegate.export.monolithic import export_monolithic
    from edgegate.plan import encoder_frames
    from edgegate.runtimes.bundle import Bundle
    from edgegate.runtimes.session import Session
    from edgegate.transcriber import WhisperModel

    torch.set_num_threads(args.threads)
    folder = args.data or find_librivox_dir()
    listed = load_clips(folder) if folder is not None else []
    if not listed:
        print("no LibriVox clips found (apt-get install pocketsphinx-testdata, or pass --data DIR)", file=sys.stderr)
        return 1
    clips = [str(wav) for _, wav, _ in listed]
    refs = {utt: ref for utt, _, ref in listed}
    ref_model = WhisperModel(args.model, threads=args.threads)

    gates = resolve_gates(args)
    suffix = "-gated" if gates else ""
    bundle_dir = Path(args.bundle) if args.bundle else ROOT / "bundles" / f"bench-{Path(args.model).name}-cpu{suffix}"
    if not args.bundle:
        try:
            Bundle.open(bundle_dir)
        except Exception:
            # a gate set adapts the model in place: export from a fresh copy, keep ref_model dense
            src = WhisperModel(args.model).model if gates else ref_model.model
            export_bundle(bundle_dir, "cpu", src, gates=gates, force=True, progress=False)
    mono_dir = ROOT / "bundles" / f"bench-{Path(args.model).name}-mono"
    mono_paths = {k: mono_dir / f"mono_{k}.onnx" for k in ("encoder", "cross_kv", "decoder_step")}
    if not all(p.exists() for p in mono_paths.values()):
        mono_paths = export_monolithic(ref_model.model, mono_dir)

    if args.cost_unit == "ms":
        session = ensure_ms_profile(bundle_dir, args.threads)
    else:
        session = Session.load(bundle_dir, threads=args.threads)
    mono = MonoSession(mono_paths, session.dims, session.tokenizer, args.threads)
    names = session.gate_names
    n = len(names)
    ctx = {"bundle": session.audio_ctx, "none": None}.get(args.audio_ctx)
    if args.audio_ctx not in ("bundle", "none"):
        ctx = int(args.audio_ctx)
    print(f"# encoder context: {'full 30 s' if ctx is None else f'audio + {ctx} positions'} (all rows)", flush=True)
    unit_name = {"flops": "FLOP", "ms": "measured-ms"}[args.cost_unit]
    mask_source = (f"predictor, planned in {args.cost_unit}" if session.has_predictor
                   else f"static {unit_name}-ranked mask (no predictor in the bundle)")
    print(f"# {session.describe()}", flush=True)
    print(f"# budget masks: {mask_source}", flush=True)
    if ctx is not None:
        print("# faster-whisper rows always use the full 30-s context (CTranslate2 pads to 3000 frames)", flush=True)

    static = {b: static_mask(session, b, unit=args.cost_unit) for b in BUDGETS}
    dense_mask = np.ones(n, bool)
    rows: dict[str, list[dict]] = {}

    def add(row: str, clip: str, rec: dict) -> None:
        rec["clip"] = Path(clip).stem
        if "text" in rec:  # forced-decoding rows have no text of their own
            rec["wer"] = wer([refs[rec["clip"]]], [rec["text"]])
        rows.setdefault(row, []).append(rec)

    # warm-up (not timed): first runs allocate arenas and page weights in
    ref_model.transcribe_windows(clips[0], language="en", audio_ctx=ctx)
    session.transcribe_windows(clips[0], language="en", audio_ctx=ctx)
    mono.transcribe(clips[0], audio_ctx=ctx)
    extra = {name: fn(args, clips) for name, fn in EXTRA_ROWS.items()}

    loads = [os.getloadavg()]
    for clip in clips:
        if not args.no_torch:
            r = ref_model.transcribe_windows(clip, language="en", audio_ctx=ctx)
            add("torch-eager-dense", clip, {"text": r.text, "tokens": len(r.tokens), "total": r.timings["total"],
                                            "encoder": r.timings["encoder"], "decoder": r.timings["decoder"]})
        m = mono.transcribe(clip, audio_ctx=ctx)
        add("onnx-monolithic-dense", clip, {**m, "tokens": len(m["tokens"])})
        r = session.transcribe_windows(clip, language="en", mask=dense_mask, audio_ctx=ctx)
        dense_tokens = r.tokens
        add("edgegate-dense", clip, {"text": r.text, "tokens": len(r.tokens), **r.timings})
        f = forced_run(session, clip, dense_mask, dense_tokens, audio_ctx=ctx)
        add("edgegate-dense/forced", clip, {"tokens": len(dense_tokens), **f})
        frames = 1500 if ctx is None else encoder_frames(min(3000, int(round(duration_s(clip) * 100))), ctx) // 2
        g_flops, total_flops = flops_total(session, 4 + len(dense_tokens), frames)
        g_ms, total_ms = ms_total(session, 4 + len(dense_tokens), frames) if args.cost_unit == "ms" else (None, 0.0)
        for b in BUDGETS:
            if session.has_predictor:
                spec = b if args.cost_unit == "flops" else Budget(b, session.budget.scope, "ms", session.budget.pinned)
                r = session.transcribe_windows(clip, language="en", budget=spec, audio_ctx=ctx)
                mask = np.array(r.mask)
                plan_s = r.timings["predictor"]
            else:
                mask, plan_s = static[b]
                r = session.transcribe_windows(clip, language="en", mask=mask, audio_ctx=ctx)
                r.timings["predictor"] = plan_s
            skipped = float(g_flops[~mask].sum())
            ideal = {"ideal_saving": skipped / total_flops}
            if g_ms is not None:
                ideal.update(ideal_saving_ms=float(g_ms[~mask].sum()) / total_ms,
                             skipped_gate_ms=float(g_ms[~mask].sum() / g_ms.sum()))
            add(f"edgegate-budget-{b}", clip, {"text": r.text, "tokens": len(r.tokens), **r.timings,
                                               "skipped_gate_flops": skipped / g_flops.sum(), **ideal})
            f = forced_run(session, clip, mask, dense_tokens, audio_ctx=ctx)
            add(f"edgegate-budget-{b}/forced", clip, {"tokens": len(dense_tokens), **f,
                                                      "predictor": plan_s, **ideal})
        for name, runner in extra.items():
            if runner is not None:
                add(name, clip, runner(clip))
        loads.append(os.getloadavg())
        print(f"  {Path(clip).stem}: done (load average {loads[-1][0]:.2f})", flush=True)

    summary = []
    dense_forced = median([x["total"] for x in rows["edgegate-dense/forced"]])
    mono_med = median([x["total"] for x in rows["onnx-monolithic-dense"]])
    for row, recs in rows.items():
        med = median([x["total"] for x in recs])
        texts = [x for x in recs if "text" in x]
        s = {"row": row, "median_s": med,
             "encoder_median_s": median([x["encoder"] for x in recs]) if "encoder" in recs[0] else None,
             "decoder_median_s": median([x["decoder"] for x in recs]) if "decoder" in recs[0] else None,
             "wer": wer([refs[x["clip"]] for x in texts], [x["text"] for x in texts]) if texts else None,
             "tokens_median": median([x["tokens"] for x in recs])}
        if "predictor" in recs[0]:
            s["predictor_share"] = median([x["predictor"] / x["total"] for x in recs])
        for key in ("ideal_saving", "ideal_saving_ms", "skipped_gate_ms"):
            if key in recs[0]:
                s[key] = median([x[key] for x in recs])
        if row.endswith("/forced"):
            s["achieved_saving"] = 1 - med / dense_forced
        if row == "edgegate-dense":
            s["overhead_vs_monolithic"] = med / mono_med - 1
        summary.append(s)

    with_ms = args.cost_unit == "ms"
    hdr = f"{'row':30s} {'median s':>9s} {'enc s':>7s} {'dec s':>7s} {'WER':>6s} {'tokens':>6s} " \
          f"{'pred+plan':>9s} {'ideal':>6s} " + (f"{'ms-ideal':>8s} " if with_ms else "") + f"{'achieved':>8s}"
    print()
    print(hdr)
    print("-" * len(hdr))
    for s in summary:
        pp = f"{100 * s['predictor_share']:.3f}%" if "predictor_share" in s else "-"
        ideal = f"{100 * s['ideal_saving']:.1f}%" if "ideal_saving" in s else "-"
        ms_ideal = (f"{100 * s['ideal_saving_ms']:.1f}%" if "ideal_saving_ms" in s else "-").rjust(8) + " "
        ach = f"{100 * s['achieved_saving']:.1f}%" if "achieved_saving" in s else "-"
        w = "-" if s["wer"] is None else f"{100 * s['wer']:.1f}%"
        enc, dec = (("-" if s[k] is None else f"{s[k]:.3f}") for k in ("encoder_median_s", "decoder_median_s"))
        print(f"{s['row']:30s} {s['median_s']:9.3f} {enc:>7s} {dec:>7s} "
              f"{w:>6s} {s['tokens_median']:6.0f} {pp:>9s} {ideal:>6s} {ms_ideal if with_ms else ''}{ach:>8s}")
    for name, runner in extra.items():
        if runner is None:
            print(f"{name:30s} n/a (package not installed)")
    ov = next(s for s in summary if s["row"] == "edgegate-dense")["overhead_vs_monolithic"]
    print(f"\nall gates on vs monolithic dense ONNX: {100 * ov:+.1f}%   (budget masks: {mask_source})")
    legend = "ideal = skipped FLOPs / all FLOPs"
    if with_ms:
        legend += "; ms-ideal = skipped measured ms / all measured ms"
    print(legend + "; achieved = 1 - forced latency / dense forced latency")

    result = {
        "benchmark": "bench_runtime", "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count(), "load_avg_at_start": loads[0],
                    "load_avg_after_each_clip": loads[1:]},
        "threads": args.threads, "model": args.model, "gates": gates, "audio_ctx": ctx, "bundle": str(bundle_dir),
        "backend": session.backend.describe(),
        "budget_masks": mask_source, "cost_unit": args.cost_unit,
        "ms_profile": session.bundle.manifest["costs"].get("ms_meta") if with_ms else None,
        "ms_table": session.bundle.manifest["costs"].get("ms") if with_ms else None,
        "static_masks": {str(b): [nm for nm, k in zip(names, static[b][0], strict=True) if not k] for b in BUDGETS},
        "clips": [Path(c).stem for c in clips], "summary": summary, "per_clip": rows,
        "not_run": [name for name, r in extra.items() if r is None],
    }
    if args.threading:
        print("\nONNX Runtime thread pools (edgegate-dense, median over clips):", flush=True)
        result["threading"] = bench_threading(bundle_dir, args.threads, clips)
    out = Path(args.out)
    write_json_atomic(out, result)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
