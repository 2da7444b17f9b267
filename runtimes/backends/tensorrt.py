"""TensorRT backend: one engine per ONNX subgraph of a bundle, built on the device and cached.

Needs an NVIDIA GPU, ``pip install tensorrt`` (TensorRT 10) and ``pip install cuda-python``
(device buffers and the stream; ``cuda.bindings.runtime``, or ``cuda.cudart`` on older
releases). Both are imported inside :class:`TensorRTBackend`, so this module imports nothing
beyond numpy and stays torch-free.

Engines. Each ONNX file of the bundle (modules, skip adapters, predictor) becomes one engine with
one optimization profile (TensorRT's name; here: the input's shape ranges) whose min/opt/max
come from the graphs' named dynamic axes (:func:`shape_ranges`: the axes bounded by
:func:`edgegate.runtimes.schema.axis_bounds`, the same bounds the ExecuTorch exporter plans
memory for; ``batch`` is 1 for the once-per-window graphs and ``kv_batch`` always 1).
``precision="fp16"`` (the Jetson profiles) sets ``BuilderFlag.FP16``; inputs and outputs stay
float32 / int64 as in the ONNX graphs. Engines are not portable across GPUs or TensorRT versions,
so they live in ``<bundle>/engines/<gpu>-sm<major><minor>-trt<version>/`` (:func:`cache_key`;
``options["engine_cache"]`` or ``$EDGEGATE_ENGINE_CACHE`` moves the root, e.g. for a read-only
bundle), and each file name carries the ONNX file's SHA-256, the precision and a digest of its
shape ranges, so a re-exported bundle or other bounds never reuse a stale engine.
``edgegate build-engines BUNDLE`` builds them ahead of time; otherwise :meth:`prepare` builds the
missing ones when the session loads (minutes on a Jetson, once).

Running. One CUDA stream per backend; each module owns device buffers that grow to the largest
shape seen; ``set_input_shape`` / ``set_tensor_address`` / ``execute_async_v3``, then the outputs
are copied to fresh numpy arrays (the caller may keep them). A zero-length axis (the empty K/V
cache of the first decoding step) is allowed by the ranges (``past`` min 0); such tensors get
a small non-null device buffer.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgegate.errors import BackendError
from edgegate.runtimes.backends.base import Backend, Module
from edgegate.runtimes.schema import DEFAULT_MAX_BATCH, DEFAULT_MAX_STEP_TOKENS, GraphSpec, TensorSpec, fixed_axis

NOT_INSTALLED = "TensorRT is not installed: pip install tensorrt (needs an NVIDIA GPU and CUDA)"
CUDA_NOT_INSTALLED = "cuda-python is not installed: pip install cuda-python (TensorRT's device buffers and stream)"
ENGINE_DIR = "engines"
INDEX_FILE = "engines.json"
TIMING_CACHE_FILE = "timing.cache"
DEFAULT_WORKSPACE_MB = 1024

Shape = tuple[int, ...]
# TensorRT calls an input's (min, opt, max) shapes an "optimization profile"; here they are shape ranges.
ShapeRanges = dict[str, tuple[Shape, Shape, Shape]]


# -- cache layout (pure functions: tested without TensorRT) ---------------------------------------
def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.strip().lower()).strip("-.") or "unknown"


def cache_key(gpu_name: str, compute_capability: tuple[int, int], trt_version: str) -> str:
    """``<gpu>-sm<major><minor>-trt<version>``: engines are only valid for this triple."""
    major, minor = compute_capability
    return f"{_slug(gpu_name)}-sm{int(major)}{int(minor)}-trt{_slug(trt_version)}"


def engine_root(bundle_dir: str | Path, cache: str | Path | None = None) -> Path:
    """Where engine directories live: ``cache`` (or $EDGEGATE_ENGINE_CACHE) else ``<bundle>/engines``."""
    root = cache or os.environ.get("EDGEGATE_ENGINE_CACHE")
    if root:
        return Path(root).expanduser() / _slug(Path(bundle_dir).resolve().name)
    return Path(bundle_dir) / ENGINE_DIR


def engine_dir(bundle_dir: str | Path, key: str, cache: str | Path | None = None) -> Path:
    return engine_root(bundle_dir, cache) / key


def ranges_digest(ranges: ShapeRanges) -> str:
    text = json.dumps({k: [list(s) for s in v] for k, v in sorted(ranges.items())}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def engine_filename(onnx_file: str, sha256: str, precision: str, ranges: ShapeRanges) -> str:
    """``<graph>.<precision>.<sha256[:12]>.<shape ranges digest>.engine`` (stale engines never match)."""
    stem = Path(onnx_file).name
    stem = stem[: -len(".onnx")] if stem.endswith(".onnx") else stem
    return f"{stem}.{precision}.{sha256[:12]}.{ranges_digest(ranges)}.engine"


def shape_ranges(inputs: Sequence[TensorSpec], stage: str,
                 bounds: Mapping[str, tuple[int, int, int]]) -> ShapeRanges:
    """(min, opt, max) shape per input from a graph signature with named dynamic axes."""
    out: ShapeRanges = {}
    for spec in inputs:
        lo, opt, hi = [], [], []
        for axis in spec.shape:
            size = fixed_axis(axis, stage)
            if size is None:
                if axis not in bounds:
                    raise BackendError(f"input {spec.name}: no bounds for dynamic axis {axis!r}; "
                                       "re-export the bundle with this edgegate")
                a, b, c = bounds[axis]
            else:
                a = b = c = size
            lo.append(int(a))
            opt.append(int(b))
            hi.append(int(c))
        out[spec.name] = (tuple(lo), tuple(opt), tuple(hi))
    return out


@dataclass
class EngineJob:
    """One engine to build: the ONNX file, its hash, signature and shape ranges."""

    name: str
    file: str
    sha256: str
    stage: str
    inputs: list[TensorSpec]
    outputs: list[str]
    shapes: ShapeRanges = field(default_factory=dict)

    def filename(self, precision: str) -> str:
        return engine_filename(self.file, self.sha256, precision, self.shapes)


def engine_jobs(graphs: Sequence[GraphSpec], module_format: str, bounds: Mapping[str, tuple[int, int, int]]
                ) -> list[EngineJob]:
    """Every ONNX graph of a bundle (modules, adapters, predictor: the reader's specs) with its shape ranges."""
    if module_format != "onnx":
        raise BackendError(f"TensorRT builds engines from ONNX subgraphs; this bundle holds "
                           f"{module_format} files: export it for a cpu or jetson target")
    return [EngineJob(g.name, g.file, g.sha256, g.stage, list(g.inputs), [o.name for o in g.outputs],
                      shape_ranges(g.inputs, g.stage, bounds)) for g in graphs]


# -- library loading ----------------------------------------------------------------------------
def _import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except (ImportError, OSError):  # OSError: the wheel is there but its libraries are not
        raise BackendError(NOT_INSTALLED) from None
    return trt


def _import_cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError:
            raise BackendError(CUDA_NOT_INSTALLED) from None
    return cudart


class _Cuda:
    """The few CUDA runtime calls the backend needs, with errors as BackendError lines."""

    def __init__(self, cudart: Any):
        self.rt = cudart

    def call(self, result: Any, what: str) -> Any:
        err, *rest = result if isinstance(result, tuple) else (result,)
        if err != self.rt.cudaError_t.cudaSuccess:
            raise BackendError(f"CUDA {what} failed ({err}); is an NVIDIA GPU visible here (nvidia-smi)?")
        return rest[0] if len(rest) == 1 else rest

    def device(self) -> tuple[str, tuple[int, int]]:
        dev = self.call(self.rt.cudaGetDevice(), "cudaGetDevice")
        prop = self.call(self.rt.cudaGetDeviceProperties(dev), "cudaGetDeviceProperties")
        name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
        return name.rstrip("\x00"), (int(prop.major), int(prop.minor))

    def malloc(self, nbytes: int) -> int:
        return int(self.call(self.rt.cudaMalloc(max(int(nbytes), 256)), "cudaMalloc"))

    def free(self, ptr: int) -> None:
        self.rt.cudaFree(ptr)

    def stream(self) -> Any:
        return self.call(self.rt.cudaStreamCreate(), "cudaStreamCreate")

    def h2d(self, dst: int, src: np.ndarray, stream: Any) -> None:
        self.call(self.rt.cudaMemcpyAsync(dst, src.ctypes.data, src.nbytes,
                                          self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream), "cudaMemcpyAsync")

    def d2h(self, dst: np.ndarray, src: int, stream: Any) -> None:
        self.call(self.rt.cudaMemcpyAsync(dst.ctypes.data, src, dst.nbytes,
                                          self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream), "cudaMemcpyAsync")

    def sync(self, stream: Any) -> None:
        self.call(self.rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")


# -- modules ------------------------------------------------------------------------------------
class TensorRTModule(Module):
    """One engine with its execution context and device buffers."""

    def __init__(self, backend: TensorRTBackend, engine: Any, name: str, outputs: Sequence[str] | None = None):
        trt = backend._trt
        self._b = backend
        self._engine = engine
        self._context = engine.create_execution_context()
        if self._context is None:
            raise BackendError(f"TensorRT could not create an execution context for {name} (out of GPU memory?)")
        self.name = name
        ins, outs, self._dtypes = [], [], {}
        for i in range(engine.num_io_tensors):
            t = engine.get_tensor_name(i)
            self._dtypes[t] = np.dtype(trt.nptype(engine.get_tensor_dtype(t)))
            (ins if engine.get_tensor_mode(t) == trt.TensorIOMode.INPUT else outs).append(t)
        self.input_names = tuple(ins)
        self.output_names = tuple(outputs) if outputs and set(outputs) == set(outs) else tuple(outs)
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, capacity)
        self._lock = threading.Lock()

    def _buffer(self, tensor: str, nbytes: int) -> int:
        ptr, cap = self._buffers.get(tensor, (0, 0))
        if nbytes > cap or not ptr:
            if ptr:
                self._b._cuda.free(ptr)
            cap = max(int(nbytes), 256)
            ptr = self._b._cuda.malloc(cap)
            self._buffers[tensor] = (ptr, cap)
        return ptr

    def run(self, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        cuda, stream, ctx = self._b._cuda, self._b._stream, self._context
        with self._lock:
            keep = []
            for t in self.input_names:
                try:
                    arr = np.ascontiguousarray(feed[t], dtype=self._dtypes[t])
                except KeyError:
                    raise BackendError(f"{self.name}: missing input {t!r} (inputs: {', '.join(self.input_names)})") \
                        from None
                if not ctx.set_input_shape(t, tuple(arr.shape)):
                    lo, _, hi = (tuple(s) for s in self._engine.get_tensor_profile_shape(t, 0))
                    raise BackendError(f"{self.name}: input {t} shape {tuple(arr.shape)} is outside the engine's "
                                       f"profile {lo}..{hi}; rebuild engines with larger bounds "
                                       "(edgegate build-engines --max-batch / --max-step-tokens --force)")
                ptr = self._buffer(t, arr.nbytes)
                if arr.nbytes:
                    cuda.h2d(ptr, arr, stream)
                ctx.set_tensor_address(t, ptr)
                keep.append(arr)
            outs = []
            for t in self.output_names:
                shape = tuple(ctx.get_tensor_shape(t))
                if any(d < 0 for d in shape):
                    raise BackendError(f"{self.name}: TensorRT could not infer the shape of output {t} ({shape})")
                host = np.empty(shape, dtype=self._dtypes[t])
                ctx.set_tensor_address(t, self._buffer(t, host.nbytes))
                outs.append(host)
            try:
                ok = ctx.execute_async_v3(stream)  # a cudaStream_t, as in TensorRT's samples
            except TypeError:  # bindings that only take the raw handle
                ok = ctx.execute_async_v3(int(stream))
            if not ok:
                raise BackendError(f"TensorRT failed running {self.name}")
            for t, host in zip(self.output_names, outs, strict=True):
                if host.nbytes:
                    cuda.d2h(host, self._buffers[t][0], stream)
            cuda.sync(stream)
            del keep
        return outs

    def close(self) -> None:
        for ptr, _ in self._buffers.values():
            self._b._cuda.free(ptr)
        self._buffers.clear()
        self._context = None


# -- the backend --------------------------------------------------------------------------------
class TensorRTBackend(Backend):
    name = "tensorrt"
    pip_package = "tensorrt"
    file_format = "onnx"

    def __init__(self, threads: int | None = None, precision: str = "fp32", device: str = "auto",
                 options: Mapping[str, Any] | None = None):
        super().__init__(threads, precision, device, options)
        self.precision = precision = str(self.options.get("precision", precision))  # options override the profile
        if precision not in ("fp32", "fp16"):
            raise BackendError(f"TensorRT precision must be fp32 or fp16, got {precision!r}")
        if device == "cpu":
            raise BackendError("TensorRT runs on an NVIDIA GPU; for the CPU use --backend onnxruntime")
        self._trt = _import_tensorrt()
        self._cuda = _Cuda(_import_cudart())
        self.gpu_name, self.compute_capability = self._cuda.device()
        self.trt_version = str(self._trt.__version__)
        self.key = cache_key(self.gpu_name, self.compute_capability, self.trt_version)
        self.max_batch = int(self.options.get("max_batch", DEFAULT_MAX_BATCH))
        self.max_step_tokens = int(self.options.get("max_step_tokens", DEFAULT_MAX_STEP_TOKENS))
        self.workspace_mb = int(self.options.get("workspace_mb", DEFAULT_WORKSPACE_MB))
        # 0-5, TensorRT's default 3; lower builds faster with less tuned kernels
        self.opt_level = self.options.get("builder_optimization_level")
        self._logger = self._trt.Logger(self._trt.Logger.ERROR if not self.options.get("verbose")
                                        else self._trt.Logger.INFO)
        self._runtime = self._trt.Runtime(self._logger)
        self._stream = self._cuda.stream()
        self._engines: dict[Path, tuple[Path, EngineJob]] = {}  # resolved onnx path -> (engine file, job)
        self._modules: list[TensorRTModule] = []

    @classmethod
    def is_available(cls) -> bool:
        try:
            return importlib.util.find_spec("tensorrt") is not None and (
                importlib.util.find_spec("cuda") is not None)
        except (ImportError, ValueError):
            return False

    # -- engines -----------------------------------------------------------------------------
    def cache_dir(self, bundle_dir: str | Path) -> Path:
        return engine_dir(bundle_dir, self.key, self.options.get("engine_cache"))

    def build_engine(self, onnx_path: Path, ranges: ShapeRanges, timing_cache: Any = None) -> bytes:
        """Parse one ONNX graph and build a serialized engine with one optimization profile (``ranges``).

        ``timing_cache`` (an ``ITimingCache``) is shared across the graphs of a bundle: the 6-32
        identical blocks of a Whisper then reuse the kernel timings of the first one.
        """
        trt = self._trt
        builder = trt.Builder(self._logger)
        network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
        parser = trt.OnnxParser(network, self._logger)
        if not parser.parse_from_file(str(onnx_path)):
            errs = [parser.get_error(i) for i in range(parser.num_errors)]
            errors = "; ".join(e.desc() if hasattr(e, "desc") else str(e) for e in errs) or "unknown error"
            raise BackendError(f"TensorRT cannot parse {onnx_path.name} ({errors.splitlines()[0]})")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.workspace_mb << 20)
        if self.precision == "fp16":
            config.set_flag(trt.BuilderFlag.FP16)
        if self.opt_level is not None:
            config.builder_optimization_level = int(self.opt_level)
        if timing_cache is not None:
            config.set_timing_cache(timing_cache, False)
        prof = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            name = network.get_input(i).name
            if name not in ranges:
                raise BackendError(f"{onnx_path.name}: input {name!r} is not in the manifest's signature; "
                                   "re-export the bundle")
            lo, opt, hi = ranges[name]
            prof.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(prof)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise BackendError(f"TensorRT failed to build an engine for {onnx_path.name} (run with "
                               "options={'verbose': True} for TensorRT's log)")
        return bytes(serialized)

    def build_engines(self, bundle: Any, force: bool = False, progress: bool = False,
                      log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
        """Build (or reuse) every engine of a bundle (a directory, read and verified here, or a ``Bundle``)."""
        from edgegate.runtimes.bundle import Bundle

        if not isinstance(bundle, Bundle):
            bundle = Bundle.open(bundle)
        return self._build(bundle.path, bundle.graphs(), bundle.module_format,
                           bundle.axis_bounds(self.max_batch, self.max_step_tokens), force, progress, log)

    def _build(self, bundle_dir: Path, graphs: Sequence[GraphSpec], module_format: str,
               bounds: Mapping[str, tuple[int, int, int]], force: bool, progress: bool,
               log: Callable[[str], None] | None) -> list[dict[str, Any]]:
        jobs = engine_jobs(graphs, module_format, bounds)
        out_dir = self.cache_dir(bundle_dir)
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BackendError(f"cannot create the engine cache {out_dir} ({exc.strerror}); pass "
                               "options={'engine_cache': DIR} or set EDGEGATE_ENGINE_CACHE") from None
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc=f"tensorrt engines ({self.precision})", unit="engine", file=sys.stderr,
                   disable=not progress)
        records = []
        timing = None  # created on the first build, from the cache directory's timing.cache if any
        for job in jobs:
            target = out_dir / job.filename(self.precision)
            onnx_path = (bundle_dir / job.file).resolve()
            status, seconds = "reused", 0.0
            if force or not target.is_file():
                bar.set_postfix_str(job.name)
                t0 = time.perf_counter()
                if timing is None:
                    timing = self._timing_cache(out_dir / TIMING_CACHE_FILE)
                blob = self.build_engine(onnx_path, job.shapes, timing)
                tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
                tmp.write_bytes(blob)
                os.replace(tmp, target)
                status, seconds = "built", time.perf_counter() - t0
            self._engines[onnx_path] = (target, job)
            records.append({"name": job.name, "onnx": job.file, "engine": target.name, "status": status,
                            "seconds": round(seconds, 2), "bytes": target.stat().st_size,
                            "shapes": {k: [list(s) for s in v] for k, v in job.shapes.items()}})
            bar.update(1)
        bar.close()
        if timing is not None:
            try:
                (out_dir / TIMING_CACHE_FILE).write_bytes(bytes(timing.serialize()))
            except Exception:  # a timing cache only speeds up builds: never fail on it
                pass
        index = {"gpu": self.gpu_name, "compute_capability": list(self.compute_capability),
                 "tensorrt": self.trt_version, "precision": self.precision, "max_batch": self.max_batch,
                 "max_step_tokens": self.max_step_tokens, "engines": records}
        (out_dir / INDEX_FILE).write_text(json.dumps(index, indent=1) + "\n", encoding="utf-8")
        if log:
            built = sum(r["status"] == "built" for r in records)
            log(f"{out_dir}: {built} engines built, {len(records) - built} reused ({self.precision}, {self.key})")
        return records

    def _timing_cache(self, path: Path) -> Any:
        try:
            config = self._trt.Builder(self._logger).create_builder_config()
            return config.create_timing_cache(path.read_bytes() if path.is_file() else b"")
        except Exception:  # an old or foreign cache: build without one
            return None

    def prepare(self, bundle_dir: Path, graphs: Sequence[GraphSpec], axes: Mapping[str, tuple[int, int, int]]
                ) -> None:
        # ``axes`` are bounded by this backend's max_batch / max_step_tokens (Session.load asks for them).
        self._build(Path(bundle_dir), graphs, "onnx", axes, bool(self.options.get("force")),
                    bool(self.options.get("progress", True)), None)

    def load(self, path: Path, name: str = "", method: str | None = None) -> Module:
        if method is not None:
            raise BackendError(f"{path}: TensorRT builds engines from ONNX files; a method ({method!r}) belongs "
                               "to a .pte bundle, use the executorch backend")
        path = Path(path).resolve()
        if path not in self._engines:
            self.build_engines(path.parent)  # load() without prepare(): the manifest lies beside the graph
        if path not in self._engines:
            raise BackendError(f"{path} is not a subgraph listed in its bundle's manifest; re-export the bundle")
        target, job = self._engines[path]
        engine = self._runtime.deserialize_cuda_engine(target.read_bytes())
        if engine is None:
            raise BackendError(f"TensorRT cannot load {target} (built by another TensorRT/GPU?); rebuild it: "
                               f"edgegate build-engines {path.parent} --force")
        module = TensorRTModule(self, engine, name or job.name, job.outputs)
        self._modules.append(module)
        return module

    def describe(self) -> str:
        return (f"tensorrt {self.trt_version} ({self.gpu_name}, sm{self.compute_capability[0]}"
                f"{self.compute_capability[1]}, {self.precision})")

    def close(self) -> None:
        for m in self._modules:
            m.close()
        self._modules.clear()


__all__ = ["TensorRTBackend", "TensorRTModule", "EngineJob", "cache_key", "engine_dir", "engine_root",
           "engine_filename", "engine_jobs", "shape_ranges", "ranges_digest", "NOT_INSTALLED"]
