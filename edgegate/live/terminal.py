"""The terminal side of ``edgegate live``: key presses (cbreak mode) and the console that prints
partial lines (one updating line on stderr), final lines (stdout) and notices."""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
from collections.abc import Callable
from typing import Any


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


class Console:
    """Final lines on stdout; partials (one updating line), notices and the summary on stderr."""

    def __init__(self, fmt: str = "text", out=None, err=None):
        self.fmt = fmt
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.live_line = self.err.isatty()
        self._shown = False
        self._lock = threading.Lock()

    def _clear(self) -> None:
        if self._shown:
            self.err.write("\r\033[K")
            self.err.flush()
            self._shown = False

    def partial(self, event) -> None:
        with self._lock:
            if self.fmt == "jsonl":
                self._json({"type": "partial", "text": event.text, "start": round(event.start_s, 3),
                            "duration": round(event.duration, 3), "tentative": event.tentative})
            elif self.live_line and event.text:
                width = max(20, shutil.get_terminal_size((100, 20)).columns - 1)
                line = ("» " if event.tentative else "… ") + event.text
                if len(line) > width:
                    line = "…" + line[-(width - 1):]
                self.err.write("\r\033[K" + line)
                self.err.flush()
                self._shown = True

    def final(self, event) -> None:
        with self._lock:
            self._clear()
            if self.fmt == "jsonl":
                self._json({"type": "final", "index": event.index, "text": event.text, "start": round(event.start_s, 3),
                            "end": round(event.end_s, 3), "language": event.language,
                            "latency": round(event.latency, 3), "text_latency": round(event.text_latency, 3),
                            "compute": round(event.compute, 3), "kept": event.kept, "total": event.total,
                            "budget": event.budget, "forced": event.forced})
                return
            budget = "" if event.budget is None else f", budget {event.budget:.1f}"
            print(f"[{event.start_s:7.2f} -> {event.end_s:7.2f}] {event.text}  "
                  f"(latency {event.latency:.2f} s, {event.modules()}{budget})", file=self.out, flush=True)

    def info(self, message: str) -> None:
        with self._lock:
            self._clear()
            print(message, file=self.err, flush=True)

    def _json(self, obj: dict[str, Any]) -> None:
        print(json.dumps(obj, ensure_ascii=False), file=self.out, flush=True)


def budget_keys(live: Any, console: Console) -> Callable[[str], None]:
    """The key handler of ``edgegate live``: + / - step the budget by 0.1, q stops after the utterance."""
    from edgegate.errors import EdgegateError

    def on_key(ch: str) -> None:
        if ch in "+=-_":
            try:
                value = live.step_budget(0.1 if ch in "+=" else -0.1)
                console.info(f"budget {value:.1f} (from the next utterance)")
            except EdgegateError as exc:
                console.info(f"budget unchanged: {exc}")
        elif ch in "qQ":
            console.info("stopping after the current utterance")
            live.stop()

    return on_key


def show_event(console: Console, event: Any) -> None:
    """One event of :meth:`edgegate.live.LiveTranscriber.run` on the console."""
    from edgegate.live.events import Final, Notice, Partial

    if isinstance(event, Partial):
        console.partial(event)
    elif isinstance(event, Final):
        console.final(event)
    elif isinstance(event, Notice):
        console.info(("error: " if event.level == "error" else "") + event.message)
