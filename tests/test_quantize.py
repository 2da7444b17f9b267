"""edgegate.export.quantize on a small random Linear graph (MatMul + bias, LayerNorm, residual)."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxruntime.quantization")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edgegate.errors import EdgegateError  # noqa: E402
from edgegate.export.quantize import QuantizeError, quantize_module, weight_matmuls  # noqa: E402

D, H = 64, 256


def _linear_graph(path, seed: int = 0) -> None:
    """x -> LayerNorm -> MatMul(W1) + b1 -> Relu -> MatMul(W2) + b2 -> + x (a residual MLP)."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array((rng.standard_normal((D, H)) / np.sqrt(D)).astype(np.float32), "w1"),
        numpy_helper.from_array((rng.standard_normal((H, D)) / np.sqrt(H)).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.standard_normal(H).astype(np.float32) * 0.1, "b1"),
        numpy_helper.from_array(rng.standard_normal(D).astype(np.float32) * 0.1, "b2"),
        numpy_helper.from_array(np.ones(D, np.float32), "g"),
        numpy_helper.from_array(np.zeros(D, np.float32), "beta"),
    ]
    nodes = [
        helper.make_node("LayerNormalization", ["x", "g", "beta"], ["h0"], axis=-1, name="ln"),
        helper.make_node("MatMul", ["h0", "w1"], ["h1"], name="fc1"),
        helper.make_node("Add", ["h1", "b1"], ["h2"], name="add1"),
        helper.make_node("Relu", ["h2"], ["h3"], name="relu"),
        helper.make_node("MatMul", ["h3", "w2"], ["h4"], name="fc2"),
        helper.make_node("Add", ["h4", "b2"], ["h5"], name="add2"),
        helper.make_node("Add", ["h5", "x"], ["y"], name="residual"),
    ]
    graph = helper.make_graph(nodes, "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "t", D])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "t", D])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def _run(path, x: np.ndarray) -> np.ndarray:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.fixture
def graph(tmp_path):
    path = tmp_path / "linear.onnx"
    _linear_graph(path)
    return path


def _x(seed: int = 1, t: int = 12) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, t, D)).astype(np.float32)


# Expected op after the rewrite, and tolerance on the residual branch (out - x) relative to its norm.
CASES = {
    "dynamic": ({"DynamicQuantizeLinear", "MatMulInteger"}, 0.06),
    "nbits8": ({"MatMulNBits"}, 0.03),
    "nbits4": ({"MatMulNBits"}, 0.25),
    "fp16": ({"Cast"}, 0.002),
}


@pytest.mark.parametrize("method", sorted(CASES))
def test_quantized_graph_is_close_smaller_and_uses_the_quantized_op(graph, tmp_path, method):
    dst = tmp_path / f"q_{method}.onnx"
    res = quantize_module(graph, dst, method)
    ops, tol = CASES[method]
    assert ops <= set(res.ops), res.ops
    assert res.ops.get("MatMul", 0) == 0 or method == "fp16"  # no fp32 weight MatMul left
    assert res.weights == 2 and res.dst_bytes == dst.stat().st_size
    assert dst.stat().st_size < graph.stat().st_size * (0.6 if method == "fp16" else 0.45)
    # LayerNorm and the residual stay as they were
    assert res.ops["LayerNormalization"] == 1
    x = _x()
    ref, out = _run(graph, x), _run(dst, x)
    rel = np.linalg.norm((out - x) - (ref - x)) / np.linalg.norm(ref - x)
    assert rel < tol, f"{method}: relative error {rel:.4f}"
    assert rel > 0 or method == "fp16"  # the weights really changed precision


def test_qdq_uses_the_calibration_feeds(graph, tmp_path):
    calib = [{"x": _x(seed)} for seed in range(10, 14)]
    res = quantize_module(graph, tmp_path / "qdq.onnx", "qdq", calibration=calib)
    assert {"QuantizeLinear", "DequantizeLinear"} <= set(res.ops)
    x = _x()
    ref, out = _run(graph, x), _run(tmp_path / "qdq.onnx", x)
    assert np.linalg.norm((out - x) - (ref - x)) / np.linalg.norm(ref - x) < 0.1


def test_qdq_without_calibration_is_a_one_line_error(graph, tmp_path):
    with pytest.raises(QuantizeError, match="calibration") as e:
        quantize_module(graph, tmp_path / "qdq.onnx", "qdq")
    assert "\n" not in str(e.value)
    assert not list(tmp_path.glob("*qdq*"))  # nothing half-written


def test_exclude_keeps_a_matmul_in_fp32(graph, tmp_path):
    res = quantize_module(graph, tmp_path / "ex.onnx", "nbits8", exclude=["fc2"])
    assert res.weights == 1 and res.ops["MatMul"] == 1 and res.ops["MatMulNBits"] == 1


def test_missing_file_is_a_one_line_error_and_writes_nothing(tmp_path):
    with pytest.raises(QuantizeError) as e:
        quantize_module(tmp_path / "nope.onnx", tmp_path / "out.onnx")
    assert isinstance(e.value, EdgegateError)
    assert "not found" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out.onnx").exists()


def test_unknown_method_and_unreadable_file(graph, tmp_path):
    with pytest.raises(QuantizeError, match="unknown quantisation method"):
        quantize_module(graph, tmp_path / "o.onnx", "int3")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(QuantizeError, match="not a readable ONNX model"):
        quantize_module(bad, tmp_path / "o.onnx")
    assert not list(tmp_path.glob("*o.onnx*"))


def test_weight_matmuls_ignores_activation_products(tmp_path):
    """Attention's Q @ K^T has no constant operand: it must stay fp32 (and is not listed)."""
    w = numpy_helper.from_array(np.ones((D, D), np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["q"], name="proj"),
             helper.make_node("MatMul", ["q", "x_t"], ["s"], name="scores")]
    graph = helper.make_graph(nodes, "attn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, D]),
                                              helper.make_tensor_value_info("x_t", TensorProto.FLOAT, [D, 4])],
                              [helper.make_tensor_value_info("s", TensorProto.FLOAT, [4, 4])], [w])
    assert [n.name for n in weight_matmuls(helper.make_model(graph))] == ["proj"]
