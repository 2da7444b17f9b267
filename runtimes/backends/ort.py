"""ONNX Runtime backend: CPU by default; CUDA / TensorRT execution providers when installed.

Thread pools. A bundle is ~40 small sessions. ONNX Runtime's default gives every session its
own intra-op pool whose threads spin after each run, and 40 spinning pools on 2 cores fight each
other (10-20x slower, see shared/notes/stack.md). ``threading`` picks the fix:

- ``"session"`` (default): per-session pools of ``threads`` threads with spinning disabled
  (``session.intra_op.allow_spinning = 0``). Measured fastest here (whisper-base, 2 threads,
  ``benchmarks/bench_runtime.py --threading``), and it leaves the process's ONNX Runtime
  untouched for other users.
- ``"global"``: one process-wide pool (``onnxruntime.set_global_thread_pool_sizes``, allowed
  once per process and guarded here) shared by every session (``use_per_session_threads =
  False``). Caveat: once global pools exist, ONNX Runtime refuses every later session created
  with default options in the same process ("use_per_session_threads must be false"), so this
  mode breaks other ONNX Runtime users (a VAD, another model) in the application.
- ``"spin"``: ONNX Runtime's defaults (per-session pools that spin); for measurements only.

The environment variable ``EDGEGATE_ORT_THREADING`` overrides the default.

Memory (``options["arena"]``, or ``EDGEGATE_ORT_ARENA``). With ONNX Runtime's default every
session keeps its own CPU arena, sized by the largest activation it ever saw and never shrunk:
40 sessions held 2.6 GB after two clips (docs/speed.md section 5). ``"shared"`` (default)
registers ONE arena allocator on the process's ONNX Runtime environment (once, guarded) and
every bundle session uses it (``session.use_env_allocators``): 620 MB for the int8 bundle, no
slower (the arena off was 1.6x slower end to end, paired, here). After the last encoder-stage
graph of a window (the final norm: the 1500-position attention activations are dead by then)
the run returns the arena's free chunks to the system (``memory.enable_memory_arena_shrinkage``),
so those peaks do not stay resident while every graph keeps a warm arena (shrinking after every
per-window graph instead cost 1.55x end to end: each encoder graph then page-faults its buffers). ``"off"`` disables the
arena per session (malloc per call; smallest, needs nothing
process-wide); ``"session"`` is ORT's default, for measurements.
"""

from __future__ import annotations

import importlib.util
import os
import threading
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgegate.errors import BackendError
from edgegate.runtimes.backends.base import Backend, Module

THREADING_MODES = ("session", "global", "spin")
ARENA_MODES = ("shared", "off", "session")
_pool_lock = threading.Lock()
_global_pool: dict[str, Any] = {"set": False, "threads": None}
_env_arena: dict[str, bool] = {"set": False}


def _default_threads() -> int:
    return max(1, min(os.cpu_count() or 1, 4))


def _ensure_global_pool(ort: Any, threads: int) -> bool:
    """Create the process-wide pool once; False if that is impossible (then use per-session pools)."""
    with _pool_lock:
        if _global_pool["set"]:
            if _global_pool["threads"] not in (None, threads):
                warnings.warn(f"ONNX Runtime's global thread pool already has {_global_pool['threads']} threads; "
                              f"{threads} requested, sharing the existing pool", RuntimeWarning, stacklevel=3)
            return True
        try:
            ort.set_global_thread_pool_sizes(threads, 1)
            _global_pool.update(set=True, threads=threads)
        except Exception as exc:  # someone else in this process created them first
            if "already been created" in str(exc):
                _global_pool.update(set=True, threads=None)
            else:
                return False
        return True


def _ensure_env_arena(ort: Any) -> bool:
    """Register one CPU arena on ORT's environment once per process; False if ORT refuses (then per session)."""
    with _pool_lock:
        if not _env_arena["set"]:
            info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
            try:
                # max_mem 0 (no limit), kNextPowerOfTwo, default initial chunk and dead-bytes threshold
                ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, 0, -1, -1))
            except Exception as exc:  # registered by someone else in this process already: use theirs
                if "already" not in str(exc).lower():
                    return False
            _env_arena["set"] = True
        return True


class OrtModule(Module):
    def __init__(self, session: Any, name: str, run_options: Any = None):
        self._session = session
        self.name = name
        self.input_names = tuple(i.name for i in session.get_inputs())
        self.output_names = tuple(o.name for o in session.get_outputs())
        self._run_options = run_options

    def run(self, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return self._session.run(self.output_names, dict(feed), self._run_options)

    @property
    def providers(self) -> list[str]:
        return self._session.get_providers()


class OrtBackend(Backend):
    name = "onnxruntime"
    pip_package = "onnxruntime"
    file_format = "onnx"

    def __init__(self, threads: int | None = None, precision: str = "fp32", device: str = "auto",
                 options: Mapping[str, Any] | None = None):
        super().__init__(threads, precision, device, options)
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendError(f"ONNX Runtime is not installed ({exc}): pip install onnxruntime "
                               "(onnxruntime-gpu for CUDA / TensorRT)") from None
        self._ort = ort
        self.threads = int(threads) if threads else _default_threads()
        self.threading = self.options.get("threading") or os.environ.get("EDGEGATE_ORT_THREADING", "session")
        if self.threading not in THREADING_MODES:
            raise BackendError(f"unknown ONNX Runtime threading mode {self.threading!r}: use one of "
                               f"{', '.join(THREADING_MODES)}")
        if self.threading == "global" and not _ensure_global_pool(ort, self.threads):
            self.threading = "session"
        self.arena = self.options.get("arena") or os.environ.get("EDGEGATE_ORT_ARENA", "shared")
        if self.arena not in ARENA_MODES:
            raise BackendError(f"unknown ONNX Runtime arena mode {self.arena!r}: use one of {', '.join(ARENA_MODES)}")
        if self.arena == "shared" and not _ensure_env_arena(ort):
            self.arena = "session"
        self.providers = self._providers(ort.get_available_providers())

    @classmethod
    def is_available(cls) -> bool:
        return importlib.util.find_spec("onnxruntime") is not None

    def prepare(self, bundle_dir: Path, graphs: Sequence[Any], axes: Mapping[str, tuple[int, int, int]]) -> None:
        """Note the last encoder-stage graph: its runs shrink the arena afterwards (once per window)."""
        encoder = [g for g in graphs if g.stage == "encoder"]
        self._shrink_after = {str(Path(bundle_dir) / encoder[-1].file)} if encoder else set()

    def _shrink_options(self, path: Path) -> Any:
        if self.arena == "off" or str(path) not in getattr(self, "_shrink_after", ()):
            return None
        ro = self._ort.RunOptions()
        ro.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        return ro

    def _providers(self, available: list[str]) -> list[Any]:
        if self.device == "cpu":
            return ["CPUExecutionProvider"]
        chosen: list[Any] = []
        if "TensorrtExecutionProvider" in available and self.options.get("tensorrt_ep", True):
            trt_opts = {"trt_fp16_enable": self.precision == "fp16", "trt_engine_cache_enable": True}
            if self.options.get("engine_cache"):
                trt_opts["trt_engine_cache_path"] = str(self.options["engine_cache"])
            chosen.append(("TensorrtExecutionProvider", trt_opts))
        if "CUDAExecutionProvider" in available:
            chosen.append("CUDAExecutionProvider")
        if self.device == "gpu" and not chosen:
            raise BackendError("this profile wants a GPU but ONNX Runtime has no CUDA/TensorRT provider here: "
                               "pip install onnxruntime-gpu, or load with device='cpu'")
        return [*chosen, "CPUExecutionProvider"]

    def _options(self) -> Any:
        so = self._ort.SessionOptions()
        so.graph_optimization_level = self._ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        if self.arena == "shared":
            so.add_session_config_entry("session.use_env_allocators", "1")
        elif self.arena == "off":
            so.enable_cpu_mem_arena = False
        if self.threading == "global":
            so.use_per_session_threads = False
            return so
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        if self.threading == "session":
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        return so

    def load(self, path: Path, name: str = "", method: str | None = None) -> Module:
        if method is not None:
            raise BackendError(f"{path}: ONNX files hold one graph each; a method ({method!r}) belongs to a "
                               ".pte bundle, use the executorch backend")
        try:
            session = self._ort.InferenceSession(str(path), self._options(), providers=self.providers)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BackendError(f"ONNX Runtime cannot load {path} ({first}); re-export the bundle") from None
        return OrtModule(session, name or Path(path).stem, self._shrink_options(path))

    def load_with_initializers(self, path: Path, name: str, initializers: Mapping[str, np.ndarray]) -> Module:
        """A graph whose named initializers are replaced by ``initializers`` (constants of the session, so
        ONNX Runtime prepacks them); the caller keeps the arrays alive as long as the module."""
        so = self._options()
        values = [(k, self._ort.OrtValue.ortvalue_from_numpy(v)) for k, v in initializers.items()]
        for k, v in values:
            so.add_initializer(k, v)
        try:
            session = self._ort.InferenceSession(str(path), so, providers=self.providers)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BackendError(f"ONNX Runtime cannot load {path} with its rows ({first}); "
                               "re-export the bundle") from None
        module = OrtModule(session, name)
        module._values = values  # OrtValues alive for the session's life
        return module

    def describe(self) -> str:
        provs = [p[0] if isinstance(p, tuple) else p for p in self.providers]
        return (f"onnxruntime {self._ort.__version__} ({', '.join(provs)}; {self.threads} threads, "
                f"{self.threading} pool, {self.arena} arena)")
