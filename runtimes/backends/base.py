"""The backend interface: load a module file, run it on numpy arrays by name.

A backend turns one file of a bundle (an ONNX graph, a method of an ExecuTorch program, a
TensorRT engine built from an ONNX graph) into a :class:`Module`, a callable that takes a dict
of named numpy arrays and returns the outputs in the order of ``output_names``. The session
never sees anything backend-specific, so adding ExecuTorch or TensorRT means one new file here
plus one line in :mod:`edgegate.runtimes.backends.registry`.

Contract for implementers:
- ``is_available()`` must be cheap and must not raise: it decides ``backend="auto"``.
- ``__init__`` raises :class:`edgegate.errors.BackendError` naming the pip package when the
  library is missing, and does any process-wide setup (thread pools) exactly once.
- ``load(path, name=..., method=...)``: ``method`` is set for multi-method programs (one
  ``.pte`` holding every module: ``method`` is the module name), None for one-graph files.
  Loading must not run the graph. ``prepare(bundle_dir, graphs, axes)`` is called once before
  the first ``load`` with the bundle reader's specs of every graph (file, method, signature,
  hash) and the bounds of the named axes (TensorRT: build or reuse cached engines beside the
  bundle; ExecuTorch: check inputs against the signatures); backends never re-read the manifest.
- ``Module.run(feed)``: inputs float32 / int64 C-contiguous numpy arrays; outputs numpy arrays
  that the caller may keep (no aliasing of internal buffers across calls). Inputs with a zero
  sized axis (an empty KV cache at the first decoding step) must work.
- Torch must never be imported by a backend's module at import time; the ExecuTorch Python
  bindings link libtorch, so that backend imports them lazily inside ``__init__``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np


class Module(ABC):
    """One loaded subgraph."""

    name: str
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]

    @abstractmethod
    def run(self, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run on named inputs; return the outputs in ``output_names`` order."""

    def __call__(self, **feed: np.ndarray) -> list[np.ndarray]:
        return self.run(feed)


class Backend(ABC):
    """A runtime that can load and run the module files of a bundle."""

    name: ClassVar[str]
    pip_package: ClassVar[str]  # what to pip install when it is missing
    file_format: ClassVar[str]  # the bundle format it reads: "onnx" or "pte"
    # Bounds a backend builds for (TensorRT engines); None: the bundle's own (a .pte's planned ones).
    max_batch: int | None = None
    max_step_tokens: int | None = None

    def __init__(self, threads: int | None = None, precision: str = "fp32", device: str = "auto",
                 options: Mapping[str, Any] | None = None):
        self.threads = threads
        self.precision = precision
        self.device = device
        self.options = dict(options or {})

    @classmethod
    @abstractmethod
    def is_available(cls) -> bool:
        """True when the library imports here (cheap; never raises)."""

    def prepare(self, bundle_dir: Path, graphs: Sequence[Any],  # noqa: B027 - optional hook
                axes: Mapping[str, tuple[int, int, int]]) -> None:
        """Called once before the first load with every graph's spec (e.g. build TensorRT engines)."""

    @abstractmethod
    def load(self, path: Path, name: str = "", method: str | None = None) -> Module:
        """Load one module file (or one method of a multi-method program)."""

    def describe(self) -> str:
        """One line for logs and ``inspect``: library version, devices, threads."""
        return self.name

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release process resources held by the backend (optional)."""
