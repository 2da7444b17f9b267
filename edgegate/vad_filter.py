"""``vad_filter=True``: decode only the speech, report times in the original audio.

The recording is streamed once through a voice-activity detector (Silero when its wheel is
installed, run through ONNX Runtime; the energy detector otherwise: :mod:`edgegate.vad`). Speech
chunks keep pauses shorter than ``min_silence`` inside them and are cut at ``max_chunk`` (30 s, one
Whisper window); the chunks are joined into one speech-only signal (silence costs no encoder or
decoder work), and every timestamp decoded on it is mapped back through :class:`SpeechMap`.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from edgegate.vad import SAMPLE_RATE, Segmenter, VadConfig, make_detector


@dataclass
class VadOptions:
    """faster-whisper's VAD defaults: long pauses only split speech; generous padding keeps word edges."""

    detector: str = "auto"  # auto (Silero if installed), silero, energy
    min_speech: float = 0.25
    min_silence: float = 2.0
    speech_pad: float = 0.4
    max_chunk: float = 30.0

    def config(self) -> VadConfig:
        return VadConfig(min_speech=self.min_speech, min_silence=self.min_silence, pre_roll=self.speech_pad,
                         post_pad=min(self.speech_pad, self.min_silence), max_utterance=self.max_chunk).validate()


def speech_chunks(blocks: Iterator[np.ndarray], options: VadOptions | None = None) -> tuple[list[tuple[int, int]], str]:
    """(speech chunks as [start, end) sample ranges of the stream, detector name); one pass, bounded memory."""
    options = options or VadOptions()
    detector = make_detector(options.detector)
    seg = Segmenter(detector, options.config())
    chunks: list[tuple[int, int]] = []
    for block in blocks:
        chunks += [(u.start, u.end) for u in seg.push(block)]
    chunks += [(u.start, u.end) for u in seg.flush()]
    return [(a, b) for a, b in chunks if b > a], detector.name


class SpeechMap:
    """Times in the joined speech signal -> times in the original audio."""

    def __init__(self, chunks: list[tuple[int, int]]):
        self.chunks = chunks
        self.ends: list[int] = []  # cumulative speech samples at the end of each chunk
        total = 0
        for a, b in chunks:
            total += b - a
            self.ends.append(total)

    @property
    def speech_samples(self) -> int:
        return self.ends[-1] if self.ends else 0

    def original(self, t: float, is_end: bool = False) -> float:
        """An end exactly on a chunk boundary stays in the earlier chunk (not at the next one's start)."""
        if not self.chunks:
            return t
        s = int(round(t * SAMPLE_RATE))
        i = self.chunk_index(t, is_end)
        before = self.ends[i - 1] if i else 0
        return (self.chunks[i][0] + (s - before)) / SAMPLE_RATE


    def chunk_index(self, t: float, is_end: bool = False) -> int:
        s = int(round(t * SAMPLE_RATE))
        i = bisect.bisect_left(self.ends, s) if is_end else bisect.bisect_right(self.ends, s)
        return min(i, len(self.chunks) - 1)

    def span(self, start: float, end: float, edge: float = 0.9) -> tuple[float, float]:
        """A segment's (start, end) in the original audio.

        Whisper often starts a segment at the end of the previous one; on joined speech that start
        can sit in the padding of the chunk before, with the words in the next chunk, so the span
        would cover the removed silence. A start whose part in its chunk is shorter than ``edge``
        seconds (and than the rest of the segment) moves to the next chunk's start; an end that
        reaches less than that into a later chunk moves back to the end of the chunk before.
        """
        a, b = self.original(start), self.original(end, is_end=True)
        if not self.chunks:
            return a, b
        i, j = self.chunk_index(start), self.chunk_index(end, is_end=True)
        if j > i:
            head = self.ends[i] / SAMPLE_RATE - start
            if head < edge and head < end - start - head:
                a, i = self.chunks[i + 1][0] / SAMPLE_RATE, i + 1
        if j > i:  # the same for an end that only just reaches into a later chunk
            tail = end - self.ends[j - 1] / SAMPLE_RATE
            if tail < edge and tail < end - start - tail:
                b = self.chunks[j - 1][1] / SAMPLE_RATE
        return a, b


class SpeechSource:
    """The speech chunks of a re-readable source, joined: a source itself (``open`` re-reads the audio)."""

    def __init__(self, source, chunks: list[tuple[int, int]]):
        self.source = source
        self.chunks = chunks
        self.n_samples = sum(b - a for a, b in chunks)

    @property
    def duration(self) -> float:
        return self.n_samples / SAMPLE_RATE

    def open(self, block: int = 30 * SAMPLE_RATE) -> Iterator[np.ndarray]:
        pos = 0
        i = 0
        for data in self.source.open(block):
            end = pos + len(data)
            out = []
            while i < len(self.chunks) and self.chunks[i][0] < end:
                a, b = self.chunks[i]
                out.append(data[max(a, pos) - pos: min(b, end) - pos])
                if b > end:
                    break
                i += 1
            pos = end
            if out:
                yield np.concatenate(out)
            if i >= len(self.chunks):
                return

    @property
    def samples(self) -> np.ndarray:
        """The joined speech in memory (only used when the original is in memory too)."""
        return np.concatenate(list(self.open())) if self.chunks else np.zeros(0, np.float32)
