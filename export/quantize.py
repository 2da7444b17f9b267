"""Low-precision weights for one module's ONNX subgraph (``edgegate.export.quantize``).

Only the weights of MatMul/Gemm nodes whose second input is a constant 2-D initializer change:
activation x activation products (attention scores), LayerNorm, softmax, GELU and residual adds
stay fp32, so a quantised module keeps its inputs, outputs and gating semantics.

Methods (what ONNX Runtime 1.32 runs on a CPU; ``benchmarks/bench_quant_methods.py`` measures them):

- ``dynamic``: int8 weights per output channel; activations quantised per call
  (``onnxruntime.quantization.quantize_dynamic``). ORT fuses DynamicQuantizeLinear + MatMulInteger
  into ``DynamicQuantizeMatMul``. ``reduce_range`` keeps weights in 7 bits, the safe choice on
  AVX2 CPUs without VNNI, whose u8 x s8 instruction (vpmaddubsw) can saturate a 16-bit pair sum.
- ``qdq``: static QDQ, int8 weights per channel and uint8 activations with scales calibrated on
  real module inputs (``calibration``); ORT runs it as QLinearMatMul.
- ``nbits8`` / ``nbits4``: block-wise weight-only ``MatMulNBits`` (``MatMulNBitsQuantizer``),
  symmetric, ``block_size`` weights per scale; ``accuracy_level`` 4 computes with int8 dot
  products (level 0 dequantises to fp32 and was ~20x slower per decoder step here).
- ``fp16``: fp16 weight storage with a Cast to fp32 before use (halves the file; ONNX Runtime's CPU
  provider has no fp16 MatMul on x86, so compute stays fp32).

Everything is written to a temporary file beside ``dst`` and renamed, so a failure leaves nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgegate.errors import EdgegateError

METHODS = ("dynamic", "qdq", "nbits8", "nbits4", "fp16")
WEIGHT_OPS = ("MatMul", "Gemm")
# Below this many elements a weight is not worth a quantised kernel (biases, LayerNorm gains).
MIN_WEIGHT_ELEMENTS = 4096


# What a bundle precision means for an ONNX module graph (docs/speed.md section 1 measured the choice):
# int8 = dynamic int8 weights per output channel, 7-bit range (safe on AVX2 CPUs without VNNI);
# fp16 = fp16 weight storage (TensorRT builds fp16 engines from it; ORT's CPU provider computes in fp32).
PRECISION_METHODS: dict[str, tuple[str, dict]] = {
    "int8": ("dynamic", {"reduce_range": True}),
    "fp16": ("fp16", {}),
}
QUANTIZATION_NOTES = {
    "int8": {"method": "dynamic", "weights": "int8 per output channel (7-bit range: reduce_range)",
             "activations": "uint8 per tensor, quantised per call", "ops": "MatMul/Gemm with a constant weight",
             "fp32": "LayerNorm, softmax, GELU, residual adds, attention score and value products, convolutions"},
    "fp16": {"method": "fp16", "weights": "fp16 storage, cast to fp32 in the graph",
             "note": "TensorRT builds fp16 engines; ONNX Runtime's CPU provider computes in fp32"},
}


class QuantizeError(EdgegateError):
    """A module graph cannot be quantised as asked (missing file, bad method, no calibration data)."""


@dataclass(frozen=True)
class QuantizeResult:
    """What :func:`quantize_module` wrote."""

    method: str
    src: Path
    dst: Path
    src_bytes: int
    dst_bytes: int
    weights: int  # MatMul/Gemm weights converted
    ops: dict[str, int] = field(default_factory=dict)  # op-type histogram of the written graph

    @property
    def ratio(self) -> float:
        return self.dst_bytes / max(1, self.src_bytes)


def weight_matmuls(model) -> list:
    """MatMul/Gemm nodes of the main graph whose B input is a constant 2-D initializer of real size."""
    inits = {i.name: i for i in model.graph.initializer}
    out = []
    for node in model.graph.node:
        if node.op_type in WEIGHT_OPS and len(node.input) > 1 and node.input[1] in inits:
            dims = list(inits[node.input[1]].dims)
            if len(dims) == 2 and dims[0] * dims[1] >= MIN_WEIGHT_ELEMENTS:
                out.append(node)
    return out


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """ORT's quantizers log INFO per node and a pre-processing hint per call on the root logger."""
    root = logging.getLogger()
    saved = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(saved)


class _FeedReader:
    """An ``onnxruntime.quantization.CalibrationDataReader`` over recorded module inputs."""

    def __init__(self, feeds: Sequence[dict[str, np.ndarray]]):
        self._it = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def _load(src: Path):
    import onnx

    if not src.is_file():
        raise QuantizeError(f"module graph {src} not found; export the bundle first (edgegate export --target cpu)")
    try:
        return onnx.load(str(src))
    except Exception as exc:  # onnx raises DecodeError / ValidationError subclasses
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise QuantizeError(f"{src} is not a readable ONNX model ({first}); re-export the bundle") from None


def _dynamic(src: Path, tmp: Path, names: list[str], per_channel: bool, reduce_range: bool,
             weight_type: str) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    qtype = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}[weight_type]
    quantize_dynamic(str(src), str(tmp), op_types_to_quantize=list(WEIGHT_OPS), per_channel=per_channel,
                     reduce_range=reduce_range, weight_type=qtype, nodes_to_quantize=names,
                     extra_options={"MatMulConstBOnly": True})


def _qdq(src: Path, tmp: Path, names: list[str], calibration: Sequence[dict[str, np.ndarray]] | None,
         per_channel: bool, reduce_range: bool) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if not calibration:
        raise QuantizeError(f"method 'qdq' needs calibration inputs for {src.name} (recorded module feeds); "
                            "pass calibration=[{input: array}, ...] or use method 'dynamic'")
    quantize_static(str(src), str(tmp), _FeedReader(calibration), quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=list(WEIGHT_OPS), per_channel=per_channel, reduce_range=reduce_range,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_quantize=names,
                    calibrate_method=CalibrationMethod.MinMax, extra_options={"MatMulConstBOnly": True})


def _nbits(model, tmp: Path, names: list[str], bits: int, block_size: int, accuracy_level: int) -> None:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    # nodes_to_include only adds to op_types_to_quantize: select by excluding every other node
    others = [n.name for n in model.graph.node if n.name not in set(names)]
    q = MatMulNBitsQuantizer(model, bits=bits, block_size=block_size, is_symmetric=True,
                             accuracy_level=accuracy_level, nodes_to_exclude=others, op_types_to_quantize=("MatMul",))
    q.process()
    q.model.save_model_to_file(str(tmp), use_external_data_format=False)


def _fp16(model, tmp: Path) -> int:
    """Large fp32 weight initializers (MatMul/Gemm/Gather data) stored as fp16, cast back at load."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    users = {n.input[i] for n in model.graph.node for i in range(len(n.input))
             if (n.op_type in WEIGHT_OPS and i == 1) or (n.op_type == "Gather" and i == 0)}
    converted = 0
    for init in list(model.graph.initializer):
        small = int(np.prod(init.dims)) < MIN_WEIGHT_ELEMENTS
        if init.name not in users or init.data_type != TensorProto.FLOAT or small:
            continue
        half = numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), f"{init.name}_fp16")
        model.graph.initializer.remove(init)
        model.graph.initializer.append(half)
        model.graph.node.insert(0, helper.make_node("Cast", [half.name], [init.name], to=TensorProto.FLOAT,
                                                    name=f"{init.name}_cast"))
        converted += 1
    onnx.save(model, str(tmp))
    return converted


def quantize_module(src: str | os.PathLike, dst: str | os.PathLike, method: str = "dynamic", *,
                    calibration: Sequence[dict[str, np.ndarray]] | None = None, per_channel: bool = True,
                    reduce_range: bool = False, weight_type: str = "int8", block_size: int = 32,
                    accuracy_level: int = 4, exclude: Sequence[str] = ()) -> QuantizeResult:
    """Write ``src``'s graph with low-precision weights to ``dst`` (see the module doc for ``method``).

    ``exclude`` names MatMul/Gemm nodes to leave in fp32. A graph without weights to convert is
    copied unchanged (``result.weights == 0``).
    """
    import onnx

    src, dst = Path(src), Path(dst)
    if method not in METHODS:
        raise QuantizeError(f"unknown quantisation method {method!r}; use one of: {', '.join(METHODS)}")
    if weight_type not in ("int8", "uint8"):
        raise QuantizeError(f"weight_type must be int8 or uint8, got {weight_type!r}")
    model = _load(src)
    src_bytes = src.stat().st_size  # before the rename: src and dst may be the same file
    names = [n.name for n in weight_matmuls(model) if n.name not in set(exclude)]
    unnamed = [n for n in weight_matmuls(model) if not n.name]
    if unnamed:
        raise QuantizeError(f"{src}: {len(unnamed)} MatMul/Gemm nodes have no name, so they cannot be selected; "
                            "re-export the bundle")
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".onnx", dir=dst.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with _quiet_quantizer():
            converted = len(names)
            if not names and method != "fp16":
                onnx.save(model, str(tmp))
            elif method == "dynamic":
                _dynamic(src, tmp, names, per_channel, reduce_range, weight_type)
            elif method == "qdq":
                _qdq(src, tmp, names, calibration, per_channel, reduce_range)
            elif method in ("nbits8", "nbits4"):
                _nbits(model, tmp, names, int(method[-1]), block_size, accuracy_level)
            else:
                converted = _fp16(model, tmp)
        ops = dict(Counter(n.op_type for n in onnx.load(str(tmp)).graph.node))
        os.chmod(tmp, 0o644)
        os.replace(tmp, dst)
    except QuantizeError:
        raise
    except Exception as exc:  # the ORT quantizers raise bare Exceptions / ValueErrors
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise QuantizeError(f"cannot quantise {src} with {method!r} ({first})") from None
    finally:
        tmp.unlink(missing_ok=True)
    return QuantizeResult(method, src, dst, src_bytes, dst.stat().st_size, converted, ops)


def apply_precision(path: str | os.PathLike, precision: str) -> str:
    """Rewrite one module graph in place at a bundle ``precision``; returns the precision it now has.

    A graph without MatMul/Gemm weights (the conv stem, a LayerNorm) stays fp32 and says so.
    """
    if precision == "fp32":
        return "fp32"
    if precision not in PRECISION_METHODS:
        raise QuantizeError(f"unknown precision {precision!r}; use one of: fp32, {', '.join(PRECISION_METHODS)}")
    method, options = PRECISION_METHODS[precision]
    result = quantize_module(path, path, method, **options)
    return precision if result.weights else "fp32"
