"""The 5 LibriVox clips of Debian's ``pocketsphinx-testdata``: the real speech every test and
benchmark here uses (``apt-get install pocketsphinx-testdata``)."""

from __future__ import annotations

import subprocess
from pathlib import Path

DEFAULT_DIR = Path("/usr/share/pocketsphinx/test/data/librivox")


def find_librivox_dir() -> Path | None:
    """The librivox folder of pocketsphinx-testdata: from ``dpkg -L``, else the default path."""
    try:
        out = subprocess.run(["dpkg", "-L", "pocketsphinx-testdata"], capture_output=True, text=True,
                             timeout=30, check=False).stdout
        for line in out.splitlines():
            if line.rstrip("/").endswith("/librivox/transcription"):
                return Path(line).parent
    except (OSError, subprocess.SubprocessError):
        pass
    return DEFAULT_DIR if (DEFAULT_DIR / "transcription").exists() else None


def load_clips(folder: Path = DEFAULT_DIR) -> list[tuple[str, Path, str]]:
    """(utterance id, wav path, reference) for each line of ``transcription`` whose wav exists."""
    tfile = Path(folder) / "transcription"
    if not tfile.exists():
        return []
    clips = []
    for line in tfile.read_text().splitlines():
        if not line.strip():
            continue
        text, _, utt = line.rpartition("(")
        utt = utt.strip().rstrip(")").strip()
        wav = Path(folder) / f"{utt}.wav"
        if wav.exists():
            clips.append((utt, wav, " ".join(text.replace("<s>", " ").replace("</s>", " ").split())))
    return clips
