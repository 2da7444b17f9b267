"""Whisper as module graphs: the wrappers each target exports and the execution plan they form.

Each gateable module becomes one graph computing its whole residual step ``x -> x + f(ln(x))``,
so skipping a module means not calling its graph. The decoder's self-attention graphs take and
return their layer's K/V cache, ``(batch, heads, past, head_dim)`` in and
``(batch, heads, past + t, head_dim)`` out, with the causal mask built inside the graph from the
two lengths: the same graph serves the prompt step (t = 3..4, past = 0, an empty cache) and every
later step (t = 1). Cross-attention is split into a once-per-window K/V projection graph and
a per-step attention graph whose K/V batch may be 1 while the query batch is the beam width
(MatMul broadcasts), so beam search never copies the audio K/V.

:func:`module_jobs` is the manifest writer for Whisper: module names (from
:mod:`edgegate.models.whisper_layout`), stages, gates, the values each graph reads and writes
(``x`` the residual stream, ``xa`` the audio features, ``cross_k.<i>``/``cross_v.<i>`` a layer's
audio K/V, ``self_k.<i>``/``self_v.<i>`` its cache) and costs. :func:`family_manifest` is the rest
of what the runtime needs to know about the family (limits, cost terms, frontend). A second
family (OWSM) is a second file like this one.
"""

from __future__ import annotations

from dataclasses import asdict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgegate.frontend import CHUNK_LENGTH, HOP_LENGTH, N_FFT, N_FRAMES, SAMPLE_RATE
from edgegate.models.costs import always_on_cost_terms, cross_kv_terms, module_cost_terms
from edgegate.models.whisper import MultiHeadAttention, Whisper, with_padding
from edgegate.models.whisper_layout import EMBED, LN_POST, LOGITS, STEM, cross_kv_name, gate_layout
from edgegate.runtimes.schema import LOGITS as LOGITS_VALUE
from edgegate.runtimes.schema import Limits, TensorSpec

from . import graph_blocks
from .graph_blocks import Adapter, Norm, ProjectKV, Residual, costs_section, dot_product_attention, tensor
from .graph_job import COST_FRAMES, COST_TOKENS, GraphJob, ModuleJob
from .token_embedding import SHARE


# -- graph bodies ------------------------------------------------------------------------------
def attention(attn: MultiHeadAttention, h: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """Scaled dot-product attention spelled out so that it exports to plain MatMul/Softmax."""
    return attn.out(dot_product_attention(attn.split_heads(attn.query(h)), k, v, mask))


class Stem(nn.Module):
    def __init__(self, model: Whisper):
        super().__init__()
        enc = model.encoder
        self.conv1, self.conv2 = enc.conv1, enc.conv2
        self.register_buffer("positional_embedding", enc.positional_embedding.clone())

    def forward(self, mel: Tensor) -> Tensor:
        x = F.gelu(self.conv1(mel))
        x = F.gelu(self.conv2(x)).transpose(1, 2)
        return x + self.positional_embedding[: x.shape[1]]


class SelfAttention(nn.Module):
    """Encoder self-attention residual step (no mask). With ``padding_kv`` (the context tail of a model that
    trims its context: this layer's padding keys and values, stored in float16 inside the graph) the frames
    also attend to positions ``frames ..`` of the padding, as they do at full context."""

    def __init__(self, attn: MultiHeadAttention, ln: nn.LayerNorm, padding_kv: tuple[Tensor, Tensor] | None = None):
        super().__init__()
        self.attn, self.ln = attn, ln
        self.padded = padding_kv is not None
        if padding_kv is not None:
            self.register_buffer("pad_k", padding_kv[0].half())
            self.register_buffer("pad_v", padding_kv[1].half())

    def forward(self, x: Tensor) -> Tensor:
        h = self.ln(x)
        k, v = self.attn.project_kv(h)
        if self.padded:
            k, v = with_padding(k, v, (self.pad_k.float(), self.pad_v.float()))
        return x + attention(self.attn, h, k, v)


MLP = Residual  # a layer's MLP: x + mlp(LN(x))


class CachedSelfAttention(graph_blocks.CachedSelfAttention):
    """Decoder self-attention step with its K/V cache and an in-graph causal mask."""

    attend = staticmethod(attention)


CrossKV = ProjectKV  # a decoder layer's cross-attention K/V, once per window


class CrossAttention(nn.Module):
    def __init__(self, attn: MultiHeadAttention, ln: nn.LayerNorm):
        super().__init__()
        self.attn, self.ln = attn, ln

    def forward(self, x: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return x + attention(self.attn, self.ln(x), k, v)


class AlignmentScores(nn.Module):
    """Pre-softmax cross-attention scores of one decoder layer, (batch, heads, tokens, frames): what word
    timestamps read of its alignment heads. A graph of its own, so the decoder steps never compute it."""

    def __init__(self, attn: MultiHeadAttention, ln: nn.LayerNorm):
        super().__init__()
        self.attn, self.ln = attn, ln

    def forward(self, x: Tensor, k: Tensor) -> Tensor:
        q = self.attn.split_heads(self.attn.query(self.ln(x)))
        return torch.matmul(q, k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)


LayerNormOnly = Norm  # the encoder's ln_post


class Embed(nn.Module):
    def __init__(self, model: Whisper):
        super().__init__()
        self.token_embedding = model.decoder.token_embedding
        self.positional_embedding = model.decoder.positional_embedding

    def forward(self, tokens: Tensor, positions: Tensor) -> Tensor:
        return self.token_embedding(tokens) + self.positional_embedding[positions]


class Logits(nn.Module):
    """Final LayerNorm and output projection of the last position only: (batch, n_vocab)."""

    def __init__(self, model: Whisper):
        super().__init__()
        self.ln = model.decoder.ln
        self.weight = model.decoder.token_embedding.weight

    def forward(self, x: Tensor) -> Tensor:
        return torch.matmul(self.ln(x[:, -1]), self.weight.t())


# -- the execution plan --------------------------------------------------------------------------
_t = tensor


def adapters_of(model: Whisper) -> dict[str, nn.Module]:
    return {name: model.skip_adapters[name.replace(".", "_")] for name in model.gate_names
            if name.replace(".", "_") in model.skip_adapters}


def _residual(name: str, kind: str, stage: str, layer: int, module: nn.Module, example: tuple,
              inputs: list[TensorSpec], outputs: list[TensorSpec], flops: float, adapter: nn.Module | None,
              ) -> ModuleJob:
    """A gated residual module (and its skip adapter on the residual stream ``x``)."""
    x = inputs[0]
    adapter_job = None if adapter is None else GraphJob(f"{name}.adapter", stage, Adapter(adapter), example[:1],
                                                        (x,), (_t("x_out", x.dtype, list(x.shape), "x"),))
    return ModuleJob(name, kind, stage, layer, (name,), float(flops),
                     GraphJob(name, stage, module, example, tuple(inputs), tuple(outputs)), adapter_job)


def module_jobs(model: Whisper) -> list[ModuleJob]:
    """Every module of the bundle in execution order, with its graph, signature, bindings and cost."""
    d = model.dims
    da, dt, ht = d.n_audio_state, d.n_text_state, d.n_text_head
    costs = {k: t.at(COST_FRAMES, COST_TOKENS) for k, (t, _) in module_cost_terms(d).items()}
    always = {k: t.at(COST_FRAMES, COST_TOKENS) for k, (t, _) in always_on_cost_terms(d).items()}
    kv_flops = cross_kv_terms(dt).at(COST_FRAMES, COST_TOKENS)
    adapters = adapters_of(model)
    T, F2, t, past = 10, 20, 2, 3  # example sizes for tracing (dynamic in the graph)
    f32, i64 = "float32", "int64"
    xa_shape: list[int | str] = ["batch", "frames", da]
    xt_shape: list[int | str] = ["batch", "tokens", dt]
    kv_shape: list[int | str] = ["kv_batch", ht, "frames", dt // ht]
    cache_in: list[int | str] = ["batch", ht, "past", dt // ht]
    cache_out: list[int | str] = ["batch", ht, "total", dt // ht]
    ex_a, ex_t = torch.randn(1, T, da), torch.randn(1, t, dt)
    xa_in, xa_out = [_t("x", f32, xa_shape)], [_t("x_out", f32, xa_shape, "x")]
    xt_in, xt_out = [_t("x", f32, xt_shape)], [_t("x_out", f32, xt_shape, "x")]

    def always_on(name: str, stage: str, module: nn.Module, example: tuple, ins: list, outs: list) -> ModuleJob:
        return ModuleJob(name, name.split(".")[1], stage, None, (), float(always[name]),
                         GraphJob(name, stage, module, example, tuple(ins), tuple(outs)))

    layout = gate_layout(d)
    dec = {(s.layer, s.kind): s.name for s in layout if s.part == "decoder"}
    jobs = [always_on(STEM, "encoder", Stem(model), (torch.randn(1, d.n_mels, F2),),
                      [_t("mel", f32, ["batch", d.n_mels, "mel_frames"])], [_t("x", f32, xa_shape)])]
    padding_kv = model.padding_kv() if getattr(model, "context_tail", False) else None
    for s in (s for s in layout if s.part == "encoder"):
        block = model.encoder.blocks[s.layer]
        mod = SelfAttention(block.attn, block.attn_ln, None if padding_kv is None else padding_kv[s.layer]) \
            if s.kind == "attn" else MLP(block.mlp, block.mlp_ln)
        jobs.append(_residual(s.name, s.kind, "encoder", s.layer, mod, (ex_a,), xa_in, xa_out, costs[s.name],
                              adapters.get(s.name)))
    jobs.append(always_on(LN_POST, "encoder", LayerNormOnly(model.encoder.ln_post), (ex_a,), xa_in,
                          [_t("xa", f32, xa_shape)]))
    for i, block in enumerate(model.decoder.blocks):
        kv = [_t("k", f32, kv_shape, f"cross_k.{i}"), _t("v", f32, kv_shape, f"cross_v.{i}")]
        jobs.append(ModuleJob(cross_kv_name(i), "cross_kv", "cross_kv", i, (dec[(i, "cross_attn")],), kv_flops,
                              GraphJob(cross_kv_name(i), "cross_kv", CrossKV(block.cross_attn),
                                       (torch.randn(1, T, dt),), (_t("xa", f32, ["kv_batch", "frames", dt]),),
                                       tuple(kv))))
    jobs.append(always_on(EMBED, "decoder_step", Embed(model), (torch.zeros(1, t, dtype=torch.long), torch.arange(t)),
                          [_t("tokens", i64, ["batch", "tokens"]), _t("positions", i64, ["tokens"])],
                          [_t("x", f32, xt_shape)]))
    for i, block in enumerate(model.decoder.blocks):
        ex_cache, ex_kv = torch.randn(1, ht, past, dt // ht), torch.randn(1, ht, T, dt // ht)
        name = dec[(i, "self_attn")]
        jobs.append(_residual(
            name, "self_attn", "decoder_step", i, CachedSelfAttention(block.attn, block.attn_ln),
            (ex_t, ex_cache, ex_cache.clone()),
            [*xt_in, _t("k_cache", f32, cache_in, f"self_k.{i}"), _t("v_cache", f32, cache_in, f"self_v.{i}")],
            [*xt_out, _t("k_cache_out", f32, cache_out, f"self_k.{i}"),
             _t("v_cache_out", f32, cache_out, f"self_v.{i}")],
            costs[name], adapters.get(name)))
        name = dec[(i, "cross_attn")]
        jobs.append(_residual(name, "cross_attn", "decoder_step", i, CrossAttention(block.cross_attn,
                                                                                    block.cross_attn_ln),
                              (ex_t, ex_kv, ex_kv.clone()),
                              [*xt_in, _t("k", f32, kv_shape, f"cross_k.{i}"), _t("v", f32, kv_shape, f"cross_v.{i}")],
                              xt_out, costs[name] - kv_flops, adapters.get(name)))
        name = dec[(i, "mlp")]
        jobs.append(_residual(name, "mlp", "decoder_step", i, MLP(block.mlp, block.mlp_ln), (ex_t,), xt_in, xt_out,
                              costs[name], adapters.get(name)))
    jobs.append(always_on(LOGITS, "decoder_step", Logits(model), (ex_t,), xt_in,
                          [_t("logits", f32, ["batch", d.n_vocab], LOGITS_VALUE)]))
    for j in jobs:  # the tied token embedding: one table for both graphs (edgegate.export.token_embedding)
        if j.name in (EMBED, LOGITS):
            j.graph.shares = SHARE
    return jobs


# -- word-timestamp alignment (optional graphs, run only for word_timestamps) ----------------------------
ALIGNMENT_STAGE = "alignment"


def alignment_jobs(model: Whisper, model_name: str) -> tuple[list[GraphJob], dict]:
    """The alignment graphs of a bundle and what the manifest says about them (before the files exist).

    One :class:`AlignmentScores` graph per decoder layer (~1 MB each for base): the alignment heads
    (the published mask of ``model.alignment_heads`` or of the model's name) read some of them, and
    when a plan skips those layers the others stand in exactly as the PyTorch aligner falls back.
    """
    from edgegate.alignment import ALIGNMENT_HEADS, alignment_heads

    d = model.dims
    dump = getattr(model, "alignment_heads", None) or ALIGNMENT_HEADS.get(model_name)
    heads = alignment_heads(d.n_text_layer, d.n_text_head, dump)
    layers = range(d.n_text_layer)
    dt, ht = d.n_text_state, d.n_text_head
    dec = {(s.layer, s.kind): s.name for s in gate_layout(d) if s.part == "decoder"}
    jobs, entries = [], []
    for i in layers:
        block = model.decoder.blocks[i]
        name = f"{dec[(i, 'cross_attn')]}.align"
        ins = (_t("x", "float32", ["batch", "tokens", dt]), _t("k", "float32", ["kv_batch", ht, "frames", dt // ht],
                                                                f"cross_k.{i}"))
        outs = (_t("qk", "float32", ["batch", ht, "tokens", "frames"], f"qk.{i}"),)
        jobs.append(GraphJob(name, ALIGNMENT_STAGE, AlignmentScores(block.cross_attn, block.cross_attn_ln),
                             (torch.randn(1, 3, dt), torch.randn(1, ht, 10, dt // ht)), ins, outs))
        entries.append({"name": name, "layer": i, "before": dec[(i, "cross_attn")]})
    meta = {"heads": [[int(a), int(b)] for a, b in heads.T], "published": dump is not None, "graphs": entries,
            "note": "graph <before>.align reads the residual stream x just before module <before> runs and that "
                    "layer's cross K; qk = (ln(x) Wq + bq) K^T / sqrt(head_dim), pre-softmax; run only for word "
                    "timestamps, over the teacher-forced text of a window"}
    return jobs, meta


def alignment_section(meta: dict, written: dict) -> dict:
    """The manifest's ``alignment`` section: ``meta`` of :func:`alignment_jobs` with each graph's file and signature."""
    graphs = []
    for entry in meta["graphs"]:
        spec = written[entry["name"]].to_dict()
        graphs.append({**entry, **spec})
    return {**meta, "graphs": graphs}


def family_manifest(model: Whisper, model_name: str) -> dict:
    """What the runtime needs about a Whisper besides its modules: dims, limits, costs, frontend."""
    d = model.dims
    gate_terms, always_terms = module_cost_terms(d, model.context_tail), always_on_cost_terms(d)
    state = [f"self_{kv}.{i}" for i in range(d.n_text_layer) for kv in ("k", "v")]
    return {
        "model": {"family": "whisper", "name": model_name, "dims": asdict(d),
                  "skip_adapters": sorted(adapters_of(model))},
        "gate_names": list(model.gate_names),
        "execution": Limits(d.n_mels, d.n_vocab, d.n_audio_ctx, d.n_text_ctx, 2, tuple(state)).to_dict(),
        "costs": costs_section(gate_terms, always_terms, COST_FRAMES, COST_TOKENS,
                               "FLOPs (multiply-add = 2) per gateable module for a padded 30-s window and 32 decoder "
                               "positions; the runtime evaluates the terms for the real frame and token counts"),
        "frontend": {"type": "whisper-log-mel", "sample_rate": SAMPLE_RATE, "n_fft": N_FFT,
                     "hop_length": HOP_LENGTH, "n_mels": d.n_mels, "chunk_length": CHUNK_LENGTH,
                     "n_frames": N_FRAMES},
        "decoding": {"max_tokens": d.n_text_ctx // 2},
    }


__all__ = ["module_jobs", "family_manifest", "alignment_jobs", "alignment_section", "AlignmentScores",
           "adapters_of", "Stem", "SelfAttention", "MLP", "CachedSelfAttention",
           "CrossKV", "CrossAttention", "LayerNormOnly", "Embed", "Logits", "Adapter", "attention"]
