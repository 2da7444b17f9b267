"""Whisper's shape and module names, without torch: what the model, its cost table and its
exporter agree on.

Gateable modules have stable names in execution order (:func:`gate_names`): ``encoder.3.attn``,
``encoder.3.mlp``, ``decoder.1.self_attn``, ``decoder.1.cross_attn``, ``decoder.1.mlp``; the parts
that always run are ``encoder.stem``, ``encoder.ln_post``, ``decoder.embed`` and ``decoder.logits``,
and each kept cross-attention has a once-per-window K/V producer ``decoder.<i>.cross_kv``. This is
the one place that spells these names; everything else iterates :func:`gate_layout`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple


@dataclass
class ModelDims:
    n_mels: int = 80
    n_audio_ctx: int = 1500
    n_audio_state: int = 512
    n_audio_head: int = 8
    n_audio_layer: int = 6
    n_vocab: int = 51865
    n_text_ctx: int = 448
    n_text_state: int = 512
    n_text_head: int = 8
    n_text_layer: int = 6
    n_audio_mlp: int = 0  # 0 means 4 * n_audio_state, as in OpenAI's checkpoints
    n_text_mlp: int = 0

    def __post_init__(self) -> None:
        self.n_audio_mlp = self.n_audio_mlp or 4 * self.n_audio_state
        self.n_text_mlp = self.n_text_mlp or 4 * self.n_text_state


ENCODER_KINDS = ("attn", "mlp")
DECODER_KINDS = ("self_attn", "cross_attn", "mlp")
STEM, LN_POST, EMBED, LOGITS = "encoder.stem", "encoder.ln_post", "decoder.embed", "decoder.logits"
ALWAYS_ON = (STEM, LN_POST, EMBED, LOGITS)


class GateSlot(NamedTuple):
    name: str  # e.g. "decoder.1.cross_attn"
    part: str  # "encoder" or "decoder"
    layer: int
    kind: str  # one of ENCODER_KINDS / DECODER_KINDS


def gate_layout(dims: ModelDims) -> list[GateSlot]:
    """Every gateable module in execution order: all encoder modules, then all decoder modules."""
    slots = [GateSlot(f"encoder.{i}.{k}", "encoder", i, k) for i in range(dims.n_audio_layer) for k in ENCODER_KINDS]
    slots += [GateSlot(f"decoder.{i}.{k}", "decoder", i, k) for i in range(dims.n_text_layer) for k in DECODER_KINDS]
    return slots


def gate_names(dims: ModelDims) -> list[str]:
    """Gateable module names in execution order."""
    return [s.name for s in gate_layout(dims)]


def cross_kv_name(layer: int) -> str:
    """The once-per-window K/V producer of decoder layer ``layer``'s cross-attention."""
    return f"decoder.{layer}.cross_kv"


__all__ = ["ModelDims", "ENCODER_KINDS", "DECODER_KINDS", "ALWAYS_ON", "STEM", "LN_POST", "EMBED", "LOGITS",
           "GateSlot", "gate_layout", "gate_names", "cross_kv_name"]
