"""edgegate.vocabulary: output-token shards per (language, task)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from edgegate.errors import EdgegateError
from edgegate.vocabulary import (
    VocabularyError,
    VocabularyShards,
    always_tokens,
    build_shard,
    scatter_logits,
    shard_language,
    text_encoder,
    token_bytes,
    tokenizer_fingerprint,
    word_variants,
)

N_VOCAB = 51865  # multilingual Whisper (tiny .. large-v2)
SHIPPED = "edgegate/assets/vocab/whisper-multilingual-51865.npz"
EN_WORDS = ["the", "cat", "sat", "on", "mat", "and", "looked", "at", "a", "dog", "twenty", "one", "it", "was"]


@pytest.fixture(scope="module")
def tok():
    from edgegate.models.registry import resolve_model, tokenizer_path
    from edgegate.tokenizer import WhisperTokenizer

    return WhisperTokenizer.from_file(tokenizer_path(resolve_model("whisper-base")))


@pytest.fixture(scope="module")
def shards(tok):
    en = build_shard(tok, N_VOCAB, EN_WORDS, ["Hello, world!"])
    de = build_shard(tok, N_VOCAB, ["der", "hund", "schläft", "über", "straße"], ["Grüß Gott."])
    return VocabularyShards({"en": en, "de": de}, N_VOCAB, tokenizer_fingerprint(tok), {"test": True})


def test_shard_is_sorted_unique_int32_and_holds_every_special_and_timestamp(tok, shards):
    for s in shards.shards.values():
        assert s.dtype == np.int32 and s.ndim == 1
        assert np.all(np.diff(s) > 0)
        assert set(range(tok.eot, N_VOCAB)) <= set(s.tolist())  # specials, languages, tasks, 1501 timestamps
        assert tok.timestamp_begin in s and N_VOCAB - 1 in s
        assert len(s) < N_VOCAB // 4  # a shard is a real cut, not the whole vocabulary


def test_always_tokens_keep_bytes_digits_punctuation_but_no_words(tok):
    a = set(always_tokens(tok, N_VOCAB).tolist())
    for text in (".", ",", " 1958", "?", " -", "!"):
        assert set(tok.encode(text)) <= a, text
    assert not set(tok.encode(" house")) <= a  # words come only from text
    # every single byte is a token, so any string can still be spelled from the shard
    singles = [i for i in a if i < tok.eot and len(token_bytes(tok, i)) == 1]
    assert len(singles) == 256


def test_word_variants_cover_case_and_leading_space():
    v = word_variants(["straße"], ("lower", "title"))
    assert v == sorted({"straße", " straße", "Straße", " Straße"})
    with pytest.raises(VocabularyError):
        word_variants(["x"], ("camel",))


def _ids(tok, text: str) -> list[int]:
    return text_encoder(tok).encode(text, add_special_tokens=False).ids


def test_english_text_round_trips_through_the_shard(tok, shards):
    text = " The cat sat on the mat, and it looked at a dog. Twenty-one!"
    en = set(shards.shard("en").tolist())
    for ids in (_ids(tok, text), tok.encode(text)):  # the model's split and the tokenizer file's own
        assert set(ids) <= en
        assert tok.decode(ids) == text
    # a word the shard never saw is not covered by its own tokens ...
    odd = _ids(tok, " Zyxwvut")
    assert not set(odd) <= en
    # ... but stays spellable from the single bytes every shard holds
    spelled = [tok._tok.token_to_id(c) for c in text_encoder(tok).id_to_token(odd[0])]
    assert set(spelled) <= en


def test_text_encoder_splits_like_the_model(tok):
    """The shipped tokenizer.json lacks the merge 'Ġ t'; the shard builder must not inherit that."""
    assert _ids(tok, " the") == [264] and _ids(tok, " to then") == [281, 550]
    whisper_tokenizer = pytest.importorskip("whisper.tokenizer")  # openai-whisper's tiktoken, if installed
    ref = whisper_tokenizer.get_encoding("multilingual")
    for text in (" The tall tree, they thought, was there.", "Die Straße ist nass.", " ¿Qué tal?", " l'été"):
        assert _ids(tok, text) == ref.encode(text), text


def test_translate_uses_the_english_shard(shards):
    assert shard_language("de", "translate") == "en"
    assert shards.shard("de", "translate") is shards.shards["en"]
    assert shards.shard("de", "transcribe") is shards.shards["de"]
    assert shards.select("de", "translate") is shards.shards["en"]


def test_bad_language_or_task_is_a_one_line_error(shards):
    for call in (lambda: shards.shard("xx"), lambda: shards.select("klingon"), lambda: shards.shard("en", "summarize")):
        with pytest.raises(VocabularyError) as e:
            call()
        assert isinstance(e.value, EdgegateError) and "\n" not in str(e.value)
    with pytest.raises(VocabularyError, match="no vocabulary shard for language 'ja'"):
        shards.shard("ja")
    assert shards.select("ja") is None  # a real language without a shard: the planner uses the full vocabulary
    assert shards.select(None) is None  # language still to be detected


def test_save_load_round_trip_without_pickle(tmp_path, tok, shards):
    path = shards.save(tmp_path / "v.npz")
    back = VocabularyShards.load(path, tok, N_VOCAB)
    assert back.languages == ["de", "en"]
    for k in shards.shards:
        assert np.array_equal(back.shards[k], shards.shards[k]) and back.shards[k].dtype == np.int32
    with np.load(path, allow_pickle=False) as data:  # nothing in the file needs pickle
        assert sorted(data.files) == ["meta", "shard_de", "shard_en"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left


def test_load_rejects_mismatches_and_broken_files(tmp_path, tok, shards):
    path = shards.save(tmp_path / "v.npz")
    with pytest.raises(VocabularyError, match="the model has 51866"):
        VocabularyShards.load(path, tok, 51866)
    other = VocabularyShards(shards.shards, N_VOCAB, "0" * 64)
    with pytest.raises(VocabularyError, match="another tokenizer"):
        VocabularyShards.load(other.save(tmp_path / "o.npz"), tok)
    no_specials = VocabularyShards({"en": shards.shards["en"][:100]}, N_VOCAB, shards.tokenizer_sha256)
    with pytest.raises(VocabularyError, match="special"):
        VocabularyShards.load(no_specials.save(tmp_path / "n.npz"))
    unsorted = VocabularyShards({"en": shards.shards["en"][::-1].copy()}, N_VOCAB, shards.tokenizer_sha256)
    with pytest.raises(VocabularyError, match="sorted unique"):
        VocabularyShards.load(unsorted.save(tmp_path / "u.npz"))
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(VocabularyError, match="not a vocabulary shard file"):
        VocabularyShards.load(tmp_path / "junk.npz")
    with pytest.raises(VocabularyError, match="not found"):
        VocabularyShards.load(tmp_path / "missing.npz")


def test_scatter_logits_puts_rows_back_at_their_ids(shards):
    s = shards.shard("en")
    small = np.random.default_rng(0).standard_normal((2, len(s))).astype(np.float32)
    full = scatter_logits(small, s, N_VOCAB)
    assert full.shape == (2, N_VOCAB)
    assert np.array_equal(full.argmax(-1), s[small.argmax(-1)])
    assert np.isneginf(full[:, np.setdiff1d(np.arange(N_VOCAB), s)]).all()
    with pytest.raises(VocabularyError, match="do not match"):
        scatter_logits(small[:, :-1], s, N_VOCAB)


def test_shipped_shards_cover_real_english_and_the_five_languages(tok, librivox):
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / SHIPPED
    if not path.exists():
        pytest.skip(f"{SHIPPED} not built (python benchmarks/vocab_coverage.py)")
    shipped = VocabularyShards.load(path, tok, N_VOCAB)
    assert shipped.languages == ["de", "en", "es", "fr", "it"]
    en = set(shipped.shard("en").tolist())
    # the LibriVox references are real English text that no shard source contains
    for _, ref in librivox:
        ids = _ids(tok, " " + ref.lower())
        assert sum(i not in en for i in ids) <= 1, ref


def test_import_needs_neither_torch_nor_wordfreq():
    code = ("import sys, edgegate.vocabulary; "
            "bad = [m for m in ('torch', 'wordfreq', 'edgegate.data.texts') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
