"""Long-form transcription: openai-whisper's seek loop over any model that can encode and step.

For each 30-s window starting at ``seek``: decode with timestamp tokens (falling back to higher
temperatures when the text is too repetitive, too improbable or loops), skip the window when it
is silence, cut the tokens into segments at timestamp pairs, optionally time every word, then
move ``seek`` to the end of the last *complete* segment (not by a fixed 30 s), with the text
so far as the next window's prompt. Everything here is numpy: the PyTorch model, the gated model
and the torch-free runtime run the same loop through :class:`ModelPorts`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgegate.alignment import APPEND_PUNCTUATIONS, PREPEND_PUNCTUATIONS, add_word_timestamps, find_alignment
from edgegate.decoding import DecodeOptions, DecodeResult, DecoderState, decode_window, detect_language
from edgegate.dense_check import DenseCheck
from edgegate.errors import EdgegateError
from edgegate.frontend import HOP_LENGTH, N_FRAMES, SAMPLE_RATE
from edgegate.pipeline import Segment, TranscriptionInfo
from edgegate.plan import RequestFeatures, encoder_frames
from edgegate.repetition import find_repetition

INPUT_STRIDE = 2  # mel frames per encoder position
TIME_PRECISION = INPUT_STRIDE * HOP_LENGTH / SAMPLE_RATE  # 0.02 s per timestamp token
DEFAULT_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


@dataclass
class ModelPorts:
    """What the loop needs from a model: ``encode(mel (1, n_mels, frames)) -> cross``,
    ``make_state(cross) -> DecoderState`` and, for word timestamps, ``align(cross, tokens (1, T))``
    returning (logits (T, vocab), pre-softmax cross-attention scores of the alignment heads
    (heads, T, encoder positions)). ``check``, for a plan that skips decoder modules: the dense decoder over
    the same encoded windows (:mod:`edgegate.dense_check`). ``context_fallback``: a window encoded on a trimmed
    context that fails at the first temperature is encoded again on the full 30 s (dense-check modes other than
    ``off``)."""

    encode: Callable[[np.ndarray], Any]
    make_state: Callable[[Any], DecoderState]
    tokenizer: Any
    n_vocab: int
    n_text_ctx: int = 448
    align: Callable[[Any, np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None
    check: DenseCheck | None = None
    context_fallback: bool = False  # a failed window of a trimmed context is decoded again at the full 30 s

    def new_state(self, cross: Any) -> Callable[[], DecoderState]:
        """A factory of fresh decoder states over ``cross``: end-checked when the plan has a dense check."""
        if self.check is None:
            return lambda: self.make_state(cross)
        return self.check.states(self.make_state, cross)


@dataclass
class LongformOptions:
    """The decoding options of ``transcribe()`` (openai-whisper's names and defaults)."""

    language: str | None = None
    task: str = "transcribe"
    beam_size: int = 1
    best_of: int = 5
    temperature: float | Sequence[float] = DEFAULT_TEMPERATURES
    compression_ratio_threshold: float | None = 2.4
    log_prob_threshold: float | None = -1.0
    no_speech_threshold: float | None = 0.6
    condition_on_previous_text: bool = True
    prompt_reset_on_temperature: float = 0.5
    initial_prompt: str | Sequence[int] | None = None
    prefix: str | None = None  # forced start of the first window's text
    without_timestamps: bool = False
    max_initial_timestamp: float = 1.0
    word_timestamps: bool = False
    prepend_punctuations: str = PREPEND_PUNCTUATIONS
    append_punctuations: str = APPEND_PUNCTUATIONS
    repetition_limit: int | None = 4  # an n-gram repeated this many times in a row is a loop (None: off)
    audio_ctx: int | None = None
    seed: int = 0

    def temperatures(self) -> list[float]:
        temps = [self.temperature] if isinstance(self.temperature, (int, float)) else list(self.temperature)
        if not temps or any(not (0 <= float(t) <= 2) for t in temps):
            raise EdgegateError(f"temperature must be a number or a list of numbers in [0, 2], "
                                f"got {self.temperature!r}")
        return [float(t) for t in temps]

    def validate(self) -> LongformOptions:
        self.temperatures()
        if self.beam_size < 1 or self.best_of < 1:
            raise EdgegateError(f"beam_size and best_of must be >= 1, got {self.beam_size} and {self.best_of}")
        if self.word_timestamps and self.without_timestamps:
            raise EdgegateError("word_timestamps needs timestamps: drop without_timestamps")
        if self.repetition_limit is not None and self.repetition_limit < 2:
            raise EdgegateError(f"repetition_limit must be >= 2 or None, got {self.repetition_limit}")
        return self


@dataclass
class _Window:
    seek: int
    size: int  # real mel frames in the window
    cross: Any

    @property
    def offset(self) -> float:
        return self.seek * HOP_LENGTH / SAMPLE_RATE


def window_mel(mel, seek: int, size: int, audio_ctx: int | None) -> np.ndarray:
    """(1, n_mels, frames): the window's real frames, zero-padded to 30 s as openai-whisper pads them,
    trimmed to the encoder context."""
    frames = mel.frames(seek, seek + size)
    window = np.zeros((frames.shape[0], N_FRAMES), np.float32)
    window[:, : frames.shape[1]] = frames
    return window[None, :, : encoder_frames(size, audio_ctx)]


def detect_first_window(mel, ports: ModelPorts, audio_ctx: int | None, info: TranscriptionInfo
                        ) -> tuple[str, dict[str, float]]:
    """Language of the first 30 s (padding frames included, as openai-whisper detects it)."""
    t0 = time.perf_counter()
    first = mel.frames(0, N_FRAMES)
    cross = ports.encode(first[None, :, : encoder_frames(min(mel.content_frames, N_FRAMES), audio_ctx)])
    t1 = time.perf_counter()
    language, probs = detect_language(ports.make_state(cross), ports.tokenizer)
    _count(info, t0, t1, steps=1)
    return language, probs


def _count(info: TranscriptionInfo, t0: float, t1: float, steps: int) -> None:
    info.windows += 1
    info.decoder_steps += steps
    info.timings["encoder"] = info.timings.get("encoder", 0.0) + t1 - t0
    info.timings["decoder"] = info.timings.get("decoder", 0.0) + time.perf_counter() - t1


def _needs_fallback(result: DecodeResult, opts: LongformOptions, looped: bool) -> bool:
    silent = (opts.no_speech_threshold is not None and result.no_speech_prob > opts.no_speech_threshold
              and opts.log_prob_threshold is not None and result.avg_logprob < opts.log_prob_threshold)
    if silent:
        return False
    if looped:
        return True
    if opts.compression_ratio_threshold is not None and result.compression_ratio > opts.compression_ratio_threshold:
        return True
    return opts.log_prob_threshold is not None and result.avg_logprob < opts.log_prob_threshold


def decode_with_fallback(cross: Any, ports: ModelPorts, opts: LongformOptions, language: str, prompt: list[int],
                         prefix: list[int], info: TranscriptionInfo,
                         full_context: Callable[[], Any] | None = None) -> tuple[DecodeResult, int | None, Any]:
    """Decode at each temperature until the result passes the quality checks; (result, loop start or None, the
    encoded window it was decoded over).

    With a dense check (``ports.check``), the first failed pass is decoded again by the dense decoder at the
    same temperature, and it makes the rest of the fallback (edgegate.dense_check). ``full_context()``, for a
    window encoded on a trimmed context: the window encoded on the full 30 s; a pass that still fails at the
    first temperature is then decoded again over it before the temperature rises (``info.context_fallbacks``)."""
    tok = ports.tokenizer
    result, loop = None, None
    new_state = ports.new_state(cross)
    dense = ports.check is None
    temps = opts.temperatures()
    i = 0
    while i < len(temps):
        t = temps[i]
        d = DecodeOptions(language, opts.task, temperature=t, beam_size=opts.beam_size if t == 0 else 1,
                          best_of=opts.best_of if t > 0 else 1, timestamps=not opts.without_timestamps,
                          max_initial_timestamp=opts.max_initial_timestamp, prompt=prompt, prefix=prefix,
                          max_tokens=ports.n_text_ctx // 2, n_text_ctx=ports.n_text_ctx, seed=opts.seed)
        result = decode_window(new_state, tok, ports.n_vocab, d)
        info.decoder_steps += result.steps
        loop = find_repetition(result.tokens, tok.eot, opts.repetition_limit) if opts.repetition_limit else None
        if not _needs_fallback(result, opts, loop is not None):
            break
        if not dense:  # the gated decoder failed this window: the dense one decodes it, at this temperature first
            dense = True
            new_state = ports.check.dense_states(cross)
            continue
        if full_context is not None and i == 0:  # then the trimmed context: the full window, still greedy
            t0 = time.perf_counter()
            cross, full_context = full_context(), None
            spent = time.perf_counter() - t0
            # the caller books all time after its own encoder pass as decoder time: move this pass over
            info.timings["encoder"] = info.timings.get("encoder", 0.0) + spent
            info.timings["decoder"] = info.timings.get("decoder", 0.0) - spent
            info.context_fallbacks += 1
            info.windows += 1  # an encoder pass over a 30-s window, as the count promises
            new_state = ports.new_state(cross) if ports.check is None else (lambda c=cross: ports.check.dense_state(c))
            continue
        i += 1
    return result, loop, cross


def split_segments(tokens: list[int], window: _Window, ts_begin: int, eot: int
                   ) -> tuple[list[tuple[float, float, list[int]]], int, bool]:
    """(start, end, tokens) per segment, the next seek, whether the window ended on a single timestamp."""
    is_ts = [t >= ts_begin for t in tokens]
    single_ending = is_ts[-2:] == [False, True]
    consecutive = [i + 1 for i in range(len(tokens) - 1) if is_ts[i] and is_ts[i + 1]]
    out = []
    if consecutive:
        slices = consecutive + ([len(tokens)] if single_ending else [])
        last = 0
        for cut in slices:
            part = tokens[last:cut]
            out.append((window.offset + (part[0] - ts_begin) * TIME_PRECISION,
                         window.offset + (part[-1] - ts_begin) * TIME_PRECISION, part))
            last = cut
        seek = window.seek + (window.size if single_ending else (tokens[last - 1] - ts_begin) * INPUT_STRIDE)
        return out, seek, single_ending
    duration = window.size * HOP_LENGTH / SAMPLE_RATE
    stamps = [t for t in tokens if t >= ts_begin]
    if stamps and stamps[-1] != ts_begin:  # no pair, but a timestamp: the text ends there
        duration = (stamps[-1] - ts_begin) * TIME_PRECISION
    out.append((window.offset, window.offset + duration, tokens))
    return out, window.seek + window.size, single_ending


@dataclass
class _LoopState:
    seek: int = 0
    all_tokens: list[int] = field(default_factory=list)
    prompt_reset_since: int = 0
    last_speech: float = 0.0
    n_segments: int = 0
    recent: list[str] = field(default_factory=list)  # texts of the last segments (the cross-window loop guard)


def transcribe_windows_long(mel, ports: ModelPorts, opts: LongformOptions, language: str,
                            info: TranscriptionInfo, emit: Callable[[Segment], Segment] = lambda s: s,
                            ) -> Iterator[Segment]:
    """The seek loop (a generator): one window at a time, segments as soon as their window is decoded.

    ``emit`` finishes a segment before it is yielded (e.g. maps VAD times back to the original audio).
    """
    tok = ports.tokenizer
    st = _LoopState()
    if opts.initial_prompt is not None:
        st.all_tokens = (tok.encode(" " + opts.initial_prompt.strip()) if isinstance(opts.initial_prompt, str)
                         else list(opts.initial_prompt))
    prefix = tok.encode(" " + opts.prefix.strip()) if opts.prefix else []
    while st.seek < mel.content_frames:
        t0 = time.perf_counter()
        size = min(N_FRAMES, mel.content_frames - st.seek)
        window = _Window(st.seek, size, ports.encode(window_mel(mel, st.seek, size, opts.audio_ctx)))
        t1 = time.perf_counter()
        trimmed = encoder_frames(size, opts.audio_ctx) < N_FRAMES
        full = (lambda s=st.seek, n=size: ports.encode(window_mel(mel, s, n, None))) \
            if ports.context_fallback and trimmed else None
        result, loop, window.cross = decode_with_fallback(
            window.cross, ports, opts, language, st.all_tokens[st.prompt_reset_since:],
            prefix if st.seek == 0 else [], info, full)
        _count(info, t0, t1, steps=0)
        if _is_silence(result, opts):
            st.seek += size
            continue
        tokens = result.tokens if loop is None else result.tokens[:loop]
        parts, seek, single_ending = split_segments(tokens, window, tok.timestamp_begin, tok.eot)
        if loop is not None:  # never print the loop: keep the text before it and move past the window
            seek = window.seek + size
        segments = [_segment(p, result, window, tok) for p in parts]
        if opts.word_timestamps and ports.align is not None:
            _time_words(segments, window, ports, language, opts, st, info)
            last_end = _last_end(segments)
            if not single_ending and loop is None and last_end is not None and last_end > window.offset:
                seek = round(last_end * SAMPLE_RATE / HOP_LENGTH)
            if last_end is not None:
                st.last_speech = last_end
        st.seek = max(seek, st.seek + 1)  # always move on, even on a degenerate timestamp
        kept = [s for s in segments if s.start != s.end and s.text.strip()]
        kept = _drop_repeats(kept, st, opts.repetition_limit)
        st.all_tokens += [t for s in kept for t in s.tokens]
        if not opts.condition_on_previous_text or result.temperature > opts.prompt_reset_on_temperature:
            st.prompt_reset_since = len(st.all_tokens)
        for s in kept:
            s.id = st.n_segments
            st.n_segments += 1
            yield emit(s)


def _drop_repeats(segments: list[Segment], st: _LoopState, limit: int | None) -> list[Segment]:
    """A loop across windows (the same segment text again and again, each window prompted by the last)
    is cut too: a segment that would make ``limit`` identical texts in a row is dropped, and the
    prompt is reset so the next window is not conditioned on the loop."""
    if not limit:
        return segments
    out = []
    for s in segments:
        text = s.text.strip()
        st.recent = (st.recent + [text])[-limit:]
        if len(st.recent) == limit and len(set(st.recent)) == 1:
            st.prompt_reset_since = len(st.all_tokens)
            continue
        out.append(s)
    return out


def _is_silence(result: DecodeResult, opts: LongformOptions) -> bool:
    if opts.no_speech_threshold is None or not result.no_speech_prob > opts.no_speech_threshold:
        return False
    return not (opts.log_prob_threshold is not None and result.avg_logprob > opts.log_prob_threshold)


def _segment(part: tuple[float, float, list[int]], result: DecodeResult, window: _Window, tok) -> Segment:
    start, end, tokens = part
    return Segment(0, start, end, tok.decode([t for t in tokens if t < tok.eot]), list(tokens),
                   avg_logprob=result.avg_logprob, compression_ratio=result.compression_ratio,
                   no_speech_prob=result.no_speech_prob, temperature=result.temperature, seek=window.seek)


def _time_words(segments: list[Segment], window: _Window, ports: ModelPorts, language: str,
                opts: LongformOptions, st: _LoopState, info: TranscriptionInfo) -> None:
    tok = ports.tokenizer
    per_segment = [[t for t in s.tokens if t < tok.eot] for s in segments]
    text_tokens = [t for seg in per_segment for t in seg]
    if not text_tokens:
        for s in segments:
            s.words = []
        return
    sot = tok.sot_sequence(language, opts.task, timestamps=True)
    feed = np.array([[*sot, tok.no_timestamps, *text_tokens, tok.eot]], dtype=np.int64)
    logits, qk = ports.align(window.cross, feed)
    info.decoder_steps += 1
    if qk is None:  # the plan runs no cross-attention: nothing ties the tokens to time
        for s in segments:
            s.words = []
        return
    alignment = find_alignment(qk, logits, tok, text_tokens, window.size, language, n_sot=len(sot))
    add_word_timestamps(segments, per_segment, alignment, window.offset, st.last_speech,
                        opts.prepend_punctuations, opts.append_punctuations)


def _last_end(segments: list[Segment]) -> float | None:
    """End of the last word, else of the last segment (openai-whisper's get_end)."""
    ends = [w.end for s in segments for w in (s.words or [])]
    return ends[-1] if ends else (segments[-1].end if segments else None)


def prepare_audio_source(audio, sample_rate: int, vad_filter: bool, vad_options=None):
    """(source to decode, speech map or None, original duration s, detector name or None).

    A path is streamed (bounded memory); with ``vad_filter`` only its speech chunks are kept.
    """
    from edgegate.audiostream import SampleSource, open_source
    from edgegate.vad_filter import SpeechMap, SpeechSource, speech_chunks

    source = open_source(audio, sample_rate)
    if not vad_filter:
        return source, None, source.duration, None
    chunks, detector = speech_chunks(source.open(), vad_options)
    duration = source.duration  # exact now that the file was read once
    speech = SpeechSource(source, chunks)
    if isinstance(source, SampleSource):
        speech = SampleSource(speech.samples)
    return speech, SpeechMap(chunks), duration, detector


def mel_source(source, n_mels: int):
    from edgegate.audiostream import SampleSource
    from edgegate.melsource import ArrayMel, StreamedMel

    return ArrayMel(source.samples, n_mels) if isinstance(source, SampleSource) else StreamedMel(source, n_mels)


RequestPlanner = Callable[[RequestFeatures | None], tuple[ModelPorts, list[bool] | None, dict]]


def head_features(mel, n_samples: int) -> RequestFeatures | None:
    """What a planner reads of a request: the first 30 s of the log-mel the windows are cut from (no second
    log-mel of the head); None when there is no audio to decode."""
    if mel is None:
        return None
    head = min(mel.content_frames, N_FRAMES)
    return RequestFeatures(mel.frames(0, head), head, min(n_samples / SAMPLE_RATE, N_FRAMES * HOP_LENGTH / SAMPLE_RATE))


def transcribe_long(audio, ports: ModelPorts | None, opts: LongformOptions, n_mels: int = 80,
                    sample_rate: int = 16000, vad_filter: bool = False, vad_options=None,
                    mask: list[bool] | None = None, plan: dict | None = None, planner: RequestPlanner | None = None,
                    ) -> tuple[Iterator[Segment], TranscriptionInfo]:
    """``segments, info`` for audio of any length: the language is detected now, segments decode lazily.

    ``planner`` (instead of ``ports``, ``mask`` and ``plan``) picks what runs from the first 30 s of
    the request's log-mel (:func:`head_features`) and returns (ports, mask, plan info).
    """
    t0 = time.perf_counter()
    opts.validate()
    source, speech_map, duration, detector = prepare_audio_source(audio, sample_rate, vad_filter, vad_options)
    mel = mel_source(source, n_mels) if source.n_samples else None
    t1 = time.perf_counter()
    if planner is not None:
        ports, mask, plan = planner(head_features(mel, source.n_samples))
    info = TranscriptionInfo(opts.language or "", None, duration, source.n_samples / SAMPLE_RATE, None, opts.task,
                             plan=dict(plan or {}), options={"vad_detector": detector} if vad_filter else {})
    info.timings["frontend"] = t1 - t0
    if planner is not None:
        info.timings["plan"] = time.perf_counter() - t1
    if speech_map is not None:
        info.speech_chunks = [(a / SAMPLE_RATE, b / SAMPLE_RATE) for a, b in speech_map.chunks]
    language = opts.language
    if language is None and mel is not None:
        language, probs = detect_first_window(mel, ports, opts.audio_ctx, info)
        info.language, info.language_probability = language, probs[language]
        info.all_language_probs = list(probs.items())
    # No audio left (the VAD found no speech): nothing is decoded and no language is claimed.
    language = language or "en"

    def emit(segment: Segment) -> Segment:
        segment.mask = mask
        if speech_map is not None:
            _to_original(segment, speech_map)
        return segment

    def run() -> Iterator[Segment]:
        if mel is not None:
            yield from transcribe_windows_long(mel, ports, opts, language, info, emit)
        if ports.check is not None:
            info.dense_check = ports.check.counts.as_dict()
        info.timings["total"] = time.perf_counter() - t0

    return run(), info


def _to_original(segment: Segment, speech_map) -> None:
    start, end = speech_map.span(segment.start, segment.end)
    segment.start, segment.end = round(start, 3), round(end, 3)
    for w in segment.words or []:
        w.start = round(speech_map.original(w.start), 3)
        w.end = round(speech_map.original(w.end, is_end=True), 3)


def build_options(language: str | None, task: str, beam_size: int, temperature, word_timestamps: bool,
                  audio_ctx: int | None, options: dict[str, Any]) -> LongformOptions:
    """LongformOptions from ``transcribe()`` keywords; an unknown keyword is a one-line error listing the valid ones."""
    known = set(LongformOptions.__dataclass_fields__) - {"language", "task", "beam_size", "temperature",
                                                          "word_timestamps", "audio_ctx"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise EdgegateError(f"unknown transcribe option(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
    return LongformOptions(language=language, task=task, beam_size=beam_size, temperature=temperature,
                           word_timestamps=word_timestamps, audio_ctx=audio_ctx, **options).validate()


def resolve_audio_ctx(value: int | str | None, auto: int | None) -> int | None:
    """The encoder margin of an ``audio_ctx`` argument: "auto" = the model's own rule (``auto``: an edge-adapted
    model's or a bundle's margin, None = full), "full" or None = Whisper's 30 s, N >= 0 = the real length + N."""
    if value == "auto":
        return auto
    if value is None or value == "full":
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value <= N_FRAMES // 2:
        raise EdgegateError(f"audio_ctx must be 'full', 'auto' or a margin of 0..{N_FRAMES // 2} encoder positions, "
                            f"got {value!r}")
    return int(value)


def plan_info(names: Sequence[str], mask: Sequence[bool] | None, audio_ctx: int | None) -> dict[str, Any]:
    """``info.plan``: the kept modules and the encoder frames of a full window."""
    kept = list(names) if mask is None else [n for n, m in zip(names, mask, strict=True) if m]
    return {"mask": None if mask is None else [bool(m) for m in mask], "kept": kept,
            "skipped": [n for n in names if n not in set(kept)], "encoder_frames": encoder_frames(N_FRAMES, audio_ctx),
            "audio_ctx": audio_ctx}
