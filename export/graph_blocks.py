"""Graph bodies every model family's module graphs share (torch, export side only).

The families differ in their attention modules' attribute names and in what a layer holds; what is
the same (the scaled dot-product core spelled out for export, a pre-LayerNorm residual, a K/V
projection of the encoder output, a tensor spec) is written once here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from edgegate.runtimes.schema import TensorSpec


def dot_product_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """softmax(q k^T / sqrt(d)) v over (batch, heads, T, d) tensors, heads merged back: plain MatMul/Softmax
    when exported (no fused attention op that a backend might lack)."""
    w = torch.matmul(q, k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
    if mask is not None:
        w = w.masked_fill(mask.logical_not(), float("-inf"))
    return torch.matmul(torch.softmax(w, dim=-1), v).transpose(1, 2).flatten(2)


class Residual(nn.Module):
    """``x + body(LN(x))``: a pre-LayerNorm residual module (an MLP / FFN)."""

    def __init__(self, body: nn.Module, ln: nn.LayerNorm):
        super().__init__()
        self.body, self.ln = body, ln

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(self.ln(x))


class Norm(nn.Module):
    """A final LayerNorm as its own graph (it runs whatever the mask)."""

    def __init__(self, ln: nn.LayerNorm):
        super().__init__()
        self.ln = ln

    def forward(self, x: Tensor) -> Tensor:
        return self.ln(x)


class Adapter(nn.Module):
    """A skip adapter's graph: ``x + adapter(x)``, run in place of a skipped module."""

    def __init__(self, adapter: nn.Module):
        super().__init__()
        self.adapter = adapter

    def forward(self, x: Tensor) -> Tensor:
        return x + self.adapter(x)


class ProjectKV(nn.Module):
    """The cross-attention's K/V of one window's encoder output, computed once per window."""

    def __init__(self, attn: nn.Module):
        super().__init__()
        self.attn = attn

    def forward(self, xa: Tensor) -> tuple[Tensor, Tensor]:
        return self.attn.project_kv(xa)


class CachedSelfAttention(nn.Module):
    """A decoder self-attention step: its K/V cache grown by this step's tokens, an in-graph causal mask.

    A family subclass sets ``attend(attn, h, k, v, mask)``, its attention module's projections around
    :func:`dot_product_attention`.
    """

    attend: Callable[..., Tensor]

    def __init__(self, attn: nn.Module, ln: nn.LayerNorm):
        super().__init__()
        self.attn, self.ln = attn, ln

    def forward(self, x: Tensor, k_cache: Tensor, v_cache: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        h = self.ln(x)
        k_new, v_new = self.attn.project_kv(h)
        k = torch.cat([k_cache, k_new], dim=2)
        v = torch.cat([v_cache, v_new], dim=2)
        t, total = x.shape[1], k.shape[2]
        query_pos = torch.arange(t, device=x.device) + (total - t)
        mask = torch.arange(total, device=x.device).unsqueeze(0) <= query_pos.unsqueeze(1)
        return x + self.attend(self.attn, h, k, v, mask), k, v


def tensor(name: str, dtype: str, shape: list[int | str], value: str | None = None) -> TensorSpec:
    """A graph input/output bound to the environment value of the same name unless ``value`` says otherwise."""
    return TensorSpec(name, dtype, tuple(shape), value or name)


def costs_section(gate_terms: dict[str, tuple[Any, int]], always_terms: dict[str, tuple[Any, int]], n_frames: int,
                  n_tokens: int, note: str) -> dict[str, Any]:
    """The manifest's ``costs``: each module's FLOPs at one shape, its parameter bytes, and the cost terms
    (``edgegate.cost_model.CostTerms``) every planner evaluates at the request's own shape."""
    return {
        "unit": "flops", "n_frames": n_frames, "n_tokens": n_tokens, "note": note,
        "gates": {k: t.at(n_frames, n_tokens) for k, (t, _) in gate_terms.items()},
        "gate_param_bytes": {k: 4 * p for k, (_, p) in gate_terms.items()},
        "always_on": {k: t.at(n_frames, n_tokens) for k, (t, _) in always_terms.items()},
        "terms": {"gates": {k: t.to_dict() for k, (t, _) in gate_terms.items()},
                  "always_on": {k: t.to_dict() for k, (t, _) in always_terms.items()}},
    }
