"""Per-module cost table of a Whisper model: FLOPs and parameter bytes, no torch needed.

FLOPs count a multiply-add as 2. ``n_frames`` is the number of encoder positions (mel frames
/ 2; 1500 for a padded 30-s window) and ``n_tokens`` the number of decoder positions run
(prompt plus generated tokens). Cross-attention is charged its K/V projection once per
utterance plus its per-token query, scores and output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class _Dims(Protocol):
    n_mels: int
    n_audio_state: int
    n_audio_layer: int
    n_audio_mlp: int
    n_text_state: int
    n_text_layer: int
    n_text_mlp: int
    n_vocab: int
    n_text_ctx: int


@dataclass(frozen=True)
class ModuleCost:
    flops: float
    param_bytes: int


def _attn_params(d: int) -> int:
    return 4 * d * d + 3 * d + 2 * d  # q, k (no bias), v, out, + LayerNorm


def _mlp_params(d: int, m: int) -> int:
    return 2 * d * m + m + d + 2 * d


def module_costs(dims: _Dims, n_frames: int = 1500, n_tokens: int = 32,
                 bytes_per_param: int = 4) -> dict[str, ModuleCost]:
    """Cost of each gateable module, in execution order, keyed by its gate name."""
    T, N = n_frames, n_tokens
    costs: dict[str, ModuleCost] = {}
    d, m = dims.n_audio_state, dims.n_audio_mlp
    for i in range(dims.n_audio_layer):
        costs[f"encoder.{i}.attn"] = ModuleCost(8 * T * d * d + 4 * T * T * d, _attn_params(d) * bytes_per_param)
        costs[f"encoder.{i}.mlp"] = ModuleCost(4 * T * d * m, _mlp_params(d, m) * bytes_per_param)
    d, m = dims.n_text_state, dims.n_text_mlp
    # Sum over positions 1..N of the per-token attention to the cache.
    self_scores = 4 * d * N * (N + 1) / 2
    for i in range(dims.n_text_layer):
        costs[f"decoder.{i}.self_attn"] = ModuleCost(8 * N * d * d + self_scores,
                                                     _attn_params(d) * bytes_per_param)
        costs[f"decoder.{i}.cross_attn"] = ModuleCost(4 * T * d * d + 4 * N * d * d + 4 * N * T * d,
                                                      _attn_params(d) * bytes_per_param)
        costs[f"decoder.{i}.mlp"] = ModuleCost(4 * N * d * m, _mlp_params(d, m) * bytes_per_param)
    return costs


def always_on_costs(dims: _Dims, n_frames: int = 1500, n_tokens: int = 32,
                    bytes_per_param: int = 4) -> dict[str, ModuleCost]:
    """Parts that always run: conv stem, final norms, token embedding and output projection."""
    da, dt = dims.n_audio_state, dims.n_text_state
    stem = 2 * (2 * n_frames) * dims.n_mels * da * 3 + 2 * n_frames * da * da * 3
    stem_params = dims.n_mels * da * 3 + da * da * 3 + 2 * da
    return {
        "encoder.stem": ModuleCost(stem, stem_params * bytes_per_param),
        "encoder.ln_post": ModuleCost(5 * n_frames * da, 2 * da * bytes_per_param),
        "decoder.embed": ModuleCost(n_tokens * dt, (dims.n_vocab + dims.n_text_ctx) * dt * bytes_per_param),
        "decoder.logits": ModuleCost(2 * n_tokens * dt * dims.n_vocab, 2 * dt * bytes_per_param),
    }


def gateable_fraction(dims: _Dims, n_frames: int = 1500, n_tokens: int = 32) -> float:
    """Share of the model's FLOPs that gates can remove."""
    g = sum(c.flops for c in module_costs(dims, n_frames, n_tokens).values())
    a = sum(c.flops for c in always_on_costs(dims, n_frames, n_tokens).values())
    return g / (g + a)
