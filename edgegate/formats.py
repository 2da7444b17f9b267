"""Transcript file formats: text, json, srt, vtt, tsv (as openai-whisper's writers lay them out)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from edgegate.pipeline import Segment, TranscriptionInfo

FORMATS = ("text", "json", "srt", "vtt", "tsv")
EXTENSIONS = {"text": "txt", "json": "json", "srt": "srt", "vtt": "vtt", "tsv": "tsv"}


def clock(t: float, decimal: str = ",", always_hours: bool = True) -> str:
    ms = int(round(max(0.0, t) * 1000))
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    seconds, ms = divmod(ms, 1000)
    head = f"{hours:02d}:" if always_hours or hours else ""
    return f"{head}{minutes:02d}:{seconds:02d}{decimal}{ms:03d}"


def to_text(segments: Sequence[Segment]) -> str:
    return "".join(s.text for s in segments).strip()


def to_srt(segments: Sequence[Segment]) -> str:
    return "\n".join(f"{i}\n{clock(s.start)} --> {clock(s.end)}\n{s.text.strip()}\n"
                     for i, s in enumerate(segments, start=1))


def to_vtt(segments: Sequence[Segment]) -> str:
    cues = [f"{clock(s.start, '.', False)} --> {clock(s.end, '.', False)}\n{s.text.strip()}\n" for s in segments]
    return "WEBVTT\n\n" + "\n".join(cues)


def to_tsv(segments: Sequence[Segment]) -> str:
    """Integer milliseconds, tab-separated, one segment a line (tabs in the text become spaces)."""
    rows = ["start\tend\ttext"]
    rows += [f"{round(s.start * 1000)}\t{round(s.end * 1000)}\t{s.text.strip().replace(chr(9), ' ')}"
             for s in segments]
    return "\n".join(rows) + "\n"


def to_json(segments: Sequence[Segment], info: TranscriptionInfo, extra: dict[str, Any] | None = None) -> str:
    data = {**(extra or {}), "text": to_text(segments), **asdict(info), "segments": [asdict(s) for s in segments]}
    return json.dumps(data, ensure_ascii=False)


def render(fmt: str, segments: Sequence[Segment], info: TranscriptionInfo, extra: dict[str, Any] | None = None) -> str:
    if fmt == "json":
        return to_json(segments, info, extra)
    return {"text": to_text, "srt": to_srt, "vtt": to_vtt, "tsv": to_tsv}[fmt](segments)


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` next to ``path`` and rename it into place: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text if text.endswith("\n") else text + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
