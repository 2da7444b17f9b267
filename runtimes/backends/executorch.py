"""ExecuTorch backend (XNNPACK): runs the methods of a bundle's multi-method ``model.pte``.

Needs ``pip install torch==2.13.0 executorch==1.4.1`` (on CPU machines pin torch in the same
command, or pip pulls a multi-GB CUDA torch). The ExecuTorch Python bindings link libtorch, so
this backend imports torch, lazily, inside :class:`ExecuTorchBackend` (2-4 s and ~230 MB the
first time); importing this module, and the rest of ``edgegate.runtimes``, stays torch-free. On
a phone the same ``model.pte`` runs under ExecuTorch's C++/Java runtime with no Python at all.

It imports the bindings module ``executorch.extension.pybindings._portable_lib`` directly (after
``import torch``, which loads the libtorch it links): that is what ``executorch.runtime`` wraps,
minus the ``executorch.exir`` compiler stack that ``executorch.runtime`` also imports (measured
here: 3 s / 227 MB instead of 12 s / 364 MB, and no torchao warnings). Its functions are the
ones ``portable_lib`` documents.

Threads. XNNPACK runs on ExecuTorch's process-wide thread pool. Its size is set once, BEFORE
the first program is loaded (``_unsafe_reset_threadpool``): resizing it after methods were
loaded crashed the process (shared/notes/stack.md), so a later backend asking for another size
keeps the existing pool and warns.

Outputs alias the method's planned memory until its next call, so they are copied out (with
numpy: torch's parallel copy fights XNNPACK's spinning thread pool, +6 ms per large output).

Shapes. ExecuTorch plans each method's memory for the upper bound of its dynamic axes, which the
exporter records in the manifest (``executorch.axes``, from
:func:`edgegate.runtimes.schema.axis_bounds`); the bundle reader hands them to :meth:`prepare`.
Inputs are checked against the method's signature before the call, so an oversized input (a beam wider
than the export's ``max_batch``) is one :class:`BackendError` line instead of a native error.
A zero-length axis works: the first decoding step passes an empty K/V cache (``past = 0``) and
ExecuTorch + XNNPACK compute with it (the exporter declares ``past`` with minimum 0), with one
workaround: numpy gives a zero-size array zero strides, which ExecuTorch's tensor conversion
rejects with a native assert that aborts the process, so zero-size inputs are passed as fresh
``torch.empty`` tensors with standard strides.
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
from edgegate.runtimes.schema import GraphSpec

PTE_FILE = "model.pte"
INSTALL = "pip install torch==2.13.0 executorch==1.4.1"

_DTYPES = {"float32": np.float32, "int64": np.int64}
_lock = threading.Lock()
_pool: dict[str, Any] = {"threads": None, "loaded": False}


def _default_threads() -> int:
    return max(1, min(os.cpu_count() or 1, 4))


def _import_bindings() -> tuple[Any, Any]:
    """(torch, ExecuTorch pybindings module); BackendError naming the pip command when missing."""
    try:
        import torch
    except ImportError as exc:
        raise BackendError(f"the ExecuTorch backend needs torch, which its Python bindings link ({exc}): "
                           f"{INSTALL}") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                from executorch.extension.pybindings import _portable_lib as pl
            except ImportError:  # the public wrapper, should the extension module move
                from executorch.extension.pybindings import portable_lib as pl
    except ImportError as exc:
        raise BackendError(f"ExecuTorch is not installed ({exc}): {INSTALL}") from None
    return torch, pl


def _configure_pool(pl: Any, threads: int) -> int:
    """Size ExecuTorch's thread pool once, before any program is loaded; returns the pool size."""
    with _lock:
        if not _pool["loaded"]:
            if _pool["threads"] != threads:
                pl._unsafe_reset_threadpool(int(threads))
                _pool["threads"] = threads
            return threads
        current = _pool["threads"]
        if current not in (None, threads):
            warnings.warn(f"ExecuTorch's thread pool already has {current} threads and programs are loaded; "
                          f"resizing it now would crash, so {threads} threads were not applied", RuntimeWarning,
                          stacklevel=3)
        return current or threads


class ExecuTorchModule(Module):
    """One method of a loaded program."""

    def __init__(self, method: Any, program: Any, torch: Any, name: str, signature: GraphSpec,
                 axes: Mapping[str, Sequence[int]]):
        self._method = method
        self._program = program  # the method borrows from its program: keep it alive
        self._torch = torch
        self._torch_dtypes = {"float32": torch.float32, "int64": torch.int64}
        self._sig = signature
        self._axes = {k: (int(v[0]), int(v[-1])) for k, v in axes.items()}
        self._lock = threading.Lock()  # an ExecuTorch method is not re-entrant
        self.name = name
        self.input_names = tuple(t.name for t in signature.inputs)
        self.output_names = tuple(t.name for t in signature.outputs)

    def _check(self, inp: str, arr: np.ndarray, shape: tuple) -> None:
        if arr.ndim != len(shape):
            raise BackendError(f"{self.name}: input {inp} has shape {arr.shape}, the method takes rank {len(shape)} "
                               f"{list(shape)}")
        for i, (n, axis) in enumerate(zip(arr.shape, shape, strict=True)):
            if isinstance(axis, int):
                if n != axis:
                    raise BackendError(f"{self.name}: input {inp} axis {i} is {n}, this .pte fixes it at {axis} "
                                       f"(shape {list(shape)})")
            elif axis in self._axes:
                lo, hi = self._axes[axis]
                if not lo <= n <= hi:
                    raise BackendError(f"{self.name}: input {inp} axis {axis} = {n} is outside this .pte's range "
                                       f"{lo}..{hi}; re-export with a larger bound (max_batch / max_step_tokens)")

    def run(self, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        args = []
        for t in self._sig.inputs:
            inp, dtype, shape = t.name, t.dtype, t.shape
            try:
                arr = feed[inp]
            except KeyError:
                raise BackendError(f"{self.name}: missing input {inp!r} (inputs: {', '.join(self.input_names)})") \
                    from None
            arr = np.ascontiguousarray(arr, dtype=_DTYPES.get(dtype, np.float32))
            self._check(inp, arr, shape)
            if arr.size == 0:
                # numpy gives zero-size arrays zero strides; ExecuTorch asserts on them (and aborts
                # the process), so pass a fresh empty tensor with standard strides instead.
                args.append(self._torch.empty(arr.shape, dtype=self._torch_dtypes[dtype]))
            else:
                args.append(self._torch.from_numpy(arr))
        with self._lock:
            try:
                outs = self._method(args, clone_outputs=False)
            except Exception as exc:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise BackendError(f"ExecuTorch failed running {self.name} ({first})") from None
            # The outputs alias the method's planned memory until its next call: copy them, with
            # numpy. (clone_outputs=True copies with torch, whose OpenMP threads fight XNNPACK's
            # spinning pool: measured +6 ms per output above ~32k elements, 2 cores.)
            return [np.array(o.numpy(), copy=True) for o in outs]


class ExecuTorchBackend(Backend):
    name = "executorch"
    pip_package = "executorch"
    file_format = "pte"

    def __init__(self, threads: int | None = None, precision: str = "fp32", device: str = "auto",
                 options: Mapping[str, Any] | None = None):
        super().__init__(threads, precision, device, options)
        if device == "gpu":
            raise BackendError("the ExecuTorch backend runs XNNPACK on the CPU; load with device='cpu' or pick "
                               "the onnxruntime / tensorrt backend for a GPU")
        self._torch, self._pl = _import_bindings()
        self.threads = _configure_pool(self._pl, int(threads) if threads else _default_threads())
        self._programs: dict[Path, Any] = {}
        self._signatures: dict[tuple[Path, str], GraphSpec] = {}
        self._axes: dict[str, tuple[int, int, int]] = {}

    @classmethod
    def is_available(cls) -> bool:
        try:
            return (importlib.util.find_spec("torch") is not None
                    and importlib.util.find_spec("executorch.extension.pybindings") is not None)
        except (ImportError, ValueError):
            return False

    # -- signatures from the bundle reader ------------------------------------------------------
    def prepare(self, bundle_dir: Path, graphs: Sequence[GraphSpec], axes: Mapping[str, tuple[int, int, int]]) -> None:
        bundle_dir = Path(bundle_dir).resolve()
        for g in graphs:
            if g.method:
                self._signatures[((bundle_dir / g.file).resolve(), g.method)] = g
        self._axes = dict(axes)

    def _prepare_from(self, bundle_dir: Path) -> None:
        """load() without prepare(): read the bundle beside the .pte (its reader, not the raw manifest)."""
        from edgegate.errors import BundleError
        from edgegate.runtimes.bundle import Bundle

        try:
            b = Bundle.open(bundle_dir, verify=False)
        except BundleError as exc:
            raise BackendError(f"cannot read the methods' signatures: {exc}") from None
        self.prepare(b.path, b.graphs(), b.axis_bounds())

    # -- loading -----------------------------------------------------------------------------
    def _program(self, path: Path) -> Any:
        if path not in self._programs:
            if not path.is_file():
                raise BackendError(f"ExecuTorch program not found: {path}; re-export the bundle")
            with _lock:
                _pool["loaded"] = True
            try:
                self._programs[path] = self._pl._load_program(
                    str(path), enable_etdump=False, debug_buffer_size=0,
                    program_verification=self._pl.Verification.InternalConsistency)
            except Exception as exc:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise BackendError(f"ExecuTorch cannot load {path} ({first}); re-export the bundle with this "
                                   "executorch version") from None
        return self._programs[path]

    def method_names(self, path: Path) -> list[str]:
        prog = self._program(Path(path).resolve())
        return [prog.get_method_name(i) for i in range(prog.num_methods())]

    def load(self, path: Path, name: str = "", method: str | None = None) -> Module:
        path = Path(path).resolve()
        names = self.method_names(path)
        if method is None:
            if len(names) != 1:
                raise BackendError(f"{path} holds {len(names)} methods; say which one (the manifest's 'method')")
            method = names[0]
        if method not in names:
            raise BackendError(f"{path} has no method {method!r}; re-export the bundle")
        if (path, method) not in self._signatures:
            self._prepare_from(path.parent)
        sig = self._signatures.get((path, method))
        if sig is None:
            raise BackendError(f"{path.parent / 'manifest.json'} lists no signature for method {method!r}; "
                               "re-export the bundle")
        try:
            meth = self._program(path).load_method(method)
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise BackendError(f"ExecuTorch cannot load method {method!r} of {path} ({first})") from None
        return ExecuTorchModule(meth, self._programs[path], self._torch, name or method, sig, self._axes)

    def describe(self) -> str:
        try:
            from importlib.metadata import version

            v = version("executorch")
        except Exception:  # pragma: no cover
            v = "?"
        return f"executorch {v} (XNNPACK on CPU; {self.threads} threads)"

    def close(self) -> None:
        self._programs.clear()
