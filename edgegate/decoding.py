"""Whisper decoding over any step function: greedy, sampling, beam search, language detection.

Written in numpy so that the PyTorch model and the torch-free runtime share one implementation:
a backend only provides a ``DecoderState`` that turns new tokens into next-token logits and can
reorder its caches for beam search. The rules (token suppression, timestamp pairing, the initial
timestamp bound, no-speech probability, best-of-n ranking) follow openai-whisper's ``decoding.py``.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from edgegate.errors import EdgegateError
from edgegate.tokenizer import WhisperTokenizer

# Seconds per timestamp token: 30 s over Whisper's 1500 encoder positions.
TIME_PRECISION = 0.02


class DecoderState(Protocol):
    """A decoder with its KV caches for one utterance (cross-attention K/V already computed)."""

    def step(self, tokens: np.ndarray) -> np.ndarray:
        """Feed new tokens (B, t) int64; return the logits of the last position (B, vocab) float32."""

    def reorder(self, index: np.ndarray) -> None:
        """Keep batch rows ``index`` of every cache (also used to grow from 1 row to n rows)."""


@dataclass
class DecodeResult:
    tokens: list[int]  # sampled tokens (text and timestamps), without the prompt and without <|endoftext|>
    sum_logprob: float
    language: str
    language_probs: dict[str, float] = field(default_factory=dict)
    no_speech_prob: float = float("nan")
    temperature: float = 0.0
    text: str = ""
    steps: int = 0  # decoder calls spent on this result (all fallback rows included)

    @property
    def avg_logprob(self) -> float:
        return self.sum_logprob / max(1, len(self.tokens) + 1)

    @property
    def compression_ratio(self) -> float:
        return compression_ratio(self.text)


@dataclass
class DecodeOptions:
    """One decoding pass over one window (openai-whisper's ``DecodingOptions``, numpy side)."""

    language: str
    task: str = "transcribe"
    temperature: float = 0.0
    beam_size: int = 1  # used at temperature 0
    best_of: int = 1  # independent samples at temperature > 0, the most likely one kept
    timestamps: bool = False
    max_initial_timestamp: float | None = 1.0
    prompt: Sequence[int] = ()  # previous text (conditioning), placed after <|startofprev|>
    prefix: Sequence[int] = ()  # forced start of this window's text
    max_tokens: int = 224  # sampled tokens at most (Whisper: n_text_ctx // 2)
    n_text_ctx: int = 448
    suppress_blank: bool = True
    seed: int = 0


def compression_ratio(text: str) -> float:
    """Bytes over zlib-compressed bytes: repeated phrases compress well (openai-whisper's measure)."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


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


class TokenRules:
    """The logit rules applied before each sampled token: suppression, blank at start, timestamps.

    ``__call__(logits (B, V), sampled)`` where ``sampled[b]`` lists the tokens row ``b`` sampled so
    far (prompt, sot sequence and prefix excluded). With timestamps on, openai-whisper's
    ApplyTimestampRules: timestamps come in pairs (except right before <|endoftext|>), never
    decrease, the first token is a timestamp no later than ``max_initial_timestamp``, and a
    timestamp is forced when the timestamps' total probability beats every text token.
    """

    def __init__(self, tokenizer: WhisperTokenizer, n_vocab: int, timestamps: bool = False,
                 max_initial_timestamp: float | None = 1.0, suppress_blank: bool = True):
        self.eot = tokenizer.eot
        self.ts_begin = tokenizer.timestamp_begin
        self.no_timestamps = tokenizer.no_timestamps
        self.timestamps = timestamps
        self.mask = np.zeros(n_vocab, dtype=bool)
        self.mask[tokenizer.suppress_tokens()] = True
        if not timestamps:
            self.mask[self.ts_begin:] = True
        self.begin = tokenizer.suppress_at_begin() if suppress_blank else []
        self.max_initial = None
        if timestamps and max_initial_timestamp:
            self.max_initial = int(round(max_initial_timestamp / TIME_PRECISION))

    def __call__(self, logits: np.ndarray, sampled: Sequence[Sequence[int]]) -> np.ndarray:
        logits = logits.copy()
        logits[:, self.mask[: logits.shape[-1]]] = -np.inf
        first = len(sampled[0]) == 0  # rows grow in lockstep
        if first and self.begin:
            logits[:, self.begin] = -np.inf
        if self.timestamps:
            self._timestamp_rules(logits, sampled, first)
        return logits

    def _timestamp_rules(self, logits: np.ndarray, sampled: Sequence[Sequence[int]], first: bool) -> None:
        tb = self.ts_begin
        logits[:, self.no_timestamps] = -np.inf
        for k, seq in enumerate(sampled):
            last_ts = len(seq) >= 1 and seq[-1] >= tb
            penultimate_ts = len(seq) < 2 or seq[-2] >= tb
            if last_ts:
                if penultimate_ts:  # a closed pair (or the opening one): text must follow
                    logits[k, tb:] = -np.inf
                else:  # an opening timestamp after text: close the pair or end
                    logits[k, : self.eot] = -np.inf
            stamps = [t for t in seq if t >= tb]
            if stamps:
                # Non-decreasing, and a segment that just opened may not close at the same time.
                floor = stamps[-1] if last_ts and not penultimate_ts else stamps[-1] + 1
                logits[k, tb:floor] = -np.inf
        if first:
            logits[:, :tb] = -np.inf
            if self.max_initial is not None:
                logits[:, tb + self.max_initial + 1:] = -np.inf
        logprobs = log_softmax(logits)
        for k in range(logits.shape[0]):
            with np.errstate(divide="ignore"):
                ts_mass = np.logaddexp.reduce(logprobs[k, tb:])
            if ts_mass > logprobs[k, :tb].max():
                logits[k, :tb] = -np.inf


class LogitFilter:
    """Whisper's token suppression with timestamps off, called with ``first`` (the first sampled token)."""

    def __init__(self, tokenizer: WhisperTokenizer, n_vocab: int):
        self.rules = TokenRules(tokenizer, n_vocab, timestamps=False)

    def __call__(self, logits: np.ndarray, first: bool) -> np.ndarray:
        return self.rules(logits, [[] if first else [0]] * logits.shape[0])


def initial_tokens(tokenizer: WhisperTokenizer, opts: DecodeOptions) -> tuple[list[int], int]:
    """(tokens fed before sampling, index of <|startoftranscript|> in them), as openai-whisper builds them."""
    tokens = tokenizer.sot_sequence(opts.language, opts.task, timestamps=opts.timestamps)
    if opts.prefix:
        keep = opts.n_text_ctx // 2 - opts.max_tokens
        tokens += list(opts.prefix)[-keep:] if keep > 0 else []
    if opts.prompt:
        tokens = [tokenizer.sot_prev, *list(opts.prompt)[-(opts.n_text_ctx // 2 - 1):], *tokens]
    return tokens, tokens.index(tokenizer.sot)


def start_state(state: DecoderState, tokens: list[int], sot_index: int, no_speech: int | None,
                ) -> tuple[np.ndarray, float]:
    """Feed the initial tokens; return (last logits (1, V), probability of <|nospeech|> at the sot position).

    The tokens go in two steps (up to <|startoftranscript|>, then the rest) so that a state that
    returns only last-position logits still yields the no-speech probability; with KV caching the
    result equals one step over all of them.
    """
    head = np.array([tokens[: sot_index + 1]], dtype=np.int64)
    at_sot = state.step(head)
    prob = float("nan")
    if no_speech is not None:
        prob = float(np.exp(log_softmax(at_sot[0])[no_speech]))
    return state.step(np.array([tokens[sot_index + 1:]], dtype=np.int64)), prob


def sample_search(state: DecoderState, logits: np.ndarray, rules: TokenRules, eot: int, budget: int,
                  temperature: float, n: int, rng: np.random.Generator) -> tuple[list[list[int]], list[float], int]:
    """Greedy (temperature 0, n 1) or ``n`` independent samples; returns (tokens, sum logprobs, steps).

    ``budget`` is the number of tokens that may be sampled; a finished row keeps feeding
    <|endoftext|> until every row is done, as openai-whisper's GreedyDecoder does.
    """
    if n > 1:
        state.reorder(np.zeros(n, dtype=np.int64))
        logits = np.repeat(logits, n, axis=0)
    seqs: list[list[int]] = [[] for _ in range(n)]
    done = [False] * n
    sums = [0.0] * n
    steps = 0
    for i in range(budget):
        filtered = rules(logits, seqs)
        logprobs = log_softmax(filtered)
        if temperature == 0:
            picks = np.argmax(filtered, axis=-1)
        else:
            picks = np.array([rng.choice(len(p), p=p) for p in np.exp(log_softmax(filtered / temperature))])
        for k in range(n):
            if done[k]:
                continue
            sums[k] += float(logprobs[k, picks[k]])
            if int(picks[k]) == eot:
                done[k] = True
            else:
                seqs[k].append(int(picks[k]))
        if all(done) or i == budget - 1:
            break
        feed = np.array([[eot if done[k] else seqs[k][-1]] for k in range(n)], dtype=np.int64)
        logits = state.step(feed)
        steps += 1
    return seqs, sums, steps


def beam_search(state: DecoderState, logits: np.ndarray, rules: TokenRules, eot: int, budget: int,
                beam_size: int = 5) -> tuple[list[int], float, int]:
    """openai/whisper's BeamSearchDecoder (patience 1, no length penalty: rank by mean logprob)."""
    beams: list[tuple[int, ...]] = [()]
    scores = [0.0]
    finished: dict[tuple[int, ...], float] = {}
    steps = 0
    for _ in range(budget):
        logprobs = log_softmax(rules(logits, [list(b) for b in beams]))
        candidates: dict[tuple[int, ...], tuple[float, int]] = {}
        for b, seq in enumerate(beams):
            top = np.argsort(-logprobs[b])[: beam_size + 1]
            for t in top.tolist():
                candidates[seq + (t,)] = (scores[b] + float(logprobs[b, t]), b)
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
        logits = state.step(np.array([[seq[-1]] for seq in beams], dtype=np.int64))
        steps += 1
    if not finished:  # ran out of length: rank the unfinished beams too
        finished = dict(zip(beams, scores, strict=True))
    best = max(finished, key=lambda s: finished[s] / (len(s) + 1))
    return list(best), finished[best], steps


def decode_window(new_state: Callable[[], DecoderState], tokenizer: WhisperTokenizer, n_vocab: int,
                  opts: DecodeOptions) -> DecodeResult:
    """One decoding pass of one window with ``opts`` (language already known)."""
    if opts.task not in ("transcribe", "translate"):
        raise EdgegateError(f"unknown task {opts.task!r}; use one of: transcribe, translate")
    tokens, sot_index = initial_tokens(tokenizer, opts)
    # Whisper stops once the sequence would pass the text context; the prompt eats into that.
    budget = max(1, min(opts.max_tokens, opts.n_text_ctx - len(tokens)))
    state = new_state()
    logits, no_speech = start_state(state, tokens, sot_index, tokenizer.no_speech)
    rules = TokenRules(tokenizer, n_vocab, opts.timestamps, opts.max_initial_timestamp, opts.suppress_blank)
    if opts.temperature == 0 and opts.beam_size > 1:
        best, score, steps = beam_search(state, logits, rules, tokenizer.eot, budget, opts.beam_size)
    else:
        n = opts.best_of if opts.temperature > 0 else 1
        rng = np.random.default_rng(opts.seed)
        seqs, sums, steps = sample_search(state, logits, rules, tokenizer.eot, budget, opts.temperature, n, rng)
        # openai-whisper's MaximumLikelihoodRanker without length penalty: sum logprob / length.
        pick = max(range(n), key=lambda k: sums[k] / max(1, len(seqs[k])))
        best, score = seqs[pick], sums[pick]
    return DecodeResult(best, score, opts.language, no_speech_prob=no_speech, temperature=opts.temperature,
                        text=tokenizer.decode(best).strip(), steps=steps + 2)


def decode(new_state: Callable[[], DecoderState], tokenizer: WhisperTokenizer, n_vocab: int,
           language: str | None, task: str = "transcribe", beam_size: int = 1,
           max_tokens: int = 224) -> DecodeResult:
    """Decode one window without timestamps; ``new_state()`` returns a fresh decoder state for the same audio."""
    language_probs: dict[str, float] = {}
    if language is None:
        language, language_probs = detect_language(new_state(), tokenizer)
    else:
        language = tokenizer.normalize_language(language)
    opts = DecodeOptions(language, task, beam_size=beam_size, max_tokens=max_tokens, n_text_ctx=10**9)
    result = decode_window(new_state, tokenizer, n_vocab, opts)
    result.language_probs = language_probs
    return result
