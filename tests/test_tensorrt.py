"""TensorRT backend: what can be checked without TensorRT (cache layout, optimization profiles from a
real exported bundle, the build/reuse logic against a recording stand-in for the tensorrt module,
the one-line errors), plus GPU tests that skip unless TensorRT is installed.

Needs registry.KNOWN["tensorrt"] (test_registry_*) and "build_engines" in
edgegate.cli.COMMAND_MODULES (test_cli_*), both applied by the lead.
"""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from edgegate.errors import BackendError
from edgegate.runtimes.backends import registry
from edgegate.runtimes.backends.tensorrt import (
    NOT_INSTALLED,
    TensorRTBackend,
    cache_key,
    engine_dir,
    engine_filename,
    engine_jobs,
    shape_ranges,
)
from edgegate.runtimes.schema import TensorSpec

HAS_TRT = TensorRTBackend.is_available()


def jobs_of(bundle: Path, max_batch: int | None = None, max_step_tokens: int | None = None):
    """The engine jobs of a bundle, from the bundle reader's graph specs and axis bounds."""
    from edgegate.runtimes.bundle import Bundle

    b = Bundle.open(bundle, verify=False)
    return engine_jobs(b.graphs(), b.module_format, b.axis_bounds(max_batch, max_step_tokens))


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory) -> Path:
    pytest.importorskip("torch")
    from edgegate.export.core import export_bundle

    from tiny import tiny_predictor, tiny_whisper

    model = tiny_whisper()
    return export_bundle(tmp_path_factory.mktemp("trt") / "tiny-jetson", "jetson", model,
                         gates=tiny_predictor(len(model.gate_names)), progress=False, log=lambda m: None)


# -- cache layout -------------------------------------------------------------------------------
def test_cache_key_names_gpu_capability_and_version():
    assert cache_key("NVIDIA Jetson Orin Nano", (8, 7), "10.3.0") == "nvidia-jetson-orin-nano-sm87-trt10.3.0"
    assert cache_key("  NVIDIA H200 ", (9, 0), "10.7.0.post1") == "nvidia-h200-sm90-trt10.7.0.post1"
    assert cache_key("NVIDIA H200", (9, 0), "10.7") != cache_key("NVIDIA H200", (9, 0), "10.8")
    assert cache_key("Orin (nvgpu)", (8, 7), "10.3") == "orin-nvgpu-sm87-trt10.3"


def test_engine_dir_is_beside_the_bundle_unless_moved(tmp_path, monkeypatch):
    monkeypatch.delenv("EDGEGATE_ENGINE_CACHE", raising=False)
    b = tmp_path / "bundles" / "base-jetson"
    assert engine_dir(b, "k") == b / "engines" / "k"
    assert engine_dir(b, "k", tmp_path / "cache") == tmp_path / "cache" / "base-jetson" / "k"
    monkeypatch.setenv("EDGEGATE_ENGINE_CACHE", str(tmp_path / "env"))
    assert engine_dir(b, "k") == tmp_path / "env" / "base-jetson" / "k"


def test_engine_file_names_change_with_graph_precision_and_profile():
    prof = {"x": ((1, 2, 64), (1, 1500, 64), (1, 1500, 64))}
    name = engine_filename("encoder.0.attn.onnx", "ab" * 32, "fp16", prof)
    assert name.startswith("encoder.0.attn.fp16.abababababab.") and name.endswith(".engine")
    assert engine_filename("encoder.0.attn.onnx", "cd" * 32, "fp16", prof) != name
    assert engine_filename("encoder.0.attn.onnx", "ab" * 32, "fp32", prof) != name
    wider = {"x": ((1, 2, 64), (1, 1500, 64), (2, 1500, 64))}
    assert engine_filename("encoder.0.attn.onnx", "ab" * 32, "fp16", wider) != name


# -- optimization profiles from a real bundle ---------------------------------------------------
def test_profiles_from_the_exported_manifest(tiny_bundle):
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    jobs = {j.name: j for j in jobs_of(tiny_bundle)}
    files = {m["file"] for m in manifest["modules"]} | {m["adapter"]["file"] for m in manifest["modules"]
                                                        if m["adapter"]} | {manifest["predictor"]["file"]}
    assert {j.file for j in jobs.values()} == files  # one engine per ONNX graph of the bundle
    assert all(j.sha256 == manifest["files"][j.file]["sha256"] for j in jobs.values())
    # (min, opt, max) per input; tiny dims: n_audio_ctx 1500, n_text_ctx 64, 4 heads of 16
    assert jobs["encoder.stem"].shapes == {"mel": ((1, 80, 4), (1, 80, 3000), (1, 80, 3000))}
    assert jobs["encoder.0.attn"].shapes == {"x": ((1, 2, 64), (1, 1500, 64), (1, 1500, 64))}
    assert jobs["encoder.1.attn.adapter"].shapes == jobs["encoder.1.attn"].shapes
    assert jobs["decoder.0.cross_kv"].shapes == {"xa": ((1, 2, 64), (1, 1500, 64), (1, 1500, 64))}
    assert jobs["decoder.0.self_attn"].shapes == {
        "x": ((1, 1, 64), (1, 1, 64), (8, 32, 64)),
        "k_cache": ((1, 4, 0, 16), (1, 4, 32, 16), (8, 4, 64, 16)),
        "v_cache": ((1, 4, 0, 16), (1, 4, 32, 16), (8, 4, 64, 16)),
    }
    assert jobs["decoder.0.cross_attn"].shapes["k"] == ((1, 4, 2, 16), (1, 4, 1500, 16), (1, 4, 1500, 16))
    assert jobs["decoder.embed"].shapes == {"tokens": ((1, 1), (1, 1), (8, 32)), "positions": ((1,), (1,), (32,))}
    assert jobs["decoder.logits"].shapes == {"x": ((1, 1, 64), (1, 1, 64), (8, 32, 64))}
    assert jobs["predictor"].shapes["stats"] == ((1, 160), (1, 160), (1, 160))
    assert jobs["decoder.0.self_attn"].outputs == ["x_out", "k_cache_out", "v_cache_out"]
    wide = {j.name: j for j in jobs_of(tiny_bundle, max_batch=5, max_step_tokens=4)}
    assert wide["decoder.1.mlp"].shapes["x"] == ((1, 1, 64), (1, 1, 64), (5, 4, 64))


def test_profile_needs_bounds_for_every_axis():
    with pytest.raises(BackendError, match="no bounds for dynamic axis 'speakers'"):
        shape_ranges([TensorSpec("x", "float32", ("speakers", 3), "x")], "encoder", {})


def test_pte_bundles_are_refused():
    with pytest.raises(BackendError, match="TensorRT builds engines from ONNX subgraphs"):
        engine_jobs([], "pte", {})


# -- build / reuse logic against a recording stand-in for tensorrt + cuda-python ----------------
class _Recorder:
    def __init__(self):
        self.builds: list[dict] = []


def _fake_libraries(rec: _Recorder) -> dict[str, types.ModuleType]:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.99.0"

    class Logger:
        ERROR, INFO, WARNING = 1, 2, 3

        def __init__(self, level):
            self.level = level

    class Input:
        def __init__(self, name):
            self.name = name

    class Network:
        def __init__(self):
            self.inputs = []

        @property
        def num_inputs(self):
            return len(self.inputs)

        def get_input(self, i):
            return Input(self.inputs[i])

    class OnnxParser:
        num_errors = 0

        def __init__(self, network, logger):
            self.network = network

        def parse_from_file(self, path):
            import onnx

            graph = onnx.load(path, load_external_data=False).graph
            init = {t.name for t in graph.initializer}
            self.network.inputs = [i.name for i in graph.input if i.name not in init]
            rec.builds.append({"file": Path(path).name, "shapes": {}, "flags": set()})
            return True

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            rec.builds[-1]["shapes"][name] = (tuple(lo), tuple(opt), tuple(hi))

    class TimingCache:
        def __init__(self, data):
            self.data = data

        def serialize(self):
            return b"TIMING" + self.data

    class Config:
        def create_timing_cache(self, data):
            return TimingCache(bytes(data))

        def set_timing_cache(self, cache, ignore_mismatch):
            rec.builds[-1]["timing"] = cache

        def set_memory_pool_limit(self, pool, size):
            rec.builds[-1]["workspace"] = size

        def set_flag(self, flag):
            rec.builds[-1]["flags"].add(flag)

        def add_optimization_profile(self, p):
            rec.builds[-1]["profiles"] = rec.builds[-1].get("profiles", 0) + 1

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            return b"ENGINE:" + rec.builds[-1]["file"].encode()

    trt.Logger, trt.Builder, trt.OnnxParser = Logger, Builder, OnnxParser
    trt.Runtime = lambda logger: object()
    trt.BuilderFlag = types.SimpleNamespace(FP16="FP16")
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")

    cudart = types.ModuleType("cuda.bindings.runtime")
    ok = "ok"
    cudart.cudaError_t = types.SimpleNamespace(cudaSuccess=ok)
    cudart.cudaGetDevice = lambda: (ok, 0)
    cudart.cudaGetDeviceProperties = lambda dev: (ok, types.SimpleNamespace(name=b"NVIDIA Fake GPU", major=8,
                                                                            minor=7))
    cudart.cudaStreamCreate = lambda: (ok, 1)
    cuda = types.ModuleType("cuda")
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = cudart
    cuda.bindings = bindings
    return {"tensorrt": trt, "cuda": cuda, "cuda.bindings": bindings, "cuda.bindings.runtime": cudart}


@pytest.fixture
def fake_trt(monkeypatch):
    pytest.importorskip("onnx")
    rec = _Recorder()
    for name, mod in _fake_libraries(rec).items():
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.delenv("EDGEGATE_ENGINE_CACHE", raising=False)
    return rec


def test_build_engines_profiles_fp16_cache_and_reuse(tiny_bundle, fake_trt, tmp_path):
    cache = tmp_path / "cache"
    backend = TensorRTBackend(precision="fp16", options={"engine_cache": str(cache)})
    assert backend.key == "nvidia-fake-gpu-sm87-trt10.99.0"
    records = backend.build_engines(tiny_bundle)
    jobs = {j.file: j for j in jobs_of(tiny_bundle)}
    assert len(records) == len(jobs) == len(fake_trt.builds)
    for build in fake_trt.builds:
        job = jobs[build["file"]]
        assert build["shapes"] == job.shapes  # every network input got the manifest-derived shape ranges
        assert build["flags"] == {"FP16"} and build["profiles"] == 1
    assert len({id(b["timing"]) for b in fake_trt.builds}) == 1  # one timing cache shared by all graphs
    out = cache / "tiny-jetson" / backend.key
    assert (out / "timing.cache").read_bytes() == b"TIMING"
    assert backend.cache_dir(tiny_bundle) == out
    for r in records:
        assert r["status"] == "built" and (out / r["engine"]).read_bytes().startswith(b"ENGINE:")
    index = json.loads((out / "engines.json").read_text())
    assert index["gpu"] == "NVIDIA Fake GPU" and index["precision"] == "fp16" and len(index["engines"]) == len(jobs)
    # second run: everything reused, nothing built; --force rebuilds; fp32 engines are separate files
    assert {r["status"] for r in backend.build_engines(tiny_bundle)} == {"reused"}
    assert len(fake_trt.builds) == len(jobs)
    assert {r["status"] for r in backend.build_engines(tiny_bundle, force=True)} == {"built"}
    fp32 = TensorRTBackend(precision="fp32", options={"engine_cache": str(cache)})
    fp32.build_engines(tiny_bundle)
    assert all(b["flags"] == set() for b in fake_trt.builds[-len(jobs):])
    assert len(list(out.glob("*.engine"))) == 2 * len(jobs)


def test_default_cache_is_inside_the_bundle_directory(tiny_bundle, fake_trt):
    backend = TensorRTBackend(precision="fp16")
    assert backend.cache_dir(tiny_bundle) == tiny_bundle / "engines" / "nvidia-fake-gpu-sm87-trt10.99.0"
    from edgegate.runtimes.bundle import Bundle

    backend.build_engines(tiny_bundle)
    Bundle.open(tiny_bundle)  # engines beside the listed files do not disturb the hash check
    import shutil

    shutil.rmtree(tiny_bundle / "engines")


def test_cpu_device_and_methods_are_refused(fake_trt, tmp_path):
    with pytest.raises(BackendError, match="TensorRT runs on an NVIDIA GPU"):
        TensorRTBackend(device="cpu")
    with pytest.raises(BackendError, match="use the executorch backend"):
        TensorRTBackend().load(tmp_path / "model.pte", "x", method="encoder.stem")


# -- without TensorRT ---------------------------------------------------------------------------
@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_missing_tensorrt_is_one_line_error():
    assert not TensorRTBackend.is_available()
    with pytest.raises(BackendError) as info:
        TensorRTBackend(precision="fp16")
    assert str(info.value) == NOT_INSTALLED


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_registry_knows_tensorrt_but_falls_back():
    assert registry.backend_class("trt") is TensorRTBackend
    assert not registry.is_available("tensorrt")
    assert registry.choose_backend("auto", ["tensorrt", "onnxruntime"], "onnx") == "onnxruntime"
    with pytest.raises(BackendError, match="pip install tensorrt"):
        registry.create_backend("tensorrt")


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_cli_build_engines_without_tensorrt(tiny_bundle):
    proc = subprocess.run([sys.executable, "-m", "edgegate.cli", "build-engines", str(tiny_bundle)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"error: {NOT_INSTALLED}"
    assert proc.stdout == ""


def test_cli_build_engines_refuses_what_is_not_a_bundle(tmp_path, capsys):
    from edgegate.cli import main

    (tmp_path / "manifest.json").write_text("{}")
    assert main(["build-engines", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "not an edgegate bundle" in err and "\n" not in err


# -- on a GPU with TensorRT ---------------------------------------------------------------------
def _needs_trt():
    pytest.importorskip("tensorrt", reason=NOT_INSTALLED)


def test_tensorrt_parity_with_onnxruntime(tiny_bundle):
    _needs_trt()
    from edgegate.runtimes.session import Session

    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal(40000)).astype(np.float32)
    cpu = Session.load(tiny_bundle, backend="onnxruntime", device="cpu", threads=1)
    gpu = Session.load(tiny_bundle, backend="tensorrt", options={"precision": "fp32"})
    assert gpu.backend.name == "tensorrt"
    for budget in (0.0, 0.5):
        a = cpu.transcribe_windows(audio, language="en", budget=budget)
        b = gpu.transcribe_windows(audio, language="en", budget=budget)
        assert b.mask == a.mask and b.tokens == a.tokens
    x = np.zeros((2, 1, 64), np.float32)
    empty = np.zeros((2, 4, 0, 16), np.float32)
    out, k, _ = gpu.modules["decoder.0.self_attn"].run({"x": x, "k_cache": empty, "v_cache": empty})
    assert out.shape == (2, 1, 64) and k.shape == (2, 4, 1, 16)
    gpu.backend.close()
