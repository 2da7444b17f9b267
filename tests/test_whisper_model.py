"""The gated Whisper model: parity with transformers and CTranslate2's converter, gates, costs."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edgegate.decoding import LogitFilter, decode  # noqa: E402
from edgegate.models.costs import module_costs  # noqa: E402
from edgegate.models.loaders import load_hf, load_openai, load_whisper  # noqa: E402
from edgegate.models.registry import resolve_model  # noqa: E402
from edgegate.models.whisper import Whisper  # noqa: E402
from edgegate.tokenizer import WhisperTokenizer  # noqa: E402
from edgegate.transcriber import TorchDecoderState, WhisperModel  # noqa: E402


@pytest.fixture(scope="module")
def tokenizer() -> WhisperTokenizer:
    return WhisperTokenizer.from_file(resolve_model("whisper-base") / "tokenizer.json")


@pytest.fixture(scope="module")
def mel() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn(1, 80, 3000, generator=g) * 0.5


def _hf_model(path):
    import transformers

    return transformers.WhisperForConditionalGeneration.from_pretrained(path).eval()


def _hf_greedy(hf, mel, prompt, filt, n):
    """A plain argmax loop on transformers' full forward (no KV cache), same suppression as ours."""
    tokens = list(prompt)
    with torch.no_grad():
        for i in range(n):
            logits = hf(input_features=mel, decoder_input_ids=torch.tensor([tokens])).logits[:, -1].numpy()
            tokens.append(int(np.argmax(filt(logits, first=i == 0)[0])))
    return tokens[len(prompt):]


def test_hf_parity_logits_and_greedy_tokens(tiny_hf_dir, mel, tokenizer):
    hf = _hf_model(tiny_hf_dir)
    ours = load_hf(tiny_hf_dir)
    prompt = tokenizer.sot_sequence("en", "transcribe")
    tokens = torch.tensor([prompt + [440, 2425, 1002, 13]])
    with torch.no_grad():
        ref = hf(input_features=mel, decoder_input_ids=tokens).logits
        got = ours(mel, tokens)
    assert got.shape == ref.shape
    assert (got - ref).abs().max().item() < 1e-4

    filt = LogitFilter(tokenizer, ours.dims.n_vocab)
    expected = _hf_greedy(hf, mel, prompt, filt, 12)
    with torch.inference_mode():
        cross = ours.cross_kv(ours.embed_audio(mel))
    result = decode(lambda: TorchDecoderState(ours, cross, ours.split_gates(None)), tokenizer,
                    ours.dims.n_vocab, "en", max_tokens=12)
    eot_free = [t for t in expected if t != tokenizer.eot]
    assert result.tokens == eot_free[: len(result.tokens)]
    assert len(result.tokens) == min(12, expected.index(tokenizer.eot) if tokenizer.eot in expected else 12)


def test_ctranslate2_converter_output_loads_with_same_logits(tiny_hf_dir, tmp_path, mel, tokenizer):
    ct2 = pytest.importorskip("ctranslate2")
    out = tmp_path / "ct2"
    ct2.converters.TransformersConverter(str(tiny_hf_dir)).convert(str(out), quantization="float32")
    ours_ct2 = load_whisper(out)
    ours_hf = load_hf(tiny_hf_dir)
    tokens = torch.tensor([tokenizer.sot_sequence("de", "translate") + [100, 200]])
    with torch.no_grad():
        assert (ours_ct2(mel, tokens) - ours_hf(mel, tokens)).abs().max().item() < 1e-4


def test_openai_checkpoint_round_trip_is_weights_only(tiny_hf_dir, tmp_path, mel):
    from dataclasses import asdict

    model = load_hf(tiny_hf_dir)
    path = tmp_path / "tiny.pt"
    torch.save({"dims": asdict(model.dims), "model_state_dict": model.state_dict()}, path)
    again = load_openai(path)
    tokens = torch.tensor([[50258, 50259, 50359, 50363]])
    with torch.no_grad():
        assert torch.equal(again(mel, tokens), model(mel, tokens))
    # A checkpoint that needs pickle code is refused, not executed.
    torch.save({"dims": asdict(model.dims), "model_state_dict": {}, "evil": object()}, tmp_path / "evil.pt")
    with pytest.raises(Exception, match="weights-only"):
        load_openai(tmp_path / "evil.pt")


def _count_calls(model: Whisper) -> dict[str, int]:
    counts: dict[str, int] = {}

    def hook(name):
        def fn(*_):
            counts[name] = counts.get(name, 0) + 1
        return fn

    for i, b in enumerate(model.encoder.blocks):
        b.attn.query.register_forward_hook(hook(f"encoder.{i}.attn"))  # attention runs as project_kv + attend
        b.mlp.register_forward_hook(hook(f"encoder.{i}.mlp"))
    for i, b in enumerate(model.decoder.blocks):
        b.attn.query.register_forward_hook(hook(f"decoder.{i}.self_attn"))
        b.cross_attn.query.register_forward_hook(hook(f"decoder.{i}.cross_attn"))
        b.cross_attn.key.register_forward_hook(hook(f"decoder.{i}.cross_attn.kv"))
        b.mlp.register_forward_hook(hook(f"decoder.{i}.mlp"))
    return counts


def test_skipped_module_is_not_computed(tiny_hf_dir, mel, tokenizer):
    model = load_hf(tiny_hf_dir)
    counts = _count_calls(model)
    wm = WhisperModel(model, tokenizer)
    audio = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    skip = {"encoder.1.mlp", "decoder.0.cross_attn", "decoder.1.self_attn"}
    mask = [n not in skip for n in model.gate_names]
    wm.transcribe_windows(audio, language="en", mask=mask, dense_check="off")  # the plan alone
    for name in model.gate_names:
        if name in skip:
            assert counts.get(name, 0) == 0, name
        else:
            assert counts.get(name, 0) > 0, name
    assert counts.get("decoder.0.cross_attn.kv", 0) == 0  # no K/V projection for a skipped cross-attention
    assert counts.get("decoder.1.cross_attn.kv", 0) == 1  # computed once per utterance, not per step


def test_all_gates_on_equals_dense_and_gate_changes_output(tiny_hf_dir, mel, tokenizer):
    model = load_hf(tiny_hf_dir)
    tokens = torch.tensor([tokenizer.sot_sequence("en") + [1, 2, 3]])
    n = len(model.gate_names)
    with torch.no_grad():
        dense = model(mel, tokens)
        on = model(mel, tokens, torch.ones(n, dtype=torch.bool))
        off = torch.ones(n, dtype=torch.bool)
        off[model.gate_names.index("decoder.1.mlp")] = False
        gated = model(mel, tokens, off)
    assert torch.equal(dense, on)
    assert not torch.allclose(dense, gated)


def test_training_gates_multiply_and_pass_gradients(tiny_hf_dir, mel, tokenizer):
    model = load_hf(tiny_hf_dir).train()
    n = len(model.gate_names)
    gates = torch.ones(1, n, requires_grad=True)
    tokens = torch.tensor([tokenizer.sot_sequence("en") + [1, 2]])
    model(mel[:, :, :400], tokens, gates).logsumexp(-1).sum().backward()
    assert gates.grad is not None and (gates.grad.abs() > 0).all()
    # A zero float gate equals the module skipped at inference.
    zero = torch.ones(1, n)
    zero[0, 3] = 0
    with torch.no_grad():
        train_out = model(mel[:, :, :400], tokens, zero)
        model.eval()
        infer = model(mel[:, :, :400], tokens, zero[0].bool())
    assert (train_out - infer).abs().max().item() < 1e-5


def test_skip_adapters_keep_dense_path_identical(tiny_hf_dir, mel, tokenizer):
    model = load_hf(tiny_hf_dir)
    tokens = torch.tensor([tokenizer.sot_sequence("en") + [5]])
    with torch.no_grad():
        before = model(mel, tokens)
        model.add_skip_adapters(rank=4)
        for p in model.skip_adapters.parameters():
            p.add_(0.1)  # non-trivial adapters
        after_dense = model(mel, tokens, torch.ones(len(model.gate_names), dtype=torch.bool))
        mask = torch.ones(len(model.gate_names), dtype=torch.bool)
        mask[0] = False
        with_adapter = model(mel, tokens, mask)
        model.skip_adapters.clear()
        without_adapter = model(mel, tokens, mask)
    assert torch.equal(before, after_dense)
    assert not torch.allclose(with_adapter, without_adapter)


def test_cost_table_matches_design_figures():
    from edgegate.models.whisper import ModelDims

    costs = module_costs(ModelDims(), n_frames=1500, n_tokens=1)
    encoder = sum(c.flops for n, c in costs.items() if n.startswith("encoder"))
    assert 80e9 < encoder < 90e9  # DESIGN.md: ~84 GFLOPs for a padded 30-s window
    cross_kv = sum(4 * 1500 * 512 * 512 for _ in range(6))
    assert 9e9 < cross_kv < 1e10
    assert list(costs) == Whisper(ModelDims(n_vocab=100, n_audio_ctx=10, n_text_ctx=10)).gate_names
    more = module_costs(ModelDims(), n_frames=1500, n_tokens=20)
    assert more["decoder.0.mlp"].flops == 20 * costs["decoder.0.mlp"].flops


@pytest.mark.slow
def test_a_trimmed_context_that_loops_falls_back_to_the_full_window(base_model):
    from edgegate.data.librivox import real_clips

    clips = {u: p for u, p, _ in real_clips()}
    if "cards-001" not in clips:
        pytest.skip("Debian package pocketsphinx-testdata is not installed (apt-get install pocketsphinx-testdata)")
    audio = str(clips["cards-001"])  # "ten of clubs", 1.5 s: the unadapted model loops on a 16-position margin
    plain = base_model.transcribe_windows(audio, language="en", audio_ctx=16, dense_check="off")
    assert len(plain.tokens) == base_model.max_tokens and plain.context_fallbacks == 0
    full = base_model.transcribe_windows(audio, language="en", audio_ctx=None)
    checked = base_model.transcribe_windows(audio, language="en", audio_ctx=16)  # the default check: loops
    assert checked.context_fallbacks == 1 and checked.tokens == full.tokens
    assert full.context_fallbacks == 0  # nothing to fall back to at full context
    # the long-form path does the same before raising the temperature
    segments, info = base_model.transcribe(audio, language="en", audio_ctx=16)
    segments = list(segments)
    assert info.context_fallbacks == 1 and [s.temperature for s in segments] == [0.0]
    reference, _ = base_model.transcribe(audio, language="en", audio_ctx=None)
    assert [s.tokens for s in segments] == [s.tokens for s in reference]
    assert base_model.ports(dense_check="off").context_fallback is False


@pytest.mark.slow
def test_the_edge_model_at_full_context_is_whisper_base(base_model, librivox):
    from edgegate.transcriber import WhisperModel

    edge = WhisperModel("whisper-base-edge", threads=2)
    assert edge.default_audio_ctx == 64  # its rule: the real length + 64 positions
    for path, _ in librivox[:2]:
        a = base_model.transcribe_windows(str(path), language="en", audio_ctx=None)
        b = edge.transcribe_windows(str(path), language="en", audio_ctx="full")
        assert a.tokens == b.tokens and b.context_fallbacks == 0
