"""Paired bootstrap of quality differences (edgegate.paired_bootstrap)."""

from __future__ import annotations

import pytest

from edgegate.paired_bootstrap import format_interval, paired_bootstrap

REFS = ["the cat sat on the mat today", "a dog ran in the park", "we will meet at noon tomorrow",
        "she reads a long book", "the train leaves at six", "my brother plays the guitar well"]


def items(task: str, lang: str = "de") -> list[dict]:
    return [{"lang": lang, "task": task, "ref": r} for r in REFS]


def test_identical_systems_differ_by_nothing():
    its = items("translate") + items("transcribe", "en")
    hyps = [r.upper() for r in REFS] + REFS
    out = paired_bootstrap(its, hyps, hyps, n=200)
    for key in ("word_errors", "bleu_mean", "chrf_mean"):
        assert out[key] == {"diff": 0.0, "ci95_low": 0.0, "ci95_high": 0.0}


def test_a_clearly_worse_system_has_an_interval_below_zero():
    its = items("translate")
    bad = ["the weather is nice"] * len(REFS)
    out = paired_bootstrap(its, REFS, bad, n=300)
    assert set(out) == {"bleu_mean", "chrf_mean"}  # no transcribe items: no word errors
    import sacrebleu

    # the corpus score rebuilt from per-sentence statistics is sacrebleu's own
    want_bleu = sacrebleu.corpus_bleu(bad, [REFS]).score - sacrebleu.corpus_bleu(REFS, [REFS]).score
    assert out["bleu_mean"]["diff"] == pytest.approx(want_bleu, abs=0.01)
    assert out["bleu_mean"]["ci95_high"] < 0 and out["chrf_mean"]["ci95_high"] < 0

    half = REFS[:3] + bad[3:]
    got = paired_bootstrap(its, REFS, half, n=10)["chrf_mean"]["diff"]
    want = sacrebleu.corpus_chrf(half, [REFS]).score - 100.0
    assert got == pytest.approx(want, abs=0.01)


def test_one_changed_sentence_is_not_significant_and_word_errors_add_up():
    its = items("transcribe", "en")
    hyps = list(REFS)
    hyps[0] = "the cat sat on a mat"  # one substitution, one deletion
    out = paired_bootstrap(its, REFS, hyps, n=500)["word_errors"]
    assert out["diff"] == 2.0
    assert out["ci95_low"] == 0.0 and out["ci95_high"] >= 2.0
    assert format_interval(out).startswith("+2.00 [+0.00, ")


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="hypotheses"):
        paired_bootstrap(items("translate"), REFS, REFS[:2])
