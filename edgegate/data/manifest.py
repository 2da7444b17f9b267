"""The JSONL manifest: one utterance per line, ``{"audio": ..., "lang": ..., "task": ..., "text": ...}``.

- ``audio``: path to the audio file; a relative path is relative to the manifest's folder.
- ``lang``: language code of the speech (Whisper style: ``en``, ``de``, ``es``, ...).
- ``task``: ``transcribe`` (text = what is said) or ``translate`` (text = English translation).
- ``text``: optional reference (gate training distils from the dense model and needs none;
  WER/BLEU reports need it).

Any other key (``source_text``, ``voice``, ``engine``, ...) is kept in ``ManifestEntry.extra``
and written back unchanged.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgegate.errors import EdgegateError

TASKS = ("transcribe", "translate")
_REQUIRED = ("audio", "lang", "task")
_KNOWN = ("audio", "lang", "task", "text")


class DataError(EdgegateError):
    """Data for a corpus or manifest cannot be used as given."""


class ManifestError(DataError):
    """A manifest file is malformed or points at audio that does not exist."""


@dataclass
class ManifestEntry:
    """One utterance. ``audio`` is a path (absolute after ``read_manifest``)."""

    audio: str
    lang: str
    task: str
    text: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        """A field by name: the four standard ones or any extra key."""
        if key in _KNOWN:
            return getattr(self, key)
        return self.extra.get(key, default)

    def to_dict(self, audio: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "audio": self.audio if audio is None else audio,
            "lang": self.lang,
            "task": self.task,
        }
        if self.text is not None:
            out["text"] = self.text
        for key, value in self.extra.items():
            if key not in _KNOWN:
                out[key] = value
        return out


def _entry_from_obj(obj: Any, where: str, folder: Path) -> ManifestEntry:
    if not isinstance(obj, dict):
        raise ManifestError(f"{where}: expected a JSON object like "
                            '{"audio": "a.wav", "lang": "en", "task": "transcribe"}')
    missing = [k for k in _REQUIRED if k not in obj]
    if missing:
        raise ManifestError(f"{where}: missing key(s) {', '.join(missing)}; every line needs "
                            "audio, lang and task (text is optional)")
    audio, lang, task, text = obj["audio"], obj["lang"], obj["task"], obj.get("text")
    if not isinstance(audio, str) or not audio.strip():
        raise ManifestError(f"{where}: 'audio' must be a non-empty path string")
    if not isinstance(lang, str) or not lang.strip():
        raise ManifestError(f"{where}: 'lang' must be a language code such as \"en\" or \"de\"")
    if task not in TASKS:
        raise ManifestError(f"{where}: unknown task {task!r}; use \"transcribe\" or \"translate\"")
    if text is not None and not isinstance(text, str):
        raise ManifestError(f"{where}: 'text' must be a string or null")
    path = os.path.normpath(os.path.join(folder, os.path.expanduser(audio)))
    extra = {k: v for k, v in obj.items() if k not in _KNOWN}
    return ManifestEntry(audio=path, lang=lang.strip(), task=task, text=text, extra=extra)


def read_manifest(path: str | os.PathLike, check_files: bool = True) -> list[ManifestEntry]:
    """Read and validate a JSONL manifest; audio paths come back absolute.

    Blank lines are skipped. With ``check_files`` every audio file must exist.
    Raises ``ManifestError`` naming the line and the fix.
    """
    mpath = Path(path)
    if not mpath.is_file():
        raise ManifestError(f"manifest not found: {mpath} (write one JSON object per line, or build "
                            "one with `edgegate corpus synth`)")
    folder = mpath.resolve().parent
    entries: list[ManifestEntry] = []
    try:
        lines = mpath.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{mpath}: not UTF-8 text ({exc.reason}); save the manifest as UTF-8") from exc
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{mpath}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno}); "
                                "each line must be one JSON object") from exc
        entry = _entry_from_obj(obj, where, folder)
        if check_files and not os.path.isfile(entry.audio):
            raise ManifestError(f"{where}: audio file not found: {entry.audio} (fix the path; "
                                "relative paths are resolved from the manifest's folder)")
        entries.append(entry)
    if not entries:
        raise ManifestError(f"{mpath}: manifest has no entries; add one JSON object per line")
    return entries


def write_manifest(path: str | os.PathLike, entries: Iterable[ManifestEntry]) -> Path:
    """Write entries atomically (temp file + rename); audio paths relative to the manifest's folder.

    A relative ``entry.audio`` is taken relative to the current directory, as any path is.
    """
    mpath = Path(path)
    mpath.parent.mkdir(parents=True, exist_ok=True)
    folder = mpath.resolve().parent
    lines = []
    for entry in entries:
        if entry.task not in TASKS:
            raise ManifestError(f"entry {entry.audio}: unknown task {entry.task!r}; "
                                "use \"transcribe\" or \"translate\"")
        absolute = os.path.abspath(entry.audio)
        try:
            rel = Path(os.path.relpath(absolute, folder)).as_posix()
        except ValueError:  # another drive on Windows
            rel = absolute
        lines.append(json.dumps(entry.to_dict(audio=rel), ensure_ascii=False))
    tmp = mpath.with_name(f".{mpath.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.write("".join(line + "\n" for line in lines))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, mpath)
    finally:
        if tmp.exists():
            tmp.unlink()
    return mpath
