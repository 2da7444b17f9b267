"""A decoding loop is caught: a short real clip at a trimmed encoder context makes temperature-0 greedy
decoding repeat itself up to the token limit; the default fallback gives non-looping text."""

from __future__ import annotations

import pytest

from edgegate.repetition import longest_run
from edgegate.textnorm import wer

pytest.importorskip("torch")

from test_longform_recording import all_clips, read16k  # noqa: E402

pytestmark = pytest.mark.slow


# 0930: the fallback finds a clean transcript; 001: every temperature loops, so the guard cuts the last one
# (best_of=1 there: five samples at each of five temperatures would only cost minutes).
@pytest.mark.parametrize("name, options", [("0930.wav", {}), ("001.wav", {"best_of": 1})])
def test_fallback_breaks_a_greedy_loop(name, options, base_model):
    path, ref = next((p, r) for p, r in all_clips() if p.name.endswith(name))
    audio = read16k(path)
    # dense_check="off": the plan alone, so the trimmed window does not fall back to the full one (tested below)
    looped = base_model.transcribe_text(audio, language="en", audio_ctx=32, temperature=0.0, repetition_limit=None,
                                        dense_check="off")
    assert longest_run(looped.text.split()) >= 4, looped.text  # the input really loops at temperature 0
    segments, _ = base_model.transcribe(audio, language="en", audio_ctx=32, dense_check="off", **options)
    segments = list(segments)
    words = "".join(s.text for s in segments).split()
    assert words and longest_run(words) < 3, words
    assert max(s.temperature for s in segments) > 0  # it took the fallback to get there
    if name == "0930.wav":
        assert wer([ref], [" ".join(words)]) <= 0.1


def test_the_full_window_breaks_the_loop_before_the_temperature_rises(base_model):
    path, ref = next((p, r) for p, r in all_clips() if p.name.endswith("0930.wav"))
    segments, info = base_model.transcribe(read16k(path), language="en", audio_ctx=32)  # dense_check "loops"
    segments = list(segments)
    words = "".join(s.text for s in segments).split()
    assert info.context_fallbacks >= 1 and max(s.temperature for s in segments) == 0.0
    assert longest_run(words) < 3 and wer([ref], [" ".join(words)]) <= 0.1, words
