"""The shipped tokenizer.json lacks BPE merges its vocabulary implies: encoding must still split text as the
model emits it (prompts and prefixes reach the model as it saw them in training)."""

from __future__ import annotations

import pytest


@pytest.fixture
def tok(tokenizer):
    return tokenizer


def test_the_is_one_token(tok):
    assert len(tok.encode(" the")) == 1
    assert tok.decode(tok.encode(" the cat sat on the mat.")) == " the cat sat on the mat."


def test_encoding_matches_openai_whisper(tok):
    wt = pytest.importorskip("whisper.tokenizer")
    ref = wt.get_tokenizer(multilingual=True)
    for text in (" the quick brown fox", " Sense and Sensibility, chapter one.", " Der Kuchen ist gut.",
                 " ¿Dónde está la estación?", " l'été à Paris", " 1,234 ten of clubs"):
        assert tok.encode(text) == ref.encode(text), text
