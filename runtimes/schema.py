"""The bundle schema (version 2): what a manifest may say, parsed into typed specs (torch-free).

A manifest describes the model as an execution plan. Every module entry names its ``stage``
(when it runs), ``kind``, ``gate`` (which gateable module decides whether it runs), the graph
file (and method, for multi-method ``.pte`` programs), its inputs and outputs, and what happens
when it is skipped. Each input and output tensor binds a graph name to a *value* of the
request's environment::

    {"name": "k_cache", "dtype": "float32", "shape": ["batch", 8, "past", 64], "value": "self_k.3"}

so the runtime runs any family's modules by reading and writing named values, never by module
names: ``mel`` feeds the first per-window stage, ``tokens`` and ``positions`` every decoder step,
the step returns ``logits``, and the values listed in ``execution.state`` (the self-attention
caches) grow from step to step and follow the beams. Stages:

    encoder       per window   stem, encoder residual modules, final norm
    cross_kv      per window   cross-attention K/V producers (gated by their cross-attention)
    decoder_step  per step     embedding, decoder residual modules with their caches, logits

A skipped module runs its skip adapter if it has one; otherwise ``skip`` says what it leaves:
``identity`` (a residual step: the values stay as they are) or ``zeros`` (a branch whose output
feeds a merge: zeros of the output's shape). A module with several gates runs when any of them is
kept (a merge of two gated branches). Dynamic axes have the names in :data:`AXES`; their bounds
(:func:`axis_bounds`) follow from ``execution``'s limits.

Every parser here raises :class:`BundleError` with one line naming the field and the fix.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from edgegate.cost_model import TERM_NAMES, CostTerms
from edgegate.errors import BundleError

FORMAT = "edgegate-bundle"
SCHEMA_VERSION = 2
MANIFEST = "manifest.json"
REEXPORT = "re-export the bundle (edgegate export ... --force)"

# stage -> how often it runs; the per-window stages run in this order, then the decoder step.
STAGES = {"encoder": "per_window", "cross_kv": "per_window", "decoder_step": "per_step"}
PER_WINDOW = tuple(s for s, runs in STAGES.items() if runs == "per_window")
# Graphs that run once per window (or request) take batch 1; the decoder step takes the beams.
BATCH_ONE_STAGES = (*PER_WINDOW, "predictor")
FEEDS = {"per_window": ("mel",), "per_step": ("tokens", "positions")}
LOGITS = "logits"
AXES = ("batch", "kv_batch", "tokens", "past", "total", "frames", "mel_frames")
DTYPES = ("float32", "int64")
PRECISIONS = ("fp32", "fp16", "int8")
SKIPS = ("identity", "zeros")
MODULE_FORMATS = ("onnx", "pte")
DEFAULT_MAX_BATCH = 8  # beam width the decoder graphs accept
DEFAULT_MAX_STEP_TOKENS = 32  # tokens per decoder call: the prompt step has 3-4, later steps 1

MAX_INT = 1 << 40
MAX_COST = 1e18
_NAME = re.compile(r"^[A-Za-z0-9_.:\-]{1,200}$")


def show(value: Any) -> str:
    """A value for an error line: repr escapes newlines; long values are cut."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def printable(text: str) -> str:
    """A name for an error line as it is, unless it holds control characters (then its repr)."""
    return text if text.isprintable() and len(text) <= 200 else show(text)


def fail(where: str, what: str, fix: str = REEXPORT) -> BundleError:
    return BundleError(f"{MANIFEST}: {where} {what}; {fix}")


# -- field checks ---------------------------------------------------------------------------------
def as_dict(v: Any, where: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise fail(where, f"must be an object, got {show(v)}")
    return v


def as_list(v: Any, where: str, max_len: int = 100_000) -> list[Any]:
    if not isinstance(v, list) or len(v) > max_len:
        raise fail(where, f"must be a list of at most {max_len} entries, got {show(v)}")
    return v


def as_str(v: Any, where: str, none: bool = False, pattern: re.Pattern | None = None) -> str | None:
    if v is None and none:
        return None
    if not isinstance(v, str) or not v or len(v) > 1000 or (pattern is not None and not pattern.match(v)):
        raise fail(where, f"must be a {'name' if pattern else 'non-empty string'}, got {show(v)}")
    return v


def as_name(v: Any, where: str, none: bool = False) -> str | None:
    return as_str(v, where, none, _NAME)


def as_int(v: Any, where: str, lo: int = 0, hi: int = MAX_INT, none: bool = False) -> int | None:
    if v is None and none:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise fail(where, f"must be an integer in [{lo}, {hi}], got {show(v)}")
    return v


def as_num(v: Any, where: str, lo: float = 0.0, hi: float = MAX_COST) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
        raise fail(where, f"must be a number in [{lo:g}, {hi:g}], got {show(v)}")
    return float(v)


def as_choice(v: Any, where: str, choices: Sequence[str]) -> str:
    if not isinstance(v, str) or v not in choices:
        raise fail(where, f"must be one of {', '.join(choices)}, got {show(v)}")
    return v


def name_table(v: Any, where: str, check) -> dict[str, Any]:
    """An object whose keys are names and whose values pass ``check(value, where)``."""
    d = as_dict(v, where)
    return {as_name(k, f"{where} key"): check(x, f"{where}[{show(k)}]") for k, x in d.items()}


def num_table(v: Any, where: str) -> dict[str, float]:
    return name_table(v, where, as_num)


def terms_table(v: Any, where: str) -> dict[str, CostTerms]:
    def terms(x: Any, w: str) -> CostTerms:
        d = as_dict(x, w)
        unknown = sorted(set(d) - set(TERM_NAMES))
        if unknown:
            raise fail(w, f"has unknown cost terms {show(unknown)}")
        for k in d:  # integers stay integers: exact evaluation
            as_num(d[k], f"{w}.{k}", 0.0, 1e15)
        return CostTerms.from_dict(d)

    return name_table(v, where, terms)


# -- specs ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int | str, ...]  # ints are fixed sizes, strings name dynamic axes (AXES)
    value: str  # the environment value this tensor reads or writes

    @classmethod
    def from_dict(cls, d: Any, where: str) -> TensorSpec:
        d = as_dict(d, where)
        name = as_name(d.get("name"), f"{where}.name")
        shape = []
        for i, a in enumerate(as_list(d.get("shape"), f"{where}.shape", 8)):
            shape.append(as_choice(a, f"{where}.shape[{i}]", AXES) if isinstance(a, str)
                         else as_int(a, f"{where}.shape[{i}]", 0, 1 << 24))
        return cls(name, as_choice(d.get("dtype"), f"{where}.dtype", DTYPES), tuple(shape),
                   as_name(d.get("value", name), f"{where}.value"))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape), "value": self.value}


def tensor_specs(v: Any, where: str) -> tuple[TensorSpec, ...]:
    specs = tuple(TensorSpec.from_dict(t, f"{where}[{i}]") for i, t in enumerate(as_list(v, where, 64)))
    names = [t.name for t in specs]
    if len(set(names)) != len(names):
        raise fail(where, f"repeats a tensor name ({show(names)})")
    return specs


@dataclass(frozen=True)
class GraphSpec:
    """One loadable graph of a bundle: a module, a skip adapter or the predictor."""

    name: str
    stage: str  # a STAGES key, or "predictor"
    file: str
    method: str | None  # the method of a multi-method program (.pte); None for one-graph files
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    param_bytes: int = 0
    sha256: str = ""

    @classmethod
    def from_dict(cls, d: Any, where: str, name: str, stage: str) -> GraphSpec:
        d = as_dict(d, where)
        return cls(name, stage, as_str(d.get("file"), f"{where}.file"),
                   as_name(d.get("method"), f"{where}.method", none=True),
                   tensor_specs(d.get("inputs"), f"{where}.inputs"), tensor_specs(d.get("outputs"), f"{where}.outputs"),
                   as_int(d.get("param_bytes", 0), f"{where}.param_bytes"))

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "method": self.method, "inputs": [t.to_dict() for t in self.inputs],
                "outputs": [t.to_dict() for t in self.outputs], "param_bytes": self.param_bytes}


@dataclass(frozen=True)
class ModuleSpec:
    """One module of the execution plan (see the module docstring)."""

    name: str
    kind: str
    stage: str
    layer: int | None
    gates: tuple[str, ...]  # runs when any is kept; () = always runs
    graph: GraphSpec
    flops: float = 0.0
    skip: str = "identity"
    precision: str = "fp32"
    adapter_graph: GraphSpec | None = None

    # -- views used everywhere ----------------------------------------------------------------
    @property
    def gate(self) -> str | None:
        """The one gate of a single-gate module (None: always runs, or several gates)."""
        return self.gates[0] if len(self.gates) == 1 else None

    @property
    def file(self) -> str:
        return self.graph.file

    @property
    def method(self) -> str | None:
        return self.graph.method

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self.graph.inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self.graph.outputs

    @property
    def param_bytes(self) -> int:
        return self.graph.param_bytes

    @property
    def adapter(self) -> str | None:
        return None if self.adapter_graph is None else self.adapter_graph.file

    @property
    def adapter_method(self) -> str | None:
        return None if self.adapter_graph is None else self.adapter_graph.method

    @classmethod
    def from_dict(cls, d: Any, where: str) -> ModuleSpec:
        d = as_dict(d, where)
        name = as_name(d.get("name"), f"{where}.name")
        where = f"module {name}"
        stage = as_choice(d.get("stage"), f"{where}.stage", tuple(STAGES))
        gate = d.get("gate")
        gates = tuple(as_name(g, f"{where}.gate") for g in (as_list(gate, f"{where}.gate", 16) if isinstance(
            gate, list) else ([] if gate is None else [gate])))
        adapter = d.get("adapter")
        return cls(
            name, as_name(d.get("kind"), f"{where}.kind"), stage,
            as_int(d.get("layer"), f"{where}.layer", 0, 1 << 16, none=True), gates,
            GraphSpec.from_dict(d, where, name, stage), as_num(d.get("flops", 0.0), f"{where}.flops"),
            as_choice(d.get("skip", "identity"), f"{where}.skip", SKIPS),
            as_choice(d.get("precision", "fp32"), f"{where}.precision", PRECISIONS),
            None if adapter is None else GraphSpec.from_dict(adapter, f"{where}.adapter", f"{name}.adapter", stage))

    def to_dict(self) -> dict[str, Any]:
        gate: Any = list(self.gates) if len(self.gates) > 1 else self.gate
        return {"name": self.name, "kind": self.kind, "stage": self.stage, "layer": self.layer, "gate": gate,
                **self.graph.to_dict(), "flops": self.flops, "skip": self.skip, "precision": self.precision,
                "adapter": None if self.adapter_graph is None else self.adapter_graph.to_dict()}


@dataclass(frozen=True)
class Limits:
    """The model's shape limits the runtime needs (``execution`` in the manifest)."""

    n_mels: int
    n_vocab: int
    encoder_positions: int  # the most encoder positions a window has (Whisper: 1500)
    text_positions: int  # the most decoder positions (Whisper: 448)
    mel_frames_per_position: int = 2
    state: tuple[str, ...] = ()  # values that persist across decoder steps (KV caches)

    @classmethod
    def from_dict(cls, d: Any) -> Limits:
        d = as_dict(d, "execution")
        return cls(as_int(d.get("n_mels"), "execution.n_mels", 1, 1024),
                   as_int(d.get("n_vocab"), "execution.n_vocab", 1, 1 << 22),
                   as_int(d.get("encoder_positions"), "execution.encoder_positions", 1, 1 << 16),
                   as_int(d.get("text_positions"), "execution.text_positions", 1, 1 << 16),
                   as_int(d.get("mel_frames_per_position", 2), "execution.mel_frames_per_position", 1, 64),
                   tuple(as_name(s, "execution.state") for s in as_list(d.get("state", []), "execution.state", 4096)))

    def to_dict(self) -> dict[str, Any]:
        return {"n_mels": self.n_mels, "n_vocab": self.n_vocab, "encoder_positions": self.encoder_positions,
                "text_positions": self.text_positions, "mel_frames_per_position": self.mel_frames_per_position,
                "state": list(self.state)}


def axis_bounds(limits: Limits, max_batch: int = DEFAULT_MAX_BATCH,
                max_step_tokens: int = DEFAULT_MAX_STEP_TOKENS) -> dict[str, tuple[int, int, int]]:
    """(min, opt, max) of every named dynamic axis of a bundle's graphs, from its limits.

    ExecuTorch plans memory for ``max``; TensorRT tunes engines for ``opt`` (one beam, one token
    per step, a padded 30-s window). ``past`` starts at 0: the empty cache of the first step.
    """
    n_audio, n_text = limits.encoder_positions, limits.text_positions
    step = max(1, min(int(max_step_tokens), n_text))
    per = limits.mel_frames_per_position
    return {
        "batch": (1, 1, int(max_batch)),
        "kv_batch": (1, 1, 1),
        "tokens": (1, 1, step),
        "past": (0, min(32, n_text), n_text),
        "total": (1, min(33, n_text), n_text + step),
        "frames": (2, n_audio, n_audio),
        "mel_frames": (2 * per, per * n_audio, per * n_audio),  # a multiple of the stem's stride
    }


def fixed_axis(axis: int | str, stage: str) -> int | None:
    """The size a named axis is pinned to for ahead-of-time shapes (None: dynamic).

    ``batch`` is 1 for the graphs that run once per window (or request); ``kv_batch`` (the cross
    K/V the decoder broadcasts over the beams) is always 1. Fixed integer axes stay as they are.
    """
    if isinstance(axis, int):
        return axis
    if axis == "kv_batch" or (axis == "batch" and stage in BATCH_ONE_STAGES):
        return 1
    return None


__all__ = ["FORMAT", "SCHEMA_VERSION", "MANIFEST", "STAGES", "PER_WINDOW", "FEEDS", "LOGITS", "AXES", "TensorSpec",
           "GraphSpec", "ModuleSpec", "Limits", "axis_bounds", "fixed_axis", "DEFAULT_MAX_BATCH",
           "DEFAULT_MAX_STEP_TOKENS", "BATCH_ONE_STAGES"]
