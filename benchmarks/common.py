"""What the benchmark scripts share (run them from the repository root: python benchmarks/X.py)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_json_atomic(path: Path, data: dict) -> None:
    """Results appear whole or not at all: temp file beside the target, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; results are meant to be read by anyone
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, ensure_ascii=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise



def manifest_word_errors(entries: list, transcribe: Callable[[Any], str]) -> tuple[int, int]:
    """(word errors, reference words) of ``transcribe(entry) -> text`` over manifest entries, each normalised
    in its own language."""
    from edgegate.textnorm import word_errors

    errors = words = 0
    for e in entries:
        n_err, n_words = word_errors([e.text], [transcribe(e)], e.lang)
        errors, words = errors + n_err, words + n_words
    return errors, words


# faster-whisper decoding that matches edgegate's greedy transcribe: temperature 0 only, no timestamps,
# no VAD, no previous-text conditioning, Whisper's token suppression.
FASTER_WHISPER_DECODING = {"language": "en", "task": "transcribe", "beam_size": 1, "best_of": 1, "temperature": [0.0],
                           "without_timestamps": True, "vad_filter": False, "condition_on_previous_text": False,
                           "suppress_blank": True, "suppress_tokens": [-1], "word_timestamps": False}


def faster_whisper_transcriber(model: str, compute_type: str, threads: int) -> Callable[[Any], tuple[str, int]]:
    """faster-whisper (CTranslate2, CPU) on the CTranslate2 directory edgegate's registry assembles for
    ``model`` (the same weights edgegate runs); returns ``run(audio) -> (text, tokens)`` for a path or
    16-kHz float32 samples, decoding with :data:`FASTER_WHISPER_DECODING`."""
    import faster_whisper

    from edgegate.models.registry import resolve_model

    fw = faster_whisper.WhisperModel(str(resolve_model(model)), device="cpu", compute_type=compute_type,
                                     cpu_threads=threads, num_workers=1)

    def run(audio: Any) -> tuple[str, int]:
        segments, _ = fw.transcribe(audio, **FASTER_WHISPER_DECODING)
        segments = list(segments)  # the generator does the decoding: consume it here
        return " ".join(s.text.strip() for s in segments).strip(), sum(len(s.tokens) for s in segments)

    return run
