"""Backend names -> implementations, imported lazily so that a missing library costs nothing.

A new backend is one file in ``runtimes/backends/`` plus one line in ``KNOWN``.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any

from edgegate.errors import BackendError
from edgegate.runtimes.backends.base import Backend

# name -> (module:class, pip package, bundle format it reads)
KNOWN: dict[str, tuple[str, str, str]] = {
    "onnxruntime": ("edgegate.runtimes.backends.ort:OrtBackend", "onnxruntime", "onnx"),
    "executorch": ("edgegate.runtimes.backends.executorch:ExecuTorchBackend", "executorch", "pte"),
    "tensorrt": ("edgegate.runtimes.backends.tensorrt:TensorRTBackend", "tensorrt", "onnx"),
}
ALIASES = {"ort": "onnxruntime", "onnx": "onnxruntime", "xnnpack": "executorch", "trt": "tensorrt"}


def canonical(name: str) -> str:
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in KNOWN:
        raise BackendError(f"unknown backend {name!r}: use one of auto, {', '.join(KNOWN)}")
    return key


def backend_class(name: str) -> type[Backend]:
    key = canonical(name)
    module, _, cls = KNOWN[key][0].partition(":")
    return getattr(importlib.import_module(module), cls)


def is_available(name: str) -> bool:
    try:
        return backend_class(name).is_available()
    except BackendError:
        return False


def create_backend(name: str, threads: int | None = None, precision: str = "fp32", device: str = "auto",
                   options: Mapping[str, Any] | None = None) -> Backend:
    cls = backend_class(name)
    if not cls.is_available():
        raise BackendError(f"backend {cls.name!r} is not installed: pip install {cls.pip_package}")
    return cls(threads=threads, precision=precision, device=device, options=options)


def choose_backend(requested: str, preferred: Sequence[str], bundle_format: str = "onnx") -> str:
    """Resolve ``requested`` ('auto' or a name) against the profile's order and what is installed."""
    if requested != "auto":
        key = canonical(requested)
        fmt = KNOWN[key][2]
        if fmt != bundle_format:
            raise BackendError(f"backend {key!r} reads {fmt} bundles but this bundle holds {bundle_format} "
                               f"files; export for a matching target or pick another backend")
        return key
    order = [canonical(n) for n in preferred] + [n for n in KNOWN if n not in preferred]
    candidates = [n for n in order if KNOWN[n][2] == bundle_format]
    for n in candidates:
        if is_available(n):
            return n
    pips = " or ".join(KNOWN[n][1] for n in candidates) or "a runtime"
    raise BackendError(f"no backend for {bundle_format} bundles is installed: pip install {pips}")
