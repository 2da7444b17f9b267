"""Per-module cost table of a Whisper model: FLOPs and parameter bytes, no torch needed.

FLOPs count a multiply-add as 2. ``n_frames`` is the number of encoder positions (mel frames
/ 2; 1500 for a padded 30-s window) and ``n_tokens`` the number of decoder positions run
(prompt plus generated tokens). Cross-attention is charged its K/V projection once per
utterance plus its per-token query, scores and output. The table is kept as polynomial terms
(:class:`edgegate.cost_model.CostTerms`): the exporter writes them into the manifest and the
runtime evaluates the very same numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from edgegate.cost_model import CostTerms
from edgegate.models.whisper_layout import EMBED, LN_POST, LOGITS, STEM, gate_layout


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


def cross_kv_terms(d: int) -> CostTerms:
    """The once-per-window K/V projection of one cross-attention: 2 (d x d) products per position."""
    return CostTerms(t=4 * d * d)


def _gate_terms(kind: str, part: str, dims: _Dims) -> tuple[CostTerms, int]:
    if part == "encoder":
        d, m = dims.n_audio_state, dims.n_audio_mlp
        if kind == "attn":
            return CostTerms(t=8 * d * d, tt=4 * d), _attn_params(d)
        return CostTerms(t=4 * d * m), _mlp_params(d, m)
    d, m = dims.n_text_state, dims.n_text_mlp
    if kind == "self_attn":  # per token: projections, plus attention over the positions so far
        return CostTerms(n=8 * d * d + 2 * d, nn=2 * d), _attn_params(d)
    if kind == "cross_attn":
        return cross_kv_terms(d) + CostTerms(n=4 * d * d, nt=4 * d), _attn_params(d)
    return CostTerms(n=4 * d * m), _mlp_params(d, m)


def module_cost_terms(dims: _Dims, context_tail: bool = False) -> dict[str, tuple[CostTerms, int]]:
    """(FLOP terms, parameters) of each gateable module, in execution order, keyed by gate name.

    With a context tail (edgegate.context_tail) the encoder's attention and the decoder's cross-attention
    read all ``n_audio_ctx`` positions however few frames run, so their cost is linear in the frames and
    in the tokens; the tail's own projections are computed once, not per request.
    """
    table = {s.name: _gate_terms(s.kind, s.part, dims) for s in gate_layout(dims)}
    if context_tail:
        table = {k: (t.with_fixed_keys(dims.n_audio_ctx), p) for k, (t, p) in table.items()}
    return table


def always_on_cost_terms(dims: _Dims) -> dict[str, tuple[CostTerms, int]]:
    """(FLOP terms, parameters) of the parts that always run: stem, final norm, embedding, logits."""
    da, dt = dims.n_audio_state, dims.n_text_state
    stem_params = dims.n_mels * da * 3 + da * da * 3 + 2 * da
    return {
        STEM: (CostTerms(t=12 * dims.n_mels * da + 6 * da * da), stem_params),
        LN_POST: (CostTerms(t=5 * da), 2 * da),
        EMBED: (CostTerms(n=dt), (dims.n_vocab + dims.n_text_ctx) * dt),
        LOGITS: (CostTerms(n=2 * dt * dims.n_vocab), 2 * dt),
    }


def _at(table: dict[str, tuple[CostTerms, int]], n_frames: int, n_tokens: int,
        bytes_per_param: int) -> dict[str, ModuleCost]:
    return {k: ModuleCost(t.at(n_frames, n_tokens), p * bytes_per_param) for k, (t, p) in table.items()}


def module_costs(dims: _Dims, n_frames: int = 1500, n_tokens: int = 32,
                 bytes_per_param: int = 4, context_tail: bool = False) -> dict[str, ModuleCost]:
    """Cost of each gateable module, in execution order, keyed by its gate name."""
    return _at(module_cost_terms(dims, context_tail), n_frames, n_tokens, bytes_per_param)


def always_on_costs(dims: _Dims, n_frames: int = 1500, n_tokens: int = 32,
                    bytes_per_param: int = 4) -> dict[str, ModuleCost]:
    """Parts that always run: conv stem, final norms, token embedding and output projection."""
    return _at(always_on_cost_terms(dims), n_frames, n_tokens, bytes_per_param)


def flop_costs(dims: _Dims, context_tail: bool = False, measured: Mapping[str, Any] | None = None):
    """The planner's cost function for this model: (positions, tokens, unit) -> cost per gate.

    FLOPs always; milliseconds too when ``measured`` is a profiled bundle's measured table (``ms``,
    ``ms_per_step``, ``ms_meta``), which a gate set trained with ``--cost-table`` carries, rescaled to the
    utterance's shape with the same FLOP terms the runtime uses (``runtimes.latency.measured_ms``).
    """
    from edgegate.errors import BudgetError

    table = {k: t for k, (t, _) in module_cost_terms(dims, context_tail).items()}
    terms = list(table.values())

    def costs(positions: int, tokens: int, unit: str = "flops") -> np.ndarray:
        if unit == "ms" and measured is not None:
            from edgegate.runtimes.latency import measured_ms

            ms = measured_ms(measured, table, positions, tokens)
            return np.array([ms[k] for k in table], dtype=np.float64)
        if unit != "flops":
            raise BudgetError(f"these gates plan in FLOPs; a budget in {unit!r} needs gates trained with "
                              "train-gates --cost-table, or a bundle measured with edgegate profile")
        return np.array([t.at(positions, tokens) for t in terms], dtype=np.float64)

    return costs


def gateable_fraction(dims: _Dims, n_frames: int = 1500, n_tokens: int = 32) -> float:
    """Share of the model's FLOPs that gates can remove."""
    g = sum(c.flops for c in module_costs(dims, n_frames, n_tokens).values())
    a = sum(c.flops for c in always_on_costs(dims, n_frames, n_tokens).values())
    return g / (g + a)
