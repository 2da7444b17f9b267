"""Reading OWSM checkpoint directories (strictly, with one-line errors), the token list and the frontend."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

torch = pytest.importorskip("torch")

from edgegate.errors import AudioError, EdgegateError, ModelError  # noqa: E402
from edgegate.frontend_owsm import load_stats, power_spectrum  # noqa: E402
from edgegate.models.owsm_config import is_owsm_dir  # noqa: E402
from edgegate.models.owsm_loader import load_owsm  # noqa: E402
from edgegate.models.owsm_transcriber import OwsmModel  # noqa: E402
from edgegate.tokenizer_owsm import OwsmTokenizer  # noqa: E402

FIXTURE = Path(__file__).parent / "fixtures" / "owsm" / "owsm_tiny"
EXP = "exp/s2t_train_s2t_ebf_conv2d_size16_e2_d2_tiny_raw_bpe1600"
PTH = f"{EXP}/valid.total_count.ave_5best.till45epoch.pth"


@pytest.fixture()
def copy(tmp_path) -> Path:
    target = tmp_path / "owsm"
    shutil.copytree(FIXTURE, target)
    return target


@pytest.fixture(scope="module")
def ckpt():
    return load_owsm(FIXTURE)


def _one_line_error(directory: Path, *needles: str) -> str:
    with pytest.raises(ModelError) as exc:
        load_owsm(directory)
    message = str(exc.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message
    return message


def _edit_config(directory: Path, section: str | None, key: str, value) -> None:
    path = directory / EXP / "config.yaml"
    cfg = yaml.safe_load(path.read_text())
    (cfg if section is None else cfg[section])[key] = value
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


def _edit_weights(directory: Path, edit) -> None:
    state = torch.load(directory / PTH, weights_only=True)
    edit(state)
    torch.save(state, directory / PTH)


def test_loads_the_fixture_as_downloaded(ckpt):
    assert is_owsm_dir(FIXTURE) and not is_owsm_dir(FIXTURE / "data")
    assert ckpt.model.dims.n_vocab == len(ckpt.tokenizer.token_list) == 1602
    assert not ckpt.model.training


@pytest.mark.parametrize("missing", [PTH, f"{EXP}/config.yaml", "data/token_list/bpe_unigram1600/bpe.model",
                                     "exp/s2t_stats_raw_bpe1600/train/feats_stats.npz"])
def test_missing_file_is_a_one_line_error(copy, missing):
    (copy / missing).unlink()
    _one_line_error(copy, Path(missing).name)


def test_without_meta_yaml_the_exp_directory_is_found(copy):
    (copy / "meta.yaml").unlink()
    assert load_owsm(copy).model.dims.n_vocab == 1602
    shutil.copy(copy / PTH, copy / EXP / "checkpoint_10.pth")  # two .pth, one averaged: take that one
    assert load_owsm(copy).model.dims.n_vocab == 1602
    shutil.copy(copy / PTH, copy / EXP / "other.ave_3best.pth")
    _one_line_error(copy, "several .pth")


def test_not_a_directory(tmp_path):
    _one_line_error(tmp_path / "nope", "not a directory")
    _one_line_error(tmp_path, "exp/*/config.yaml")


@pytest.mark.parametrize(("section", "key", "value", "needle"), [
    ("encoder_conf", "pos_enc_layer_type", "rel_pos", "encoder_conf.pos_enc_layer_type='rel_pos'"),
    ("encoder_conf", "attention_layer_type", "rel_selfattn", "attention_layer_type"),
    ("encoder_conf", "qk_norm", True, "qk_norm"),
    (None, "encoder", "conformer", "encoder='conformer'"),
    ("frontend_conf", "htk", True, "htk"),
])
def test_unsupported_config_is_refused(copy, section, key, value, needle):
    _edit_config(copy, section, key, value)
    _one_line_error(copy, "unsupported OWSM config", needle)


def test_relative_position_is_the_default_when_the_key_is_absent(copy):
    path = copy / EXP / "config.yaml"
    cfg = yaml.safe_load(path.read_text())
    del cfg["encoder_conf"]["pos_enc_layer_type"]  # ESPnet's default is rel_pos: not what we run
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    _one_line_error(copy, "pos_enc_layer_type='rel_pos'")


def test_unexpected_key_is_refused(copy):
    _edit_weights(copy, lambda s: s.__setitem__("encoder.encoders.0.extra.weight", torch.zeros(3)))
    _one_line_error(copy, "unexpected weights", "encoder.encoders.0.extra.weight")


def test_missing_key_is_refused(copy):
    _edit_weights(copy, lambda s: s.pop("decoder.decoders.1.src_attn.linear_k.bias"))
    _one_line_error(copy, "weights missing", "decoder.decoders.1.src_attn.linear_k.bias")


def test_shape_that_does_not_match_the_config_is_refused(copy):
    _edit_config(copy, "encoder_conf", "linear_units", 64)
    _one_line_error(copy, "feed_forward", "(48, 16)", "(64, 16)")


def test_pickled_object_is_refused(copy):
    torch.save({"weights": object()}, copy / PTH)
    _one_line_error(copy, "weights-only")


def test_token_list_that_disagrees_with_tokens_txt(copy):
    tokens = copy / "data/token_list/bpe_unigram1600/tokens.txt"
    lines = tokens.read_text().splitlines()
    lines[100], lines[101] = lines[101], lines[100]
    tokens.write_text("\n".join(lines) + "\n")
    _one_line_error(copy, "tokens.txt differs")


# -- tokenizer ------------------------------------------------------------------------------------
def test_special_tokens_and_prompt(ckpt):
    tok = ckpt.tokenizer
    ids = tok.token_to_id
    assert tok.language_codes == ["abk", "deu", "eng", "fra", "jpn", "spa", "zho", "zul"]
    assert tok.sot_sequence("en") == [ids["<sos>"], ids["<eng>"], ids["<asr>"], ids["<notimestamps>"]]
    assert tok.sot_sequence("German", "translate")[1:3] == [ids["<deu>"], ids["<st_eng>"]]
    assert tok.sot_sequence("fra", "st_deu")[2] == ids["<st_deu>"]
    assert tok.suppress_tokens() == list(range(ids["<0.00>"], ids["<30.00>"] + 1))
    assert len(tok.suppress_tokens()) == 1501
    with pytest.raises(EdgegateError, match="valid codes"):
        tok.normalize_language("klingon")
    with pytest.raises(EdgegateError, match="unknown task"):
        tok.task_token("summarize")


def test_text_round_trip_matches_sentencepiece(ckpt):
    import sentencepiece

    tok = ckpt.tokenizer
    sp = sentencepiece.SentencePieceProcessor(model_file=str(tok.bpe_model))
    text = "the quick brown fox jumps over the lazy dog"
    ids = tok.encode(text)
    assert [tok.token_list[i] for i in ids] == sp.encode(text, out_type=str)
    assert tok.decode(ids) == sp.decode_pieces([tok.token_list[i] for i in ids]) == text
    assert tok.decode([tok.sot, tok.language_token("en"), *ids, tok.eot]) == text  # specials left out
    assert tok.encode("zq") and tok.unk not in tok.encode("the dog")


def test_token_list_without_specials_is_refused():
    with pytest.raises(ModelError, match="lacks special tokens"):
        OwsmTokenizer(["<blank>", "<unk>", "a", "b"])


# -- frontend and transcriber -------------------------------------------------------------------------
def test_power_spectrum_equals_torch_stft():
    x = np.random.default_rng(3).standard_normal(16000).astype(np.float32)
    spec = torch.stft(torch.from_numpy(x), 512, 160, 400, torch.hann_window(400), center=True,
                      pad_mode="reflect", return_complex=True)
    theirs = (spec.abs() ** 2).T.double().numpy()
    ours = power_spectrum(x)
    assert ours.shape == theirs.shape == (101, 257)
    assert np.abs(ours - theirs).max() < 1e-3 * theirs.max()
    with pytest.raises(AudioError, match="too short"):
        power_spectrum(np.zeros(100))


def test_bad_stats_file(tmp_path):
    np.savez(tmp_path / "s.npz", count=np.array(3))
    with pytest.raises(ModelError, match="feats_stats"):
        load_stats(tmp_path / "s.npz")


def test_windows_and_masks_in_the_transcriber(ckpt):
    model = OwsmModel(ckpt)
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal(int(4.1 * 16000))).astype(np.float32)  # 2-s windows: 2 + 2 + 0.1 s
    assert [start for start, _ in model.windows(audio)] == [0.0, 2.0]  # a tail under 0.2 s is dropped
    dense = model.transcribe(audio, language="en")
    assert len(dense.segments) == 2 and dense.segments[1].start == 2.0
    mask = [name != "encoder.0.cgmlp" for name in model.gate_names]
    gated = model.transcribe(audio, language="en", mask=mask)
    assert gated.mask == mask and gated.tokens != dense.tokens
    with pytest.raises(EdgegateError, match="unknown task"):
        model.transcribe(audio, task="summarize")
