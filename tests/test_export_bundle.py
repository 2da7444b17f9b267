"""The ONNX exporter on a tiny random Whisper: manifest, per-module numerics, atomic writes."""

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from edgegate.errors import BudgetError, BundleError  # noqa: E402
from edgegate.export import onnx_export  # noqa: E402
from edgegate.export.core import export_bundle  # noqa: E402
from edgegate.export.monolithic import export_monolithic  # noqa: E402
from edgegate.runtimes.bundle import FORMAT, SCHEMA_VERSION, Bundle, sha256_file  # noqa: E402

from tiny import tiny_predictor, tiny_whisper  # noqa: E402


@pytest.fixture(scope="module")
def model():
    return tiny_whisper()


@pytest.fixture(scope="module")
def predictor(model):
    return tiny_predictor(len(model.gate_names))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, model, predictor) -> Path:
    out = tmp_path_factory.mktemp("export") / "tiny-cpu"
    return export_bundle(out, "cpu", model, gates=predictor, budget=0.4, precision="fp32", progress=False,
                         log=lambda m: None)


def sess(path: Path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_manifest_layout(bundle, model):
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["format"] == FORMAT and m["schema_version"] == SCHEMA_VERSION
    assert m["gate_names"] == model.gate_names
    assert m["model"]["dims"] == asdict(model.dims)
    names = [mod["name"] for mod in m["modules"]]
    assert names[0] == "encoder.stem" and names[-1] == "decoder.logits"
    assert names.index("encoder.ln_post") < names.index("decoder.0.cross_kv") < names.index("decoder.embed")
    for gate in model.gate_names:  # every gateable module has its own subgraph
        assert gate in names
    by_name = {mod["name"]: mod for mod in m["modules"]}
    assert by_name["decoder.1.cross_kv"]["gate"] == "decoder.1.cross_attn"
    assert by_name["encoder.stem"]["gate"] is None
    assert by_name["decoder.0.self_attn"]["adapter"]["file"] == "decoder.0.self_attn.adapter.onnx"
    assert by_name["decoder.0.mlp"]["adapter"] is None
    sa = by_name["decoder.0.self_attn"]
    assert [t["name"] for t in sa["inputs"]] == ["x", "k_cache", "v_cache"]
    assert sa["inputs"][1]["shape"] == ["batch", 4, "past", 16]
    assert sa["outputs"][1]["shape"] == ["batch", 4, "total", 16]
    assert all(mod["flops"] > 0 for mod in m["modules"] if mod["kind"] != "ln_post")
    # every file is listed with its real hash and size; tokenizer and predictor included
    for rel, entry in m["files"].items():
        assert sha256_file(bundle / rel) == entry["sha256"]
        assert (bundle / rel).stat().st_size == entry["bytes"]
    assert {"tokenizer.json", "predictor.onnx"} <= set(m["files"])
    assert sorted(p.name for p in bundle.iterdir()) == sorted([*m["files"], "manifest.json"])
    assert m["budget"] == {"value": 0.4, "scope": "both", "cost_unit": "flops", "pinned": []}
    assert m["profile"]["name"] == "cpu"
    assert m["provenance"]["onnx_opset"] >= 17
    assert m["predictor"]["outputs"][0]["shape"] == ["batch", len(model.gate_names)]
    Bundle.open(bundle)  # and the reader accepts it


def test_modules_match_torch_at_new_shapes(bundle, model):
    """Dynamic axes really are dynamic: shapes unlike the tracing examples, empty caches, broadcast K/V."""
    g = torch.Generator().manual_seed(1)
    enc, dec = model.encoder, model.decoder
    mel = torch.randn(1, 80, 74, generator=g)
    with torch.no_grad():
        ref_x = torch.nn.functional.gelu(enc.conv2(torch.nn.functional.gelu(enc.conv1(mel)))).transpose(1, 2)
        ref_x = ref_x + enc.positional_embedding[:37]
    x = sess(bundle / "encoder.stem.onnx").run(None, {"mel": mel.numpy()})[0]
    np.testing.assert_allclose(x, ref_x.numpy(), atol=2e-5)

    xt = torch.from_numpy(x)
    block = enc.blocks[0]
    with torch.no_grad():
        ref = xt + block.attn(block.attn_ln(xt))
    y = sess(bundle / "encoder.0.attn.onnx").run(None, {"x": x})[0]
    np.testing.assert_allclose(y, ref.numpy(), atol=2e-5)

    # decoder self-attention: prompt of 4 with an empty cache, then one token with the grown cache
    blk = dec.blocks[0]
    s = sess(bundle / "decoder.0.self_attn.onnx")
    x4 = torch.randn(2, 4, 64, generator=g)
    x1 = torch.randn(2, 1, 64, generator=g)
    empty = np.zeros((2, 4, 0, 16), np.float32)
    y4, k, v = s.run(None, {"x": x4.numpy(), "k_cache": empty, "v_cache": empty})
    y1, k2, v2 = s.run(None, {"x": x1.numpy(), "k_cache": k, "v_cache": v})
    assert k.shape == (2, 4, 4, 16) and k2.shape == (2, 4, 5, 16)
    cache: dict = {}
    mask = torch.ones(4, 4, dtype=torch.bool).tril()
    with torch.no_grad():
        r4 = x4 + blk.self_attention(x4, mask, cache, 0)
        r1 = x1 + blk.self_attention(x1, None, cache, 0)
    np.testing.assert_allclose(y4, r4.numpy(), atol=2e-5)
    np.testing.assert_allclose(y1, r1.numpy(), atol=2e-5)
    np.testing.assert_allclose(k2, cache[0][0].numpy(), atol=2e-5)

    # cross-attention: K/V of batch 1 broadcast over 3 beams
    xa = torch.randn(1, 37, 64, generator=g)
    ck, cv = sess(bundle / "decoder.1.cross_kv.onnx").run(None, {"xa": xa.numpy()})
    xb = torch.randn(3, 1, 64, generator=g)
    y = sess(bundle / "decoder.1.cross_attn.onnx").run(None, {"x": xb.numpy(), "k": ck, "v": cv})[0]
    blk = dec.blocks[1]
    with torch.no_grad():
        kk, vv = blk.cross_attn.project_kv(xa)
        ref = xb + blk.cross_attn.attend(blk.cross_attn_ln(xb), kk.expand(3, -1, -1, -1), vv.expand(3, -1, -1, -1))
    np.testing.assert_allclose(y, ref.numpy(), atol=2e-5)

    # embedding at an offset, logits of the last position only, an adapter
    tokens = np.array([[50258, 50259, 50359]], np.int64)
    e = sess(bundle / "decoder.embed.onnx").run(None, {"tokens": tokens, "positions": np.arange(5, 8)})[0]
    with torch.no_grad():
        ref = dec.token_embedding(torch.from_numpy(tokens)) + dec.positional_embedding[5:8]
    np.testing.assert_allclose(e, ref.numpy(), atol=1e-6)
    logits = sess(bundle / "decoder.logits.onnx").run(None, {"x": e})[0]
    with torch.no_grad():
        ref = dec.ln(torch.from_numpy(e))[:, -1] @ dec.token_embedding.weight.T
    assert logits.shape == (1, 51865)
    np.testing.assert_allclose(logits, ref.numpy(), atol=1e-4)
    a = model.skip_adapters["decoder_1_mlp"]
    ya = sess(bundle / "decoder.1.mlp.adapter.onnx").run(None, {"x": e})[0]
    with torch.no_grad():
        ref = torch.from_numpy(e) + a(torch.from_numpy(e))
    np.testing.assert_allclose(ya, ref.numpy(), atol=2e-5)


def test_predictor_graph_matches_torch(bundle, predictor):
    g = torch.Generator().manual_seed(2)
    stats = torch.randn(3, 160, generator=g)
    lang = torch.tensor([0, 1, 17])
    task = torch.tensor([0, 1, 0])
    budget = torch.tensor([0.0, 0.3, 0.7])
    keep = sess(bundle / "predictor.onnx").run(None, {"stats": stats.numpy(), "lang": lang.numpy(),
                                                      "task": task.numpy(), "budget": budget.numpy()})[0]
    with torch.no_grad():
        ref = predictor.keep_scores(stats, lang, task, budget)
    np.testing.assert_allclose(keep, ref.numpy(), atol=1e-5)


def test_refuses_to_overwrite_without_force(bundle, model):
    before = (bundle / "manifest.json").read_bytes()
    with pytest.raises(BundleError, match="already exists; pass --force"):
        export_bundle(bundle, "cpu", model, progress=False, log=lambda m: None)
    assert (bundle / "manifest.json").read_bytes() == before


def test_force_replaces_and_failure_leaves_nothing(tmp_path, model, monkeypatch):
    out = tmp_path / "b"
    export_bundle(out, "cpu", model, progress=False, log=lambda m: None)
    assert json.loads((out / "manifest.json").read_text())["budget"] is None  # no predictor: dense
    first = (out / "manifest.json").read_text()
    real = onnx_export.export_graph
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("disk on fire")
        return real(*args, **kwargs)

    monkeypatch.setattr(onnx_export, "export_graph", flaky)
    with pytest.raises(RuntimeError, match="disk on fire"):
        export_bundle(out, "cpu", model, force=True, progress=False, log=lambda m: None)
    assert (out / "manifest.json").read_text() == first  # the old bundle is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no temp directory left behind
    calls["n"] = 0
    with pytest.raises(RuntimeError):
        export_bundle(tmp_path / "new", "cpu", model, progress=False, log=lambda m: None)
    assert not (tmp_path / "new").exists()
    monkeypatch.setattr(onnx_export, "export_graph", real)
    export_bundle(out, "jetson", model, force=True, progress=False, log=lambda m: None)
    assert json.loads((out / "manifest.json").read_text())["profile"]["name"] == "jetson-orin-nano"


def test_budget_without_gates_is_refused(tmp_path, model):
    with pytest.raises(BudgetError, match="--gates"):
        export_bundle(tmp_path / "x", "cpu", model, budget=0.5, progress=False, log=lambda m: None)
    assert not (tmp_path / "x").exists()


def test_predictor_for_another_model_is_refused(tmp_path, model):
    from edgegate.errors import ModelError

    with pytest.raises(ModelError, match="gateable modules"):
        export_bundle(tmp_path / "x", "cpu", model, gates=tiny_predictor(7), progress=False, log=lambda m: None)


def test_export_command_from_checkpoint(tmp_path, capsys):
    """The CLI path: an OpenAI-format checkpoint of the tiny model, --target jetson, --force."""
    from edgegate.commands import export

    m = tiny_whisper(adapters=())
    ckpt = tmp_path / "tiny.pt"
    torch.save({"dims": asdict(m.dims), "model_state_dict": m.state_dict()}, ckpt)
    parser = argparse.ArgumentParser()
    export.register(parser.add_subparsers())
    out = tmp_path / "bundle"
    args = parser.parse_args(["export", "--target", "jetson", "--model", str(ckpt), "--out", str(out),
                              "--no-progress"])
    assert args.func(args) == 0
    assert capsys.readouterr().out.strip() == str(out.resolve())
    man = json.loads((out / "manifest.json").read_text())
    assert man["profile"]["name"] == "jetson-orin-nano" and man["model"]["name"] == str(ckpt)
    with pytest.raises(BundleError, match="--force"):
        args.func(args)


def test_monolithic_graphs_match_torch(tmp_path, model):
    paths = export_monolithic(model, tmp_path)
    mel = torch.randn(1, 80, 60)
    xa = sess(paths["encoder"]).run(None, {"mel": mel.numpy()})[0]
    with torch.no_grad():
        ref = model.embed_audio(mel)
    np.testing.assert_allclose(xa, ref.numpy(), atol=5e-5)
    kv = sess(paths["cross_kv"]).run(None, {"xa": xa})
    assert len(kv) == 2 * model.dims.n_text_layer
    step = sess(paths["decoder_step"])
    empty = [np.zeros((1, 4, 0, 16), np.float32)] * (2 * model.dims.n_text_layer)
    tokens = np.array([[50258, 50259, 50359, 50363]], np.int64)
    feed = {"tokens": tokens, "positions": np.arange(4)}
    feed.update({i.name: a for i, a in zip(step.get_inputs()[2:], [*empty, *kv], strict=True)})
    logits = step.run(None, feed)[0]
    with torch.no_grad():
        cross = model.cross_kv(torch.from_numpy(xa))
        ref = model.decode(torch.from_numpy(tokens), cross, cache={})[:, -1]
    np.testing.assert_allclose(logits, ref.numpy(), atol=1e-4)


def test_eval_on_a_bundle_counts_skipped_flops(bundle, tmp_path):
    """``edgegate eval --bundle`` reports the skipped FLOPs from the bundle's own dims."""
    import soundfile as sf

    from edgegate.cli import main

    rng = np.random.default_rng(0)
    sf.write(tmp_path / "u.wav", (0.1 * rng.standard_normal(16000)).astype(np.float32), 16000)
    (tmp_path / "m.jsonl").write_text(json.dumps({"audio": "u.wav", "lang": "en", "task": "transcribe",
                                                  "text": "hello"}) + "\n")
    out = tmp_path / "ev"
    assert main(["eval", "--bundle", str(bundle), "--manifest", str(tmp_path / "m.jsonl"), "--budgets", "0,0.4",
                 "--out", str(out), "--no-progress"]) == 0
    overall = json.loads((out / "eval.json").read_text())["overall"]
    assert overall["0"]["skipped_gated_flops"] == 0.0
    # The plan uses an estimated token count, the report the tokens really decoded: close, not exact.
    assert 0.3 <= overall["0.4"]["skipped_gated_flops"] <= 0.5
