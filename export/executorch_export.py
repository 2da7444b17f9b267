"""Export a gated Whisper as an ExecuTorch bundle: every module a method of ONE ``model.pte`` (XNNPACK).

The subgraphs are the ONNX target's: the same ``nn.Module`` wrappers from
:func:`edgegate.export.whisper_graphs.module_jobs` (each computes a whole residual step, so a skipped
module is a method that is not called), the same names, kinds, stages, gates, FLOPs and skip
adapters. Each becomes one method of a single multi-method program::

    torch.export.export(wrapper, example, dynamic_shapes=...)       # per module
    to_edge_transform_and_lower({name: ep, ...}, partitioner=[XnnpackPartitioner()]).to_executorch()

so the bundle holds ``model.pte`` (+ ``manifest.json`` and ``tokenizer.json``). Every module entry
of the manifest has ``file = "model.pte"`` and ``method = <module name>``; adapters are methods
``<gate>.adapter``, the gate predictor is the method ``predictor``. The bundle's SHA-256 table
covers ``model.pte``, so a modified program is refused before anything runs.

Shapes. ExecuTorch plans memory for the upper bound of every dynamic axis, so each axis gets a
finite range (:func:`edgegate.runtimes.schema.axis_bounds`, recorded in the
manifest under ``executorch.axes``): ``frames`` 2..n_audio_ctx, ``mel_frames`` 4..2*n_audio_ctx
(declared as 2 * frames: torch.export cannot prove the stem's guards otherwise), ``tokens``
1..``max_step_tokens`` (the prompt step has 3-4 tokens, later steps 1), ``past``
0..n_text_ctx (0 = the empty cache of the first step: ExecuTorch and XNNPACK take a zero-length
dynamic axis, measured, no dummy slot needed), ``batch`` 1..``max_batch`` (beam search) for the
per-step decoder methods. The once-per-utterance methods (encoder, cross K/V, predictor) have a
fixed batch of 1, and so do the cross-attention K/V inputs of the decoder (the runtime computes
them once at batch 1 and the graph broadcasts them over the beams, as in ONNX). Memory is
planned by a symbolic-shape pass that takes the bounds from each method's signature
(:func:`_bounds_pass`): ExecuTorch's own pass silently planned the stem for its tracing example.

Two wrappers are re-expressed for XNNPACK (:func:`executorch_form`: same weights, same math,
checked by the parity tests): the logits as ``F.linear`` and the cross-attention with the beams
folded into the query axis; the plain forms lower to per-step copies that cost 5-9x more.

Weights. Methods share their weights where the ExecuTorch emitter can: identical constant
tensors are stored once across methods (and XNNPACK's named data store de-duplicates its blobs
by content). The token embedding is stored twice, as in the ONNX bundle: once for
``decoder.embed`` (a gather on ExecuTorch's portable kernels) and once inside XNNPACK's
fully-connected op of ``decoder.logits``.

Needs ``pip install torch==2.13.0 executorch==1.4.1`` (pin torch in the same command on CPU
machines, see shared/notes/stack.md). Lowering costs a few seconds per method. Everything else
(inputs, module entries, manifest, atomic writing) is the export core's (:mod:`edgegate.export.core`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgegate.errors import BackendError, ModelError
from edgegate.export.bundle_writer import BundleWriter
from edgegate.export.core import PREDICTOR, check_request, export_with
from edgegate.export.graph_job import GraphJob, param_bytes
from edgegate.export.profiles import DeviceProfile, get_profile
from edgegate.export.whisper_graphs import CrossAttention, Logits
from edgegate.models.whisper import Whisper
from edgegate.runtimes.backends.executorch import PTE_FILE
from edgegate.runtimes.schema import (
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_STEP_TOKENS,
    GraphSpec,
    Limits,
    TensorSpec,
    axis_bounds,
    fixed_axis,
)

PREDICTOR_METHOD = PREDICTOR
# Example sizes for tracing dynamic axes: distinct and >= 2, so torch.export neither specialises an
# axis to 0/1 nor unifies two axes that merely happen to be equal in the example.
_EXAMPLE = {"batch": 2, "tokens": 3, "past": 5, "frames": 10, "mel_frames": 20}
# Axes declared as a multiple of another: torch.export proves the stem's guards only when it knows
# that the mel frame count is even (the runtime always feeds 2 * frames, see plan.encoder_frames).
_DERIVED = {"mel_frames": ("frames", 2)}


# -- ExecuTorch forms of two ONNX wrappers -----------------------------------------------------
class XnnpackLogits(nn.Module):
    """:class:`whisper_graphs.Logits` (same LayerNorm, same weight) as ``F.linear``.

    ``matmul(h, weight.t())`` lowers to an XNNPACK transpose of the whole 51865 x d embedding on
    every call followed by a portable ``mm`` (measured, whisper-base, 2 threads: 88 ms per decoder
    step); ``linear(h, weight)`` is one XNNPACK fully-connected op (18 ms). Cost: XNNPACK keeps its
    own copy of the weight, so the token embedding is stored twice, as in the ONNX bundle.
    """

    def __init__(self, logits: Logits):
        super().__init__()
        self.ln, self.weight = logits.ln, logits.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.ln(x[:, -1]), self.weight)


class XnnpackCrossAttention(nn.Module):
    """:class:`whisper_graphs.CrossAttention` with the beams folded into the query axis.

    The audio K/V come at batch 1 for every beam. The ONNX graph broadcasts them in MatMul;
    torch.export spells that broadcast as ``expand_copy`` + reshapes that XNNPACK does not delegate
    with a dynamic batch, copying K and V on every step (5 ms per layer and step at batch 1, 20 ms
    at 5 beams, whisper-base). Here the queries of all beams are one (1, heads, batch*tokens, dh)
    block, so nothing is broadcast or copied (2.1 / 2.6 ms); the arithmetic is the same.
    """

    def __init__(self, cross: CrossAttention):
        super().__init__()
        self.attn, self.ln = cross.attn, cross.ln

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        heads = self.attn.n_head
        q = self.attn.query(self.ln(x)).reshape(b * t, heads, d // heads).transpose(0, 1).unsqueeze(0)
        w = torch.matmul(q, k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
        o = torch.matmul(torch.softmax(w, dim=-1), v)  # (1, heads, b*t, dh)
        return x + self.attn.out(o.squeeze(0).transpose(0, 1).reshape(b, t, d))


_ET_FORMS: dict[type, Callable[[Any], nn.Module]] = {Logits: XnnpackLogits, CrossAttention: XnnpackCrossAttention}


def executorch_form(module: nn.Module) -> nn.Module:
    """The module ExecuTorch exports for an ONNX wrapper: itself, or its XNNPACK-friendly form."""
    form = _ET_FORMS.get(type(module))
    return form(module) if form is not None else module


def _lib() -> tuple[Any, Any, Any]:
    """(to_edge_transform_and_lower, XnnpackPartitioner, executorch version) or a one-line BackendError."""
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
            from executorch.exir import to_edge_transform_and_lower
    except ImportError as exc:
        raise BackendError(f"the ExecuTorch exporter needs the executorch package ({exc}): "
                           "pip install torch==2.13.0 executorch==1.4.1") from None
    try:
        from importlib.metadata import version

        et_version = version("executorch")
    except Exception:  # pragma: no cover - metadata missing in odd installs
        et_version = "unknown"
    return to_edge_transform_and_lower, XnnpackPartitioner, et_version


def method_shapes(specs: Sequence[TensorSpec], stage: str) -> tuple[TensorSpec, ...]:
    """The ONNX signature with the axes the ExecuTorch method fixes: batch (and kv_batch) = 1 where
    the method runs once per window; the decoder's cross K/V always come at batch 1."""
    out = []
    for t in specs:
        shape = tuple(a if fixed_axis(a, stage) is None else fixed_axis(a, stage) for a in t.shape)
        out.append(TensorSpec(t.name, t.dtype, shape, t.value))
    return tuple(out)


def _example(specs: Sequence[TensorSpec]) -> tuple[torch.Tensor, ...]:
    tensors = []
    gen = torch.Generator().manual_seed(0)
    for t in specs:
        size = [a if isinstance(a, int) else _EXAMPLE[a] for a in t.shape]
        if t.dtype == "int64":
            tensors.append(torch.zeros(size, dtype=torch.long))
        else:
            tensors.append(torch.randn(size, generator=gen))
    return tuple(tensors)


def _dynamic_shapes(specs: Sequence[TensorSpec], bounds: dict[str, tuple[int, int, int]]
                    ) -> tuple[dict[int, Any], ...]:
    from torch.export import Dim

    dims: dict[str, Any] = {}
    out = []
    for t in specs:
        axes = {}
        for i, a in enumerate(t.shape):
            if isinstance(a, str):
                if a not in bounds:
                    raise ModelError(f"exporter bug: no ExecuTorch bound for dynamic axis {a!r}")
                base, factor = _DERIVED.get(a, (a, 1))
                lo, _, hi = bounds[base]
                dims.setdefault(base, Dim(base, min=lo, max=hi))
                axes[i] = dims[base] * factor if factor != 1 else dims[base]
        out.append(axes)
    return tuple(out)


def export_program(module: nn.Module, specs: Sequence[TensorSpec], bounds: dict[str, tuple[int, int, int]]) -> Any:
    """``torch.export.export`` of one wrapper with the method's dynamic axes (quietly)."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.export.export(module.eval(), _example(specs), dynamic_shapes=_dynamic_shapes(specs, bounds),
                                   strict=False)


def quantize_program(ep: Any, specs: Sequence[TensorSpec], bounds: dict[str, tuple[int, int, int]]
                     ) -> tuple[Any, bool]:
    """XNNPACK's 8-bit dynamically quantised linears (per-channel int8 weights, activations per call).

    Returns ``(program, quantised)``; a method without linears (the conv stem, a LayerNorm, the
    embedding gather) comes back as it was and ``quantised`` is False.
    """
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True))
    example = _example(specs)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_pt2e(ep.module(), quantizer)
        prepared(*example)
        converted = convert_pt2e(prepared)
        quantised = any("quantize" in str(n.target) for n in converted.graph.nodes if n.op == "call_function")
        if not quantised:
            return ep, False
        return torch.export.export(converted, example, dynamic_shapes=_dynamic_shapes(specs, bounds),
                                   strict=False), True


class _Method:
    """One method of the program: a graph job in its ExecuTorch form and (ExecuTorch) signature."""

    def __init__(self, job: GraphJob):
        self.job = job
        self.name, self.stage, self.module = job.name, job.stage, executorch_form(job.module)
        self.inputs = method_shapes(job.inputs, job.stage)
        self.outputs = method_shapes(job.outputs, job.stage)


def _bounds_pass(inputs: Sequence[TensorSpec], bounds: dict[str, tuple[int, int, int]]) -> Any:
    """ExecuTorch's symbolic-shape pass, with the upper bounds taken from the method's signature.

    ExecuTorch plans memory by evaluating every tensor's symbolic shape at its upper bound from the
    shape environment; after XNNPACK lowering of a convolution (the stem) that environment has
    lost the input's range and ExecuTorch silently falls back to the tracing hint (measured: a
    stem planned for 256 mel frames instead of 3000, failing on a 30-s window). This pass binds
    each input placeholder's symbols to the signature's bounds instead, so the plan is right.
    """
    import sympy
    from executorch.exir.tensor import TensorSpec
    from torch.fx.passes.infra.pass_base import PassBase, PassResult
    from torch.utils import _pytree as pytree
    from torch.utils._sympy.value_ranges import ValueRanges, bound_sympy

    shapes = {t.name: t.shape for t in inputs}

    class SignatureBoundsPass(PassBase):
        def call(self, graph_module: Any) -> Any:
            ranges: dict[Any, Any] = {}
            for node in graph_module.graph.nodes:
                val = node.meta.get("val")
                if node.op != "placeholder" or node.name not in shapes or not isinstance(val, torch.Tensor):
                    continue
                for size, axis in zip(val.shape, shapes[node.name], strict=True):
                    if isinstance(axis, str) and isinstance(size, torch.SymInt):
                        free = size.node.expr.free_symbols
                        if len(free) == 1:
                            lo, _, hi = bounds[_DERIVED.get(axis, (axis, 1))[0]]
                            ranges[next(iter(free))] = ValueRanges(lo, hi)

            def upper(size: Any) -> int:
                if isinstance(size, int):
                    return size
                env = {**size.node.shape_env.var_to_range, **ranges}
                bound = bound_sympy(size.node.expr, env).upper
                if not isinstance(bound, sympy.Integer):
                    raise ModelError(f"cannot bound the symbolic size {size.node.expr} for memory planning")
                return int(bound)

            for sub in graph_module.modules():
                if not isinstance(sub, torch.fx.GraphModule):
                    continue
                for node in sub.graph.nodes:
                    for spec in pytree.tree_flatten(node.meta.get("spec", []))[0]:
                        if isinstance(spec, TensorSpec):
                            spec.shape = [upper(d) for d in spec.shape]
                            spec.stride = [upper(d) for d in spec.stride]
            return PassResult(graph_module, True)

    return SignatureBoundsPass()


def lower(programs: dict[str, Any], signatures: dict[str, Sequence[TensorSpec]],
          bounds: dict[str, tuple[int, int, int]], on_method: Callable[[str], None] | None = None) -> Any:
    """Lower exported programs (one per method) to one XNNPACK-delegated ExecuTorch program.

    ``signatures`` maps each method to its inputs (name, dtype, shape with named axes) and
    ``bounds`` the named axes to (min, opt, max): memory is planned for the max. ``on_method(name)``
    is called as each method is partitioned (for a progress bar). Returns the
    ``ExecutorchProgramManager`` (``.buffer`` is the .pte).
    """
    from executorch.exir import ExecutorchBackendConfig

    to_edge_transform_and_lower, XnnpackPartitioner, _ = _lib()
    partitioners = {}
    for name in programs:
        part = XnnpackPartitioner()
        if on_method is not None:
            inner = part.partition

            def partition(ep: Any, _inner: Any = inner, _name: str = name) -> Any:
                result = _inner(ep)
                on_method(_name)
                return result

            part.partition = partition  # type: ignore[method-assign]
        partitioners[name] = [part]
    quiet = logging.getLogger("executorch")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            edge = to_edge_transform_and_lower(programs, partitioner=partitioners)
            config = ExecutorchBackendConfig(
                sym_shape_eval_pass={name: _bounds_pass(signatures[name], bounds) for name in programs})
            return edge.to_executorch(config)
    finally:
        quiet.setLevel(level)


def check_memory_bounds(prog: Any, signatures: dict[str, Sequence[TensorSpec]],
                        bounds: dict[str, tuple[int, int, int]]) -> None:
    """Every method's inputs must be planned for the signature's upper bounds (ModelError if not)."""
    for name, inputs in signatures.items():
        planned = {n.name: n.meta.get("spec") for n in prog.exported_program(name).graph.nodes
                   if n.op == "placeholder"}
        for t in inputs:
            want = [a if isinstance(a, int) else bounds[a][2] for a in t.shape]
            spec = planned.get(t.name)
            got = list(getattr(spec, "shape", []) or [])
            if got != want:
                raise ModelError(f"exporter bug: ExecuTorch planned {name}.{t.name} as {got}, the signature needs "
                                 f"{want} ({list(t.shape)})")


class ExecuTorchTarget:
    """Every graph a method of one ``model.pte``, lowered to XNNPACK with memory planned for the bounds."""

    format = "pte"

    def __init__(self, max_batch: int = DEFAULT_MAX_BATCH, max_step_tokens: int = DEFAULT_MAX_STEP_TOKENS):
        if not (1 <= int(max_batch) <= 64) or not (1 <= int(max_step_tokens)):
            raise BackendError(f"max_batch must be in 1..64 and max_step_tokens >= 1, got {max_batch}, "
                               f"{max_step_tokens}")
        _, _, self.version = _lib()  # fail early (one line) when executorch is missing
        self.max_batch, self.max_step_tokens = int(max_batch), int(max_step_tokens)
        self.bounds: dict[str, tuple[int, int, int]] = {}
        self.methods: list[str] = []
        self.seconds: dict[str, float] = {}
        self.precisions: dict[str, str] = {}

    def steps(self, graphs: Sequence[GraphJob]) -> int:
        return 2 * len(graphs) + 1  # torch.export and XNNPACK partitioning per method, then the emitter

    def write(self, graphs: Sequence[GraphJob], writer: BundleWriter, tick: Callable[[str], None], limits: Limits
              ) -> dict[str, GraphSpec]:
        self.bounds = axis_bounds(limits, max_batch=self.max_batch, max_step_tokens=self.max_step_tokens)
        methods = [_Method(g) for g in graphs]
        t0 = time.perf_counter()
        programs = {}
        for m in methods:
            if getattr(m.module, "padded", False):
                # torch.export cannot slice the padding's keys and values by the window's length (it wants the
                # length fixed); ONNX can. A masked form would double the attention of full windows.
                raise ModelError(f"{m.name}: the context tail (whisper-base-edge) does not export to ExecuTorch "
                                 "yet; use an ONNX target (--target cpu or jetson), or export --model whisper-base")
            try:
                programs[m.name] = export_program(m.module, m.inputs, self.bounds)
                self.precisions[m.name] = "fp32"
                if m.job.precision == "int8":
                    programs[m.name], quantised = quantize_program(programs[m.name], m.inputs, self.bounds)
                    self.precisions[m.name] = "int8" if quantised else "fp32"
                elif m.job.precision != "fp32":
                    raise ModelError(f"the ExecuTorch target writes fp32 or int8 methods, not {m.job.precision}; "
                                     "export with --precision int8 or fp32")
            except ModelError:
                raise
            except Exception as exc:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise ModelError(f"torch.export failed for {m.name} ({first}); this model cannot be exported to "
                                 "ExecuTorch as is") from None
            tick(f"export {m.name}")
        t1 = time.perf_counter()
        signatures = {m.name: m.inputs for m in methods}
        try:
            prog = lower(programs, signatures, self.bounds, on_method=lambda name: tick(f"lower {name}"))
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ModelError(f"ExecuTorch lowering failed ({type(exc).__name__}: {first})") from None
        check_memory_bounds(prog, signatures, self.bounds)
        t2 = time.perf_counter()
        with open(writer.path_for(PTE_FILE), "wb") as f:
            prog.write_to_file(f)
        writer.add(PTE_FILE)
        tick(f"write {PTE_FILE}")
        self.methods = [m.name for m in methods]
        self.seconds = {"torch_export": round(t1 - t0, 2), "lower": round(t2 - t1, 2),
                        "total": round(time.perf_counter() - t0, 2)}
        return {m.name: GraphSpec(m.name, m.stage, PTE_FILE, m.name, m.inputs, m.outputs, param_bytes(m.job.module))
                for m in methods}

    def sections(self) -> dict[str, Any]:
        quantization = {"quantization": {"int8": {
            "method": "XNNPACK dynamic", "weights": "int8 per output channel (symmetric)",
            "activations": "int8 per call (dynamic)", "ops": "linear"}}} if "int8" in self.precisions.values() else {}
        return {**quantization, "executorch": {
            "program": PTE_FILE, "methods": self.methods, "delegate": "XnnpackBackend",
            "axes": {k: list(v) for k, v in self.bounds.items()},
            "max_batch": self.max_batch, "max_step_tokens": self.max_step_tokens,
            "note": "memory is planned for each axis's upper bound; batch is fixed at 1 for the encoder, "
                    "cross K/V and predictor methods and for the decoder's cross K/V inputs",
        }}

    def provenance(self) -> dict[str, Any]:
        return {
            "executorch": self.version,
            "exporter": "torch.export.export -> to_edge_transform_and_lower(XnnpackPartitioner) -> to_executorch",
            "export_seconds": self.seconds,
            "notes": ["every module is a method of model.pte; token embedding stored twice (decoder.embed "
                      "gathers on portable kernels, decoder.logits is an XNNPACK linear)",
                      "decoder.logits and decoder.<i>.cross_attn use XNNPACK-friendly forms of the ONNX "
                      "wrappers (edgegate.export.executorch_export.executorch_form)"],
        }


def export_executorch_bundle(out: str | Path | None = None, target: str | Path | DeviceProfile = "android",
                             model: str | Path | Whisper = "whisper-base",
                             gates: str | Path | nn.Module | None = None, budget: float | None = None,
                             scope: str | None = None, force: bool = False, progress: bool = True,
                             tokenizer: str | Path | None = None, log: Callable[[str], None] | None = None,
                             max_batch: int = DEFAULT_MAX_BATCH,
                             max_step_tokens: int = DEFAULT_MAX_STEP_TOKENS, precision: str | None = None,
                             audio_ctx: str | int | None = "auto") -> Path:
    """Write an ExecuTorch bundle (one multi-method ``model.pte``) for ``target``; returns its path.

    Arguments as :func:`edgegate.export.core.export_bundle` (whose ``target`` profile says
    ``format = "pte"``, e.g. ``android``). ``max_batch`` bounds the beam width and
    ``max_step_tokens`` the tokens of one decoder call (ExecuTorch plans memory for these upper
    bounds; the runtime refuses larger inputs with a one-line error). Atomic: the bundle appears
    by one rename; an existing ``out`` is only replaced with ``force``.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr))
    profile = get_profile(target)
    check_request(profile, out, model, gates, budget, force)
    return export_with(ExecuTorchTarget(max_batch, max_step_tokens), out, profile, model, gates, budget, scope,
                       force, progress, tokenizer, log, precision, audio_ctx)


__all__ = ["export_executorch_bundle", "ExecuTorchTarget", "export_program", "lower", "method_shapes",
           "PREDICTOR_METHOD"]
