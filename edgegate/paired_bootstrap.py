"""How sure is a quality difference? Paired bootstrap of two systems' outputs on the same utterances.

The held-out sets here are small (83 translate utterances of 3-12 words, ~20 per language): one BLEU figure
per language moves by several points when two or three sentences change, so "BLEU within 1 point" cannot be
read off a single number. Resampling the utterances (with replacement, within each language/task group, the
same draw for both systems) gives the spread of the difference (Koehn, 2004). Reported per metric: the
observed difference B - A and its 95 % interval; an interval that contains 0 means the data cannot tell the
two systems apart on that metric. chrF is reported beside BLEU: on short sentences with numbers written as
digits by one side and as words by the reference, its character n-grams are far less brittle.

No torch here: numpy, jiwer (via :mod:`edgegate.textnorm`) and sacrebleu.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _sentence_stats(metric, hyps: Sequence[str], refs: Sequence[str]) -> np.ndarray:
    # sacrebleu's own paired test sums these per-sentence sufficient statistics over each resample
    return np.asarray(metric._extract_corpus_statistics(list(hyps), [list(refs)]), dtype=np.float64)


def _score(metric, stats: np.ndarray) -> float:
    return float(metric._compute_score_from_stats(list(stats.sum(axis=0))).score)


def paired_bootstrap(items: Sequence[dict], hyps_a: Sequence[str], hyps_b: Sequence[str], n: int = 1000,
                     seed: int = 0) -> dict[str, dict[str, float]]:
    """Differences B - A with 95 % intervals: ``word_errors`` (transcribe items, summed), ``bleu_mean`` and
    ``chrf_mean`` (translate items: corpus score per language, then the mean over languages, as the tables
    report them).

    ``items`` carry ``lang``, ``task`` and ``ref``; ``hyps_a``/``hyps_b`` are the two systems' outputs in the
    same order. A metric with no items of its task is left out.
    """
    from sacrebleu.metrics import BLEU, CHRF

    from edgegate.textnorm import word_errors

    if not (len(items) == len(hyps_a) == len(hyps_b)):
        raise ValueError(f"paired_bootstrap: {len(items)} items, {len(hyps_a)} and {len(hyps_b)} hypotheses")
    if n < 1:
        raise ValueError(f"paired_bootstrap: n must be >= 1, got {n}")
    groups: dict[tuple[str, str], list[int]] = {}
    for i, it in enumerate(items):
        groups.setdefault((it["lang"], it["task"]), []).append(i)
    rng = np.random.default_rng(seed)
    draws = {g: rng.integers(0, len(idx), size=(n, len(idx))) for g, idx in groups.items()}
    out: dict[str, dict[str, float]] = {}

    asr = [(g, idx) for g, idx in groups.items() if g[1] == "transcribe"]
    if asr:
        observed, samples = 0.0, np.zeros(n)
        for g, idx in asr:
            diff = np.array([word_errors([items[i]["ref"]], [hyps_b[i]], g[0])[0]
                             - word_errors([items[i]["ref"]], [hyps_a[i]], g[0])[0] for i in idx], dtype=np.float64)
            observed += diff.sum()
            samples += diff[draws[g]].sum(axis=1)
        out["word_errors"] = _interval(observed, samples)

    st = [(g, idx) for g, idx in groups.items() if g[1] == "translate"]
    for name, metric in (("bleu_mean", BLEU()), ("chrf_mean", CHRF())):
        if not st:
            break
        observed, samples = 0.0, np.zeros(n)
        for g, idx in st:
            refs = [items[i]["ref"] for i in idx]
            sa = _sentence_stats(metric, [hyps_a[i] for i in idx], refs)
            sb = _sentence_stats(metric, [hyps_b[i] for i in idx], refs)
            observed += _score(metric, sb) - _score(metric, sa)
            samples += np.array([_score(metric, sb[d]) - _score(metric, sa[d]) for d in draws[g]])
        out[name] = _interval(observed / len(st), samples / len(st))
    return out


def _interval(observed: float, samples: np.ndarray) -> dict[str, float]:
    lo, hi = np.percentile(samples, [2.5, 97.5])
    return {"diff": round(float(observed), 2), "ci95_low": round(float(lo), 2), "ci95_high": round(float(hi), 2)}


def format_interval(d: dict[str, float]) -> str:
    """``+1.2 [-0.4, +2.9]``"""
    return f"{d['diff']:+.2f} [{d['ci95_low']:+.2f}, {d['ci95_high']:+.2f}]"
