"""The long recording of the long-form tests: the 10 real clips of pocketsphinx-testdata joined with pauses.

Also the reference model: openai-whisper's ``Whisper`` built in memory from edgegate's whisper-base
weights (the same numbers, an implementation no one here wrote). Other test_longform files import
these helpers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from edgegate.data.librivox import DEFAULT_DIR as LIBRIVOX_DIR
from edgegate.data.librivox import load_clips

CARDS_DIR = LIBRIVOX_DIR.parent / "cards"
SR = 16000


@dataclass
class Recording:
    samples: np.ndarray
    starts: list[float]  # true start of each clip, seconds
    ends: list[float]
    references: list[str]
    clips: list[np.ndarray]

    @property
    def reference(self) -> str:
        return " ".join(self.references)


def card_clips() -> list[tuple[Path, str]]:
    """(wav, reference) of the 5 spoken playing-card clips."""
    lines = (CARDS_DIR / "cards.transcription").read_text().splitlines() if CARDS_DIR.is_dir() else []
    out = []
    for line in lines:
        text, _, utt = line.rpartition("(")
        wav = CARDS_DIR / f"{utt.strip().rstrip(')')}.wav"
        if wav.exists():
            out.append((wav, " ".join(text.replace("<s>", " ").replace("</s>", " ").split())))
    return out


def all_clips() -> list[tuple[Path, str]]:
    libri = [(wav, ref) for _, wav, ref in load_clips(LIBRIVOX_DIR)]
    cards = card_clips()
    if len(libri) != 5 or len(cards) != 5:
        pytest.skip("Debian package pocketsphinx-testdata is not installed (apt-get install pocketsphinx-testdata)")
    # Alternate the long read sentences and the short card names so window edges fall inside speech.
    return [c for pair in zip(libri, cards, strict=True) for c in pair]


def read16k(path: Path) -> np.ndarray:
    data, rate = sf.read(str(path), dtype="int16")
    assert rate == SR
    return data.astype(np.float32) / 32768.0  # what openai-whisper's ffmpeg reader produces


def long_recording(silence_after: int | None = None, silence_s: float = 20.0) -> Recording:
    """The 10 clips with 2.8-3.0 s pauses (>= 60 s in all); optionally ``silence_s`` more after clip i."""
    clips, refs = zip(*[(read16k(p), r) for p, r in all_clips()], strict=True)
    parts, starts, ends, t = [np.zeros(int(0.5 * SR), np.float32)], [], [], 0.5
    for i, clip in enumerate(clips):
        starts.append(t)
        parts.append(clip)
        t += len(clip) / SR
        ends.append(t)
        pause = 3.0 - 0.1 * (i % 3)
        if silence_after == i:
            pause += silence_s
        parts.append(np.zeros(int(round(pause * SR)), np.float32))
        t += int(round(pause * SR)) / SR
    return Recording(np.concatenate(parts), starts, ends, list(refs), list(clips))


def openai_whisper_model(wm):
    """openai-whisper's model with the weights of edgegate's ``WhisperModel`` (whisper-base) in memory."""
    whisper = pytest.importorskip("whisper", reason="test dependency openai-whisper==20250625 (pip install .[dev])")
    from whisper.model import ModelDimensions, Whisper

    d = wm.model.dims
    dims = ModelDimensions(n_mels=d.n_mels, n_audio_ctx=d.n_audio_ctx, n_audio_state=d.n_audio_state,
                           n_audio_head=d.n_audio_head, n_audio_layer=d.n_audio_layer, n_vocab=d.n_vocab,
                           n_text_ctx=d.n_text_ctx, n_text_state=d.n_text_state, n_text_head=d.n_text_head,
                           n_text_layer=d.n_text_layer)
    ref = Whisper(dims)
    state = {k: v for k, v in wm.model.state_dict().items() if not k.startswith("skip_adapters")}
    missing, unexpected = ref.load_state_dict(state, strict=False)
    assert not unexpected and not missing, (missing, unexpected)
    ref.set_alignment_heads(whisper._ALIGNMENT_HEADS["base"])
    return ref.eval()


def test_recording_is_long_with_real_pauses():
    rec = long_recording()
    assert len(rec.samples) / SR >= 60.0
    gaps = [b - a for a, b in zip(rec.ends[:-1], rec.starts[1:], strict=True)]
    assert len(rec.clips) == 10 and all(1.0 <= g <= 3.0 for g in gaps)
    longer = long_recording(silence_after=4)
    assert len(longer.samples) - len(rec.samples) == 20 * SR
