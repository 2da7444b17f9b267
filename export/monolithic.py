"""Dense monolithic graphs of a Whisper (encoder, cross K/V, one decoder step): the baseline that
benchmarks compare the per-module bundle against. Not part of a bundle."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from edgegate.export.onnx_export import DEFAULT_OPSET, export_graph
from edgegate.export.whisper_graphs import (
    MLP,
    CachedSelfAttention,
    CrossAttention,
    CrossKV,
    Embed,
    Logits,
    SelfAttention,
    Stem,
)
from edgegate.models.whisper import Whisper
from edgegate.runtimes.schema import TensorSpec


class MonoEncoder(nn.Module):
    def __init__(self, model: Whisper):
        super().__init__()
        self.stem = Stem(model)
        blocks = model.encoder.blocks
        self.layers = nn.ModuleList(m for b in blocks for m in (SelfAttention(b.attn, b.attn_ln), MLP(b.mlp, b.mlp_ln)))
        self.ln_post = model.encoder.ln_post

    def forward(self, mel: Tensor) -> Tensor:
        x = self.stem(mel)
        for layer in self.layers:
            x = layer(x)
        return self.ln_post(x)


class MonoCrossKV(nn.Module):
    def __init__(self, model: Whisper):
        super().__init__()
        self.kv = nn.ModuleList(CrossKV(b.cross_attn) for b in model.decoder.blocks)

    def forward(self, xa: Tensor) -> list[Tensor]:
        return [t for kv in self.kv for t in kv(xa)]


class MonoDecoderStep(nn.Module):
    """tokens, positions, self K/V caches (2 per layer), cross K/V (2 per layer) -> logits, new caches."""

    def __init__(self, model: Whisper):
        super().__init__()
        self.embed = Embed(model)
        blocks = model.decoder.blocks
        self.self_attn = nn.ModuleList(CachedSelfAttention(b.attn, b.attn_ln) for b in blocks)
        self.cross = nn.ModuleList(CrossAttention(b.cross_attn, b.cross_attn_ln) for b in blocks)
        self.mlp = nn.ModuleList(MLP(b.mlp, b.mlp_ln) for b in blocks)
        self.logits = Logits(model)
        self.n = len(blocks)

    def forward(self, tokens: Tensor, positions: Tensor, *kv: Tensor) -> list[Tensor]:
        caches, cross = kv[: 2 * self.n], kv[2 * self.n:]
        x = self.embed(tokens, positions)
        new = []
        for i in range(self.n):
            x, k, v = self.self_attn[i](x, caches[2 * i], caches[2 * i + 1])
            new += [k, v]
            x = self.cross[i](x, cross[2 * i], cross[2 * i + 1])
            x = self.mlp[i](x)
        return [self.logits(x), *new]


def _f32(name: str, shape: list[int | str]) -> TensorSpec:
    return TensorSpec(name, "float32", tuple(shape), name)


def export_monolithic(model: Whisper, out: str | Path, opset: int = DEFAULT_OPSET) -> dict[str, Path]:
    """Dense monolithic graphs for comparison: encoder (mel -> xa), cross K/V, one decoder step."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    d = model.dims
    dt, ht, n = d.n_text_state, d.n_text_head, d.n_text_layer
    paths = {"encoder": out / "mono_encoder.onnx", "cross_kv": out / "mono_cross_kv.onnx",
             "decoder_step": out / "mono_decoder_step.onnx"}
    export_graph(MonoEncoder(model), (torch.randn(1, d.n_mels, 20),), paths["encoder"],
                 [_f32("mel", ["batch", d.n_mels, "mel_frames"])], [_f32("xa", ["batch", "frames", d.n_audio_state])],
                 opset)
    kv = ["kv_batch", ht, "frames", dt // ht]
    export_graph(MonoCrossKV(model), (torch.randn(1, 10, dt),), paths["cross_kv"],
                 [_f32("xa", ["kv_batch", "frames", dt])], [_f32(f"{k}{i}", kv) for i in range(n) for k in "kv"],
                 opset)
    cache_in, cache_out = ["batch", ht, "past", dt // ht], ["batch", ht, "total", dt // ht]
    ex_cache = [torch.randn(1, ht, 3, dt // ht) for _ in range(2 * n)]
    ex_cross = [torch.randn(1, ht, 10, dt // ht) for _ in range(2 * n)]
    ins = [TensorSpec("tokens", "int64", ("batch", "tokens"), "tokens"),
           TensorSpec("positions", "int64", ("tokens",), "positions")]
    ins += [_f32(f"{k}_cache{i}", cache_in) for i in range(n) for k in "kv"]
    ins += [_f32(f"cross_{k}{i}", kv) for i in range(n) for k in "kv"]
    outs = [_f32("logits", ["batch", d.n_vocab])] + [_f32(f"{k}_cache_out{i}", cache_out) for i in range(n)
                                                      for k in "kv"]
    export_graph(MonoDecoderStep(model), (torch.zeros(1, 2, dtype=torch.long), torch.arange(2), *ex_cache, *ex_cross),
                 paths["decoder_step"], ins, outs, opset)
    return paths
