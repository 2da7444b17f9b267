"""The decoding-loop guard: find where a token sequence starts repeating itself.

A model that loops repeats a phrase (or a word) until the token limit. Temperature fallback
usually breaks the loop; when no temperature does, the loop is cut so that it is never printed.
"""

from __future__ import annotations

from collections.abc import Sequence


def find_repetition(tokens: Sequence[int], eot: int, limit: int = 4, max_ngram: int = 40) -> int | None:
    """Index in ``tokens`` where the 2nd occurrence of an n-gram repeated ``limit`` times in a row begins.

    Only text tokens (below ``eot``) count, so a loop interleaved with rising timestamp tokens is
    caught too; None when there is no such run.
    """
    where = [i for i, t in enumerate(tokens) if t < eot]
    text = [tokens[i] for i in where]
    n_text = len(text)
    for n in range(1, min(max_ngram, n_text // limit) + 1):
        for start in range(0, n_text - n * limit + 1):
            gram = text[start:start + n]
            if all(text[start + k * n: start + (k + 1) * n] == gram for k in range(1, limit)):
                return where[start + n]
    return None


def ends_in_loop(tokens: Sequence[int], eot: int, limit: int = 4, max_ngram: int = 40) -> bool:
    """Whether the text tokens (below ``eot``) end with an n-gram repeated ``limit`` times in a row: the
    step-by-step form of :func:`find_repetition`, cheap enough to ask after every decoder step."""
    text = [t for t in tokens[-limit * max_ngram:] if t < eot]
    for n in range(1, min(max_ngram, len(text) // limit) + 1):
        gram = text[-n:]
        if all(text[-(k + 1) * n: len(text) - k * n] == gram for k in range(1, limit)):
            return True
    return False


def longest_run(words: Sequence[str], max_ngram: int = 10) -> int:
    """The most times any n-gram of ``words`` repeats back to back (1 when nothing repeats)."""
    best = 1 if words else 0
    for n in range(1, max_ngram + 1):
        for start in range(0, len(words) - n):
            runs = 1
            while words[start + runs * n: start + (runs + 1) * n] == words[start: start + n]:
                runs += 1
            best = max(best, runs)
    return best
