"""OWSM parity with ESPnet 202511 on the committed fixture (tests/fixtures/owsm/make_fixture.py made it
with ESPnet's own classes; this file needs neither ESPnet nor its venv).

Every reference tensor within 1e-4, the greedy tokens of ESPnet's Speech2Text (beam 1), its text, its
Speech2Language probabilities, and the decoder logits under three masks that ESPnet computed with
forward hooks zeroing a module's output.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edgegate.decoding import decode, log_softmax  # noqa: E402
from edgegate.frontend_owsm import slaney_mel_filters  # noqa: E402
from edgegate.models.owsm_loader import load_owsm  # noqa: E402
from edgegate.models.owsm_transcriber import OwsmModel  # noqa: E402
from edgegate.transcriber import TorchDecoderState  # noqa: E402

FIXTURE = Path(__file__).parent / "fixtures" / "owsm"
TOL = 1e-4


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
    with np.load(FIXTURE / "reference.npz", allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def ckpt():
    torch.set_num_threads(1)
    return load_owsm(FIXTURE / "owsm_tiny")


@pytest.fixture(scope="module")
def wave(ref) -> np.ndarray:
    return ref["wave_int16"].astype(np.float32) / 32768


@pytest.fixture(scope="module")
def feats(ckpt, wave) -> torch.Tensor:
    return torch.from_numpy(ckpt.frontend(wave))[None]


def _close(ours: np.ndarray, theirs: np.ndarray, what: str) -> None:
    assert ours.shape == theirs.shape, what
    diff = float(np.abs(ours - theirs).max())
    assert diff < TOL, f"{what}: max abs diff {diff:.2e}"


def test_fixture_is_small_and_pickle_free():
    total = sum(p.stat().st_size for p in FIXTURE.rglob("*") if p.is_file())
    assert total < 2 * 1024 * 1024, total
    with np.load(FIXTURE / "reference.npz", allow_pickle=False) as z:
        assert all(z[k].dtype != object for k in z.files)


def test_features_match_espnet(ckpt, wave, ref):
    fe = ckpt.frontend
    assert fe.window_samples == 2 * 16000  # the fixture's speech_length, read from its config.yaml
    log_mel = fe.log_mel(fe.pad_or_trim(wave))
    _close(log_mel, ref["feats"], "log-mel")
    _close(fe(wave), ref["feats_normalized"], "normalised features")


def test_mel_filters_match_librosa_in_checkpoint(ckpt):
    # The checkpoint's melmat is librosa's (ESPnet computed it); ours is written from the formulas.
    ours = slaney_mel_filters(16000, 512, 80)
    theirs = ckpt.model.frontend.logmel.melmat.numpy()
    assert np.abs(ours - theirs).max() < 1e-7


def test_encoder_matches_espnet_layer_by_layer(ckpt, feats, ref):
    model = ckpt.model
    layers = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: layers.append(out[0].numpy().copy()))
             for m in model.encoder.encoders]
    with torch.no_grad():
        _close(model.encoder.embed(feats)[0].numpy(), ref["subsampled"], "subsampling output")
        enc = model.embed_audio(feats)[0].numpy()
    for h in hooks:
        h.remove()
    for i, layer in enumerate(layers):
        _close(layer, ref[f"encoder_layer_{i}"], f"encoder layer {i}")
    _close(enc, ref["encoder_out"], "encoder output")


def test_per_step_logprobs_match_espnet_with_kv_cache(ckpt, feats, ref):
    model = ckpt.model
    yseq = ref["greedy_yseq"].tolist()
    with torch.no_grad():
        state = TorchDecoderState(model, model.cross_kv(model.embed_audio(feats)), model.split_gates(None))
        steps = [state.step(np.array([yseq[:4]]))]  # the prompt, then one token at a time
        steps += [state.step(np.array([[t]])) for t in yseq[4:-1]]
    ours = log_softmax(np.concatenate(steps)).astype(np.float32)
    _close(ours, ref["step_logprobs"], "per-step log-probs")


def test_greedy_tokens_and_text_match_speech2text(ckpt, wave, ref):
    model = OwsmModel(ckpt)
    result = model.transcribe(wave, language="eng")
    # ESPnet's token_int: <lang> <task> <notimestamps> then what was generated (here up to maxlen).
    assert result.tokens == ref["greedy_token_int"][3:].tolist()
    assert len(result.tokens) == ref["encoder_out"].shape[0]  # ran to ESPnet's maxlen: one per position
    assert result.text == str(ref["greedy_text_nospecial"])
    assert model.transcribe(wave, language="en").tokens == result.tokens  # Whisper's code, same prompt


def test_language_identification_matches_speech2language(ckpt, feats, ref):
    model = ckpt.model
    with torch.no_grad():
        cross = model.cross_kv(model.embed_audio(feats))
    res = decode(lambda: TorchDecoderState(model, cross, model.split_gates(None)), ckpt.tokenizer,
                 model.dims.n_vocab, None, max_tokens=1)
    theirs = dict(zip([c.strip("<>") for c in ref["lid_langs"]], ref["lid_probs"].tolist(), strict=True))
    assert res.language == max(theirs, key=theirs.get)
    for code, p in theirs.items():
        assert abs(res.language_probs[code] - p) < 1e-5, code


def _mask(names: list[str], skipped: str) -> torch.Tensor:
    return torch.tensor([n != skipped for n in names])


@pytest.mark.parametrize(("key", "skipped"), [("mask_cgmlp", "encoder.0.cgmlp"), ("mask_attn", "encoder.1.attn"),
                                              ("mask_dec_ffn", "decoder.1.ffn")])
def test_gated_logits_match_espnet_hooks(ckpt, feats, ref, key, skipped):
    model = ckpt.model
    tokens = torch.from_numpy(ref["greedy_yseq"][: ref["logits_dense"].shape[0]])[None]
    gates = _mask(model.gate_names, skipped)
    with torch.no_grad():
        logits = model(feats, tokens, gates)[0].numpy()
        enc = model.embed_audio(feats, gates)[0].numpy()
        dense = model(feats, tokens)[0].numpy()
    _close(dense, ref["logits_dense"], "dense logits")
    _close(enc, ref[f"encoder_out_{key}"], f"encoder output, {skipped} skipped")
    _close(logits, ref[f"logits_{key}"], f"logits, {skipped} skipped")
    assert np.abs(logits - dense).max() > 1e-2  # the mask changes the output: the test can tell them apart
