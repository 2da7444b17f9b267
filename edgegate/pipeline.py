"""What every transcriber shares (PyTorch model and torch-free runtime): audio in, one log-mel per
request, 30-s windows, segments out. No torch here.

    features = MelFeatures.of(samples, n_mels)          # the log-mel, computed once per request
    plan = planner.plan(features.request, ...)          # edgegate.plan: what runs
    result = transcribe_windows(features, plan, encode, make_state, ...)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from edgegate.audio import load_audio, prepare_audio
from edgegate.dense_check import DenseCheck, failed
from edgegate.frontend import HOP_LENGTH, N_FRAMES, N_SAMPLES, SAMPLE_RATE, log_mel_spectrogram
from edgegate.plan import Plan, RequestFeatures


@dataclass
class Word:
    start: float  # seconds from the start of the audio
    end: float
    word: str  # with its leading space, as Whisper's tokens spell it
    probability: float


@dataclass
class Segment:
    """One span of transcribed speech, as faster-whisper's ``Segment``."""

    id: int
    start: float  # seconds from the start of the (original) audio
    end: float
    text: str
    tokens: list[int]  # the window's sampled tokens of this segment (timestamp tokens included)
    words: list[Word] | None = None  # with word_timestamps=True
    avg_logprob: float = 0.0
    compression_ratio: float = 0.0
    no_speech_prob: float = 0.0
    temperature: float = 0.0
    mask: list[bool] | None = None  # kept gateable modules (None = dense)
    seek: int = 0  # mel frame where the window that produced it started (after VAD, if any)


@dataclass
class TranscriptionInfo:
    """What ``transcribe()`` knows before the first segment; ``timings`` and the counters fill in as
    the segments are consumed (final once the generator is exhausted)."""

    language: str
    language_probability: float | None
    duration: float  # seconds of audio
    duration_after_vad: float  # seconds decoded (== duration without the VAD filter)
    all_language_probs: list[tuple[str, float]] | None
    task: str = "transcribe"
    plan: dict[str, Any] = field(default_factory=dict)  # kept modules, mask, encoder frames per window
    options: dict[str, Any] = field(default_factory=dict)
    speech_chunks: list[tuple[float, float]] | None = None  # VAD chunks, seconds of the original audio
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    dense_check: dict[str, int] | None = None  # what the plan's dense check did (edgegate.dense_check)
    context_fallbacks: int = 0  # windows of a trimmed encoder context decoded again at the full 30 s
    windows: int = 0  # encoder passes over 30-s windows (language detection included)
    decoder_steps: int = 0  # decoder calls (every temperature, beam and alignment pass included)


@dataclass
class Transcription:
    text: str
    segments: list[Segment]
    language: str
    language_probability: float | None
    duration: float
    task: str = "transcribe"
    mask: list[bool] | None = None  # kept gateable modules (None = dense)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    dense_check: dict[str, int] | None = None  # what the plan's dense check did (edgegate.dense_check)
    context_fallbacks: int = 0  # windows of a trimmed encoder context decoded again at the full 30 s

    @property
    def tokens(self) -> list[int]:
        return [t for s in self.segments for t in s.tokens]


@dataclass
class MelWindow:
    start: float  # seconds from the start of the audio
    end: float
    mel: np.ndarray  # (n_mels, N_FRAMES), zero-padded like Whisper
    n_frames: int  # frames that hold audio (the rest is padding)


class MelFeatures:
    """The log-mel of one request's audio, computed once (padded by 30 s, as Whisper does)."""

    def __init__(self, mel: np.ndarray, n_samples: int):
        self.mel = mel
        self.content = mel.shape[-1] - N_FRAMES  # frames that hold audio
        self.duration = n_samples / SAMPLE_RATE

    @classmethod
    def of(cls, samples: np.ndarray, n_mels: int = 80) -> MelFeatures:
        return cls(log_mel_spectrogram(samples, n_mels, padding=N_SAMPLES), len(samples))

    @cached_property
    def request(self) -> RequestFeatures:
        """What the planner reads (pooled statistics only when a predictor asks for them)."""
        return RequestFeatures(self.mel, self.content, self.duration)

    def windows(self) -> Iterator[MelWindow]:
        """Whisper's 30-s windows over the whole-audio log-mel."""
        for seek in range(0, max(self.content, 1), N_FRAMES):
            window = self.mel[:, seek: seek + N_FRAMES]
            n = min(N_FRAMES, self.content - seek)
            yield MelWindow(seek * HOP_LENGTH / SAMPLE_RATE, (seek + n) * HOP_LENGTH / SAMPLE_RATE, window, n)


def to_samples(audio: str | np.ndarray, sample_rate: int) -> np.ndarray:
    """A file path or an array, as float32 mono 16 kHz (resampled, mixed down, validated)."""
    if isinstance(audio, str) or hasattr(audio, "__fspath__"):
        return load_audio(audio)
    return prepare_audio(np.asarray(audio), sample_rate)


def mel_windows(samples: np.ndarray, n_mels: int = 80) -> Iterator[MelWindow]:
    """Whisper's 30-s windows over the whole-audio log-mel (computed once, padded by 30 s)."""
    return MelFeatures.of(samples, n_mels).windows()


def transcribe_windows(features: MelFeatures, plan: Plan, encode: Callable[[np.ndarray], Any],
                       make_state: Callable[[Any], Any], tokenizer: Any, n_vocab: int, language: str | None,
                       task: str, beam_size: int, max_tokens: int, timings: dict[str, float], t0: float,
                       mask: list[bool] | None = None, check: DenseCheck | None = None,
                       context_fallback: bool = False) -> Transcription:
    """Fixed 30-s windows without timestamps: the short-utterance path (one segment per window).

    Every transcriber shares it, whatever runs the model; long-form transcription with timestamps,
    seeking and fallback is :func:`edgegate.longform.transcribe_long`.

    ``encode(mel (1, n_mels, frames))`` returns what the decoder needs of one window (its mel
    trimmed to the plan's encoder length), ``make_state(encoded)`` a fresh decoder state over it.
    Adds encoder and decoder seconds to ``timings`` and ``total`` since ``t0``. The language, when
    not given, is detected once on the first window and kept, as Whisper does. ``mask`` is what
    the result reports as kept modules (None = dense). ``check``: the plan's dense check (edgegate.dense_check):
    end-checked greedy decoding, and a window whose gated result looks broken is decoded again densely.
    ``context_fallback``: a window encoded on a trimmed context whose result still looks broken is encoded
    again on Whisper's full 30 s and decoded over that (``result.context_fallbacks`` counts them).
    """
    from edgegate.decoding import decode

    def decode_over(encoded: Any, lang: str | None) -> Any:
        new_state = (lambda e=encoded: make_state(e)) if check is None else check.states(make_state, encoded)
        result = decode(new_state, tokenizer, n_vocab, lang, task, beam_size, max_tokens=max_tokens)
        if check is not None and failed(result, tokenizer.eot, max_tokens):
            probs = result.language_probs
            result = decode(check.dense_states(encoded), tokenizer, n_vocab, lang or result.language, task,
                            beam_size, max_tokens=max_tokens)
            result.language_probs = probs
        return result

    segments: list[Segment] = []
    probability = None
    fallbacks = 0
    for window in features.windows():
        frames = plan.frames_for(window.n_frames)
        t1 = time.perf_counter()
        encoded = encode(window.mel[None, :, :frames])
        t2 = time.perf_counter()
        result = decode_over(encoded, language)
        t3 = time.perf_counter()
        encoder_s, decoder_s = t2 - t1, t3 - t2
        if context_fallback and frames < N_FRAMES and failed(result, tokenizer.eot, max_tokens):
            # The trimmed context is the likelier cause (an unadapted model loops on it): the full window is the
            # context the model was trained on, and it costs one more encoder pass only here.
            probs = result.language_probs
            encoded = encode(window.mel[None])
            t4 = time.perf_counter()
            result = decode_over(encoded, language or result.language)
            result.language_probs = probs
            encoder_s, decoder_s = encoder_s + t4 - t3, decoder_s + time.perf_counter() - t4
            fallbacks += 1
        timings["encoder"] = timings.get("encoder", 0.0) + encoder_s
        timings["decoder"] = timings.get("decoder", 0.0) + decoder_s
        if language is None:
            language, probability = result.language, result.language_probs.get(result.language)
        segments.append(Segment(len(segments), window.start, window.end, tokenizer.decode(result.tokens).strip(),
                                result.tokens, avg_logprob=result.avg_logprob, temperature=0.0))
    timings["total"] = time.perf_counter() - t0
    text = " ".join(s.text for s in segments if s.text)
    return Transcription(text, segments, language or "", probability, features.duration, task, mask, timings,
                         None if check is None else check.counts.as_dict(), fallbacks)


def as_segments(r: Transcription) -> tuple[Iterator[Segment], TranscriptionInfo]:
    """A fixed-window :class:`Transcription` in ``transcribe()``'s ``(segments, info)`` shape (the inverse of
    :func:`collect`): for paths without long-form decoding (OWSM)."""
    info = TranscriptionInfo(r.language, r.language_probability, r.duration, r.duration, None, r.task,
                             plan={"mask": r.mask}, timings=r.timings)
    return iter(r.segments), info


def collect(segments: Iterator[Segment], info: TranscriptionInfo) -> Transcription:
    """Consume ``transcribe()``'s generator into a :class:`Transcription` (joined text, all segments)."""
    items = list(segments)
    text = "".join(s.text for s in items).strip()
    return Transcription(text, items, info.language, info.language_probability, info.duration, info.task,
                         info.plan.get("mask"), dict(info.timings), info.dense_check, info.context_fallbacks)
