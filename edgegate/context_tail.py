"""The context tail: what lets Whisper run its encoder on the real audio length without looping (torch-free).

Whisper pads every input to 30 s, and its decoder was trained to read the encoder's states of that padding:
that is where it finds the end of the speech. Cut the context to the real frames (``audio_ctx``) and those
states are gone, and the decoder loops ("10 of clubs 10 of clubs ..." until the token limit). The padding's
states barely depend on the speech, so the model's own states for a window of nothing but padding, computed
once, stand in for them: the encoder runs on the real frames plus a margin, the tail fills positions
``frames .. n_audio_ctx`` of the decoder's memory, and the decoder sees a 30-s window as it was trained to.
No weight changes. Measured on the 10 real clips of pocketsphinx-testdata (PyTorch, whisper-base): 11 word
errors at full context, 454 at real length + 64 positions, 11 at real length + 32 or + 64 with the tail
(margins below 32 loop again: 121 at + 16). See docs/adaptation.md.

The decoder still attends over all ``n_audio_ctx`` positions (its cross-attention costs what it does at full
context); the saving is the encoder's, most of the work for a short clip.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

# The normalised log-mel value the tail is computed from. Whisper's padding value depends on the clip's
# loudness ((max - 8 + 4) / 4 after its floor and scaling: -0.29 .. -0.98 on the 10 real clips); one tail
# at -0.5 gave the same word errors as each clip's own value, so one tail serves every request.
PADDING_LOG_MEL = -0.5

# Margins below this loop again even with the tail (the encoder needs some padding of its own).
MIN_TAIL_MARGIN = 32


def padding_mel(n_mels: int, n_frames: int) -> np.ndarray:
    """A window of nothing but padding, (1, n_mels, n_frames) float32."""
    return np.full((1, n_mels, n_frames), PADDING_LOG_MEL, dtype=np.float32)


def extend_window(window: Mapping[str, np.ndarray], tail: Mapping[str, np.ndarray],
                  frame_axes: Mapping[str, int]) -> dict[str, np.ndarray]:
    """A trimmed window's values with the tail's positions ``frames ..`` appended along each value's frame axis.

    ``tail`` holds the same values computed on :func:`padding_mel` at full length; values without a frame
    axis (``frame_axes`` lacks them) pass through.
    """
    out = dict(window)
    for name, axis in frame_axes.items():
        have, full = window[name], tail[name]
        n = have.shape[axis]
        if n >= full.shape[axis]:
            continue
        rest = np.take(full, np.arange(n, full.shape[axis]), axis=axis)
        out[name] = np.ascontiguousarray(np.concatenate([have, rest.astype(have.dtype, copy=False)], axis=axis))
    return out


class TailCache:
    """The tail's window values per keep mask, computed on first use by the session's own graphs."""

    def __init__(self, compute: Callable[[bytes], dict[str, np.ndarray]], max_entries: int = 16):
        self._compute = compute
        self._max = max_entries
        self._values: dict[bytes, dict[str, np.ndarray]] = {}

    def get(self, key: bytes) -> dict[str, np.ndarray]:
        got = self._values.get(key)
        if got is None:
            if len(self._values) >= self._max:
                self._values.clear()
            got = self._values[key] = self._compute(key)
        return got


def frame_axes(outputs: Sequence, values: Sequence[str]) -> dict[str, int]:
    """value -> the index of its ``frames`` axis, from the specs of the outputs that write the values."""
    axes: dict[str, int] = {}
    for t in outputs:
        if t.value in values and "frames" in t.shape:
            axes[t.value] = list(t.shape).index("frames")
    return axes


__all__ = ["PADDING_LOG_MEL", "MIN_TAIL_MARGIN", "padding_mel", "extend_window", "TailCache", "frame_axes"]
