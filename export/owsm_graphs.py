"""OWSM as module graphs: the wrappers each target exports and the execution plan they form.

Like :mod:`edgegate.export.whisper_graphs`: each gateable module becomes one graph, so skipping it
means not calling it. An E-Branchformer layer is six modules over the residual stream ``x``:

    encoder.N.ffn_macaron   x -> x + 0.5 * FFN(LN(x))                     (gated, skip = identity)
    encoder.N.attn          x -> attn_out.N = MHSA(LN(x))                 (gated, skip = zeros)
    encoder.N.cgmlp         x -> cgmlp_out.N = cgMLP(LN(x))               (gated, skip = zeros)
    encoder.N.merge         x, attn_out.N, cgmlp_out.N -> x + merge(cat)   (gates [attn, cgmlp])
    encoder.N.ffn           x -> x + 0.5 * FFN(LN(x))                     (gated, skip = identity)
    encoder.N.norm_final    x -> LN(x)                                    (always runs)

which is the PyTorch model's rule exactly (``edgegate.models.owsm``): a skipped branch feeds zeros
into the merge, whose biases still act; the merge runs when either branch runs and is skipped,
leaving ``x`` as it is, when both are. The decoder is Whisper's layout with ESPnet's names: per
layer a cached causal self-attention, a once-per-window source K/V producer (``decoder.N.src_kv``,
gated by its source attention) with a per-step source attention, and a ReLU FFN; the embedding
scales by sqrt(d) and adds ESPnet's sinusoid; the output layer is its own Linear with bias.

The frontend stays numpy on the runtime (``edgegate.frontend_owsm``): the checkpoint's mel matrix
and global-MVN statistics travel in ``frontend.npz``, the token list and sentencepiece model as
``tokens.txt`` / ``bpe.model``; ``model.family = "owsm"`` makes the runtime pick them
(``edgegate.runtimes.family``). The stem graph reads the normalised features as ``mel``, shaped
``(batch, frames, n_mels)`` (ESPnet's layout, not Whisper's).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from edgegate.errors import ModelError
from edgegate.models.owsm import Owsm, sinusoid_table
from edgegate.models.owsm_config import (
    AFTER_NORM,
    DECODER_KINDS,
    EMBED,
    ENCODER_KINDS,
    LOGITS,
    STEM,
    merge_name,
    norm_final_name,
    src_kv_name,
)
from edgegate.models.owsm_costs import always_on_cost_terms, module_cost_terms, src_kv_terms
from edgegate.models.owsm_loader import OwsmCheckpoint
from edgegate.models.owsm_windows import subsampled
from edgegate.runtimes.schema import LOGITS as LOGITS_VALUE
from edgegate.runtimes.schema import Limits, TensorSpec

from . import graph_blocks
from .graph_blocks import Adapter, Norm, ProjectKV, Residual, costs_section, dot_product_attention, tensor
from .graph_job import COST_TOKENS, GraphJob, ModuleJob

FRONTEND_FILE = "frontend.npz"
PROMPT_POSITIONS = 8  # room for the prompt (<sos> <lang> <task> <notimestamps>) above one token per position
BRANCHES = ("attn", "cgmlp")


def window_frames(ckpt: OwsmCheckpoint) -> int:
    """Feature frames of one full input window (3001 for OWSM's 30 s)."""
    return 1 + ckpt.frontend.window_samples // ckpt.frontend.hop_length


def window_positions(ckpt: OwsmCheckpoint) -> int:
    """Encoder positions of one full input window (749 for OWSM's 30 s)."""
    return subsampled(window_frames(ckpt))


# -- graph bodies ------------------------------------------------------------------------------
def attention(attn: nn.Module, h: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """ESPnet's attention spelled out so that it exports to plain MatMul/Softmax."""
    return attn.linear_out(dot_product_attention(attn.split_heads(attn.linear_q(h)), k, v, mask))


class Stem(nn.Module):
    """Conv2d x4 subsampling of normalised features (B, T, n_mels), then ``x * sqrt(d) + sinusoid``."""

    def __init__(self, model: Owsm, positions: int):
        super().__init__()
        emb = model.encoder.embed
        self.conv, self.out, self.scale = emb.conv, emb.out, emb.pos.scale
        self.register_buffer("pe", sinusoid_table(positions, model.dims.d_model))

    def forward(self, mel: Tensor) -> Tensor:  # argument names are the signature's (ExecuTorch reads them)
        x = self.conv(mel.unsqueeze(1))
        b, c, t, f = x.shape
        x = self.out(x.transpose(1, 2).reshape(b, t, c * f))
        return x * self.scale + self.pe[: x.shape[1]]


class HalfFFN(nn.Module):
    """A macaron FFN's residual step ``x + 0.5 * FFN(LN(x))``."""

    def __init__(self, ffn: nn.Module, ln: nn.LayerNorm):
        super().__init__()
        self.ffn, self.ln = ffn, ln

    def forward(self, x: Tensor) -> Tensor:
        return x + 0.5 * self.ffn(self.ln(x))


class Branch(nn.Module):
    """One E-Branchformer branch's output (no residual): it feeds the merge."""

    def __init__(self, body: nn.Module, ln: nn.LayerNorm, is_attention: bool):
        super().__init__()
        self.body, self.ln, self.is_attention = body, ln, is_attention

    def forward(self, x: Tensor) -> Tensor:
        h = self.ln(x)
        if self.is_attention:
            k, v = self.body.project_kv(h)
            return attention(self.body, h, k, v)
        return self.body(h)


class Merge(nn.Module):
    """``x + Linear(z + depthwise_conv(z))`` over ``z = cat[attn_out, cgmlp_out]``."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.conv, self.proj = layer.depthwise_conv_fusion, layer.merge_proj

    def forward(self, x: Tensor, attn_out: Tensor, cgmlp_out: Tensor) -> Tensor:
        z = torch.cat([attn_out, cgmlp_out], dim=-1)
        return x + self.proj(z + self.conv(z.transpose(1, 2)).transpose(1, 2))


class CachedSelfAttention(graph_blocks.CachedSelfAttention):
    """Decoder self-attention step with its K/V cache and an in-graph causal mask (as Whisper's)."""

    attend = staticmethod(attention)


SourceKV = ProjectKV  # a decoder layer's source-attention K/V, once per window


class SourceAttention(nn.Module):
    def __init__(self, attn: nn.Module, ln: nn.LayerNorm):
        super().__init__()
        self.attn, self.ln = attn, ln

    def forward(self, x: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return x + attention(self.attn, self.ln(x), k, v)


class Embed(nn.Module):
    def __init__(self, model: Owsm, positions: int):
        super().__init__()
        self.embedding = model.decoder.embed[0]
        self.scale = math.sqrt(model.dims.d_model)
        self.register_buffer("pe", sinusoid_table(positions, model.dims.d_model))

    def forward(self, tokens: Tensor, positions: Tensor) -> Tensor:
        return self.embedding(tokens) * self.scale + self.pe[positions]


class Logits(nn.Module):
    """``after_norm`` and the output layer (with its bias) at the last position only: (batch, n_vocab)."""

    def __init__(self, model: Owsm):
        super().__init__()
        self.ln, self.out = model.decoder.after_norm, model.decoder.output_layer

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.ln(x[:, -1]))


# -- the execution plan --------------------------------------------------------------------------
F32, I64 = "float32", "int64"


_t = tensor


def adapters_of(model: Owsm) -> dict[str, nn.Module]:
    """Skip adapters by gate name; refused on a branch (its adapter would have to bypass the merge)."""
    out = {name: model.skip_adapters[name.replace(".", "_")] for name in model.gate_names
           if name.replace(".", "_") in model.skip_adapters}
    branch = [n for n in out if n.rsplit(".", 1)[-1] in BRANCHES]
    if branch:
        raise ModelError(f"skip adapters on E-Branchformer branches ({branch[0]}, ...) cannot be exported yet: "
                         "the runtime has no place for a bypass beside the merge; train with adapters only on "
                         "FFNs and decoder modules (or --adapt none)")
    return out


@dataclass
class _Ctx:
    """Shapes and example tensors shared by the module jobs of one model."""

    model: Owsm
    window_frames: int  # feature frames of a full window (3001 for 30 s)
    positions: int  # encoder positions of a full window (749)
    adapters: dict[str, nn.Module]
    gate_flops: dict[str, float]
    always_flops: dict[str, float]

    @property
    def d(self) -> int:
        return self.model.dims.d_model

    def residual(self, name: str, kind: str, stage: str, layer: int, module: nn.Module, example: tuple,
                 inputs: list[TensorSpec], outputs: list[TensorSpec], skip: str = "identity",
                 flops: float | None = None) -> ModuleJob:
        adapter = self.adapters.get(name)
        x = inputs[0]
        adapter_job = None if adapter is None else GraphJob(f"{name}.adapter", stage, Adapter(adapter), example[:1],
                                                            (x,), (_t("x_out", x.dtype, list(x.shape), "x"),))
        return ModuleJob(name, kind, stage, layer, (name,), float(self.gate_flops[name] if flops is None else flops),
                         GraphJob(name, stage, module, example, tuple(inputs), tuple(outputs)), adapter_job, skip)

    def always_on(self, name: str, kind: str, stage: str, layer: int | None, module: nn.Module, example: tuple,
                  inputs: list[TensorSpec], outputs: list[TensorSpec], gates: tuple[str, ...] = ()) -> ModuleJob:
        return ModuleJob(name, kind, stage, layer, gates, float(self.always_flops[name]),
                         GraphJob(name, stage, module, example, tuple(inputs), tuple(outputs)))


def _context(model: Owsm, window_frames: int) -> _Ctx:
    positions = subsampled(window_frames)
    gates = {k: t.at(positions, COST_TOKENS) for k, (t, _) in module_cost_terms(model.dims).items()}
    always = {k: t.at(positions, COST_TOKENS) for k, (t, _) in always_on_cost_terms(model.dims).items()}
    return _Ctx(model.eval(), window_frames, positions, adapters_of(model), gates, always)


def encoder_jobs(c: _Ctx) -> list[ModuleJob]:
    """Stem, the six modules of every E-Branchformer layer, after_norm (stage ``encoder``)."""
    m, d, n = c.model, c.d, len(ENCODER_KINDS)
    xs: list[int | str] = ["batch", "frames", d]
    x_in, x_out = [_t("x", F32, xs)], [_t("x_out", F32, xs, "x")]
    ex = (torch.randn(1, 10, d),)
    names = m.gate_names
    # OWSM always feeds a full window: the stem's input has a fixed frame count (3001 for 30 s).
    jobs = [c.always_on(STEM, "stem", "encoder", None, Stem(m, c.positions),
                        (torch.randn(1, c.window_frames, m.dims.n_mels),),
                        [_t("mel", F32, ["batch", c.window_frames, m.dims.n_mels])], [_t("x", F32, xs)])]
    for i, layer in enumerate(m.encoder.encoders):
        macaron, attn, cgmlp, ffn = names[n * i: n * i + n]
        a_val, b_val = f"attn_out.{i}", f"cgmlp_out.{i}"
        jobs.append(c.residual(macaron, "ffn_macaron", "encoder", i,
                               HalfFFN(layer.feed_forward_macaron, layer.norm_ff_macaron), ex, x_in, x_out))
        jobs.append(c.residual(attn, "attn", "encoder", i, Branch(layer.attn, layer.norm_mha, True), ex, x_in,
                               [_t("attn_out", F32, xs, a_val)], "zeros"))
        jobs.append(c.residual(cgmlp, "cgmlp", "encoder", i, Branch(layer.cgmlp, layer.norm_mlp, False), ex, x_in,
                               [_t("cgmlp_out", F32, xs, b_val)], "zeros"))
        jobs.append(c.always_on(merge_name(i), "merge", "encoder", i, Merge(layer), ex * 3,
                                [*x_in, _t("attn_out", F32, xs, a_val), _t("cgmlp_out", F32, xs, b_val)], x_out,
                                gates=(attn, cgmlp)))
        jobs.append(c.residual(ffn, "ffn", "encoder", i, HalfFFN(layer.feed_forward, layer.norm_ff), ex, x_in, x_out))
        jobs.append(c.always_on(norm_final_name(i), "norm_final", "encoder", i, Norm(layer.norm_final), ex, x_in,
                                x_out))
    jobs.append(c.always_on(AFTER_NORM, "after_norm", "encoder", None, Norm(m.encoder.after_norm), ex, x_in,
                            [_t("xa", F32, xs)]))
    return jobs


def decoder_jobs(c: _Ctx, text_positions: int) -> list[ModuleJob]:
    """Source K/V producers (stage ``cross_kv``), then embedding, decoder layers and logits (``decoder_step``)."""
    m, d, n = c.model, c.d, len(DECODER_KINDS)
    h = m.dims.n_decoder_heads
    dh = d // h
    names = m.gate_names[len(ENCODER_KINDS) * m.dims.n_encoder_layers:]
    xt: list[int | str] = ["batch", "tokens", d]
    x_in, x_out = [_t("x", F32, xt)], [_t("x_out", F32, xt, "x")]
    kv: list[int | str] = ["kv_batch", h, "frames", dh]
    cache_in: list[int | str] = ["batch", h, "past", dh]
    cache_out: list[int | str] = ["batch", h, "total", dh]
    ex_t, ex_cache, ex_kv = torch.randn(1, 2, d), torch.randn(1, h, 3, dh), torch.randn(1, h, 10, dh)
    kv_flops = src_kv_terms(d).at(c.positions, COST_TOKENS)
    jobs = []
    for i, layer in enumerate(m.decoder.decoders):
        outs = (_t("k", F32, kv, f"cross_k.{i}"), _t("v", F32, kv, f"cross_v.{i}"))
        jobs.append(ModuleJob(src_kv_name(i), "src_kv", "cross_kv", i, (names[n * i + 1],), kv_flops,
                              GraphJob(src_kv_name(i), "cross_kv", SourceKV(layer.src_attn), (torch.randn(1, 10, d),),
                                       (_t("xa", F32, ["kv_batch", "frames", d]),), outs)))
    jobs.append(c.always_on(EMBED, "embed", "decoder_step", None, Embed(m, text_positions),
                            (torch.zeros(1, 2, dtype=torch.long), torch.arange(2)),
                            [_t("tokens", I64, ["batch", "tokens"]), _t("positions", I64, ["tokens"])],
                            [_t("x", F32, xt)]))
    for i, layer in enumerate(m.decoder.decoders):
        self_attn, src_attn, ffn = names[n * i: n * i + n]
        jobs.append(c.residual(
            self_attn, "self_attn", "decoder_step", i, CachedSelfAttention(layer.self_attn, layer.norm1),
            (ex_t, ex_cache, ex_cache.clone()),
            [*x_in, _t("k_cache", F32, cache_in, f"self_k.{i}"), _t("v_cache", F32, cache_in, f"self_v.{i}")],
            [*x_out, _t("k_cache_out", F32, cache_out, f"self_k.{i}"),
             _t("v_cache_out", F32, cache_out, f"self_v.{i}")]))
        jobs.append(c.residual(src_attn, "src_attn", "decoder_step", i, SourceAttention(layer.src_attn, layer.norm2),
                               (ex_t, ex_kv, ex_kv.clone()),
                               [*x_in, _t("k", F32, kv, f"cross_k.{i}"), _t("v", F32, kv, f"cross_v.{i}")], x_out,
                               flops=c.gate_flops[src_attn] - kv_flops))
        jobs.append(c.residual(ffn, "ffn", "decoder_step", i, Residual(layer.feed_forward, layer.norm3), (ex_t,),
                               x_in, x_out))
    jobs.append(c.always_on(LOGITS, "logits", "decoder_step", None, Logits(m), (ex_t,), x_in,
                            [_t("logits", F32, ["batch", m.dims.n_vocab], LOGITS_VALUE)]))
    return jobs


def module_jobs(model: Owsm, window_frames: int) -> list[ModuleJob]:
    """Every module of the bundle in execution order; ``window_frames``: feature frames of a full window."""
    c = _context(model, window_frames)
    return encoder_jobs(c) + decoder_jobs(c, c.positions + PROMPT_POSITIONS)


def family_manifest(ckpt: OwsmCheckpoint, model_name: str) -> dict[str, Any]:
    """What the runtime needs about an OWSM besides its modules: dims, limits, costs, frontend, decoding."""
    model, positions = ckpt.model, window_positions(ckpt)
    d = model.dims
    gate_terms, always_terms = module_cost_terms(d), always_on_cost_terms(d)
    state = [f"self_{kv}.{i}" for i in range(d.n_decoder_layers) for kv in ("k", "v")]
    fe, cfg = ckpt.frontend, ckpt.config.frontend
    return {
        "model": {"family": "owsm", "name": model_name, "dims": asdict(d), "skip_adapters": sorted(adapters_of(model))},
        "gate_names": list(model.gate_names),
        # mel_frames_per_position 4: the stem quarters the frame rate (3001 frames -> 749 positions).
        "execution": Limits(d.n_mels, d.n_vocab, positions, positions + PROMPT_POSITIONS, 4, tuple(state)).to_dict(),
        "costs": costs_section(gate_terms, always_terms, positions, COST_TOKENS,
                               "FLOPs (multiply-add = 2) per gateable module for one full input window and 32 "
                               "decoder positions; OWSM always runs the full window, the decoder positions vary"),
        "frontend": {"type": "owsm-log-mel", "file": FRONTEND_FILE, "sample_rate": fe.sample_rate,
                     "n_fft": fe.n_fft, "win_length": fe.win_length, "hop_length": fe.hop_length,
                     "n_mels": fe.n_mels, "speech_length": cfg.speech_length},
        # ESPnet's maxlenratio=0: at most one token per encoder position.
        "decoding": {"max_tokens": positions},
    }


def write_family_files(writer: Any, ckpt: OwsmCheckpoint) -> dict[str, Any]:
    """Frontend arrays and tokenizer files into the bundle; returns the manifest's ``tokenizer`` entry."""
    fe, tok = ckpt.frontend, ckpt.tokenizer
    tmp = writer.path_for(FRONTEND_FILE)
    with open(tmp, "wb") as f:  # np.savez on a file object: the name stays exactly FRONTEND_FILE
        np.savez(f, melmat=fe.melmat.astype(np.float32), mean=fe.mean, std=fe.std)
    writer.add(FRONTEND_FILE)
    tokens = writer.path_for("tokens.txt")
    tokens.write_text("".join(t + "\n" for t in tok.token_list), encoding="utf-8")
    writer.add("tokens.txt")
    entry: dict[str, Any] = {"file": "tokens.txt", "bpe_model": None, "language_codes": tok.language_codes,
                             "eot": tok.eot, "sot": tok.sot,
                             "notime_symbol": tok.token_list[tok.no_timestamps],
                             "first_time_symbol": tok.token_list[tok.first_time],
                             "last_time_symbol": tok.token_list[tok.last_time]}
    if tok.bpe_model is not None and Path(tok.bpe_model).is_file():
        writer.copy_in(tok.bpe_model, "bpe.model")
        entry["bpe_model"] = "bpe.model"
    return entry


__all__ = ["module_jobs", "family_manifest", "write_family_files", "adapters_of", "window_positions", "window_frames",
           "encoder_jobs", "decoder_jobs", "FRONTEND_FILE"]
