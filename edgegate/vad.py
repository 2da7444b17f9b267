"""Voice-activity segmentation for the live path: audio stream in, utterances out.

Two frame detectors share one state machine (:class:`Segmenter`):

- :class:`EnergyDetector` (always available): frame energy in dB above an adaptive noise floor
  (a low percentile of the last few seconds of frame energies, clamped to a sane range).
- :class:`SileroDetector` (when the ``silero-vad`` wheel is installed): the Silero VAD ONNX
  model that the wheel ships, run directly with ONNX Runtime, so no torch is needed.

The state machine works on 512-sample frames (32 ms at 16 kHz) with hysteresis (a higher
threshold to start speech than to keep it), a minimum speech duration (shorter blips are
ignored), a minimum silence duration (shorter pauses stay inside the utterance), a pre-roll
(audio kept before the detected start, so the first phoneme is not clipped), a post-pad after
the last speech frame, and a maximum utterance length (a longer utterance is cut and a new one
starts at once; Whisper sees at most 30 s per window).

numpy (+ onnxruntime for Silero) only: this module is part of the torch-free runtime.

    seg = Segmenter(EnergyDetector())
    for block in blocks:                 # float32 mono 16 kHz, any block size
        for utt in seg.push(block):
            print(utt.start_s, utt.end_s)  # utt.audio holds the samples
    for utt in seg.flush():              # end of stream
        ...
"""

from __future__ import annotations

import importlib.util
import math
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgegate.errors import BackendError, EdgegateError

SAMPLE_RATE = 16000
FRAME = 512  # samples per decision: 32 ms at 16 kHz (Silero's window size)

__all__ = ["SAMPLE_RATE", "FRAME", "VadConfig", "Utterance", "EnergyDetector", "SileroDetector",
           "Segmenter", "silero_model_path", "make_detector", "segment_audio", "VAD_KINDS"]

VAD_KINDS = ("auto", "energy", "silero")


@dataclass
class VadConfig:
    """Durations of the segmentation state machine, in seconds."""

    min_speech: float = 0.20  # speech shorter than this is ignored (clicks, coughs)
    min_silence: float = 0.50  # a pause must last this long to end an utterance
    pre_roll: float = 0.30  # audio kept before the detected start
    post_pad: float = 0.20  # audio kept after the last speech frame
    max_utterance: float = 25.0  # cut longer utterances (Whisper's window is 30 s)

    def validate(self) -> VadConfig:
        for name in ("min_speech", "min_silence", "pre_roll", "post_pad", "max_utterance"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise EdgegateError(f"VAD {name} must be a number of seconds >= 0, got {value!r}")
        if self.max_utterance < 1.0:
            raise EdgegateError(f"VAD max_utterance must be >= 1 s, got {self.max_utterance!r}")
        if self.post_pad > self.min_silence:
            raise EdgegateError(f"VAD post_pad ({self.post_pad} s) must not exceed min_silence "
                                f"({self.min_silence} s)")
        return self


@dataclass
class Utterance:
    """One segment of speech; sample indices count from the start of the stream (16 kHz)."""

    start: int  # first sample (pre-roll included)
    end: int  # one past the last sample (post-pad included)
    speech_end: int  # one past the last frame judged to be speech
    audio: np.ndarray  # samples[start:end], float32
    forced: bool = False  # cut at max_utterance rather than ended by silence

    @property
    def start_s(self) -> float:
        return self.start / SAMPLE_RATE

    @property
    def end_s(self) -> float:
        return self.end / SAMPLE_RATE

    @property
    def duration(self) -> float:
        return (self.end - self.start) / SAMPLE_RATE


# --------------------------------------------------------------------------- detectors


class EnergyDetector:
    """Frame energy in dB above an adaptive noise floor.

    The floor is the ``percentile``-th percentile of the frame energies (dBFS) of the last
    ``window`` seconds, clamped to [``floor_min``, ``floor_max``] dBFS: speech has gaps between
    words, so a low percentile over a few seconds tracks the background even while someone talks.
    ``floor_max`` keeps a stream that starts with speech from calling that speech the floor.
    A frame starts speech ``on`` dB above the floor and keeps it ``off`` dB above it.
    """

    name = "energy"

    def __init__(self, on: float = 12.0, off: float = 6.0, window: float = 4.0, percentile: float = 10.0,
                 floor_min: float = -75.0, floor_max: float = -40.0):
        if off > on:
            raise EdgegateError(f"energy VAD: off threshold ({off} dB) must not exceed on threshold ({on} dB)")
        self.on, self.off = float(on), float(off)
        self.percentile = float(percentile)
        self.floor_min, self.floor_max = float(floor_min), float(floor_max)
        self._history: deque[float] = deque(maxlen=max(1, int(round(window * SAMPLE_RATE / FRAME))))
        self.floor = self.floor_min

    def reset(self) -> None:
        self._history.clear()
        self.floor = self.floor_min

    def __call__(self, frame: np.ndarray) -> float:
        energy = 10.0 * math.log10(float(np.mean(np.square(frame, dtype=np.float64))) + 1e-10)
        self._history.append(energy)
        floor = float(np.percentile(np.fromiter(self._history, float), self.percentile))
        self.floor = min(max(floor, self.floor_min), self.floor_max)
        return energy - self.floor


def silero_model_path() -> Path | None:
    """The ONNX model shipped in the ``silero-vad`` wheel, located without importing the package
    (its ``__init__`` imports torch). None when the wheel is not installed."""
    try:
        spec = importlib.util.find_spec("silero_vad")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / "data" / "silero_vad.onnx"
        if path.is_file():
            return path
    return None


class SileroDetector:
    """Silero VAD (v5/v6 ONNX) speech probability per 512-sample frame, via ONNX Runtime."""

    name = "silero"
    CONTEXT = 64  # samples of the previous frame the model sees at 16 kHz

    def __init__(self, model_path: str | Path | None = None, on: float = 0.5, off: float = 0.35):
        path = Path(model_path) if model_path else silero_model_path()
        if path is None or not path.is_file():
            raise BackendError("Silero VAD model not found: pip install silero-vad (or use --vad energy)")
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendError("Silero VAD needs ONNX Runtime: pip install onnxruntime (or use --vad energy)") from None
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - any load failure is one line for the user
            raise BackendError(f"cannot load Silero VAD model {path}: {' '.join(str(exc).split())[:200]}") from None
        if off > on:
            raise EdgegateError(f"silero VAD: off threshold ({off}) must not exceed on threshold ({on})")
        self.on, self.off = float(on), float(off)
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)
        self.reset()

    def reset(self) -> None:
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self._context = np.zeros((1, self.CONTEXT), dtype=np.float32)

    def __call__(self, frame: np.ndarray) -> float:
        x = np.concatenate([self._context, frame.reshape(1, -1).astype(np.float32, copy=False)], axis=1)
        out, self._state = self._session.run(None, {"input": x, "state": self._state, "sr": self._sr})
        self._context = x[:, -self.CONTEXT:]
        return float(out.reshape(-1)[0])


def make_detector(kind: str = "auto"):
    """``energy``, ``silero``, or ``auto`` (Silero when its wheel is installed, else energy)."""
    if kind not in VAD_KINDS:
        raise EdgegateError(f"unknown VAD {kind!r}: use one of {', '.join(VAD_KINDS)}")
    if kind == "energy":
        return EnergyDetector()
    if kind == "silero":
        return SileroDetector()
    if silero_model_path() is not None and importlib.util.find_spec("onnxruntime") is not None:
        try:
            return SileroDetector()
        except EdgegateError:
            pass
    return EnergyDetector()


# --------------------------------------------------------------------------- state machine


class Segmenter:
    """Streaming segmentation: ``push`` blocks of 16 kHz float32 audio, get finished utterances.

    Besides the finished utterances, the live path reads the state between pushes: ``in_speech``,
    ``utterance_start``, ``last_speech_end``, ``silence_samples``, ``samples_seen`` and
    ``audio(start, end)`` (samples still held in the buffer), to transcribe a growing utterance.
    """

    def __init__(self, detector=None, config: VadConfig | None = None):
        self.detector = detector if detector is not None else EnergyDetector()
        self.config = (config or VadConfig()).validate()
        c = self.config
        self._min_speech = max(1, int(round(c.min_speech * SAMPLE_RATE / FRAME)))  # frames
        self._min_silence = max(1, int(round(c.min_silence * SAMPLE_RATE / FRAME)))
        self._pre_roll = int(round(c.pre_roll * SAMPLE_RATE))
        self._post_pad = int(round(c.post_pad * SAMPLE_RATE))
        self._max_len = int(round(c.max_utterance * SAMPLE_RATE))
        self.reset()

    def reset(self) -> None:
        if hasattr(self.detector, "reset"):
            self.detector.reset()
        self._buf = np.zeros(0, dtype=np.float32)
        self._buf_start = 0  # stream index of _buf[0]
        self._pending = np.zeros(0, dtype=np.float32)  # samples not yet making a whole frame
        self.samples_seen = 0  # samples that went through the detector
        self.in_speech = False
        self.utterance_start = 0
        self.last_speech_end = 0
        self.silence_samples = 0  # length of the current run of non-speech frames inside speech
        self._cand_start: int | None = None  # start of a run of speech frames not yet long enough
        self._cand_frames = 0
        self.last_score = 0.0
        self._last_end = 0  # end of the previous utterance

    @property
    def samples_pushed(self) -> int:
        """Samples pushed so far (the detector has seen all but the last partial frame)."""
        return self._buf_start + len(self._buf)

    # -- buffer ----------------------------------------------------------------------------
    def audio(self, start: int, end: int) -> np.ndarray:
        """A copy of stream samples [start, end) still in the buffer (clipped to what is held)."""
        a = max(start, self._buf_start) - self._buf_start
        b = min(end, self._buf_start + len(self._buf)) - self._buf_start
        return self._buf[a:max(a, b)].copy()

    def _trim(self) -> None:
        # Keep the current utterance (or the pre-roll when idle).
        keep_from = self.utterance_start if self.in_speech else self.samples_seen - self._pre_roll
        if self._cand_start is not None:
            keep_from = min(keep_from, self._cand_start - self._pre_roll)
        drop = max(0, keep_from - self._buf_start)
        if drop > 4 * SAMPLE_RATE or (drop > 0 and drop >= len(self._buf) // 2):
            self._buf = self._buf[drop:].copy()
            self._buf_start += drop

    # -- frames ----------------------------------------------------------------------------
    def _finish(self, end: int, forced: bool) -> Utterance:
        end = max(end, self.utterance_start)
        utt = Utterance(self.utterance_start, end, min(self.last_speech_end, end),
                        self.audio(self.utterance_start, end), forced)
        self._last_end = end
        self.in_speech = False
        self.silence_samples = 0
        return utt

    def _frame(self, frame: np.ndarray, out: list[Utterance]) -> None:
        score = float(self.detector(frame))
        self.last_score = score
        start = self.samples_seen
        self.samples_seen += FRAME
        end = self.samples_seen
        det = self.detector
        if not self.in_speech:
            threshold = det.off if self._cand_start is not None else det.on
            if score >= threshold:
                if self._cand_start is None:
                    self._cand_start, self._cand_frames = start, 0
                self._cand_frames += 1
                if self._cand_frames >= self._min_speech:
                    self.in_speech = True
                    self.utterance_start = max(0, self._buf_start, self._cand_start - self._pre_roll)
                    self.utterance_start = max(self.utterance_start, self._last_end)  # never overlap
                    self.last_speech_end = end
                    self.silence_samples = 0
                    self._cand_start = None
            else:
                self._cand_start, self._cand_frames = None, 0
            return
        if score >= det.off:
            self.last_speech_end = end
            self.silence_samples = 0
        else:
            self.silence_samples += FRAME
            if self.silence_samples >= self._min_silence * FRAME:
                out.append(self._finish(self.last_speech_end + self._post_pad, forced=False))
                return
        if end - self.utterance_start >= self._max_len:
            if self.silence_samples:  # in a pause already: end it there, as silence would have
                out.append(self._finish(min(end, self.last_speech_end + self._post_pad), forced=False))
                return
            out.append(self._finish(end, forced=True))
            # Still talking: the next utterance starts right here, without pre-roll.
            self.in_speech = True
            self.utterance_start = end
            self.last_speech_end = end

    def push(self, samples: np.ndarray) -> list[Utterance]:
        """Feed 16 kHz mono float32 samples; return the utterances that ended in them."""
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        self._buf = np.concatenate([self._buf, x]) if len(self._buf) else x.copy()
        data = np.concatenate([self._pending, x]) if len(self._pending) else x
        n = len(data) // FRAME
        out: list[Utterance] = []
        for i in range(n):
            self._frame(data[i * FRAME:(i + 1) * FRAME], out)
        self._pending = data[n * FRAME:].copy()
        self._trim()
        return out

    def flush(self) -> list[Utterance]:
        """End of stream: close the utterance in progress (if any)."""
        out: list[Utterance] = []
        if self.in_speech:
            end = min(self.last_speech_end + self._post_pad, self._buf_start + len(self._buf))
            out.append(self._finish(end, forced=False))
        self._cand_start, self._cand_frames = None, 0
        return out


def segment_audio(samples: np.ndarray, detector=None, config: VadConfig | None = None,
                  block: int = 1600) -> list[Utterance]:
    """Offline helper: segment a whole 16 kHz signal by streaming it in ``block``-sample blocks."""
    seg = Segmenter(detector, config)
    x = np.asarray(samples, dtype=np.float32).reshape(-1)
    out: list[Utterance] = []
    for i in range(0, len(x), block):
        out += seg.push(x[i:i + block])
    return out + seg.flush()
