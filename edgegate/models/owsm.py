"""OWSM (ESPnet's open Whisper-style S2T model) in PyTorch, every residual module gateable.

Architecture as ESPnet 202511 computes OWSM v3.1 (``espnet2/asr/encoder/e_branchformer_encoder.py``,
``espnet2/asr/decoder/transformer_decoder.py``); parameter names are ESPnet's, so an averaged ``.pth``
loads with ``strict=True``:
- input: normalised log-mel features (B, T, n_mels) from ``edgegate.frontend_owsm`` (the checkpoint's
  mel matrix and global-MVN statistics are kept here as buffers, ``frontend.logmel.melmat`` and
  ``normalize.mean``/``normalize.std``, and applied there);
- conv2d x4 subsampling (two 3x3 stride-2 convs with ReLU, channel-major flatten, Linear), then
  ``x * sqrt(d) + sinusoid`` (ESPnet's interleaved sin/cos table);
- E-Branchformer layers: ``x += 0.5 * FFN_macaron(LN(x))``; branch A = MHSA(LN(x)), branch B =
  cgMLP(LN(x)); merge ``x += Linear(z + depthwise_conv(z))`` with ``z = cat[A, B]``;
  ``x += 0.5 * FFN(LN(x))``; ``x = LN(x)``; after the last layer ``after_norm``. All LayerNorms eps 1e-12.
- pre-LN Transformer decoder: ``embed * sqrt(d) + sinusoid``; causal self-attention, source attention,
  ReLU FFN; ``after_norm``; an untied ``output_layer`` with bias. The CTC head (``ctc.ctc_lo``) is kept so
  that the checkpoint loads strictly; decoding does not use it.

Gates (see ``edgegate.models.owsm_config.gate_names``): per encoder layer ``encoder.N.ffn_macaron``,
``encoder.N.attn``, ``encoder.N.cgmlp``, ``encoder.N.ffn``; per decoder layer ``decoder.N.self_attn``,
``decoder.N.src_attn``, ``decoder.N.ffn``. A gate vector means what it means for Whisper
(``edgegate.models.whisper``): None = dense; bool (or float without grad outside training) = a skipped
module is not computed; float with grad, or any float in training mode = the gate multiplies.

The merge is not gated. **A skipped branch feeds zeros into the merge**: ``z = cat[A, 0]`` (or
``cat[0, B]``), and the merge still runs, so its convolution and projection biases still act: skipping
a branch is *not* the same as removing its contribution from the residual. **Skipping both branches
skips the merge** (``x`` passes unchanged). With multiplying gates ``g_a, g_b`` this is
``x += (1 - (1 - g_a)(1 - g_b)) * merge(cat[g_a A, g_b B])``, which equals the hard rule at 0/1.
A skip adapter (``add_skip_adapters``) of a skipped module adds its output to the residual stream, for
branches as well (never into the merge), and runs only when its module does not.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgegate.models.owsm_config import ENCODER_KINDS, OwsmDims, gate_names
from edgegate.models.whisper import Gate, SkipAdapter, Whisper, gated_residual

LN_EPS = 1e-12
MAX_POSITIONS = 5000  # ESPnet's PositionalEncoding table length; longer inputs get a longer table


def sinusoid_table(length: int, d: int) -> Tensor:
    """ESPnet's absolute positional encoding: sin at even channels, cos at odd ones (float32)."""
    position = torch.arange(0, length, dtype=torch.float32).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * -(math.log(10000.0) / d))
    pe = torch.zeros(length, d)
    pe[:, 0::2] = torch.sin(position * div_term)
    pe[:, 1::2] = torch.cos(position * div_term)
    return pe


class PositionalEncoding(nn.Module):
    """``x * sqrt(d) + pe[offset: offset + T]``; the table is not a parameter (not in the checkpoint)."""

    def __init__(self, d: int):
        super().__init__()
        self.scale = math.sqrt(d)
        self.register_buffer("pe", sinusoid_table(MAX_POSITIONS, d), persistent=False)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        end = offset + x.shape[1]
        pe = self.pe if end <= self.pe.shape[0] else sinusoid_table(end, self.pe.shape[1]).to(x.device)
        return x * self.scale + pe[offset:end].to(x.dtype)


def layer_norm(d: int) -> nn.LayerNorm:
    return nn.LayerNorm(d, eps=LN_EPS)


class MultiHeadedAttention(nn.Module):
    """ESPnet's MultiHeadedAttention (four Linear with bias), with K/V exposed for caching."""

    def __init__(self, n_head: int, d: int):
        super().__init__()
        self.h = n_head
        self.linear_q = nn.Linear(d, d)
        self.linear_k = nn.Linear(d, d)
        self.linear_v = nn.Linear(d, d)
        self.linear_out = nn.Linear(d, d)

    def split_heads(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        return x.view(b, t, self.h, d // self.h).transpose(1, 2)

    def project_kv(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values split into heads: (B, H, T, Dh) each."""
        return self.split_heads(self.linear_k(x)), self.split_heads(self.linear_v(x))

    def attend(self, x: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
        q = self.split_heads(self.linear_q(x))
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.linear_out(o.transpose(1, 2).flatten(2))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.attend(x, *self.project_kv(x), mask)


class FeedForward(nn.Module):
    """ESPnet's PositionwiseFeedForward: ``w_2(act(w_1(x)))``."""

    def __init__(self, d: int, hidden: int, activation: nn.Module):
        super().__init__()
        self.w_1 = nn.Linear(d, hidden)
        self.w_2 = nn.Linear(hidden, d)
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        return self.w_2(self.activation(self.w_1(x)))


class SpatialGatingUnit(nn.Module):
    """cgMLP's gating: split [r, g]; g = depthwise_conv(LN(g)); out = r * g (identity activation)."""

    def __init__(self, units: int, kernel: int):
        super().__init__()
        half = units // 2
        self.norm = layer_norm(half)
        self.conv = nn.Conv1d(half, half, kernel, 1, (kernel - 1) // 2, groups=half)

    def forward(self, x: Tensor) -> Tensor:
        r, g = x.chunk(2, dim=-1)
        g = self.conv(self.norm(g).transpose(1, 2)).transpose(1, 2)
        return r * g


class ConvolutionalGatingMLP(nn.Module):
    def __init__(self, d: int, units: int, kernel: int):
        super().__init__()
        self.channel_proj1 = nn.Sequential(nn.Linear(d, units), nn.GELU())
        self.csgu = SpatialGatingUnit(units, kernel)
        self.channel_proj2 = nn.Linear(units // 2, d)

    def forward(self, x: Tensor) -> Tensor:
        return self.channel_proj2(self.csgu(self.channel_proj1(x)))


def _branch(gate: Gate, compute, like: Tensor) -> Tensor:
    """A branch's contribution to the merge: zeros when skipped, scaled when the gate multiplies."""
    if gate is False:
        return torch.zeros_like(like)
    out = compute()
    if gate is None or gate is True:
        return out
    return gate.to(out.dtype).view(-1, 1, 1) * out


def _merge_factor(gates: tuple[Gate, Gate]) -> Tensor | None:
    """1 - (1 - g_a)(1 - g_b): the merge runs when either branch runs; None means exactly 1."""
    if any(g is None or g is True for g in gates):
        return None
    keep = [g.view(-1, 1, 1) if isinstance(g, Tensor) else None for g in gates]
    skipped = [1 - k if k is not None else 1.0 for k in keep]  # False counts as skipped (1 - 0)
    return 1 - skipped[0] * skipped[1]


class EBranchformerLayer(nn.Module):
    def __init__(self, dims: OwsmDims):
        super().__init__()
        d = dims.d_model
        self.attn = MultiHeadedAttention(dims.n_encoder_heads, d)
        self.cgmlp = ConvolutionalGatingMLP(d, dims.cgmlp_units, dims.cgmlp_kernel)
        self.feed_forward = FeedForward(d, dims.encoder_ffn, nn.SiLU())
        self.feed_forward_macaron = FeedForward(d, dims.encoder_ffn, nn.SiLU())
        self.norm_ff, self.norm_ff_macaron = layer_norm(d), layer_norm(d)
        self.norm_mha, self.norm_mlp, self.norm_final = layer_norm(d), layer_norm(d), layer_norm(d)
        k = dims.merge_kernel
        self.depthwise_conv_fusion = nn.Conv1d(2 * d, 2 * d, k, 1, (k - 1) // 2, groups=2 * d)
        self.merge_proj = nn.Linear(2 * d, d)

    def merge(self, x: Tensor, gates: tuple[Gate, Gate], adapters: tuple) -> Tensor:
        """Both branches into the merge (module docstring: zeros for a skipped one, none if both are)."""
        if gates[0] is False and gates[1] is False:
            out = x
        else:
            a = _branch(gates[0], lambda: self.attn(self.norm_mha(x)), x)
            b = _branch(gates[1], lambda: self.cgmlp(self.norm_mlp(x)), x)
            z = torch.cat([a, b], dim=-1)
            merged = self.merge_proj(z + self.depthwise_conv_fusion(z.transpose(1, 2)).transpose(1, 2))
            factor = _merge_factor(gates)
            out = x + (merged if factor is None else factor.to(x.dtype) * merged)
        for gate, adapter in zip(gates, adapters, strict=True):
            if adapter is None or gate is None or gate is True:
                continue
            out = out + (adapter(x) if gate is False else (1 - gate.to(x.dtype).view(-1, 1, 1)) * adapter(x))
        return out

    def forward(self, x: Tensor, gates: tuple[Gate, Gate, Gate, Gate], adapters: tuple = (None,) * 4) -> Tensor:
        x = gated_residual(x, gates[0], lambda: 0.5 * self.feed_forward_macaron(self.norm_ff_macaron(x)),
                           adapters[0])
        x = self.merge(x, gates[1:3], adapters[1:3])
        x = gated_residual(x, gates[3], lambda: 0.5 * self.feed_forward(self.norm_ff(x)), adapters[3])
        return self.norm_final(x)


class Conv2dSubsampling(nn.Module):
    """(B, T, n_mels) -> (B, ((T - 1) // 2 - 1) // 2, d), positional encoding included."""

    def __init__(self, n_mels: int, d: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, d, 3, 2), nn.ReLU(), nn.Conv2d(d, d, 3, 2), nn.ReLU())
        self.out = nn.Sequential(nn.Linear(d * (((n_mels - 1) // 2 - 1) // 2), d))
        self.pos = PositionalEncoding(d)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x.unsqueeze(1))
        b, c, t, f = x.shape
        return self.pos(self.out(x.transpose(1, 2).reshape(b, t, c * f)))


class Encoder(nn.Module):
    def __init__(self, dims: OwsmDims):
        super().__init__()
        self.embed = Conv2dSubsampling(dims.n_mels, dims.d_model)
        self.encoders = nn.ModuleList(EBranchformerLayer(dims) for _ in range(dims.n_encoder_layers))
        self.after_norm = layer_norm(dims.d_model)

    def forward(self, feats: Tensor, gates: list[Gate], adapters: list) -> Tensor:
        if feats.shape[1] < 7:
            raise ValueError(f"{feats.shape[1]} feature frames are too few for conv2d subsampling (needs 7)")
        x = self.embed(feats)
        n = len(ENCODER_KINDS)
        for i, layer in enumerate(self.encoders):
            x = layer(x, tuple(gates[n * i: n * i + n]), tuple(adapters[n * i: n * i + n]))
        return self.after_norm(x)


class DecoderLayer(nn.Module):
    def __init__(self, dims: OwsmDims):
        super().__init__()
        d = dims.d_model
        self.self_attn = MultiHeadedAttention(dims.n_decoder_heads, d)
        self.src_attn = MultiHeadedAttention(dims.n_decoder_heads, d)
        self.feed_forward = FeedForward(d, dims.decoder_ffn, nn.ReLU())
        self.norm1, self.norm2, self.norm3 = layer_norm(d), layer_norm(d), layer_norm(d)

    def self_attention(self, x: Tensor, mask: Tensor | None, cache: dict | None, key: int) -> Tensor:
        h = self.norm1(x)
        k, v = self.self_attn.project_kv(h)
        if cache is not None:
            if key in cache:
                k = torch.cat([cache[key][0], k], dim=2)
                v = torch.cat([cache[key][1], v], dim=2)
            cache[key] = (k, v)
        return self.self_attn.attend(h, k, v, mask)

    def forward(self, x: Tensor, cross_kv: tuple[Tensor, Tensor] | None, mask: Tensor | None,
                gates: tuple[Gate, Gate, Gate], cache: dict | None, layer: int,
                adapters: tuple = (None, None, None)) -> Tensor:
        x = gated_residual(x, gates[0], lambda: self.self_attention(x, mask, cache, layer), adapters[0])
        if cross_kv is None and gates[1] is not False:
            raise ValueError(f"decoder layer {layer}: source attention is kept but has no K/V")
        x = gated_residual(x, gates[1], lambda: self.src_attn.attend(self.norm2(x), *cross_kv), adapters[1])
        return gated_residual(x, gates[2], lambda: self.feed_forward(self.norm3(x)), adapters[2])


class Decoder(nn.Module):
    def __init__(self, dims: OwsmDims):
        super().__init__()
        d = dims.d_model
        self.embed = nn.Sequential(nn.Embedding(dims.n_vocab, d))
        self.pos = PositionalEncoding(d)
        self.decoders = nn.ModuleList(DecoderLayer(dims) for _ in range(dims.n_decoder_layers))
        self.after_norm = layer_norm(d)
        self.output_layer = nn.Linear(d, dims.n_vocab)

    def cross_kv(self, memory: Tensor, gates: list[Gate]) -> list[tuple[Tensor, Tensor] | None]:
        """Source-attention K/V of every layer, computed once per utterance; None where skipped."""
        return [None if gates[3 * i + 1] is False else layer.src_attn.project_kv(memory)
                for i, layer in enumerate(self.decoders)]

    def forward(self, tokens: Tensor, cross_kv: list, gates: list[Gate], adapters: list,
                cache: dict | None = None) -> Tensor:
        offset = cache.get("offset", 0) if cache is not None else 0
        t = tokens.shape[1]
        x = self.pos(self.embed(tokens), offset)
        mask = None  # boolean, True = may attend; one new token with a cache needs none
        if t > 1:
            mask = torch.ones(t, offset + t, dtype=torch.bool, device=x.device).tril(offset)
        for i, layer in enumerate(self.decoders):
            x = layer(x, cross_kv[i], mask, tuple(gates[3 * i: 3 * i + 3]), cache, i,
                      tuple(adapters[3 * i: 3 * i + 3]))
        if cache is not None:
            cache["offset"] = offset + t
        return self.output_layer(self.after_norm(x))


class GlobalMVN(nn.Module):
    """Holds the checkpoint's feature statistics; ``edgegate.frontend_owsm`` applies them, not the model."""

    def __init__(self, n_mels: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_mels))
        self.register_buffer("std", torch.ones(n_mels))


class Frontend(nn.Module):
    """Holds the checkpoint's mel matrix; ``edgegate.frontend_owsm`` computes the features in numpy."""

    def __init__(self, n_fft: int, n_mels: int):
        super().__init__()
        self.logmel = nn.Module()
        self.logmel.register_buffer("melmat", torch.zeros(n_fft // 2 + 1, n_mels))


class CTC(nn.Module):
    def __init__(self, d: int, n_vocab: int):
        super().__init__()
        self.ctc_lo = nn.Linear(d, n_vocab)


class Owsm(nn.Module):
    """OWSM S2T with the same gate/decode interface as ``edgegate.models.whisper.Whisper``."""

    # One gate-vector semantics for every family: Whisper's implementation reads only gate_names,
    # training and skip_adapters.
    split_gates = Whisper.split_gates
    _adapters = Whisper._adapters

    def __init__(self, dims: OwsmDims, n_fft: int = 512):
        super().__init__()
        self.dims = dims
        self.frontend = Frontend(n_fft, dims.n_mels)
        self.normalize = GlobalMVN(dims.n_mels)
        self.encoder = Encoder(dims)
        self.decoder = Decoder(dims)
        self.ctc = CTC(dims.d_model, dims.n_vocab)
        self.gate_names = gate_names(dims)
        self.n_encoder_gates = len(ENCODER_KINDS) * dims.n_encoder_layers
        self.skip_adapters = nn.ModuleDict()

    def add_skip_adapters(self, rank: int = 32, names: list[str] | None = None) -> None:
        """Attach a zero-initialised low-rank bypass to each named module (default: all)."""
        for name in names or self.gate_names:
            self.skip_adapters[name.replace(".", "_")] = SkipAdapter(self.dims.d_model, rank)

    def adapter_names(self, names: list[str]) -> list[str]:
        """Which of ``names`` gate training gives a skip adapter: not the branches (the runtime has no
        bypass beside the merge yet; see ``edgegate.models.owsm_training``)."""
        return [n for n in names if n.rsplit(".", 1)[-1] not in ("attn", "cgmlp")]

    def _per_module(self, gates: Tensor | list[Gate] | None) -> list[Gate]:
        return gates if isinstance(gates, list) else self.split_gates(gates)

    def embed_audio(self, feats: Tensor, gates: Tensor | list[Gate] | None = None) -> Tensor:
        """Encoder output (B, T', d) for normalised log-mel features (B, T, n_mels): ``OwsmFrontend(samples)``."""
        n = self.n_encoder_gates
        return self.encoder(feats, self._per_module(gates)[:n], self._adapters()[:n])

    def cross_kv(self, audio_features: Tensor, gates: Tensor | list[Gate] | None = None) -> list:
        return self.decoder.cross_kv(audio_features, self._per_module(gates)[self.n_encoder_gates:])

    def decode(self, tokens: Tensor, cross_kv: list, gates: Tensor | list[Gate] | None = None,
               cache: dict | None = None) -> Tensor:
        n = self.n_encoder_gates
        return self.decoder(tokens, cross_kv, self._per_module(gates)[n:], self._adapters()[n:], cache)

    def forward(self, feats: Tensor, tokens: Tensor, gates: Tensor | None = None) -> Tensor:
        """Teacher-forced logits (B, T, vocab)."""
        per_module = self.split_gates(gates)
        xa = self.embed_audio(feats, per_module)
        return self.decode(tokens, self.cross_kv(xa, per_module), per_module)

    @property
    def device(self) -> torch.device:
        return self.decoder.output_layer.weight.device
