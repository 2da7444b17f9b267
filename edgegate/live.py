"""Live transcription: microphone (or a replayed file) -> VAD -> partial and final lines.

One path for every source::

    capture thread (PortAudio callback)  ─┐
                                          ├─> queue of blocks -> resample to 16 kHz -> Segmenter (VAD)
    file reader thread (--input FILE)    ─┘        -> partials while speech goes on -> final per utterance

The capture callback only copies the block into a bounded queue (never blocks; a full queue or a
PortAudio input overflow is counted and reported). One consumer thread does everything else,
so transcription never runs concurrently with itself. While speech continues the growing
utterance is re-transcribed every ``partial_interval`` seconds (only when the consumer is
caught up, so partials never pile up); as soon as a pause reaches ``post_pad`` the utterance
is transcribed with the final settings ("tentative"); if the pause then becomes an endpoint
with the same audio, that result is the final line at once, otherwise it was just a better
partial.

Times: every block is stamped when it arrives. Live (and ``--input`` at real-time pace) the
clock is the wall clock. With ``--fast`` replay the clock is simulated: it advances with the
audio and with each measured transcription time, so the latencies are what a real-time run
on this machine would see, without waiting for them.

Any transcriber with ``transcribe(audio, sample_rate, language=..., task=..., budget=...)``
returning :class:`edgegate.pipeline.Transcription` works; :func:`load_transcriber` returns the
torch-free runtime's Session for a bundle or the PyTorch model otherwise.

    from edgegate.live import LiveTranscriber, FileSource, MicSource, load_transcriber
    live = LiveTranscriber(load_transcriber(model="whisper-base"), language="en")
    for event in live.run(MicSource()):          # or FileSource("talk.wav", realtime=False)
        if isinstance(event, Final):
            print(event.text)
    print(live.summary)
"""

from __future__ import annotations

import inspect
import os
import queue
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from edgegate.errors import AudioError, BackendError, BudgetError, BundleError, EdgegateError
from edgegate.pipeline import Transcription
from edgegate.vad import SAMPLE_RATE, Segmenter, Utterance, VadConfig, make_detector

__all__ = [
    "Transcriber", "TorchTranscriber", "SessionTranscriber", "load_transcriber",
    "Block", "AudioSource", "MicSource", "FileSource", "list_input_devices", "NO_DEVICE_MESSAGE",
    "Partial", "Final", "Notice", "LiveSummary", "LiveTranscriber", "KeyReader", "BUDGET_STEP",
]

BUDGET_STEP = 0.1
BUDGET_MAX = 0.9
NO_DEVICE_MESSAGE = (
    "no audio input devices found: plug in a microphone; check that this user may use it (the 'audio' group, "
    "or --device /dev/snd for a container) and that PortAudio is installed (apt-get install libportaudio2); "
    "or replay a file with --input FILE"
)


# =========================================================================== transcribers


@runtime_checkable
class Transcriber(Protocol):
    """What the live path needs from a model. ``budget`` None = the transcriber's default."""

    def transcribe(self, audio: np.ndarray, sample_rate: int = 16000, *, language: str | None = None,
                   task: str = "transcribe", budget: float | None = None) -> Transcription: ...


def _accepts(fn: Callable, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


class TorchTranscriber:
    """The PyTorch :class:`edgegate.transcriber.WhisperModel` behind the :class:`Transcriber` protocol.

    Budgets need a gate predictor; when the wrapped model's ``transcribe`` takes no ``budget``
    argument, any budget > 0 is refused with a :class:`BudgetError` (budget 0 = dense is fine).
    """

    backend = "pytorch"

    def __init__(self, model: Any = "whisper-base", threads: int | None = None):
        if isinstance(model, (str, Path)):
            try:
                from edgegate.transcriber import WhisperModel
            except ImportError as exc:
                raise BackendError(f"the PyTorch model needs torch ({exc}): pip install torch, "
                                   "or run a bundle with the torch-free runtime (--bundle DIR)") from None
            self.name = str(model)
            model = WhisperModel(model, threads=threads)
        else:
            self.name = type(model).__name__
        self.model = model
        # WhisperModel / GatedWhisper: the fixed-window path (transcribe() is the long-form generator API).
        self._transcribe = getattr(model, "transcribe_windows", None) or model.transcribe
        self.supports_budget = _accepts(self._transcribe, "budget")
        self.accepts_audio_ctx = _accepts(self._transcribe, "audio_ctx")
        names = getattr(model, "gate_names", None)
        self.n_modules = len(names) if names is not None else None
        self.default_budget: float | None = None

    def transcribe(self, audio: np.ndarray, sample_rate: int = 16000, *, language: str | None = None,
                   task: str = "transcribe", budget: float | None = None, **kwargs: Any) -> Transcription:
        if self.supports_budget:
            kwargs["budget"] = budget
        elif budget:
            raise BudgetError(f"budget {budget:g} needs a gate predictor, which the PyTorch model {self.name} "
                              "does not have here; run a bundle exported with gates (--bundle DIR) or use budget 0")
        return self._transcribe(audio, sample_rate, language=language, task=task, **kwargs)

    def describe(self) -> str:
        return f"{self.name} (PyTorch)"


class SessionTranscriber:
    """The torch-free runtime's ``Session`` behind the :class:`Transcriber` protocol."""

    backend = "runtime"

    def __init__(self, session: Any):
        self.session = session
        self.name = str(getattr(getattr(session, "bundle", None), "path", "bundle"))
        self.supports_budget = bool(getattr(session, "has_predictor", True))
        self.accepts_audio_ctx = _accepts(session.transcribe, "audio_ctx")
        names = getattr(session, "gate_names", None)
        self.n_modules = len(names) if names is not None else None
        budget = getattr(session, "budget", None)
        self.default_budget = getattr(budget, "value", budget)

    def transcribe(self, audio: np.ndarray, sample_rate: int = 16000, *, language: str | None = None,
                   task: str = "transcribe", budget: float | None = None, **kwargs: Any) -> Transcription:
        return self.session.transcribe(audio, sample_rate, language=language, task=task, budget=budget, **kwargs)

    def describe(self) -> str:
        describe = getattr(self.session, "describe", None)
        return describe() if callable(describe) else self.name


def load_transcriber(bundle: str | Path | None = None, model: str = "whisper-base", threads: int | None = None,
                     backend: str = "auto"):
    """A bundle on the torch-free runtime (``bundle``), else the PyTorch ``model``."""
    if bundle is None:
        return TorchTranscriber(model, threads=threads)
    path = Path(bundle)
    if not path.exists():
        raise BundleError(f"bundle not found: {path}; pass the directory written by edgegate export")
    try:
        from edgegate.runtimes import Session  # type: ignore[attr-defined]
    except ImportError:
        try:
            from edgegate.runtimes.session import Session
        except ImportError as exc:
            raise BackendError(f"the torch-free runtime is not available in this install ({exc}); "
                               "reinstall edgegate or use --model whisper-base") from None
    return SessionTranscriber(Session.load(path, backend=backend, threads=threads))


# =========================================================================== audio sources


@dataclass
class Block:
    samples: np.ndarray  # float32 mono at the source's rate
    t: float  # arrival: time.monotonic() for real-time sources, audio seconds for fast replay


_END = object()  # end of stream marker on the queue


class AudioSource:
    """Feeds :class:`Block` objects into a queue from its own thread. Subclasses: Mic, File."""

    rate: int = SAMPLE_RATE
    realtime: bool = True
    overflows: int = 0  # blocks the device reported as overflowed (samples lost before us)
    dropped: int = 0  # blocks we dropped because the queue was full (consumer too slow)

    def start(self, q: queue.Queue) -> None:
        raise NotImplementedError

    def check(self) -> None:
        """Called when no block came for a while: raise AudioError if the source died."""

    def stop(self) -> None:
        pass

    def describe(self) -> str:
        return type(self).__name__

    def _offer(self, q: queue.Queue, block: Block) -> None:
        try:
            q.put_nowait(block)
        except queue.Full:
            self.dropped += 1


def _sounddevice():
    try:
        import sounddevice as sd
    except ImportError:
        raise BackendError("microphone capture needs sounddevice: pip install sounddevice "
                           "(or pip install 'edgegate[audio]')") from None
    except OSError as exc:  # sounddevice raises OSError when the PortAudio library is missing
        raise BackendError(f"PortAudio library not found ({' '.join(str(exc).split())}): "
                           "apt-get install libportaudio2") from None
    return sd


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def list_input_devices() -> list[dict[str, Any]]:
    """Input devices as dicts (index, name, channels, default_samplerate, hostapi, default)."""
    sd = _sounddevice()
    try:
        devices = sd.query_devices()
        hostapis = sd.query_hostapis()
        default_in = sd.default.device[0] if isinstance(sd.default.device, (list, tuple)) else sd.default.device
    except Exception as exc:  # noqa: BLE001 - PortAudioError and friends, one line for the user
        raise AudioError(f"cannot query audio devices: {_one_line(exc)}; {NO_DEVICE_MESSAGE}") from None
    out = []
    for i, d in enumerate(devices):
        if int(d.get("max_input_channels", 0)) <= 0:
            continue
        api = d.get("hostapi")
        api_name = hostapis[api]["name"] if isinstance(api, int) and 0 <= api < len(hostapis) else ""
        out.append({"index": int(d.get("index", i)), "name": d["name"], "channels": int(d["max_input_channels"]),
                    "default_samplerate": float(d.get("default_samplerate", 0.0)), "hostapi": api_name,
                    "default": int(d.get("index", i)) == default_in})
    return out


class MicSource(AudioSource):
    """PortAudio capture via sounddevice: mono, 16 kHz if the device takes it, else its own rate."""

    realtime = True

    def __init__(self, device: int | str | None = None, block_seconds: float = 0.1, stall_timeout: float = 3.0):
        self.device = device
        self.block_seconds = block_seconds
        self.stall_timeout = stall_timeout
        self.overflows = 0
        self.dropped = 0
        self._stream = None
        self._finished = False
        self._last = 0.0
        self._name = "default input"
        self.channels = 1

    def _resolve(self, sd) -> tuple[Any, dict]:
        devices = list_input_devices()
        if not devices:
            raise AudioError(NO_DEVICE_MESSAGE)
        device = self.device
        if device is None:
            default = [d for d in devices if d["default"]]
            device = (default or devices)[0]["index"]
        try:
            info = sd.query_devices(device, "input")
        except (ValueError, sd.PortAudioError) as exc:
            listing = ", ".join(f"{d['index']}: {d['name']}" for d in devices)
            raise AudioError(f"no audio input device {self.device!r} ({_one_line(exc)}); inputs: {listing}") from None
        return info.get("index", device), info

    def start(self, q: queue.Queue) -> None:
        sd = _sounddevice()
        device, info = self._resolve(sd)
        self._name = f"{info['name']} (device {device})"
        # Mono at 16 kHz if the device takes it; else its own rate (resampled downstream) and, for
        # devices that only record stereo, two channels mixed down here.
        default_rate = int(info.get("default_samplerate") or 48000)
        self.rate, self.channels = default_rate, 1
        stereo = min(2, int(info.get("max_input_channels", 1) or 1))
        for rate, channels in ((SAMPLE_RATE, 1), (default_rate, 1), (SAMPLE_RATE, stereo), (default_rate, stereo)):
            try:
                sd.check_input_settings(device=device, channels=channels, samplerate=rate, dtype="float32")
            except Exception:  # noqa: BLE001, S112 - try the next setting
                continue
            self.rate, self.channels = rate, channels
            break

        def callback(indata, frames, time_info, status):  # PortAudio's thread: copy and go
            self._last = time.monotonic()
            if status and getattr(status, "input_overflow", False):
                self.overflows += 1
            mono = indata[:, 0].copy() if indata.shape[1] == 1 else indata.mean(axis=1, dtype=np.float32)
            self._offer(q, Block(mono, self._last))

        def finished():
            self._finished = True

        try:
            self._stream = sd.InputStream(device=device, channels=self.channels, samplerate=self.rate, dtype="float32",
                                          blocksize=int(self.rate * self.block_seconds), callback=callback,
                                          finished_callback=finished)
            self._last = time.monotonic()
            self._stream.start()
        except Exception as exc:  # noqa: BLE001 - PortAudioError, ValueError: one line for the user
            self._stream = None
            raise AudioError(f"cannot open audio input {self._name}: {_one_line(exc)}; "
                             "see edgegate live --list-devices") from None

    def check(self) -> None:
        stream = self._stream
        if stream is None:
            return
        if self._finished or not stream.active:
            raise AudioError(f"audio input {self._name} stopped (unplugged?); reconnect it and rerun")
        silent_for = time.monotonic() - self._last
        if silent_for > self.stall_timeout:
            raise AudioError(f"no audio from {self._name} for {silent_for:.0f} s (unplugged or taken by another "
                             "program?); reconnect it and rerun")

    def stop(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.abort()
                stream.close()
            except Exception:  # noqa: BLE001, S110 - closing a dead device must not mask the real error
                pass

    def describe(self) -> str:
        rate = "16 kHz" if self.rate == SAMPLE_RATE else f"{self.rate} Hz -> 16 kHz"
        return f"{self._name} at {rate}"


def _read_file(path: str | Path) -> tuple[np.ndarray, int]:
    """Mono float32 samples at the file's own rate (resampling happens downstream, as for a mic)."""
    import soundfile as sf

    p = Path(path)
    if not p.exists():
        raise AudioError(f"audio file not found: {p}; check the path")
    if p.is_dir():
        raise AudioError(f"audio path is a directory, not a file: {p}; pass one audio file")
    try:
        data, rate = sf.read(str(p), dtype="float32", always_2d=True)
    except Exception as exc:  # noqa: BLE001 - libsndfile errors, one line
        reason = (getattr(exc, "error_string", None) or _one_line(exc)).strip().rstrip(".")
        raise AudioError(f"cannot decode {p}: {' '.join(reason.split())}; supported: wav, flac, ogg, mp3") from None
    if data.size == 0 or rate <= 0:
        raise AudioError(f"{p}: audio is empty (0 samples); pass a non-empty recording")
    x = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    if not np.all(np.isfinite(x)):
        raise AudioError(f"{p}: audio contains non-finite (NaN or Inf) samples; fix the file")
    return np.ascontiguousarray(x, dtype=np.float32), int(rate)


class FileSource(AudioSource):
    """Replays a file (or an array) through the same queue as the microphone, in blocks.

    ``realtime=True`` paces blocks at the audio's speed and stamps them with the wall clock, like
    a microphone (a full queue drops blocks, like a microphone); ``realtime=False`` feeds as fast
    as the consumer takes them, stamped with audio time, for the simulated clock.
    """

    def __init__(self, audio: str | Path | np.ndarray, sample_rate: int = SAMPLE_RATE, realtime: bool = True,
                 block_seconds: float = 0.1, tail_silence: float = 0.0):
        if isinstance(audio, np.ndarray):
            self.samples, self.rate, self.name = np.asarray(audio, dtype=np.float32).reshape(-1), int(sample_rate), \
                "array"
            if self.samples.size == 0:
                raise AudioError("audio is empty (0 samples); pass a non-empty recording")
        else:
            self.samples, self.rate = _read_file(audio)
            self.name = str(audio)
        if tail_silence > 0:
            self.samples = np.concatenate([self.samples, np.zeros(int(tail_silence * self.rate), np.float32)])
        self.realtime = realtime
        self.block_seconds = block_seconds
        self.block = max(1, int(self.rate * block_seconds))
        self.overflows = 0
        self.dropped = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def duration(self) -> float:
        return len(self.samples) / self.rate

    def start(self, q: queue.Queue) -> None:
        self._thread = threading.Thread(target=self._run, args=(q,), name="edgegate-file-reader", daemon=True)
        self._thread.start()

    def _run(self, q: queue.Queue) -> None:
        t0 = time.monotonic()
        n = len(self.samples)
        for start in range(0, n, self.block):
            if self._stop.is_set():
                return
            end = min(n, start + self.block)
            chunk = self.samples[start:end].copy()
            if self.realtime:
                delay = t0 + end / self.rate - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    return
                self._offer(q, Block(chunk, time.monotonic()))
            else:
                while not self._stop.is_set():
                    try:
                        q.put(Block(chunk, end / self.rate), timeout=0.1)
                        break
                    except queue.Full:
                        continue
        while not self._stop.is_set():
            try:
                q.put(_END, timeout=0.1)
                return
            except queue.Full:
                continue

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)

    def describe(self) -> str:
        pace = "real-time pace" if self.realtime else "as fast as possible, simulated clock"
        return f"{self.name} ({self.duration:.1f} s at {self.rate} Hz, {pace})"


# =========================================================================== clocks


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


# =========================================================================== events


@dataclass
class Partial:
    """Text of the utterance so far (replaced by the next Partial or by the Final)."""

    text: str
    start_s: float
    duration: float
    tentative: bool = False  # transcribed with the final settings at a pause


@dataclass
class Final:
    index: int
    text: str
    start_s: float
    end_s: float
    language: str
    latency: float  # end of speech -> final line, seconds (includes the VAD's endpoint wait)
    text_latency: float  # end of speech -> this text first on screen (a tentative partial may come first)
    compute: float  # seconds of the transcription that produced this text (the tentative's when reused)
    kept: int | None  # modules that ran (None when unknown)
    total: int | None
    budget: float | None
    forced: bool = False  # cut at the maximum utterance length
    reused: bool = False  # the tentative result became the final
    transcription: Transcription | None = field(default=None, repr=False)

    def modules(self) -> str:
        if self.kept is None:
            return "dense"
        return f"{self.kept}/{self.total} modules"


@dataclass
class Notice:
    message: str
    level: str = "warning"  # info, warning, error


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return float(np.percentile(np.asarray(values, dtype=float), q))


@dataclass
class LiveSummary:
    utterances: int = 0
    audio_seconds: float = 0.0
    speech_seconds: float = 0.0
    compute_seconds: float = 0.0  # all transcriptions: finals, partials, tentatives
    final_compute_seconds: float = 0.0
    partials: int = 0
    tentatives_reused: int = 0
    failed: int = 0
    dropped_blocks: int = 0
    overflows: int = 0
    latencies: list[float] = field(default_factory=list)
    text_latencies: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def rtf(self) -> float | None:
        return self.compute_seconds / self.audio_seconds if self.audio_seconds else None

    @property
    def rtf_finals(self) -> float | None:
        return self.final_compute_seconds / self.audio_seconds if self.audio_seconds else None

    @property
    def latency_median(self) -> float | None:
        return statistics.median(self.latencies) if self.latencies else None

    @property
    def latency_p90(self) -> float | None:
        return _percentile(self.latencies, 90)

    @property
    def text_latency_median(self) -> float | None:
        return statistics.median(self.text_latencies) if self.text_latencies else None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(rtf=self.rtf, rtf_finals=self.rtf_finals, latency_median=self.latency_median,
                 latency_p90=self.latency_p90, text_latency_median=self.text_latency_median,
                 text_latency_p90=_percentile(self.text_latencies, 90))
        return d

    def format(self) -> str:
        def s(v: float | None, unit: str = " s") -> str:
            return "n/a" if v is None else f"{v:.2f}{unit}"

        lines = [f"{self.utterances} utterances, {self.audio_seconds:.1f} s of audio ({self.speech_seconds:.1f} s "
                 f"speech); real-time factor {s(self.rtf, '')} (finals only {s(self.rtf_finals, '')}, "
                 f"{self.partials} partials)",
                 f"end of speech -> final text: median {s(self.latency_median)}, p90 {s(self.latency_p90)}; "
                 f"-> text on screen: median {s(self.text_latency_median)}"]
        if self.dropped_blocks or self.overflows:
            lines.append(f"audio lost: {self.overflows} input overflows, {self.dropped_blocks} blocks dropped "
                         "(transcription slower than real time)")
        if self.failed:
            lines.append(f"{self.failed} utterances failed to transcribe")
        return "\n".join(lines)


# =========================================================================== the engine


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
    - ``partial_ctx`` / ``audio_ctx``: trimmed encoder context (Whisper positions of margin) for
      partials / finals, for transcribers that take ``audio_ctx``; None = Whisper's full 30 s.
      Trimming is much cheaper on short audio but can make Whisper base loop, so it is off.
    - ``queue_seconds``: audio the capture queue holds before blocks are dropped (and counted).
    """

    def __init__(self, transcriber, *, language: str | None = None, task: str = "transcribe",
                 budget: float | None = None, vad: str | Any = "auto", vad_config: VadConfig | None = None,
                 partials: bool = True, partial_interval: float = 1.0, partial_ctx: int | None = None,
                 audio_ctx: int | None = None, max_backlog: float = 0.3, queue_seconds: float = 60.0):
        self.transcriber = transcriber
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


# =========================================================================== keys


class KeyReader:
    """Single key presses from a terminal (cbreak mode) on a background thread.

    ``start()`` returns False (and does nothing) when stdin is not a TTY or termios is missing;
    ``stop()`` restores the terminal (also call it from a ``finally``).
    """

    def __init__(self, on_key: Callable[[str], None], stream=None):
        self.on_key = on_key
        self.stream = stream if stream is not None else sys.stdin
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._saved = None
        self._fd: int | None = None

    def start(self) -> bool:
        try:
            if not self.stream.isatty():
                return False
            import termios
            import tty

            fd = self.stream.fileno()
            self._saved = termios.tcgetattr(fd)
            tty.setcbreak(fd)
        except (ImportError, OSError, ValueError, AttributeError):
            return False
        self._fd = fd
        self._thread = threading.Thread(target=self._loop, name="edgegate-keys", daemon=True)
        self._thread.start()
        return True

    def _loop(self) -> None:
        import select

        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self._fd], [], [], 0.2)
                if ready:
                    ch = os.read(self._fd, 1).decode(errors="ignore")
                    if ch:
                        self.on_key(ch)
            except (OSError, ValueError):
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        if self._saved is not None and self._fd is not None:
            import termios

            try:
                termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)
            except (OSError, termios.error):
                pass
            self._saved = None

