"""The real speech of Debian's ``pocketsphinx-testdata`` (``apt-get install pocketsphinx-testdata``): its 5
LibriVox clips (``librivox/``, 24.7 s) and its 5 short card-game commands (``cards/``, 1-3.5 s). Every
quality claim on real speech here uses these 10 clips."""

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


def load_clips(folder: Path = DEFAULT_DIR, transcription: str = "transcription") -> list[tuple[str, Path, str]]:
    """(utterance id, wav path, reference) for each line of ``transcription`` whose wav exists."""
    tfile = Path(folder) / transcription
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


def real_clips() -> list[tuple[str, Path, str]]:
    """All 10 real clips: the 5 LibriVox ones, then the 5 ``cards/`` ones (ids prefixed ``cards-``)."""
    folder = find_librivox_dir()
    if folder is None:
        return []
    cards = [(f"cards-{u}", wav, ref) for u, wav, ref in load_clips(folder.parent / "cards", "cards.transcription")]
    return load_clips(folder) + cards
