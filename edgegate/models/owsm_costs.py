"""Per-module cost table of an OWSM model: FLOPs and parameter bytes, no torch needed.

As for Whisper (``edgegate.models.costs``), the table is kept as polynomial terms
(:class:`edgegate.cost_model.CostTerms`, T = encoder positions, N = decoder positions) that the
exporter writes into the manifest and the runtime evaluates;: a multiply-add counts 2, only matrix products and
convolutions are counted (norms, activations and biases are noise next to them), ``n_frames`` is the
number of encoder positions (after the x4 subsampling: 749 for OWSM's 30-s window) and ``n_tokens``
the number of decoder positions run (prompt plus generated tokens). Source attention is charged its
K/V projection once per utterance plus its per-token query, scores and output.

The E-Branchformer merge (depthwise conv + projection) is not gated: it is listed with the
always-on parts, although it is skipped too when a layer's attention and cgMLP are both skipped. The
CTC head is not counted: decoding does not run it.
"""

from __future__ import annotations

from edgegate.cost_model import CostTerms
from edgegate.models.costs import ModuleCost
from edgegate.models.owsm_config import (
    AFTER_NORM,
    DECODER_KINDS,
    EMBED,
    ENCODER_KINDS,
    LOGITS,
    STEM,
    OwsmDims,
    gate_names,
    merge_name,
    norm_final_name,
)


def _ln(d: int) -> int:
    return 2 * d


def _ffn_params(d: int, m: int) -> int:
    return _ln(d) + 2 * d * m + m + d


def _attn_params(d: int) -> int:
    return _ln(d) + 4 * (d * d + d)


def _cgmlp_params(d: int, units: int, kernel: int) -> int:
    half = units // 2
    return _ln(d) + d * units + units + _ln(half) + half * kernel + half + half * d + d


def _stem_terms(dims: OwsmDims) -> CostTerms:
    """Conv2d subsampling at T encoder positions: conv1 makes 2T + 1 frames of f1 bins, conv2 T of f2."""
    d = dims.d_model
    f1 = (dims.n_mels - 1) // 2
    f2 = (f1 - 1) // 2
    # conv1: 2 * 9 * d per output cell over (2T + 1) * f1 cells; conv2: 2 * 9 * d * d over T * f2; Linear(d f2, d).
    return CostTerms(one=18 * d * f1, t=36 * d * f1 + 18 * d * d * f2 + 2 * d * f2 * d)


def src_kv_terms(d: int) -> CostTerms:
    """The once-per-window K/V projection of one source attention: 2 (d x d) products per encoder position."""
    return CostTerms(t=4 * d * d)


def _gate_terms(kind: str, encoder: bool, dims: OwsmDims) -> tuple[CostTerms, int]:
    d = dims.d_model
    if encoder:
        if kind == "attn":
            return CostTerms(t=8 * d * d, tt=4 * d), _attn_params(d)
        if kind == "cgmlp":
            u, k = dims.cgmlp_units, dims.cgmlp_kernel
            return CostTerms(t=3 * d * u + u * k), _cgmlp_params(d, u, k)
        return CostTerms(t=4 * d * dims.encoder_ffn), _ffn_params(d, dims.encoder_ffn)
    if kind == "self_attn":  # position n attends to n cached keys: 4 d N (N + 1) / 2
        return CostTerms(n=8 * d * d + 2 * d, nn=2 * d), _attn_params(d)
    if kind == "src_attn":
        return src_kv_terms(d) + CostTerms(n=4 * d * d, nt=4 * d), _attn_params(d)
    return CostTerms(n=4 * d * dims.decoder_ffn), _ffn_params(d, dims.decoder_ffn)


def module_cost_terms(dims: OwsmDims) -> dict[str, tuple[CostTerms, int]]:
    """(FLOP terms, parameters) of each gateable module, in execution order, keyed by gate name."""
    kinds = [(k, True) for _ in range(dims.n_encoder_layers) for k in ENCODER_KINDS]
    kinds += [(k, False) for _ in range(dims.n_decoder_layers) for k in DECODER_KINDS]
    return {name: _gate_terms(kind, enc, dims) for name, (kind, enc) in zip(gate_names(dims), kinds, strict=True)}


def always_on_cost_terms(dims: OwsmDims) -> dict[str, tuple[CostTerms, int]]:
    """(FLOP terms, parameters) of the parts that run whatever the gates say: subsampling, merges, norms,
    embedding, output layer."""
    d, km = dims.d_model, dims.merge_kernel
    f2 = ((dims.n_mels - 1) // 2 - 1) // 2
    out = {STEM: (_stem_terms(dims), 9 * d + d + 9 * d * d + d + f2 * d * d + d)}
    for i in range(dims.n_encoder_layers):
        out[merge_name(i)] = (CostTerms(t=4 * d * km + 4 * d * d), 2 * d * km + 2 * d + 2 * d * d + d)
        out[norm_final_name(i)] = (CostTerms(t=5 * d), _ln(d))
    out[AFTER_NORM] = (CostTerms(t=5 * d), _ln(d))
    out[EMBED] = (CostTerms(n=d), dims.n_vocab * d)
    out[LOGITS] = (CostTerms(n=2 * d * dims.n_vocab), _ln(d) + dims.n_vocab * d + dims.n_vocab)
    return out


def _at(table: dict[str, tuple[CostTerms, int]], n_frames: int, n_tokens: int,
        bytes_per_param: int) -> dict[str, ModuleCost]:
    return {k: ModuleCost(t.at(n_frames, n_tokens), p * bytes_per_param) for k, (t, p) in table.items()}


def module_costs(dims: OwsmDims, n_frames: int = 749, n_tokens: int = 32,
                 bytes_per_param: int = 4) -> dict[str, ModuleCost]:
    """Cost of each gateable module, in execution order, keyed by its gate name."""
    return _at(module_cost_terms(dims), n_frames, n_tokens, bytes_per_param)


def always_on_costs(dims: OwsmDims, n_frames: int = 749, n_tokens: int = 32,
                    bytes_per_param: int = 4) -> dict[str, ModuleCost]:
    """Parts that run whatever the gates say: subsampling, merges, final norms, embedding, output layer."""
    return _at(always_on_cost_terms(dims), n_frames, n_tokens, bytes_per_param)


def flop_costs(dims: OwsmDims):
    """The planner's cost function (positions, tokens, unit) -> FLOPs per gate, in gate order."""
    import numpy as np

    terms = [t for t, _ in module_cost_terms(dims).values()]

    def costs(positions: int, tokens: int, unit: str = "flops") -> np.ndarray:
        return np.array([t.at(positions, tokens) for t in terms], dtype=np.float64)

    return costs


def gateable_fraction(dims: OwsmDims, n_frames: int = 749, n_tokens: int = 32) -> float:
    """Share of the model's FLOPs that gates can remove."""
    g = sum(c.flops for c in module_costs(dims, n_frames, n_tokens).values())
    a = sum(c.flops for c in always_on_costs(dims, n_frames, n_tokens).values())
    return g / (g + a)
