"""The torch-free on-device runtime: bundle reader, planner, backends.

    from edgegate.runtimes import Session
    session = Session.load("bundles/whisper-base-cpu", budget=0.25)
    print(session.transcribe_text(samples, 16000, language="en").text)   # long-form; transcribe() yields segments
"""

from __future__ import annotations

from typing import Any

__all__ = ["Session"]


def __getattr__(name: str) -> Any:
    # Lazy, so that `import edgegate.runtimes` stays cheap until a session is wanted.
    if name == "Session":
        from edgegate.runtimes.session import Session

        return Session
    raise AttributeError(name)
