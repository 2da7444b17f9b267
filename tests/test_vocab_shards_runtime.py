"""One token embedding per bundle, no duplicated weights, and the vocabulary shard as a plan decision."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from edgegate.export.core import export_bundle  # noqa: E402
from edgegate.runtimes.session import Session  # noqa: E402
from edgegate.runtimes.vocab_logits import VocabLogits  # noqa: E402
from edgegate.vocabulary import DEFAULT_ON, SHIPPED, VocabularyShards  # noqa: E402

from tiny import noise_clip, tiny_predictor, tiny_whisper  # noqa: E402

QUIET = dict(progress=False, log=lambda m: None)
LARGE = 64 * 1024  # bytes: LayerNorm gains and biases may repeat (a shard template keeps its own), weights may not

pytestmark = pytest.mark.skipif(not SHIPPED.is_file(), reason="no shipped vocabulary shards")


@pytest.fixture(scope="module")
def model():
    return tiny_whisper()


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, model) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("shards")
    pred = tiny_predictor(len(model.gate_names))
    return {"int8": export_bundle(root / "int8", "cpu", model, **QUIET),
            "int8-gated": export_bundle(root / "gated", "cpu", model, gates=pred, budget=0.4, **QUIET),
            "fp32": export_bundle(root / "fp32", "cpu", model, precision="fp32", **QUIET)}


def stored_weights(bundle: Path) -> dict[str, list[str]]:
    """Hash of every stored initializer's bytes -> the graphs holding it; external data counts once per span."""
    where: dict[str, list[str]] = {}
    for path in sorted(bundle.glob("*.onnx")):
        model = onnx.load(str(path), load_external_data=False)
        for init in model.graph.initializer:
            if init.data_location == onnx.TensorProto.EXTERNAL:
                info = {e.key: e.value for e in init.external_data}
                key = f"external:{info['location']}:{info.get('offset', 0)}"
                if key not in where:
                    where[key] = []
                where[key].append(path.name)
                continue
            data = onnx.numpy_helper.to_array(init)
            if data.nbytes >= LARGE:
                where.setdefault(hashlib.sha256(data.tobytes()).hexdigest(), []).append(path.name)
    return where


@pytest.mark.parametrize("which", ["int8", "fp32"])
def test_one_token_embedding_and_no_duplicated_weights(bundles, model, which):
    b = bundles[which]
    m = json.loads((b / "manifest.json").read_text())
    table = m["token_embedding"]
    assert table["users"] == ["decoder.embed", "decoder.logits"] and table["file"] in m["files"]
    n, d = model.dims.n_vocab, model.dims.n_text_state
    assert table["shape"] == [n, d]
    assert table["bytes"] == (n * d + 4 * n * d // 32 if which == "int8" else 4 * n * d)
    where = stored_weights(b)
    dups = {k: v for k, v in where.items() if not k.startswith("external:") and len(v) > 1}
    assert not dups, f"large weights stored more than once: {dups}"
    external = {k: v for k, v in where.items() if k.startswith("external:")}
    assert set().union(*external.values()) == {"decoder.embed.onnx", "decoder.logits.onnx"}
    # neither graph embeds a copy of the table: both files are small
    assert (b / "decoder.embed.onnx").stat().st_size < LARGE + 4 * model.dims.n_text_ctx * d
    assert (b / "decoder.logits.onnx").stat().st_size < LARGE


def test_shared_int8_embedding_matches_the_model(bundles, model):
    s = ort.InferenceSession(str(bundles["int8"] / "decoder.embed.onnx"), providers=["CPUExecutionProvider"])
    tokens = np.array([[50258, 50259, 50359, 13, 400]], np.int64)
    x = s.run(None, {"tokens": tokens, "positions": np.arange(5, dtype=np.int64)})[0]
    with torch.no_grad():
        ref = (model.decoder.token_embedding(torch.from_numpy(tokens)) + model.decoder.positional_embedding[:5]).numpy()
    assert np.abs(x - ref).max() < 0.01 * np.abs(ref).max() and not np.array_equal(x, ref)


def test_logits_over_a_shard_are_the_full_graphs_rows(bundles):
    session = Session.load(bundles["int8"], threads=1)
    full = session.modules["decoder.logits"]
    x = np.random.default_rng(0).standard_normal((2, 3, 64)).astype(np.float32)
    ref = full.run({"x": x})[0]
    shard = session.vocab_logits.module("de")
    out = shard.run({"x": x})[0]
    rows = VocabularyShards.load(SHIPPED).shards["de"]
    outside = np.setdiff1d(np.arange(ref.shape[1]), rows)
    np.testing.assert_array_equal(out[:, rows], ref[:, rows])  # same bytes, same kernel: bit for bit
    assert np.isneginf(out[:, outside]).all() and out.shape == ref.shape


def test_the_plan_picks_the_shard(bundles):
    session = Session.load(bundles["int8"], threads=1)
    assert session.vocab_logits.keys == tuple(k for k in DEFAULT_ON)
    rule = session.planner  # the planner's rule, without audio
    assert rule.vocab("de", "transcribe") == "de" and rule.vocab("fr", "translate") == "en"
    assert rule.vocab("fr", "transcribe") is None  # fr is not on by default
    assert rule.vocab(None, "transcribe") is None  # language detection: full vocabulary
    assert rule.vocab("en", "transcribe", full_vocab=True) is None
    from edgegate.pipeline import MelFeatures

    mel = MelFeatures.of(noise_clip(), 80)
    assert session.plan(mel, "de", "transcribe").vocab == "de" and session.plan(mel, None, "transcribe").vocab is None
    r = session.transcribe_windows(noise_clip(), language="de")
    full = Session.load(bundles["int8"], threads=1, full_vocab=True)
    assert full.vocab_logits is None and full.planner.vocab("de", "transcribe") is None
    # every decoded token of a shard run lies in the shard
    rows = set(VocabularyShards.load(SHIPPED).shards["de"].tolist())
    assert r.tokens and set(r.tokens) <= rows


def test_all_ones_mask_equals_the_dense_int8_bundle(bundles, model):
    """Gating stays exact with int8 modules and the shard: the gated bundle, all modules kept, gives the dense
    bundle's tokens (and the budget-0 plan the same)."""
    dense = Session.load(bundles["int8"], threads=1)
    gated = Session.load(bundles["int8-gated"], threads=1)
    ones = [True] * len(model.gate_names)
    for lang, task in (("en", "transcribe"), ("de", "translate"), ("fr", "transcribe")):
        a = dense.transcribe_windows(noise_clip(seed=3), language=lang, task=task)
        b = gated.transcribe_windows(noise_clip(seed=3), language=lang, task=task, mask=ones)
        c = gated.transcribe_windows(noise_clip(seed=3), language=lang, task=task, budget=0.0)
        assert a.tokens == b.tokens == c.tokens and len(a.tokens) > 0


def test_unlisted_vocabulary_files_are_refused(bundles, tmp_path):
    import shutil

    from edgegate.errors import BundleError
    from edgegate.runtimes.bundle import Bundle

    copy = tmp_path / "b"
    shutil.copytree(bundles["int8"], copy)
    m = json.loads((copy / "manifest.json").read_text())
    m["token_embedding"]["shard_templates"]["en"]["file"] = "../elsewhere.onnx"
    (copy / "manifest.json").write_text(json.dumps(m))
    b = Bundle.open(copy, verify=False)
    with pytest.raises(BundleError, match="not listed in files"):
        VocabLogits.of(b, Session.load(bundles["int8"]).backend, None)
