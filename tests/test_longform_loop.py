"""A decoding loop is caught: a short real clip at a trimmed encoder context makes temperature-0 greedy
decoding repeat itself up to the token limit; the default fallback gives non-looping text."""

from __future__ import annotations

import pytest

from edgegate.repetition import longest_run
from edgegate.textnorm import wer

pytest.importorskip("torch")

from test_longform_recording import all_clips, read16k  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", ["0930.wav", "001.wav"])
def test_fallback_breaks_a_greedy_loop(name, base_model):
    path, ref = next((p, r) for p, r in all_clips() if p.name.endswith(name))
    audio = read16k(path)
    looped = base_model.transcribe_text(audio, language="en", audio_ctx=32, temperature=0.0, repetition_limit=None)
    assert longest_run(looped.text.split()) >= 4, looped.text  # the input really loops at temperature 0
    segments, _ = base_model.transcribe(audio, language="en", audio_ctx=32)
    segments = list(segments)
    words = "".join(s.text for s in segments).split()
    assert words and longest_run(words) < 3, words
    assert max(s.temperature for s in segments) > 0  # it took the fallback to get there
    if name == "0930.wav":
        assert wer([ref], [" ".join(words)]) <= 0.1
