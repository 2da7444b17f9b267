"""Per-module cost table of an OWSM model: FLOPs and parameter bytes, no torch needed.

As for Whisper (``edgegate.models.costs``): a multiply-add counts 2, only matrix products and
convolutions are counted (norms, activations and biases are noise next to them), ``n_frames`` is the
number of encoder positions (after the x4 subsampling: 749 for OWSM's 30-s window) and ``n_tokens``
the number of decoder positions run (prompt plus generated tokens). Source attention is charged its
K/V projection once per utterance plus its per-token query, scores and output.

The E-Branchformer merge (depthwise conv + projection) is not gated: it is listed with the
always-on parts, although it is skipped too when a layer's attention and cgMLP are both skipped. The
CTC head is not counted: decoding does not run it.
"""

from __future__ import annotations

from edgegate.models.costs import ModuleCost
from edgegate.models.owsm_config import OwsmDims


def _ln(d: int) -> int:
    return 2 * d


def _ffn_params(d: int, m: int) -> int:
    return _ln(d) + 2 * d * m + m + d


def _attn_params(d: int) -> int:
    return _ln(d) + 4 * (d * d + d)


def _cgmlp_params(d: int, units: int, kernel: int) -> int:
    half = units // 2
    return _ln(d) + d * units + units + _ln(half) + half * kernel + half + half * d + d


def _stem_shape(n_frames: int, n_mels: int) -> tuple[int, int, int]:
    """(conv1 output frames, conv1 output bins, conv2 output bins) for ``n_frames`` encoder positions."""
    f1 = (n_mels - 1) // 2
    return 2 * n_frames + 1, f1, (f1 - 1) // 2


def module_costs(dims: OwsmDims, n_frames: int = 749, n_tokens: int = 32,
                 bytes_per_param: int = 4) -> dict[str, ModuleCost]:
    """Cost of each gateable module, in execution order, keyed by its gate name."""
    T, N, d = n_frames, n_tokens, dims.d_model
    b = bytes_per_param
    costs: dict[str, ModuleCost] = {}
    ffn = ModuleCost(4 * T * d * dims.encoder_ffn, _ffn_params(d, dims.encoder_ffn) * b)
    attn = ModuleCost(8 * T * d * d + 4 * T * T * d, _attn_params(d) * b)
    u, k = dims.cgmlp_units, dims.cgmlp_kernel
    cgmlp = ModuleCost(3 * T * d * u + T * u * k, _cgmlp_params(d, u, k) * b)
    for i in range(dims.n_encoder_layers):
        costs[f"encoder.{i}.ffn_macaron"] = ffn
        costs[f"encoder.{i}.attn"] = attn
        costs[f"encoder.{i}.cgmlp"] = cgmlp
        costs[f"encoder.{i}.ffn"] = ffn
    self_scores = 4 * d * N * (N + 1) / 2  # position n attends to n cached keys
    for i in range(dims.n_decoder_layers):
        costs[f"decoder.{i}.self_attn"] = ModuleCost(8 * N * d * d + self_scores, _attn_params(d) * b)
        costs[f"decoder.{i}.src_attn"] = ModuleCost(4 * T * d * d + 4 * N * d * d + 4 * N * T * d,
                                                    _attn_params(d) * b)
        costs[f"decoder.{i}.ffn"] = ModuleCost(4 * N * d * dims.decoder_ffn, _ffn_params(d, dims.decoder_ffn) * b)
    return costs


def always_on_costs(dims: OwsmDims, n_frames: int = 749, n_tokens: int = 32,
                    bytes_per_param: int = 4) -> dict[str, ModuleCost]:
    """Parts that run whatever the gates say: subsampling, merges, final norms, embedding, output layer."""
    T, N, d, b = n_frames, n_tokens, dims.d_model, bytes_per_param
    t1, f1, f2 = _stem_shape(T, dims.n_mels)
    stem = 2 * 9 * d * t1 * f1 + 2 * 9 * d * d * T * f2 + 2 * T * d * f2 * d
    stem_params = 9 * d + d + 9 * d * d + d + f2 * d * d + d
    km = dims.merge_kernel
    costs = {"encoder.stem": ModuleCost(stem, stem_params * b)}
    merge = ModuleCost(4 * T * d * km + 4 * T * d * d, (2 * d * km + 2 * d + 2 * d * d + d) * b)
    for i in range(dims.n_encoder_layers):
        costs[f"encoder.{i}.merge"] = merge
        costs[f"encoder.{i}.norm_final"] = ModuleCost(5 * T * d, _ln(d) * b)
    costs["encoder.after_norm"] = ModuleCost(5 * T * d, _ln(d) * b)
    costs["decoder.embed"] = ModuleCost(N * d, dims.n_vocab * d * b)
    costs["decoder.logits"] = ModuleCost(2 * N * d * dims.n_vocab, (_ln(d) + dims.n_vocab * d + dims.n_vocab) * b)
    return costs


def gateable_fraction(dims: OwsmDims, n_frames: int = 749, n_tokens: int = 32) -> float:
    """Share of the model's FLOPs that gates can remove."""
    g = sum(c.flops for c in module_costs(dims, n_frames, n_tokens).values())
    a = sum(c.flops for c in always_on_costs(dims, n_frames, n_tokens).values())
    return g / (g + a)
