"""Whisper's log-mel of a whole recording, served window by window.

openai-whisper computes the log-mel of the whole audio padded by 30 s and floors it at
``max - 8`` over the *whole* recording; the seek loop then slices windows out of it. Two sources
give those same frames:

- :class:`ArrayMel`: the whole log-mel at once (an in-memory signal), exactly as whisper does.
- :class:`StreamedMel`: two passes over a re-readable stream (the maximum first, then the frames
  on demand, forward only), so a 2-hour file costs one window of frames and one block of samples.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import numpy as np

from edgegate.frontend import HOP_LENGTH, N_FFT, N_FRAMES, N_SAMPLES, hann_window, log_mel_spectrogram, mel_filters

CHUNK_FRAMES = 3000  # frames transformed at a time in a streamed pass


class MelSource(Protocol):
    n_mels: int
    content_frames: int  # frames that hold audio; frames() also serves the 30 s of padding after them

    def frames(self, start: int, stop: int) -> np.ndarray:
        """Normalised log-mel frames [start, stop), (n_mels, stop - start) float32."""


class ArrayMel:
    def __init__(self, samples: np.ndarray, n_mels: int = 80):
        self.n_mels = n_mels
        self.mel = log_mel_spectrogram(samples, n_mels, padding=N_SAMPLES)
        self.content_frames = self.mel.shape[-1] - N_FRAMES

    def frames(self, start: int, stop: int) -> np.ndarray:
        return self.mel[:, start:stop]


def _padded_signal(blocks: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    """The signal torch.stft(center=True) transforms: reflect head, audio, 30 s of zeros, zero tail."""
    head = np.zeros(0, np.float32)
    started = False
    for block in blocks:
        if not started:
            head = np.concatenate([head, block])
            if len(head) <= N_FFT // 2:
                continue
            block, started = head, True
            yield block[1: N_FFT // 2 + 1][::-1].copy()
        yield block
    if not started:  # shorter than the reflect width: the zero padding is reflected too
        sig = np.concatenate([head, np.zeros(N_SAMPLES, np.float32)])
        yield sig[1: N_FFT // 2 + 1][::-1].copy()
        yield sig
    else:
        yield np.zeros(N_SAMPLES, np.float32)
    yield np.zeros(N_FFT // 2, np.float32)


def raw_log_mel(blocks: Iterator[np.ndarray], n_mels: int) -> Iterator[np.ndarray]:
    """log10 mel power of every frame of the 30-s-padded signal, in chunks (before the max - 8 floor).

    Same arithmetic as :func:`edgegate.frontend.log_mel_spectrogram`, frame by frame; whisper drops
    the last STFT frame, so frames number (samples + 30 s) // 160.
    """
    filters = mel_filters(n_mels).T
    buf = np.zeros(0, np.float32)
    total = 0  # padded-signal samples seen, the 2 * 200 reflect samples included
    emitted = 0
    for piece in _padded_signal(blocks):
        buf = np.concatenate([buf, piece]) if len(buf) else piece
        total += len(piece)
        while True:
            n = (len(buf) - N_FFT) // HOP_LENGTH + 1 if len(buf) >= N_FFT else 0
            if n < CHUNK_FRAMES:
                break
            yield _transform(buf, CHUNK_FRAMES, filters)
            buf = buf[CHUNK_FRAMES * HOP_LENGTH:]
            emitted += CHUNK_FRAMES
    wanted = (total - N_FFT) // HOP_LENGTH  # 1 + (len - n_fft) // hop frames, minus the dropped last one
    if wanted - emitted > 0:
        yield _transform(buf, wanted - emitted, filters)


def _transform(buf: np.ndarray, n: int, filters: np.ndarray) -> np.ndarray:
    frames = np.lib.stride_tricks.sliding_window_view(buf, N_FFT)[: n * HOP_LENGTH: HOP_LENGTH]
    spec = np.fft.rfft(frames.astype(np.float64) * hann_window(), n=N_FFT, axis=-1)
    power = spec.real * spec.real + spec.imag * spec.imag
    mel = (power.astype(np.float32) @ filters).T
    return np.log10(np.maximum(mel, np.float32(1e-10)))


class StreamedMel:
    """The normalised log-mel of a re-readable :class:`edgegate.audiostream` source, forward only."""

    def __init__(self, source, n_mels: int = 80):
        self.source = source
        self.n_mels = n_mels
        peak, count = -np.inf, 0
        for chunk in raw_log_mel(source.open(), n_mels):
            peak = max(peak, float(chunk.max()))
            count += chunk.shape[1]
        self.peak = np.float32(peak)
        self.content_frames = count - N_FRAMES
        self._reset()

    def _reset(self) -> None:
        self._chunks = raw_log_mel(self.source.open(), self.n_mels)
        self._buf = np.zeros((self.n_mels, 0), np.float32)
        self._start = 0  # frame index of _buf[:, 0]

    def _normalise(self, log_spec: np.ndarray) -> np.ndarray:
        log_spec = np.maximum(log_spec, self.peak - np.float32(8.0))
        return ((log_spec + np.float32(4.0)) / np.float32(4.0)).astype(np.float32)

    def frames(self, start: int, stop: int) -> np.ndarray:
        if start < self._start:  # a step back (rare): read again from the beginning
            self._reset()
        drop = min(start - self._start, self._buf.shape[1])
        self._buf, self._start = self._buf[:, drop:], self._start + drop
        while self._start + self._buf.shape[1] < stop:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            chunk = self._normalise(chunk)
            skip = max(0, start - self._start - self._buf.shape[1])  # whole chunks before start
            if skip >= chunk.shape[1]:
                self._start += chunk.shape[1]
                continue
            if skip:
                chunk, self._start = chunk[:, skip:], self._start + skip
            self._buf = np.concatenate([self._buf, chunk], axis=1)
        a = start - self._start
        return self._buf[:, a: a + (stop - start)]
