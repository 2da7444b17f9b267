"""Which frontend and tokenizer a bundle's model family uses, and the OWSM request path (torch-free).

``manifest.model.family`` is ``whisper`` (the default) or ``owsm``. A Whisper bundle carries
``tokenizer.json`` and computes Whisper's log-mel (``edgegate.frontend``); an OWSM bundle carries
``tokens.txt`` (and ``bpe.model``) for :class:`edgegate.tokenizer_owsm.OwsmTokenizer` and
``frontend.npz`` (the checkpoint's mel matrix and global-MVN statistics) for
:class:`edgegate.frontend_owsm.OwsmFrontend`, and runs OWSM's fixed full windows
(:mod:`edgegate.models.owsm_windows`) through the same runner lists and decoding loop.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgegate.errors import BudgetError, BundleError, EdgegateError
from edgegate.pipeline import Segment, TranscriptionInfo, as_segments
from edgegate.runtimes.schema import as_choice, as_dict, as_int, as_num, as_str, fail

if TYPE_CHECKING:
    from edgegate.pipeline import Transcription
    from edgegate.runtimes.session import Session

FAMILIES = ("whisper", "owsm")
FRONTEND_TYPES = {"whisper": "whisper-log-mel", "owsm": "owsm-log-mel"}


def family_of(manifest: dict[str, Any]) -> str:
    return as_choice((manifest.get("model") or {}).get("family", "whisper"), "model.family", FAMILIES)


def validate_family(manifest: dict[str, Any], n_mels: int) -> str:
    """The family's frontend and tokenizer entries (one-line BundleError if they do not fit)."""
    family = family_of(manifest)
    front = as_dict(manifest.get("frontend"), "frontend")
    as_choice(front.get("type"), "frontend.type", (FRONTEND_TYPES[family],))
    if as_int(front.get("n_mels"), "frontend.n_mels", 1, 1024) != n_mels:
        raise fail("frontend.n_mels", "differs from execution.n_mels")
    tok = as_dict(manifest.get("tokenizer"), "tokenizer")
    as_str(tok.get("file"), "tokenizer.file")
    if family == "owsm":
        as_str(front.get("file"), "frontend.file")
        as_str(tok.get("bpe_model"), "tokenizer.bpe_model", none=True)
        for key in ("sample_rate", "n_fft", "win_length", "hop_length"):
            as_int(front.get(key), f"frontend.{key}", 1, 1 << 20)
        as_num(front.get("speech_length"), "frontend.speech_length", 0.01, 3600.0)
    return family


def family_files(manifest: dict[str, Any]) -> list[tuple[str, str]]:
    """(file, what) of every file the family's frontend and tokenizer read (each must be hashed)."""
    tok = manifest["tokenizer"]
    out = [(tok["file"], "tokenizer")]
    if family_of(manifest) == "owsm":
        out.append((manifest["frontend"]["file"], "frontend"))
        if tok.get("bpe_model"):
            out.append((tok["bpe_model"], "tokenizer.bpe_model"))
    return out


def load_tokenizer(bundle: Any) -> Any:
    """The bundle's tokenizer: Whisper's from tokenizer.json, or OWSM's token list."""
    tok = bundle.manifest["tokenizer"]
    if family_of(bundle.manifest) == "whisper":
        from edgegate.tokenizer import WhisperTokenizer

        return WhisperTokenizer.from_file(bundle.tokenizer_file)
    from edgegate.tokenizer_owsm import OwsmTokenizer

    lines = (bundle.path / tok["file"]).read_text(encoding="utf-8").splitlines()
    bpe = bundle.path / tok["bpe_model"] if tok.get("bpe_model") else None
    return OwsmTokenizer([line for line in lines if line], bpe, tok.get("notime_symbol", "<notimestamps>"),
                         tok.get("first_time_symbol", "<0.00>"), tok.get("last_time_symbol", "<30.00>"))


def load_frontend(bundle: Any) -> Any:
    """OWSM's numpy frontend from the bundle's ``frontend.npz``; None for Whisper (``edgegate.frontend``)."""
    if family_of(bundle.manifest) == "whisper":
        return None
    from edgegate.frontend_owsm import OwsmFrontend

    front = bundle.manifest["frontend"]
    path = bundle.path / front["file"]
    n_bins, n_mels = front["n_fft"] // 2 + 1, front["n_mels"]
    try:
        with np.load(path, allow_pickle=False) as z:
            melmat, mean, std = z["melmat"], z["mean"], z["std"]
    except (OSError, KeyError, ValueError) as exc:
        raise BundleError(f"{path}: not an OWSM frontend file with melmat/mean/std ({exc}); re-export the "
                          "bundle") from None
    if melmat.shape != (n_bins, n_mels) or mean.shape != (n_mels,) or std.shape != (n_mels,):
        raise BundleError(f"{path}: arrays of shapes {melmat.shape}, {mean.shape}, {std.shape} do not fit "
                          f"n_fft {front['n_fft']} and {n_mels} mel bins; re-export the bundle")
    return OwsmFrontend(melmat, mean, std, front["n_fft"], front["win_length"], front["hop_length"],
                        front["sample_rate"], front["speech_length"])


def owsm_session_planner(session: Session) -> Any:
    """An OWSM session's planner: the bundle's costs at the full window's encoder positions."""
    from edgegate.models.owsm_windows import owsm_planner

    pred = session.bundle.predictor or {}
    codes = pred.get("language_codes") or session.tokenizer.language_codes
    return owsm_planner(session.gate_names, lambda *a, **k: session.costs(*a, **k),
                        session.limits.encoder_positions, session._predict if session.predictor else None, codes,
                        session._no_predictor())


def transcribe_owsm(session: Session, audio: str | Path | np.ndarray, sample_rate: int = 16000,
                    language: str | None = None, task: str = "transcribe", beam_size: int = 1,
                    mask: Sequence[bool] | np.ndarray | None = None, budget: Any = None) -> Transcription:
    """``Session.transcribe`` for an OWSM bundle: full windows, planned once per request, shared decoding."""
    from edgegate.models.owsm_windows import OwsmWindows, transcribe_owsm_windows
    from edgegate.pipeline import to_samples
    from edgegate.tokenizer import TASKS

    t0 = time.perf_counter()
    if mask is not None and budget is not None:
        raise BudgetError("pass either mask or budget, not both")
    if task not in TASKS:
        raise EdgegateError(f"unknown task {task!r}; use one of: {', '.join(TASKS)}")
    if language is not None:
        language = session.tokenizer.normalize_language(language)
    windows = OwsmWindows(to_samples(audio, sample_rate), session.frontend)
    windows.features  # noqa: B018 -- computed (and timed) before planning, which reads them
    t1 = time.perf_counter()
    planner = session.planner  # owsm_session_planner's, set by Session.load
    if mask is not None:
        plan = planner.fixed(mask, windows.request, None)
    else:
        spec = session.budget if budget is None else session._as_budget(session.bundle, budget)
        plan = planner.plan(windows.request, language, task, spec, None)
    timings = {"frontend": t1 - t0, "predictor": time.perf_counter() - t1, "encoder": 0.0, "decoder": 0.0}
    keep = plan.mask
    return transcribe_owsm_windows(windows, lambda f: session.encode(f, keep),
                                   lambda window: session.decoder_state(window, keep), session.tokenizer,
                                   session.limits.n_vocab, language, task, beam_size, timings, t0, plan.kept)


__all__ = ["FAMILIES", "FRONTEND_TYPES", "family_of", "validate_family", "family_files", "load_tokenizer",
           "load_frontend", "owsm_session_planner", "transcribe_owsm"]


def owsm_segments(session: Session, audio: str | Path | np.ndarray, sample_rate: int, language: str | None,
                  task: str, beam_size: int, mask: Sequence[bool] | np.ndarray | None, budget: Any,
                  word_timestamps: bool, vad_filter: bool) -> tuple[Iterator[Segment], TranscriptionInfo]:
    """``Session.transcribe`` for an OWSM bundle: its fixed windows in the ``(segments, info)`` shape."""
    if word_timestamps or vad_filter:
        raise EdgegateError("word timestamps and the VAD filter are Whisper-only for now; drop them for an "
                            "OWSM bundle")
    return as_segments(transcribe_owsm(session, audio, sample_rate, language, task, beam_size, mask, budget))
