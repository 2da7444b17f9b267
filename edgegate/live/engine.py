"""The live transcriber: utterances from the VAD segmenter, partials while speech goes on, a final
line per utterance, over any audio source (see :mod:`edgegate.live`)."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from edgegate.dense_check import check_mode
from edgegate.errors import BudgetError, EdgegateError
from edgegate.live.events import Final, LiveSummary, Notice, Partial
from edgegate.live.sources import _END, AudioSource
from edgegate.pipeline import Transcription
from edgegate.vad import SAMPLE_RATE, Segmenter, Utterance, VadConfig, make_detector

BUDGET_STEP = 0.1
BUDGET_MAX = 0.9


class _WallClock:
    def __init__(self):
        self.t0 = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self.t0

    def block_time(self, t: float) -> float:
        return t - self.t0

    def observe(self, t: float) -> None:
        pass

    def spend(self, seconds: float) -> None:
        pass  # the wall clock moved by itself


class _SimClock:
    """Simulated time for fast replay: audio arrives at its own pace, compute adds measured time."""

    def __init__(self):
        self.t = 0.0

    def now(self) -> float:
        return self.t

    def block_time(self, t: float) -> float:
        return t

    def observe(self, t: float) -> None:
        self.t = max(self.t, t)

    def spend(self, seconds: float) -> None:
        self.t += seconds


class LiveTranscriber:
    """VAD segmentation + partial/final transcription over any :class:`AudioSource`.

    ``budget`` may be changed while :meth:`run` is iterating (``set_budget``/``step_budget``,
    e.g. from a key-reader thread); it applies from the next transcription on.

    - ``transcriber``: anything with the :class:`Transcriber` method (see :func:`load_transcriber`).
    - ``budget``: None = the transcriber's default (a bundle's profile budget; dense for PyTorch).
    - ``vad``: "auto" / "energy" / "silero", or a detector object; ``vad_config``: durations.
    - ``partials``: re-transcribe the growing utterance every ``partial_interval`` s of audio (the
      interval stretches to twice a partial's cost, so partials take at most half the CPU; they
      are skipped while the consumer is more than ``max_backlog`` s behind the audio).
    - ``partial_ctx`` / ``audio_ctx``: encoder context for partials / finals, for transcribers that
      take ``audio_ctx``: "auto" (the model's or bundle's own rule), "full", a margin N in encoder
      positions, or None (the transcriber's default). Trimming is much cheaper on short audio but
      makes the original Whisper base loop; edge-adapted models and bundles trim by themselves.
    - Finals use the long-form decoding of ``transcribe()`` (timestamps, fallback, loop guard) on
      transcribers that say ``accepts_final``; partials the fast fixed-window path.
    - ``dense_check``: how a gated decoder is watched by the dense one (:mod:`edgegate.dense_check`: "off",
      "loops", "all"); None = the transcriber's default ("loops").
    - ``queue_seconds``: audio the capture queue holds before blocks are dropped (and counted).
    """

    def __init__(self, transcriber, *, language: str | None = None, task: str = "transcribe",
                 budget: float | None = None, vad: str | Any = "auto", vad_config: VadConfig | None = None,
                 partials: bool = True, partial_interval: float = 1.0, partial_ctx: int | str | None = None,
                 audio_ctx: int | str | None = None, dense_check: str | None = None, max_backlog: float = 0.3,
                 queue_seconds: float = 60.0):
        self.transcriber = transcriber
        self.dense_check = None if dense_check is None else check_mode(dense_check)  # None: the model's default
        self.language = language
        self.task = task
        self.supports_budget = bool(getattr(transcriber, "supports_budget", True))
        self._lock = threading.Lock()
        self.budget: float | None = None
        if budget is not None:
            self.set_budget(budget)
        self.detector = make_detector(vad) if isinstance(vad, str) else vad
        self.vad_config = (vad_config or VadConfig()).validate()
        self.partials = partials
        self.partial_interval = float(partial_interval)
        self.accepts_audio_ctx = bool(getattr(transcriber, "accepts_audio_ctx", False))
        self.accepts_final = bool(getattr(transcriber, "accepts_final", False))
        self.partial_ctx = partial_ctx if self.accepts_audio_ctx else None
        self.audio_ctx = audio_ctx if self.accepts_audio_ctx else None
        self.max_backlog = float(max_backlog)
        self.queue_seconds = float(queue_seconds)
        self.summary = LiveSummary()
        self._stop = threading.Event()

    # -- control (any thread) ------------------------------------------------------------------
    def stop(self) -> None:
        """Finish the utterance in progress and end :meth:`run`."""
        self._stop.set()

    def set_budget(self, value: float) -> float:
        from edgegate.budget import validate_budget

        value = validate_budget(value)
        if value and not self.supports_budget:
            raise BudgetError(f"budget {value:g} needs a gate predictor, which {self._name()} does not have; "
                              "run a bundle exported with gates (--bundle DIR)")
        with self._lock:
            self.budget = value
        return value

    def step_budget(self, delta: float) -> float:
        current = self.budget if self.budget is not None else (getattr(self.transcriber, "default_budget", None) or 0.0)
        return self.set_budget(round(min(BUDGET_MAX, max(0.0, current + delta)), 3))

    def describe(self) -> str:
        return self._name()

    def _name(self) -> str:
        d = getattr(self.transcriber, "describe", None)
        return d() if callable(d) else type(self.transcriber).__name__

    # -- transcription -------------------------------------------------------------------------
    def _transcribe(self, audio: np.ndarray, *, partial: bool) -> tuple[Transcription, float]:
        kwargs: dict[str, Any] = {"language": self.language, "task": self.task, "budget": self.budget}
        ctx = self.partial_ctx if partial else self.audio_ctx
        if ctx is not None:
            kwargs["audio_ctx"] = ctx
        if self.dense_check is not None:
            kwargs["dense_check"] = self.dense_check
        if not partial and self.accepts_final:  # a final: the long-form decoding rules of transcribe()
            kwargs["final"] = True
        t0 = time.perf_counter()
        result = self.transcriber.transcribe(audio, SAMPLE_RATE, **kwargs)
        return result, time.perf_counter() - t0

    def warmup(self) -> float:
        """One short transcription (loads lazily initialised kernels; validates language/budget)."""
        rng = np.random.default_rng(0)
        audio = (rng.standard_normal(SAMPLE_RATE) * 1e-3).astype(np.float32)
        _, seconds = self._transcribe(audio, partial=False)
        return seconds

    def _kept(self, result: Transcription) -> tuple[int | None, int | None]:
        if result.mask is not None:
            return int(sum(bool(m) for m in result.mask)), len(result.mask)
        n = getattr(self.transcriber, "n_modules", None)
        return (n, n) if n else (None, None)

    # -- the loop ------------------------------------------------------------------------------
    def run(self, source: AudioSource) -> Iterator[Partial | Final | Notice]:
        """Capture from ``source`` until it ends (or :meth:`stop`), yielding events as they happen."""
        self._stop.clear()
        self.summary = LiveSummary()
        block_seconds = getattr(source, "block_seconds", 0.1) or 0.1
        q: queue.Queue = queue.Queue(maxsize=max(16, int(self.queue_seconds / block_seconds)))
        seg = Segmenter(self.detector, self.vad_config)
        self._tentative: tuple | None = None  # (key, result, seconds, shown_at)
        self._partial_from = -1  # utterance start the partial counter belongs to
        self._next_partial = 0
        self._reported = (0, 0.0)  # (blocks lost when last reported, clock time of that report)
        self._arrival = (0.0, 0)
        clock = _WallClock() if source.realtime else _SimClock()
        self._clock = clock
        resampler = None
        source.start(q)
        try:
            yield Notice(f"listening: {source.describe()}", "info")
            if source.rate != SAMPLE_RATE:
                import soxr

                resampler = soxr.ResampleStream(source.rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
            while not self._stop.is_set():
                try:
                    item = q.get(timeout=0.1)
                except queue.Empty:
                    try:
                        source.check()
                    except EdgegateError as exc:
                        self.summary.error = str(exc)
                        yield Notice(str(exc), "error")
                        break
                    continue
                if item is _END:
                    break
                t_block = clock.block_time(item.t)
                clock.observe(t_block)
                x = item.samples if resampler is None else resampler.resample_chunk(item.samples)
                yield from self._feed(seg, x, t_block)
                yield from self._loss_notice(source)
            source.stop()  # no more audio: the utterance in progress is the last one
            if resampler is not None and not self._stop.is_set() and self.summary.error is None:
                tail = resampler.resample_chunk(np.zeros(0, np.float32), last=True)
                yield from self._feed(seg, tail, self._arrival[0])
            for utt in seg.flush():
                yield from self._final(utt)
        finally:
            source.stop()
            self.summary.dropped_blocks = source.dropped
            self.summary.overflows = source.overflows

    def _feed(self, seg: Segmenter, x: np.ndarray, t_block: float) -> Iterator[Partial | Final | Notice]:
        if len(x) == 0:
            return
        self.summary.audio_seconds += len(x) / SAMPLE_RATE
        utterances = seg.push(x)
        self._arrival = (t_block, seg.samples_pushed)  # the last sample pushed arrived at t_block
        for utt in utterances:
            yield from self._final(utt)
        yield from self._maybe_partial(seg, t_block)

    def _loss_notice(self, source: AudioSource) -> Iterator[Notice]:
        lost = source.overflows + source.dropped
        now = self._clock.now()
        if lost > self._reported[0] and (self._reported[0] == 0 or now - self._reported[1] >= 5.0):
            self._reported = (lost, now)
            yield Notice(f"audio lost so far: {source.overflows} input overflows, {source.dropped} blocks dropped "
                         "(transcription slower than real time); carrying on")

    def _speech_time(self, sample: int) -> float:
        """Clock time at which stream sample ``sample`` arrived (from the last block's arrival)."""
        t_block, pushed = self._arrival
        return t_block - (pushed - sample) / SAMPLE_RATE

    def _maybe_partial(self, seg: Segmenter, t_block: float) -> Iterator[Partial | Notice]:
        if not self.partials or not seg.in_speech:
            return
        clock = self._clock
        if clock.now() - t_block > self.max_backlog:
            return  # behind: catch up first, partials are optional
        start = seg.utterance_start
        if start != self._partial_from:
            self._partial_from = start
            self._next_partial = start + int(self.partial_interval * SAMPLE_RATE)
        post_pad = int(self.vad_config.post_pad * SAMPLE_RATE)
        if seg.silence_samples >= max(post_pad, 1):
            end = seg.last_speech_end + post_pad
            key = (start, end, self.budget)
            if self._tentative is not None and self._tentative[0] == key:
                return
            audio = seg.audio(start, end)
            if len(audio) < end - start:
                return
            try:
                result, seconds = self._transcribe(audio, partial=False)
            except EdgegateError as exc:
                self._tentative = (key, None, 0.0, clock.now())
                yield Notice(f"transcription failed: {exc}")
                return
            self._account(seconds, final=False)
            self._tentative = (key, result, seconds, clock.now())
            yield Partial(result.text, start / SAMPLE_RATE, (end - start) / SAMPLE_RATE, tentative=True)
            return
        if seg.silence_samples > 0 or seg.samples_seen < self._next_partial:
            return
        end = seg.samples_seen
        try:
            result, seconds = self._transcribe(seg.audio(start, end), partial=True)
        except EdgegateError as exc:
            self._next_partial = end + int(self.partial_interval * SAMPLE_RATE)
            yield Notice(f"transcription failed: {exc}")
            return
        self._account(seconds, final=False)
        # At most half of the time on partials: the interval grows with their cost.
        self._next_partial = end + int(max(self.partial_interval, 2.0 * seconds) * SAMPLE_RATE)
        yield Partial(result.text, start / SAMPLE_RATE, (end - start) / SAMPLE_RATE)

    def _account(self, seconds: float, final: bool) -> None:
        self._clock.spend(seconds)
        self.summary.compute_seconds += seconds
        if final:
            self.summary.final_compute_seconds += seconds
        else:
            self.summary.partials += 1

    def _final(self, utt: Utterance) -> Iterator[Final | Notice]:
        speech_end_t = self._speech_time(utt.speech_end)
        key = (utt.start, utt.end, self.budget)
        cached = self._tentative
        self._tentative = None
        reused = cached is not None and cached[0] == key and cached[1] is not None
        if reused:
            result, compute, shown_at = cached[1], cached[2], cached[3]
            self.summary.tentatives_reused += 1
            # The tentative's compute is counted as a final's (it was the final).
            self.summary.final_compute_seconds += cached[2]
            self.summary.partials -= 1
        else:
            try:
                result, compute = self._transcribe(utt.audio, partial=False)
            except EdgegateError as exc:
                self.summary.failed += 1
                yield Notice(f"utterance at {utt.start_s:.1f} s failed: {exc}")
                return
            self._account(compute, final=True)
            shown_at = None
        now = self._clock.now()
        kept, total = self._kept(result)
        s = self.summary
        s.utterances += 1
        s.speech_seconds += utt.duration
        latency = max(0.0, now - speech_end_t)
        text_latency = max(0.0, (shown_at if shown_at is not None else now) - speech_end_t)
        s.latencies.append(latency)
        s.text_latencies.append(text_latency)
        yield Final(s.utterances, result.text, utt.start_s, utt.end_s, result.language, latency, text_latency,
                    compute, kept, total, self.budget, utt.forced, reused, result)
