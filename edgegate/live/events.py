"""What the live path reports: partial and final lines, notices, and the run's summary."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from edgegate.pipeline import Transcription


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
