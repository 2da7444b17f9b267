"""Whisper decoding over any step function: greedy, beam search, language detection.

Written in numpy so that the PyTorch model and the torch-free runtime share one implementation:
a backend only provides a ``DecoderState`` that turns new tokens into next-token logits and can
reorder its caches for beam search.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from edgegate.tokenizer import WhisperTokenizer


class DecoderState(Protocol):
    """A decoder with its KV caches for one utterance (cross-attention K/V already computed)."""

    def step(self, tokens: np.ndarray) -> np.ndarray:
        """Feed new tokens (B, t) int64; return the logits of the last position (B, vocab) float32."""

    def reorder(self, index: np.ndarray) -> None:
        """Keep batch rows ``index`` of every cache (also used to grow from 1 row to n beams)."""


@dataclass
class DecodeResult:
    tokens: list[int]  # generated text tokens, without the prompt and without <|endoftext|>
    sum_logprob: float
    language: str
    language_probs: dict[str, float] = field(default_factory=dict)

    @property
    def avg_logprob(self) -> float:
        return self.sum_logprob / max(1, len(self.tokens) + 1)


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def detect_language(state: DecoderState, tokenizer: WhisperTokenizer) -> tuple[str, dict[str, float]]:
    """Whisper's language identification: one decoder step on <|startoftranscript|>."""
    logits = state.step(np.array([[tokenizer.sot]], dtype=np.int64))[0]
    lang_logits = logits[tokenizer.language_tokens]
    probs = np.exp(log_softmax(lang_logits))
    ranked = sorted(zip(tokenizer.language_codes, probs.tolist(), strict=True), key=lambda p: -p[1])
    return ranked[0][0], dict(ranked)


class LogitFilter:
    """Whisper's token suppression with timestamps off."""

    def __init__(self, tokenizer: WhisperTokenizer, n_vocab: int):
        self.mask = np.zeros(n_vocab, dtype=bool)
        self.mask[tokenizer.suppress_tokens()] = True
        self.mask[tokenizer.timestamp_begin:] = True
        self.begin = tokenizer.suppress_at_begin()

    def __call__(self, logits: np.ndarray, first: bool) -> np.ndarray:
        logits = logits.copy()
        logits[:, self.mask[: logits.shape[-1]]] = -np.inf
        if first:
            logits[:, self.begin] = -np.inf
        return logits


def decode(new_state: Callable[[], DecoderState], tokenizer: WhisperTokenizer, n_vocab: int,
           language: str | None, task: str = "transcribe", beam_size: int = 1,
           max_tokens: int = 224) -> DecodeResult:
    """Decode one window; ``new_state()`` returns a fresh decoder state for the same audio."""
    language_probs: dict[str, float] = {}
    if language is None:
        language, language_probs = detect_language(new_state(), tokenizer)
    else:
        language = tokenizer.normalize_language(language)
    prompt = tokenizer.sot_sequence(language, task)
    filt = LogitFilter(tokenizer, n_vocab)
    search = greedy_search if beam_size <= 1 else beam_search
    tokens, score = search(new_state(), prompt, tokenizer.eot, filt, max_tokens, beam_size)
    return DecodeResult(tokens, score, language, language_probs)


def greedy_search(state: DecoderState, prompt: list[int], eot: int, filt: LogitFilter,
                  max_tokens: int, beam_size: int = 1) -> tuple[list[int], float]:
    tokens: list[int] = []
    total = 0.0
    feed = np.array([prompt], dtype=np.int64)
    for i in range(max_tokens):
        logits = filt(state.step(feed), first=i == 0)
        logprobs = log_softmax(logits[0])
        token = int(np.argmax(logits[0]))
        total += float(logprobs[token])
        if token == eot:
            break
        tokens.append(token)
        feed = np.array([[token]], dtype=np.int64)
    return tokens, total


def beam_search(state: DecoderState, prompt: list[int], eot: int, filt: LogitFilter,
                max_tokens: int, beam_size: int = 5) -> tuple[list[int], float]:
    """openai/whisper's BeamSearchDecoder (patience 1, no length penalty: rank by mean logprob)."""
    beams: list[tuple[int, ...]] = [()]
    scores = [0.0]
    finished: dict[tuple[int, ...], float] = {}
    feed = np.array([prompt], dtype=np.int64)
    for i in range(max_tokens):
        logprobs = log_softmax(filt(state.step(feed), first=i == 0))
        candidates: dict[tuple[int, ...], tuple[float, int]] = {}
        for b, seq in enumerate(beams):
            top = np.argsort(-logprobs[b])[: beam_size + 1]
            for t in top.tolist():
                cand = seq + (t,)
                candidates[cand] = (scores[b] + float(logprobs[b, t]), b)
        next_beams, next_scores, sources = [], [], []
        for cand, (score, src) in sorted(candidates.items(), key=lambda kv: -kv[1][0]):
            if cand[-1] == eot:
                if len(finished) < beam_size:
                    finished[cand[:-1]] = score
            else:
                next_beams.append(cand)
                next_scores.append(score)
                sources.append(src)
            if len(next_beams) == beam_size:
                break
        if len(finished) >= beam_size or not next_beams:
            break
        state.reorder(np.array(sources, dtype=np.int64))
        beams, scores = next_beams, next_scores
        feed = np.array([[seq[-1]] for seq in beams], dtype=np.int64)
    if not finished:  # ran out of length: rank the unfinished beams too
        finished = dict(zip(beams, scores, strict=True))
    best = max(finished, key=lambda s: finished[s] / (len(s) + 1))
    return list(best), finished[best]
