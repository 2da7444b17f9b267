"""The context tail: trimmed windows read the padding's states, in PyTorch and on the runtime alike."""

import json

import numpy as np
import pytest

from edgegate.context_tail import PADDING_LOG_MEL, TailCache, extend_window, frame_axes, padding_mel

torch = pytest.importorskip("torch")

from edgegate.errors import BundleError, ModelError  # noqa: E402
from edgegate.export.core import export_bundle  # noqa: E402
from edgegate.models.registry import resolve_model, tokenizer_path  # noqa: E402
from edgegate.runtimes.bundle import Bundle  # noqa: E402
from edgegate.runtimes.session import Session  # noqa: E402
from edgegate.tokenizer import WhisperTokenizer  # noqa: E402
from edgegate.transcriber import WhisperModel  # noqa: E402

from tiny import noise_clip, tiny_whisper  # noqa: E402


def test_extend_window_appends_the_tail_positions_along_the_frame_axis():
    window = {"k": np.ones((1, 2, 3, 4), np.float32), "other": np.zeros(2)}
    tail = {"k": np.arange(2 * 10 * 4, dtype=np.float32).reshape(1, 2, 10, 4)}
    out = extend_window(window, tail, {"k": 2})
    assert out["k"].shape == (1, 2, 10, 4)
    assert (out["k"][:, :, :3] == 1).all()
    np.testing.assert_array_equal(out["k"][:, :, 3:], tail["k"][:, :, 3:])
    assert out["other"] is window["other"]
    full = {"k": tail["k"].copy()}
    assert extend_window(full, tail, {"k": 2})["k"] is full["k"]  # a full window is left alone


def test_tail_cache_computes_once_per_key():
    calls = []
    cache = TailCache(lambda key: calls.append(key) or {"v": np.zeros(1)}, max_entries=2)
    for key in (b"a", b"a", b"b", b"a", b"c"):
        cache.get(key)
    assert calls == [b"a", b"b", b"c"]


def test_frame_axes_reads_the_output_specs():
    class T:
        def __init__(self, value, shape):
            self.value, self.shape = value, shape

    outs = [T("xa", ["batch", "frames", 64]), T("cross_k.0", ["kv_batch", 4, "frames", 16]), T("x", [1])]
    assert frame_axes(outs, ["cross_k.0", "x"]) == {"cross_k.0": 2}


def test_pytorch_trimmed_window_gets_the_padding_states():
    model = tiny_whisper()
    mel = torch.randn(1, 80, 200)
    padded = torch.cat([mel, torch.full((1, 80, 2800), PADDING_LOG_MEL)], dim=-1)
    with torch.no_grad():
        plain = model.embed_audio(mel)
        full = model.embed_audio(padded)
        model.context_tail = True
        xa = model.embed_audio(mel)
        pad_only = model.encoder(torch.full((1, 80, 3000), PADDING_LOG_MEL), [None] * 4, [None] * 4)
    assert plain.shape[1] == 100 and xa.shape == (1, 1500, 64)
    # the memory tail is the padding-only window's states; the frames attend to its keys and values, so they
    # come much closer to what the full window gives them than the plain trimmed encoder does
    torch.testing.assert_close(xa[:, 100:], pad_only[:, 100:])
    assert (xa[:, :100] - full[:, :100]).abs().mean() < 0.5 * (plain - full[:, :100]).abs().mean()
    # a window of nothing but padding, trimmed, is the full window (up to the float16 keys and values), but
    # for the last frame, where the convolutions see their zero padding instead of the next frames
    with torch.no_grad():
        trimmed_pad = model.embed_audio(torch.full((1, 80, 200), PADDING_LOG_MEL))
    torch.testing.assert_close(trimmed_pad[:, :99], pad_only[:, :99], atol=2e-2, rtol=0)
    torch.testing.assert_close(model.embed_audio(padded), full)  # a full window is left alone
    # a skipped encoder module gives a tail computed without it (cached per encoder mask)
    gates = torch.ones(len(model.gate_names), dtype=torch.bool)
    gates[0] = False
    with torch.no_grad():
        skipped = model.embed_audio(mel, gates)
    assert not torch.allclose(skipped[:, 100:], xa[:, 100:])
    model.forget_padding_states()
    assert not model._tails


@pytest.fixture(scope="module")
def tail_pair(tmp_path_factory):
    model = tiny_whisper()
    model.context_tail = True
    model.default_audio_ctx = 16
    tok = WhisperTokenizer.from_file(tokenizer_path(resolve_model("whisper-base")))
    path = export_bundle(tmp_path_factory.mktemp("tail") / "tiny", "cpu", model, precision="fp32",
                         progress=False, log=lambda m: None)
    return WhisperModel(model, tok, threads=1), Session.load(path, threads=1, full_vocab=True), path


def test_runtime_window_matches_pytorch_with_the_tail(tail_pair):
    ref, session, path = tail_pair
    assert Bundle.open(path).decoding["context_tail"] is True
    mel = np.random.default_rng(0).standard_normal((1, 80, 200)).astype(np.float32)
    mask = np.ones(len(session.gate_names), dtype=bool)
    window = session.encode(mel, mask)
    with torch.no_grad():
        kv = ref.model.cross_kv(ref.model.embed_audio(torch.from_numpy(mel)))
    key = next(k for k in window if k.startswith("cross_k"))
    layer = int(key.rsplit(".", 1)[1])
    assert window[key].shape[2] == 1500
    np.testing.assert_allclose(window[key][0], kv[layer][0][0].numpy(), atol=2e-4)


def test_runtime_tokens_match_pytorch_at_the_models_trimmed_context(tail_pair):
    ref, session, _ = tail_pair
    audio = noise_clip(1.5, seed=3)
    a = ref.transcribe_windows(audio, language="en", audio_ctx="auto")
    b = session.transcribe_windows(audio, language="en", audio_ctx="auto")
    assert len(a.tokens) > 0 and b.tokens == a.tokens


def test_runtime_and_pytorch_fall_back_to_the_full_window_alike(tail_pair):
    ref, session, _ = tail_pair
    # a random model fails on most windows: both paths then encode the full window and decode again
    for seed in range(4):
        audio = noise_clip(1.0, seed=seed)
        a = ref.transcribe_windows(audio, language="en", audio_ctx=8)
        b = session.transcribe_windows(audio, language="en", audio_ctx=8)
        assert b.tokens == a.tokens and b.context_fallbacks == a.context_fallbacks
        off = session.transcribe_windows(audio, language="en", audio_ctx=8, dense_check="off")
        assert off.context_fallbacks == 0
        if a.context_fallbacks:
            full = session.transcribe_windows(audio, language="en", audio_ctx="full")
            assert b.tokens == full.tokens
            return
    pytest.fail("no window of the random model failed: the fallback was never exercised")


def test_a_bad_context_tail_field_is_one_line(tail_pair, tmp_path):
    import shutil

    _, _, path = tail_pair
    bad = tmp_path / "bad"
    shutil.copytree(path, bad)
    m = json.loads((bad / "manifest.json").read_text())
    m["decoding"]["context_tail"] = "yes"
    (bad / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="decoding.context_tail"):
        Bundle.open(bad, verify=False)


def test_registered_edge_model_is_a_rule_over_the_base(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGEGATE_CACHE", str(tmp_path))
    from edgegate.models import registry

    d = resolve_model("whisper-base-edge")
    spec = json.loads((d / "adapt.json").read_text())
    assert spec["base_model"] == "whisper-base" and spec["delta"] is None
    assert spec["context_tail"] is True and spec["audio_ctx"] == registry.EDGE_MODELS["whisper-base-edge"]["audio_ctx"]
    (d / "adapt.json").write_text("{}")  # a damaged spec is rewritten, not trusted
    assert json.loads((resolve_model("whisper-base-edge") / "adapt.json").read_text()) == spec
    with pytest.raises(ModelError, match="whisper-base-edge"):
        resolve_model("whisper-base-edgy")


def test_padding_mel_is_constant():
    m = padding_mel(80, 3000)
    assert m.shape == (1, 80, 3000) and (m == PADDING_LOG_MEL).all()


def test_each_registered_model_gets_the_gate_set_trained_on_it():
    from edgegate.gate_set import GATES_FILE, GateSpec, default_gate_set, resolve_gates_dir

    # each trained at its model's own encoder context: full for whisper-base, the edge rule's margin 64
    for model, audio_ctx in (("whisper-base", None), ("whisper-base-edge", 64)):
        spec = GateSpec.read(resolve_gates_dir(default_gate_set(model)) / GATES_FILE)
        assert spec.model == model and spec.scope == "decoder" and spec.audio_ctx == audio_ctx
    assert default_gate_set("/some/checkpoint") == default_gate_set("whisper-base")


def test_int8_export_of_a_tail_model_keeps_its_encoder_fp32(tmp_path):
    from edgegate.export.core import stage_precision

    assert stage_precision("int8", "encoder", True) == "fp32"
    assert stage_precision("int8", "decoder_step", True) == "int8"
    assert stage_precision("int8", "encoder", False) == "int8"
    assert stage_precision("fp16", "encoder", True) == "fp16"
    model = tiny_whisper()
    model.context_tail = True
    model.default_audio_ctx = 16
    path = export_bundle(tmp_path / "tiny8", "cpu", model, precision="int8", progress=False, log=lambda m: None)
    precisions = {m["name"]: m["precision"] for m in json.loads((path / "manifest.json").read_text())["modules"]}
    assert all(p == "fp32" for n, p in precisions.items() if n.startswith("encoder."))
    assert "int8" in {p for n, p in precisions.items() if n.startswith("decoder.")}


def test_tail_costs_count_attention_over_the_whole_window(tail_pair):
    """Cross-attention of a tail model reads all n_audio_ctx positions: its per-token cost at 64 frames is the
    full window's; the bundle's manifest and the PyTorch planner agree on it."""
    from edgegate.models.costs import cross_kv_terms, flop_costs, module_cost_terms

    ref, session, path = tail_pair
    d = ref.model.dims
    tail, plain = module_cost_terms(d, context_tail=True), module_cost_terms(d)
    cross = next(k for k in tail if k.endswith("cross_attn"))
    kv = cross_kv_terms(d.n_text_state)
    assert tail[cross][0].at(64, 10) - kv.at(64, 10) == plain[cross][0].at(d.n_audio_ctx, 10) - kv.at(d.n_audio_ctx, 10)
    attn = next(k for k in tail if k.startswith("encoder") and k.endswith("attn"))
    assert tail[attn][0].at(64, 10) > plain[attn][0].at(64, 10)
    assert tail[attn][0].at(d.n_audio_ctx, 10) == plain[attn][0].at(d.n_audio_ctx, 10)
    manifest = Bundle.open(path).gate_terms
    planner = flop_costs(d, context_tail=True)(64, 10)
    np.testing.assert_array_equal(planner, [manifest[n].at(64, 10) for n in session.gate_names])
