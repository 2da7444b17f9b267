"""Per-module precision on export: int8 module graphs (dynamic, reduce_range), fp32 predictor and adapters,
``--precision`` / ``--audio-ctx`` on the CLI, ``edgegate inspect`` per module."""

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from edgegate.errors import ModelError  # noqa: E402
from edgegate.export.core import bundle_audio_ctx, export_bundle  # noqa: E402
from edgegate.runtimes.session import Session  # noqa: E402

from tiny import noise_clip, tiny_predictor, tiny_whisper  # noqa: E402

QUIET = dict(progress=False, log=lambda m: None)
INT8_OPS = {"DynamicQuantizeLinear", "MatMulInteger", "DynamicQuantizeMatMul"}


@pytest.fixture(scope="module")
def model():
    return tiny_whisper()


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, model) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("precision")
    pred = tiny_predictor(len(model.gate_names))
    return {p: export_bundle(root / p, "cpu", model, gates=pred, budget=0.4, precision=None if p == "int8" else p,
                             **QUIET) for p in ("fp32", "int8")}


def ops(path: Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def test_int8_is_the_cpu_default_and_touches_only_module_weights(bundles):
    m = json.loads((bundles["int8"] / "manifest.json").read_text())
    prec = {mod["name"]: mod["precision"] for mod in m["modules"]}
    # graphs without a MatMul/Gemm weight say fp32: the conv stem, the final norm (the embedding and logits read
    # the shared int8 table: tests/test_vocab_shards_runtime.py)
    assert {n for n, p in prec.items() if p == "fp32"} == {"encoder.stem", "encoder.ln_post"}
    assert m["quantization"]["int8"]["method"] == "dynamic" and "reduce_range" in m["quantization"]["int8"]["weights"]
    for mod in m["modules"]:
        if mod["name"] in ("decoder.embed", "decoder.logits"):
            continue
        assert bool(ops(bundles["int8"] / mod["file"]) & INT8_OPS) == (mod["precision"] == "int8"), mod["name"]
        if mod["adapter"]:
            assert not ops(bundles["int8"] / mod["adapter"]["file"]) & INT8_OPS  # skip adapters stay fp32
    assert not ops(bundles["int8"] / m["predictor"]["file"]) & INT8_OPS  # the predictor stays exact
    fp32 = json.loads((bundles["fp32"] / "manifest.json").read_text())
    assert {mod["precision"] for mod in fp32["modules"]} == {"fp32"} and "quantization" not in fp32


def test_int8_modules_are_close_to_fp32_and_smaller(bundles):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 37, 64)).astype(np.float32)
    outs = {}
    for p, b in bundles.items():
        s = ort.InferenceSession(str(b / "encoder.0.mlp.onnx"), providers=["CPUExecutionProvider"])
        outs[p] = s.run(None, {"x": x})[0]
    delta = (outs["int8"] - x) - (outs["fp32"] - x)
    rel = np.linalg.norm(delta) / np.linalg.norm(outs["fp32"] - x)
    assert 0 < rel < 0.1  # quantised (not identical), and the residual contribution within 10 %
    size = {p: (b / "encoder.0.mlp.onnx").stat().st_size for p, b in bundles.items()}
    assert size["int8"] < 0.5 * size["fp32"]


def test_int8_bundle_runs_and_gates_still_plan(bundles):
    session = Session.load(bundles["int8"], threads=1)
    dense = session.transcribe_windows(noise_clip(), language="en", budget=0.0)
    gated = session.transcribe_windows(noise_clip(), language="en", budget=0.4)
    assert len(dense.tokens) > 0 and not all(gated.mask)


def test_audio_ctx_rule(model):
    assert bundle_audio_ctx("full", model, {}) is None and bundle_audio_ctx(None, model, {}) is None
    assert bundle_audio_ctx("250", model, {}) == 250 and bundle_audio_ctx(0, model, {}) == 0
    assert bundle_audio_ctx("auto", model, {}) is None  # the original model: full context
    assert bundle_audio_ctx("auto", model, {"gate_set": {"audio_ctx": 64}}) == 64
    edge = tiny_whisper()
    edge.default_audio_ctx = 32  # what load_whisper sets for an edge-adapted model
    assert bundle_audio_ctx("auto", edge, {}) == 32
    for bad in ("wide", -1, 5000, True):
        with pytest.raises(ModelError, match="audio_ctx must be"):
            bundle_audio_ctx(bad, model, {})


def test_cli_precision_audio_ctx_and_inspect(tmp_path, model, capsys):
    from edgegate.cli import main

    ckpt = tmp_path / "tiny.pt"
    plain = tiny_whisper(adapters=())
    torch.save({"dims": asdict(plain.dims), "model_state_dict": plain.state_dict()}, ckpt)
    out = tmp_path / "b"
    assert main(["export", "--target", "cpu", "--model", str(ckpt), "--out", str(out), "--precision", "fp32",
                 "--audio-ctx", "120", "--full-vocab", "--no-progress"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["decoding"]["audio_ctx"] == 120 and {mod["precision"] for mod in m["modules"]} == {"fp32"}
    assert m["vocabulary"] is None and not m["token_embedding"]["shard_templates"]
    assert Session.load(out).vocab_logits is None
    assert Session.load(out).audio_ctx == 120
    assert main(["export", "--target", "cpu", "--model", str(ckpt), "--out", str(out), "--force",
                 "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "weights  int8: dynamic" in text and "full 30-s encoder context" in text
    assert "token_embedding.q8" in text and "on by default: en, de, es, it" in text
    row = next(line for line in text.splitlines() if line.startswith("decoder.0.mlp "))
    assert " int8 " in row
