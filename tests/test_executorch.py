"""ExecuTorch: the android bundle (one multi-method .pte, XNNPACK) and the executorch backend.

Fast tests use the tiny random Whisper (one export of ~20 methods, shared by the module: lowering
costs a few seconds per method). The slow test runs the real Whisper base with the shipped gate
set on LibriVox clips.

Needs registry.KNOWN["executorch"] and export_bundle's dispatch of pte targets (both applied by
the lead).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("executorch", reason="ExecuTorch is not installed: pip install torch==2.13.0 executorch==1.4.1")

from edgegate.errors import BackendError, BundleError, ModelError  # noqa: E402
from edgegate.export import executorch_export  # noqa: E402
from edgegate.export.core import export_bundle  # noqa: E402
from edgegate.export.executorch_export import export_executorch_bundle  # noqa: E402
from edgegate.export.whisper_graphs import module_jobs  # noqa: E402
from edgegate.runtimes.backends import executorch as et_backend  # noqa: E402
from edgegate.runtimes.backends import registry  # noqa: E402
from edgegate.runtimes.bundle import Bundle  # noqa: E402
from edgegate.runtimes.session import Session  # noqa: E402
from edgegate.transcriber import WhisperModel  # noqa: E402

from tiny import noise_clip, tiny_predictor, tiny_whisper  # noqa: E402

QUIET = dict(progress=False, log=lambda m: None)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(reference WhisperModel, android bundle path, cpu ONNX bundle path) for one tiny model + predictor."""
    model = tiny_whisper()
    pred = tiny_predictor(len(model.gate_names))
    root = tmp_path_factory.mktemp("et")
    pte = export_executorch_bundle(root / "tiny-android", "android", model, gates=pred, precision="fp32", **QUIET)
    onnx = export_bundle(root / "tiny-cpu", "cpu", model, gates=pred, precision="fp32", **QUIET)
    return WhisperModel(model, threads=1), pte, onnx


@pytest.fixture(scope="module")
def session(tiny):
    return Session.load(tiny[1], threads=1)


def masks(names: list[str]) -> dict[str, list[bool]]:
    skip_a = {"encoder.1.attn", "decoder.0.self_attn", "decoder.1.cross_attn", "decoder.1.mlp"}  # have adapters
    skip_b = {"encoder.0.mlp", "decoder.0.cross_attn", "decoder.1.self_attn"}  # no adapters
    return {
        "dense": [True] * len(names),
        "adapters": [n not in skip_a for n in names],
        "plain-skips": [n not in skip_b for n in names],
        "all-decoder-self-attn": [not n.endswith("self_attn") for n in names],
    }


# -- the bundle ---------------------------------------------------------------------------------
def test_bundle_is_one_multi_method_program(tiny, session):
    _, path, onnx_path = tiny
    b = Bundle.open(path)
    m = b.manifest
    assert m["module_format"] == "pte"
    assert set(m["files"]) == {"model.pte", "tokenizer.json"}
    methods = set(session.backend.method_names(path / "model.pte"))
    assert methods == set(m["executorch"]["methods"])
    for mod in b.modules:
        assert (mod.file, mod.method) == ("model.pte", mod.name)
        if mod.adapter:
            assert (mod.adapter, mod.adapter_method) == ("model.pte", f"{mod.gate}.adapter")
            assert mod.adapter_method in methods
    assert m["predictor"]["file"] == "model.pte" and m["predictor"]["method"] in methods
    # the same modules, in the same order, with the same costs as the ONNX bundle
    o = Bundle.open(onnx_path).manifest
    key = ("name", "kind", "stage", "layer", "gate", "flops", "param_bytes")
    assert [[x[k] for k in key] for x in m["modules"]] == [[x[k] for k in key] for x in o["modules"]]
    assert set(m) - {"executorch"} == set(o) - {"token_embedding"}  # the ONNX bundle's one shared table file
    assert m["costs"] == o["costs"] and m["gate_names"] == o["gate_names"]
    # dynamic axes: time/token axes stay named; batch is fixed only where the runtime always passes 1
    stem = b.module("encoder.stem").inputs[0]
    assert stem.shape == (1, 80, "mel_frames")
    sa = b.module("decoder.0.self_attn")
    assert [t.shape for t in sa.inputs] == [("batch", "tokens", 64), ("batch", 4, "past", 16),
                                           ("batch", 4, "past", 16)]
    ca = b.module("decoder.0.cross_attn")
    assert ca.inputs[1].shape == (1, 4, "frames", 16)
    axes = m["executorch"]["axes"]
    assert axes["past"][0] == 0 and axes["frames"][2] == 1500 and axes["mel_frames"][2] == 3000


def test_inspect_reports_the_shared_program_once(tiny, capsys):
    from edgegate.cli import main

    assert main(["inspect", str(tiny[1])]) == 0
    out = capsys.readouterr().out
    assert "shared" in out and "holds" in out and "hashes   ok" in out


def test_methods_share_weights(tiny):
    """Each weight is stored once across the ~20 methods; only the token embedding twice (the portable
    gather of decoder.embed and XNNPACK's linear in decoder.logits), as in the ONNX bundle."""
    _, path, onnx_path = tiny
    model, pred = tiny_whisper(), tiny_predictor(10)
    unique = {t.data_ptr(): t.numel() * 4 for t in [*model.state_dict().values(), *pred.state_dict().values()]}
    expected = sum(unique.values()) + model.decoder.token_embedding.weight.numel() * 4
    pte = (path / "model.pte").stat().st_size
    assert 0.95 * expected < pte < 1.05 * expected
    # the ONNX bundle keeps one token embedding (tied table file); the .pte two: at most one table more
    onnx_bytes = sum(p.stat().st_size for p in onnx_path.glob("*.onnx")) + (onnx_path / "token_embedding.f32").stat(
    ).st_size
    assert pte <= 1.02 * onnx_bytes + model.decoder.token_embedding.weight.numel() * 4


def test_int8_program_is_the_android_default(tiny, tmp_path):
    """android exports XNNPACK 8-bit dynamically quantised linears: smaller, per-method precision, still runs
    and still gates (the predictor and adapters stay fp32)."""
    model, pred = tiny_whisper(), tiny_predictor(10)
    path = export_executorch_bundle(tmp_path / "int8", "android", model, gates=pred, **QUIET)
    m = json.loads((path / "manifest.json").read_text())
    prec = {mod["name"]: mod["precision"] for mod in m["modules"]}
    assert {n for n, p in prec.items() if p == "fp32"} == {"encoder.stem", "encoder.ln_post", "decoder.embed"}
    assert m["quantization"]["int8"]["method"] == "XNNPACK dynamic"
    assert (path / "model.pte").stat().st_size < 0.75 * (tiny[1] / "model.pte").stat().st_size
    session = Session.load(path, threads=1)
    dense = session.transcribe_windows(noise_clip(), language="en", budget=0.0)
    gated = session.transcribe_windows(noise_clip(), language="en", budget=0.4)
    assert len(dense.tokens) > 0 and not all(gated.mask)


# -- parity with the PyTorch gated model -------------------------------------------------------
@pytest.mark.parametrize("which", ["dense", "adapters", "plain-skips", "all-decoder-self-attn"])
def test_tiny_greedy_parity(tiny, session, which):
    ref = tiny[0]
    mask = masks(session.gate_names)[which]
    audio = noise_clip()
    a = ref.transcribe_windows(audio, language="en", mask=mask)
    b = session.transcribe_windows(audio, language="en", mask=mask)
    assert len(a.tokens) > 0
    assert b.tokens == a.tokens and b.text == a.text and b.mask == mask


def test_tiny_beam_trimmed_context_and_language_detection(tiny, session):
    ref = tiny[0]
    mask = masks(session.gate_names)["adapters"]
    audio = noise_clip(1.5, seed=1)
    a = ref.transcribe_windows(audio, language="de", task="translate", mask=mask, beam_size=3, audio_ctx=16)
    b = session.transcribe_windows(audio, language="de", task="translate", mask=mask, beam_size=3, audio_ctx=16)
    assert b.tokens == a.tokens
    a = ref.transcribe_windows(audio)
    b = session.transcribe_windows(audio, budget=0.0)  # the bundle has a predictor: its default budget would apply
    assert (b.language, b.tokens) == (a.language, a.tokens)
    assert b.language_probability == pytest.approx(a.language_probability, abs=1e-4)


def test_predictor_method_plans_like_onnx(tiny, session):
    onnx = Session.load(tiny[2], threads=1, full_vocab=True)  # the .pte has no vocabulary shards
    audio = noise_clip(2.0, seed=3)
    for budget in (0.25, 0.5):
        a = onnx.transcribe_windows(audio, language="en", budget=budget)
        b = session.transcribe_windows(audio, language="en", budget=budget)
        assert b.mask == a.mask and b.tokens == a.tokens
    stats = np.linspace(-1, 1, 160, dtype=np.float32)
    np.testing.assert_allclose(session.keep_scores(stats, "en", "transcribe", 0.5),
                               onnx.keep_scores(stats, "en", "transcribe", 0.5), atol=1e-5)


def test_empty_cache_first_step(session):
    """The first decoding step feeds a zero-length K/V cache (past = 0) straight to the method."""
    module = session.modules["decoder.0.self_attn"]
    x = np.random.default_rng(0).standard_normal((2, 3, 64)).astype(np.float32)
    empty = np.zeros((2, 4, 0, 16), np.float32)
    out, k, v = module.run({"x": x, "k_cache": empty, "v_cache": empty})
    assert out.shape == (2, 3, 64) and k.shape == v.shape == (2, 4, 3, 16)
    model = tiny_whisper()
    job = next(j.graph for j in module_jobs(model) if j.name == "decoder.0.self_attn")
    with torch.no_grad():
        want = job.module(torch.from_numpy(x), torch.from_numpy(empty), torch.from_numpy(empty))
    for got, w in zip((out, k, v), want, strict=True):
        np.testing.assert_allclose(got, w.numpy(), atol=1e-5)
    # outputs are the caller's: a second call does not overwrite them
    before = out.copy()
    module.run({"x": x[:1], "k_cache": k[:1], "v_cache": v[:1]})
    np.testing.assert_array_equal(out, before)


def test_out_of_range_inputs_are_one_line_errors(session):
    embed = session.modules["decoder.embed"]
    with pytest.raises(BackendError, match=r"axis batch = 9 is outside this \.pte's range 1\.\.8") as info:
        embed.run({"tokens": np.zeros((9, 1), np.int64), "positions": np.zeros(1, np.int64)})
    assert "\n" not in str(info.value)
    with pytest.raises(BackendError, match="missing input 'positions'"):
        embed.run({"tokens": np.zeros((1, 1), np.int64)})


# -- integrity, atomicity, threads -------------------------------------------------------------
def test_flipped_byte_in_the_program_is_refused(tiny, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny[1], copy)
    pte = copy / "model.pte"
    data = bytearray(pte.read_bytes())
    data[len(data) // 2] ^= 0x01
    pte.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"model\.pte is SHA-256 mismatch") as info:
        Session.load(copy, backend="executorch")
    assert "\n" not in str(info.value)


def test_export_is_atomic_and_refuses_an_existing_out(tmp_path, monkeypatch):
    model = tiny_whisper(adapters=())
    out = tmp_path / "b"
    out.mkdir()
    (out / "manifest.json").write_text("{}")
    with pytest.raises(BundleError, match="already exists"):
        export_executorch_bundle(out, "android", model, **QUIET)
    calls = {"n": 0}
    real = executorch_export.export_program

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("boom")
        return real(*args, **kwargs)

    monkeypatch.setattr(executorch_export, "export_program", failing)
    with pytest.raises(Exception, match="boom"):
        export_executorch_bundle(tmp_path / "new", "android", model, **QUIET)
    assert not (tmp_path / "new").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["b"]  # no temp directory left behind


def test_thread_pool_is_not_resized_after_programs_are_loaded(session):
    assert et_backend._pool["loaded"]
    current = et_backend._pool["threads"]
    other = current + 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        backend = et_backend.ExecuTorchBackend(threads=other)
    assert backend.threads == current
    assert any("resizing it now would crash" in str(w.message) for w in caught)


def test_backend_module_imports_no_torch():
    code = textwrap.dedent("""
        import sys
        import edgegate.runtimes.backends.executorch as e
        import edgegate.runtimes.backends.tensorrt as t
        print(int("torch" in sys.modules), int(e.ExecuTorchBackend.is_available()))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["0", "1"]


# -- wiring (the lead's diff) -------------------------------------------------------------------
def test_registry_picks_executorch_for_pte_bundles():
    assert registry.choose_backend("auto", ["executorch", "onnxruntime"], "pte") == "executorch"
    assert registry.backend_class("xnnpack") is et_backend.ExecuTorchBackend


def test_export_bundle_dispatches_pte_targets(tmp_path, monkeypatch):
    seen = {}

    def fake(out=None, target=None, model=None, **kwargs):
        seen.update(out=out, target=target, model=model, **kwargs)
        return Path(out)

    monkeypatch.setattr(executorch_export, "export_executorch_bundle", fake)
    model = tiny_whisper(adapters=())
    export_bundle(tmp_path / "x", "android", model, **QUIET)
    assert seen["model"] is model and Path(seen["out"]) == tmp_path / "x"
    assert getattr(seen["target"], "name", seen["target"]) in ("android", "phone")


# -- the real Whisper base ---------------------------------------------------------------------
@pytest.mark.slow
def test_whisper_base_gated_parity_on_librivox(librivox, tmp_path_factory):
    """Shipped gate set on ExecuTorch vs the PyTorch gated model: same masks, same tokens (dense and
    budget 0.5), on 2 LibriVox clips."""
    from edgegate.gate_set import shipped_gate_sets
    from edgegate.gated import load_gated

    if "whisper-base" not in shipped_gate_sets():
        pytest.skip("no shipped whisper-base gate set in edgegate/assets")
    # fp32 linears: the PyTorch reference computes no int8 (the android default; its parity is the int8 tests')
    path = export_executorch_bundle(tmp_path_factory.mktemp("base") / "base-android", "android", "whisper-base",
                                    gates="whisper-base", precision="fp32", **QUIET)
    session = Session.load(path, threads=2)
    assert session.backend.name == "executorch" and session.has_predictor
    reference = load_gated("whisper-base", threads=2)
    info = json.loads((path / "manifest.json").read_text())
    assert info["files"]["model.pte"]["bytes"] > 100e6
    for clip, _ in librivox[:2]:
        samples = str(clip)
        for budget in (0.0, 0.5):
            a = reference.transcribe_windows(samples, language="en", budget=budget)
            b = session.transcribe_windows(samples, language="en", budget=budget)
            assert b.mask == a.mask, (clip.name, budget)
            assert b.tokens == a.tokens, (clip.name, budget, a.text, b.text)
            # the explicit-mask path: WhisperModel.transcribe(mask=...) on the adapted model
            c = reference.wm.transcribe_windows(samples, language="en", mask=a.mask, audio_ctx=reference.audio_ctx)
            d = session.transcribe_windows(samples, language="en", mask=a.mask)
            assert d.tokens == c.tokens == a.tokens
            if budget == 0.0:
                assert len(b.tokens) > 5


def test_context_tail_model_is_refused_with_one_line(tmp_path):
    """The context tail's padding slice does not pass torch.export: a clear error, nothing written."""
    model = tiny_whisper()
    model.context_tail = True
    with pytest.raises(ModelError, match="context tail .* ExecuTorch.*--target cpu"):
        export_executorch_bundle(tmp_path / "tail", "android", model, precision="fp32", **QUIET)
    assert not (tmp_path / "tail").exists()
