"""What the live path transcribes with: any model behind the small :class:`Transcriber` protocol.

:func:`load_transcriber` returns the torch-free runtime's ``Session`` for a bundle, or the PyTorch
model otherwise. Partials take the fast fixed-window path (greedy, no timestamps); finals
(``final=True``) take the long-form decoding of ``transcribe()`` (:mod:`edgegate.longform`: timestamp
rules, temperature fallback, the no-speech rule and the loop guard), run to the end, so a final
line follows the same decoding rules as ``edgegate transcribe``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from edgegate.errors import BackendError, BudgetError, BundleError
from edgegate.models.registry import DEFAULT_TRANSCRIBE_MODEL
from edgegate.pipeline import Transcription


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

    def __init__(self, model: Any = DEFAULT_TRANSCRIBE_MODEL, threads: int | None = None):
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
        # WhisperModel / GatedWhisper: the fixed-window path for partials, the long-form one for finals.
        self._transcribe = getattr(model, "transcribe_windows", None) or model.transcribe
        self._final = getattr(model, "transcribe_text", None) or self._transcribe
        self.supports_budget = _accepts(self._transcribe, "budget")
        self.accepts_audio_ctx = _accepts(self._transcribe, "audio_ctx")
        self.accepts_final = True
        names = getattr(model, "gate_names", None)
        self.n_modules = len(names) if names is not None else None
        self.default_budget: float | None = None

    def transcribe(self, audio: np.ndarray, sample_rate: int = 16000, *, language: str | None = None,
                   task: str = "transcribe", budget: float | None = None, final: bool = False,
                   **kwargs: Any) -> Transcription:
        if budget and not self.supports_budget:
            raise BudgetError(f"budget {budget:g} needs a gate predictor, which the PyTorch model {self.name} "
                              "does not have here; run a bundle exported with gates (--bundle DIR) or use budget 0")
        if self.supports_budget and budget is not None:  # None: the model's own default
            kwargs["budget"] = budget
        run = self._final if final else self._transcribe
        return run(audio, sample_rate, language=language, task=task, **kwargs)

    def describe(self) -> str:
        return f"{self.name} (PyTorch)"


class SessionTranscriber:
    """The torch-free runtime's ``Session`` behind the :class:`Transcriber` protocol."""

    backend = "runtime"

    def __init__(self, session: Any):
        self.session = session
        self.name = str(getattr(getattr(session, "bundle", None), "path", "bundle"))
        self.supports_budget = bool(getattr(session, "has_predictor", True))
        self.accepts_audio_ctx = _accepts(session.transcribe_windows, "audio_ctx")
        self.accepts_final = True
        names = getattr(session, "gate_names", None)
        self.n_modules = len(names) if names is not None else None
        budget = getattr(session, "budget", None)
        self.default_budget = getattr(budget, "value", budget)

    def transcribe(self, audio: np.ndarray, sample_rate: int = 16000, *, language: str | None = None,
                   task: str = "transcribe", budget: float | None = None, final: bool = False,
                   **kwargs: Any) -> Transcription:
        run = self.session.transcribe_text if final else self.session.transcribe_windows
        return run(audio, sample_rate, language=language, task=task, budget=budget, **kwargs)

    def describe(self) -> str:
        describe = getattr(self.session, "describe", None)
        return describe() if callable(describe) else self.name


def load_transcriber(bundle: str | Path | None = None, model: str = DEFAULT_TRANSCRIBE_MODEL,
                     threads: int | None = None, backend: str = "auto"):
    """A bundle on the torch-free runtime (``bundle``), else the PyTorch ``model``."""
    if bundle is None:
        return TorchTranscriber(model, threads=threads)
    path = Path(bundle)
    if not path.exists():
        raise BundleError(f"bundle not found: {path}; pass the directory written by edgegate export")
    from edgegate.runtimes.session import Session

    return SessionTranscriber(Session.load(path, backend=backend, threads=threads))
