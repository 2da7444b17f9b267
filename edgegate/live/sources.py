"""Audio sources of the live path: the microphone (PortAudio) and a replayed file, one queue for both.

The capture callback only copies the block into a bounded queue (never blocks; a full queue or a
PortAudio input overflow is counted and reported); a file is replayed through the same queue, at
real-time pace or as fast as the consumer takes it.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgegate.errors import AudioError, BackendError
from edgegate.vad import SAMPLE_RATE

NO_DEVICE_MESSAGE = (
    "no audio input devices found: plug in a microphone; check that this user may use it (the 'audio' group, "
    "or --device /dev/snd for a container) and that PortAudio is installed (apt-get install libportaudio2); "
    "or replay a file with --input FILE"
)


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
