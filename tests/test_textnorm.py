"""Whisper-style text normalisation and corpus WER (edgegate.textnorm)."""

from __future__ import annotations

import importlib.util

import pytest

from edgegate.textnorm import normalize_basic, normalize_english, wer

needs_jiwer = pytest.mark.skipif(importlib.util.find_spec("jiwer") is None, reason="jiwer is not installed")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Mr. John Dashwood", "mister john dashwood"),
        ("Mrs. Dashwood and Dr. Smith", "missus dashwood and doctor smith"),
        ("He was not an ill-disposed young man.", "he was not an ill disposed young man"),
        ("Cold-hearted,   and rather\tselfish!", "cold hearted and rather selfish"),
        ("I won't go; you can't either.", "i will not go you can not either"),
        ("He doesn't know.", "he does not know"),
        ("[NOISE] um, well (laughs) yes", "well yes"),
        ("It costs $20, about 3.5% more.", "it costs $20 about 3.5% more"),
        ("1,000 people", "1000 people"),
        ("Café naïve", "cafe naive"),
        ("\u201cQuoted\u201d \u2014 it\u2019s done", "quoted it is done"),
        ("", ""),
        # spelled cardinals become digits, as Whisper's number normaliser writes them
        ("Ten of clubs.", "10 of clubs"),
        ("Five, five.", "5 5"),
        ("There are two hundred and seventy-three trees", "there are 273 trees"),
        ("nineteen hundred and five", "1905"),
        ("two thousand five hundred", "2500"),
        ("twenty one twenty two", "21 22"),
        ("nineteen five", "19 5"),
        ("one thousand thousand", "1000 thousand"),
        ("zero", "0"),
        ("rock and roll, one and two", "rock and roll 1 and 2"),
        ("a hundred men", "a hundred men"),
    ],
)
def test_normalize_english(text, expected):
    assert normalize_english(text) == expected


def test_normalize_basic():
    assert normalize_basic("Guten Tag, Herr Müller!") == "guten tag herr müller"
    assert normalize_basic("¿Dónde está la estación?") == "dónde está la estación"
    assert normalize_basic("  Ein   [Lärm]  Test. ") == "ein test"


@needs_jiwer
@needs_jiwer
def test_spelled_and_written_numbers_are_the_same_words():
    # the cards/ clips: references spell numbers out, Whisper writes digits; neither is a word error
    assert wer(["eight of spades four of clubs seven of hearts"], ["8 of spades, 4 of clubs, 7 of hearts."]) == 0.0
    assert wer(["five five"], ["5-5"]) == 0.0
    assert wer(["ten of clubs"], ["11 of clubs"]) == pytest.approx(1 / 3)


def test_wer_normalisation_makes_equivalent_forms_match():
    assert wer(["and mister john dashwood had then"], ["And Mr. John Dashwood had then."]) == 0
    assert wer(["he was not an ill disposed young man"], ["He was not an ill-disposed young man."]) == 0


@needs_jiwer
def test_wer_counts_real_errors_corpus_level():
    refs = ["he might even have been made amiable himself", "he was not an ill disposed young man"]
    hyps = ["He might even have been made amicable himself.", "He was not an ill disposed man."]
    # 1 substitution + 1 deletion over 8 + 8 reference words (corpus level, not a mean of per-line WERs).
    assert wer(refs, hyps) == pytest.approx(2 / 16)


@needs_jiwer
def test_wer_other_languages_use_basic_normaliser():
    assert wer(["guten tag herr müller"], ["Guten Tag, Herr Müller!"], language="de") == 0
    assert wer(["guten tag"], ["guten abend"], language="de") == pytest.approx(0.5)


@needs_jiwer
def test_wer_edge_cases():
    assert wer(["[noise]", "a b"], ["", "a b"]) == 0
    assert wer(["[noise]", "a b"], ["hello", "a b"]) == pytest.approx(0.5)  # insertion on an empty ref
    assert wer([""], [""]) == 0
    assert wer([""], ["x"]) == float("inf")
    with pytest.raises(ValueError):
        wer(["a"], [])
