"""The teacher of edge adaptation: the unmodified model's decoder states on the full 30-s window (or on
the model's own dynamic context), teacher-forced on its own greedy tokens, computed once per utterance
and cached on disk in fp16."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgegate.models.whisper import Whisper


@dataclass
class Targets:
    prompt: list[int]
    tokens: list[int]  # the teacher's greedy tokens (no <|endoftext|>)
    finished: bool  # the teacher ended within max_tokens (loops make bad targets)
    hidden: np.ndarray  # (n_text_layer + 1, len(prompt) + len(tokens), d) float16


def window_mel(samples: np.ndarray, n_mels: int) -> tuple[np.ndarray, int]:
    """The first 30-s log-mel window, as inference computes it, and how many frames hold audio."""
    from edgegate.pipeline import mel_windows

    window = next(mel_windows(samples, n_mels))
    return window.mel, window.n_frames


def teacher_targets(model: Whisper, tokenizer, samples: np.ndarray, lang: str, task: str,
                    max_tokens: int, margin: int | None = None) -> Targets:
    """The dense model's greedy tokens, then its decoder states teacher-forced on them: on the full window,
    or with ``margin`` on the real frames plus that many positions (the model's own context rule)."""
    from edgegate.decoding import decode
    from edgegate.plan import encoder_frames
    from edgegate.transcriber import TorchDecoderState

    mel, n_frames = window_mel(samples, model.dims.n_mels)
    if margin is not None:
        mel = np.ascontiguousarray(mel[:, :encoder_frames(n_frames, margin)])
    gates = model.split_gates(None)
    with torch.inference_mode():
        cross = model.cross_kv(model.embed_audio(torch.from_numpy(mel[None]), gates), gates)
        res = decode(lambda: TorchDecoderState(model, cross, gates), tokenizer, model.dims.n_vocab, lang, task,
                     1, max_tokens=max_tokens)
        prompt = tokenizer.sot_sequence(lang, task)
        hidden: list[torch.Tensor] = []
        model.decode(torch.tensor([prompt + res.tokens]), cross, gates, hidden=hidden)
    states = torch.cat(hidden, 0).to(torch.float16).numpy()
    return Targets(prompt, res.tokens, len(res.tokens) < max_tokens, states)


class TeacherCache:
    """One ``.npz`` per utterance under ``root``, written atomically; keyed by audio bytes and settings."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def key(self, audio_path: str, lang: str, task: str, max_tokens: int, margin: int | None = None) -> str:
        h = hashlib.sha256(Path(audio_path).read_bytes())
        h.update(f"|{lang}|{task}|{max_tokens}".encode())
        if margin is not None:  # full-window keys stay as they were, so older caches still serve
            h.update(f"|margin{margin}".encode())
        return h.hexdigest()[:24]

    def get(self, key: str) -> Targets | None:
        path = self.root / f"{key}.npz"
        if not path.exists():
            return None
        with np.load(path) as z:
            return Targets([int(t) for t in z["prompt"]], [int(t) for t in z["tokens"]], bool(z["finished"]),
                           z["hidden"])

    def put(self, key: str, t: Targets) -> None:
        tmp = self.root / f".{key}.{os.getpid()}.tmp.npz"
        np.savez(tmp, prompt=np.array(t.prompt, np.int32), tokens=np.array(t.tokens, np.int32),
                 finished=np.array(t.finished), hidden=t.hidden)
        os.replace(tmp, self.root / f"{key}.npz")

    def __len__(self) -> int:
        return sum(1 for _ in self.root.glob("*.npz"))


