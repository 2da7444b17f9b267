"""The context tail: what lets Whisper run its encoder on the real audio length without looping (torch-free).

Whisper pads every input to 30 s, and it was trained on what that padding becomes inside it. Cut the context
to the real frames (``audio_ctx``) and two things change: the encoder's frames no longer attend to the
padding's positions, and the decoder no longer finds the padding's states, which is where it learned that
the speech has ended. It loops ("10 of clubs 10 of clubs ..." until the token limit). The padding barely
depends on the speech, so the model's own values for a window of nothing but padding, computed once, stand
in for both:

- **in the encoder**, every self-attention layer's keys and values of the padding, positions ``frames ..``,
  follow the window's own (``Whisper.padding_kv``; in a bundle, float16 constants of each encoder attention
  graph), so the real frames attend to a 30-s window as they were trained to;
- **for the decoder**, the padding window's final states fill positions ``frames .. n_audio_ctx`` of its
  memory (``Whisper.padding_states``; on the runtime, the cross-attention K/V of that window, computed by
  the session's own graphs on first use and cached per keep mask: :class:`TailCache`).

No weight changes. Measured on whisper-base, real length + 64 positions (docs/adaptation.md): 10 word errors
on the 10 real clips of pocketsphinx-testdata against 11 at full context (454 without the tail); on 191
natural-voice held-out utterances WER 51.0 % against 50.1 % and BLEU 9.04 against 9.43. The decoder's
memory tail alone was not enough: translation fell to BLEU ~6 against ~12 and French looped.

What it costs: the encoder's attention reads n_audio_ctx keys per frame (still a fraction of the full
window's work: the frames are few, the padding's projections and MLPs are never computed); the decoder
attends over all n_audio_ctx positions, as at full context.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

# The normalised log-mel value the tail is computed from. Whisper's padding value depends on the clip's
# loudness ((max - 8 + 4) / 4 after its floor and scaling: -0.29 .. -0.98 on the 10 real clips); one tail
# at -0.5 gave the same word errors as each clip's own value, so one tail serves every request.
PADDING_LOG_MEL = -0.5

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


__all__ = ["PADDING_LOG_MEL", "padding_mel", "extend_window", "TailCache", "frame_axes"]
