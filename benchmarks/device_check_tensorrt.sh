#!/usr/bin/env bash
# One-shot check of the GPU paths on a lent NVIDIA machine (budget: ~15 minutes in all, one run).
#
#   bash benchmarks/device_check_tensorrt.sh            # results under $OUT (default ./device_out)
#
# Steps (each time-boxed; results are written after every step, so a cut-off run still reports):
#   1. environment: nvidia-smi, python, versions of torch / onnxruntime / tensorrt / cuda-python
#   2. installs what is missing, if an index is reachable (onnxruntime-gpu, tensorrt, cuda-python);
#      no network: skipped, logged
#   3. bundles: exports whisper-base for jetson (with the shipped gate set) and a tiny random model,
#      if torch and the weights are here; else uses $BUNDLE (e.g. a carried tiny bundle)
#   4. ONNX Runtime CUDA EP vs CPU on the LibriVox clips: tokens, masks, latency (dense, budget 0.5)
#   5. if tensorrt imports: tests/test_tensorrt.py, engines for the tiny bundle (API check), then
#      edgegate build-engines for whisper-base (fp16, timed, shared timing cache) and the TensorRT
#      backend vs CPU on the clips (token agreement, latency), until the deadline
#
# Inputs (environment): OUT, DEADLINE_S (default 540: stop starting new steps after this many
# seconds), CLIPS_DIR (default: /usr/share/pocketsphinx/test/data/librivox, else
# bundles/device_clips, a carried copy of the 5 wav files + transcription), BUNDLE (a pre-exported
# jetson bundle to use when nothing can be exported here), TRT_OPT_LEVEL (builder optimization
# level, default 2, to keep engine builds inside the budget), SKIP_INSTALL=1 (no pip at all).
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/device_out}"
mkdir -p "$OUT"
export OUT
export DEADLINE_S="${DEADLINE_S:-540}"
export START_EPOCH="$(date +%s)"
LOG="$OUT/log.txt"
exec > >(tee -a "$LOG") 2>&1

echo "== device check $(date -u +%FT%TZ) in $PWD"
{ nvidia-smi || echo "nvidia-smi: not available"; } > "$OUT/nvidia-smi.txt" 2>&1
head -15 "$OUT/nvidia-smi.txt"
PY="${PYTHON:-python3}"
$PY --version

have() { $PY -c "import $1" >/dev/null 2>&1; }
try_pip() {  # quiet, fast failure without a network; SKIP_INSTALL=1 turns installs off
  [ "${SKIP_INSTALL:-0}" = 1 ] && { echo "not installing (SKIP_INSTALL=1): $*"; return 0; }
  timeout 150 $PY -m pip install -q --disable-pip-version-check --retries 0 --timeout 8 "$@" \
    >> "$OUT/pip.txt" 2>&1 && echo "installed: $*" || echo "could not install: $* (see pip.txt)"
}
have onnxruntime && $PY -c "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())" \
  || try_pip onnxruntime-gpu
have tensorrt || try_pip tensorrt
have cuda || try_pip cuda-python
for m in numpy soundfile soxr tokenizers tqdm platformdirs; do have $m || try_pip $m; done
$PY -m pip list 2>/dev/null | grep -iE "^(torch|onnx|onnxruntime.*|tensorrt.*|cuda-python|cuda-bindings|numpy|executorch) " \
  > "$OUT/versions.txt"; cat "$OUT/versions.txt"

if [ -z "${CLIPS_DIR:-}" ]; then
  CLIPS_DIR=/usr/share/pocketsphinx/test/data/librivox
  [ -d "$CLIPS_DIR" ] || CLIPS_DIR="$PWD/bundles/device_clips"
fi
export CLIPS_DIR
echo "clips: $CLIPS_DIR ($(ls "$CLIPS_DIR"/*.wav 2>/dev/null | wc -l) wav)"

timeout $(( DEADLINE_S + 30 )) $PY - <<'PYEOF'
import glob, importlib, importlib.util, json, os, statistics, subprocess, sys, time, traceback
from pathlib import Path

OUT = Path(os.environ["OUT"])
ROOT = Path.cwd()
T0 = float(os.environ["START_EPOCH"])
DEADLINE = T0 + float(os.environ["DEADLINE_S"])
RESULT = {"started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(T0)), "steps": {}}


def left() -> float:
    return DEADLINE - time.time()


def save() -> None:
    RESULT["elapsed_s"] = round(time.time() - T0, 1)
    (OUT / "device_check.json").write_text(json.dumps(RESULT, indent=1, default=str) + "\n")


def step(name, need_s=30):
    """Decorator-ish runner: skip when the deadline is near, record errors, save after each step."""
    def run(fn):
        if left() < need_s:
            RESULT["steps"][name] = {"skipped": f"deadline ({left():.0f} s left, needs ~{need_s} s)"}
            print(f"-- {name}: skipped (deadline)", flush=True)
            save()
            return None
        print(f"-- {name} ({left():.0f} s left)", flush=True)
        t = time.time()
        try:
            out = fn()
            RESULT["steps"][name] = {"ok": True, "seconds": round(time.time() - t, 1), **(out or {})}
        except Exception as exc:
            RESULT["steps"][name] = {"ok": False, "seconds": round(time.time() - t, 1),
                                     "error": f"{type(exc).__name__}: {str(exc)[:400]}",
                                     "trace": traceback.format_exc()[-1500:]}
            print(f"   FAILED: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
        save()
        return RESULT["steps"][name]
    return run


# edgegate importable? (pip install -e . may be impossible here: alias the source tree instead)
def ensure_edgegate():
    try:
        import edgegate.runtimes.session  # noqa: F401
        return "installed"
    except Exception:
        pass
    sys.path.insert(0, str(ROOT))
    import edgegate  # the edgegate/ package of the working tree
    for sub, folder in (("export", "export"), ("runtimes", "runtimes"), ("runtimes.backends", "runtimes/backends")):
        name = f"edgegate.{sub}"
        spec = importlib.util.spec_from_file_location(name, ROOT / folder / "__init__.py",
                                                      submodule_search_locations=[str(ROOT / folder)])
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
        parent, _, leaf = name.rpartition(".")
        setattr(sys.modules[parent], leaf, mod)
    import edgegate.runtimes.session  # noqa: F401
    return "source tree (aliased)"


RESULT["edgegate"] = ensure_edgegate()
from edgegate.runtimes.session import Session  # noqa: E402

clips = sorted(glob.glob(os.path.join(os.environ["CLIPS_DIR"], "*.wav")))
RESULT["clips"] = [Path(c).stem for c in clips]
bundles = {}
HAS_TORCH = importlib.util.find_spec("torch") is not None
RESULT["env"] = {"torch": HAS_TORCH, "tensorrt": importlib.util.find_spec("tensorrt") is not None,
                 "cpus": os.cpu_count()}
try:
    import onnxruntime as ort
    RESULT["env"]["ort_providers"] = ort.get_available_providers()
    RESULT["env"]["onnxruntime"] = ort.__version__
except Exception as exc:
    RESULT["env"]["onnxruntime"] = f"missing: {exc}"
save()


@step("export-bundles", need_s=120)
def _export():
    out = {}
    work = ROOT / "bundles"
    if os.environ.get("BUNDLE"):
        bundles["given"] = Path(os.environ["BUNDLE"])
    if not HAS_TORCH:
        out["note"] = "no torch here: only $BUNDLE is used"
        return out
    from edgegate.export.core import export_bundle
    sys.path.insert(0, str(ROOT / "tests"))  # the tiny random model the tests share
    from tiny import tiny_predictor, tiny_whisper
    t = time.time()
    m = tiny_whisper()
    bundles["tiny"] = export_bundle(work / "device-tiny-jetson", "jetson", m, gates=tiny_predictor(len(m.gate_names)),
                                    force=True, progress=False, log=lambda s: None)
    out["tiny_export_s"] = round(time.time() - t, 1)
    t = time.time()
    try:
        from edgegate.gate_set import shipped_gate_sets
        gates = "whisper-base" if "whisper-base" in shipped_gate_sets() else None
        bundles["base"] = export_bundle(work / "device-base-jetson", "jetson", "whisper-base", gates=gates, force=True,
                                        progress=False, log=lambda s: None)
        out["base_export_s"] = round(time.time() - t, 1)
        out["base_gates"] = gates
    except Exception as exc:
        out["base_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    return out


def main_bundle():
    return bundles.get("base") or bundles.get("given") or bundles.get("tiny")


def compare(ref_session, test_session, budgets=(0.0, 0.5), n_clips=None):
    """Per clip and budget: masks, tokens, texts and latencies of two sessions (first call per clip warms up)."""
    rows, lat = [], {"ref": {}, "test": {}}
    use = clips[:n_clips] if n_clips else clips
    if use:
        test_session.transcribe_windows(use[0], language="en")  # warm-up (CUDA context, arenas)
    for c in use:
        for b in budgets:
            kw = {"budget": b} if ref_session.has_predictor else {}
            a = ref_session.transcribe_windows(c, language="en", **kw)
            r = test_session.transcribe_windows(c, language="en", **kw)
            lat["ref"].setdefault(str(b), []).append(a.timings["total"])
            lat["test"].setdefault(str(b), []).append(r.timings["total"])
            same = sum(x == y for x, y in zip(a.tokens, r.tokens))
            rows.append({"clip": Path(c).stem, "budget": b, "mask_equal": a.mask == r.mask,
                         "tokens_equal": a.tokens == r.tokens, "token_agreement": same / max(len(a.tokens), 1),
                         "ref_text": a.text, "test_text": r.text,
                         "ref_s": round(a.timings["total"], 4), "test_s": round(r.timings["total"], 4)})
            if left() < 20:
                break
    med = {k: {b: round(statistics.median(v), 4) for b, v in d.items()} for k, d in lat.items()}
    return {"rows": rows, "all_tokens_equal": all(r["tokens_equal"] for r in rows),
            "all_masks_equal": all(r["mask_equal"] for r in rows), "median_s": med}


@step("ort-cuda-vs-cpu", need_s=60)
def _ort():
    b = main_bundle()
    if b is None:
        raise RuntimeError("no bundle (no torch to export and no $BUNDLE)")
    cpu = Session.load(b, backend="onnxruntime", device="cpu", threads=min(8, os.cpu_count() or 2))
    gpu = Session.load(b, backend="onnxruntime", device="gpu", options={"tensorrt_ep": False})
    out = {"bundle": str(b), "gpu_providers": gpu.backend.describe(), "cpu": cpu.backend.describe()}
    out.update(compare(cpu, gpu))
    return out


HAS_TRT = False
try:
    import tensorrt  # noqa: F401
    HAS_TRT = True
    RESULT["env"]["tensorrt_version"] = tensorrt.__version__
except Exception as exc:
    RESULT["env"]["tensorrt_import"] = f"{type(exc).__name__}: {str(exc)[:200]}"
save()
OPT = int(os.environ.get("TRT_OPT_LEVEL", "2"))

if HAS_TRT:
    @step("pytest-tensorrt", need_s=90)
    def _pytest():
        p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "tests/test_tensorrt.py"], capture_output=True,
                           text=True, timeout=max(30, min(240, left() - 30)))
        return {"returncode": p.returncode, "tail": p.stdout[-2500:] + p.stderr[-800:]}

    @step("tensorrt-tiny", need_s=90)
    def _trt_tiny():
        b = bundles.get("tiny") or bundles.get("given")
        if b is None:
            raise RuntimeError("no tiny bundle")
        from edgegate.runtimes.backends.tensorrt import TensorRTBackend
        out = {}
        for prec in ("fp32", "fp16"):
            be = TensorRTBackend(precision=prec, options={"builder_optimization_level": OPT})
            t = time.time()
            recs = be.build_engines(b, force=True)
            out[f"{prec}_build_s"] = round(time.time() - t, 1)
            out[f"{prec}_engines"] = len(recs)
            out["cache_dir"] = str(be.cache_dir(b))
        cpu = Session.load(b, backend="onnxruntime", device="cpu", threads=2)
        for prec in ("fp32", "fp16"):
            trt_s = Session.load(b, backend="tensorrt", options={"precision": prec, "builder_optimization_level": OPT})
            out[f"{prec}_describe"] = trt_s.describe()
            out[f"{prec}_vs_cpu"] = compare(cpu, trt_s, n_clips=2)
            trt_s.backend.close()
        return out

    @step("tensorrt-base-build", need_s=150)
    def _trt_build():
        b = bundles.get("base") or bundles.get("given")
        if b is None:
            raise RuntimeError("no whisper-base bundle")
        cmd = [sys.executable, "-m", "edgegate.cli", "build-engines", str(b), "--fp16", "--no-progress"]
        env = {**os.environ}
        t = time.time()
        # the CLI has no optimization-level flag: call the API with the same code path
        from edgegate.runtimes.backends.tensorrt import TensorRTBackend
        be = TensorRTBackend(precision="fp16", device="gpu", options={"builder_optimization_level": OPT})
        recs = be.build_engines(b, progress=False)
        built = [r for r in recs if r["status"] == "built"]
        out = {"engines": len(recs), "built": len(built), "build_s": round(time.time() - t, 1),
               "slowest": sorted(((r["seconds"], r["name"]) for r in built), reverse=True)[:5],
               "engine_mb": round(sum(r["bytes"] for r in recs) / 1e6, 1), "cache_dir": str(be.cache_dir(b)),
               "opt_level": OPT}
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=max(30, min(120, left() - 20)))
        out["cli"] = {"returncode": p.returncode, "stdout": p.stdout[-400:], "stderr": p.stderr[-400:]}
        return out

    @step("tensorrt-base-vs-cpu", need_s=60)
    def _trt_base():
        b = bundles.get("base") or bundles.get("given")
        cpu = Session.load(b, backend="onnxruntime", device="cpu", threads=min(8, os.cpu_count() or 2))
        trt_s = Session.load(b, backend="tensorrt", options={"builder_optimization_level": OPT})
        out = {"describe": trt_s.describe()}
        out.update(compare(cpu, trt_s))
        return out
else:
    RESULT["steps"]["tensorrt"] = {"skipped": "tensorrt does not import here: " + RESULT["env"].get("tensorrt_import", "")}
    save()

print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk in ("ok", "seconds", "error", "skipped",
                                                                   "all_tokens_equal", "all_masks_equal", "median_s",
                                                                   "build_s", "engines")}
                  for k, v in RESULT["steps"].items()}, indent=1, default=str))
save()
PYEOF
echo "== exit $? after $(( $(date +%s) - START_EPOCH )) s; results in $OUT/device_check.json"
