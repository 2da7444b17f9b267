"""The student of gate training: the model with its trainable adaptation (skip adapters, LoRA or
fine-tuned module weights) and the distillation loss of one utterance under a gate vector."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgegate.budget import modules_in_scope
from edgegate.models.whisper import Whisper
from edgegate.train_config import TrainConfig
from edgegate.train_data import Example


def module_linears(model: Whisper, name: str) -> dict[str, nn.Linear]:
    """The nn.Linear layers of one gateable module, keyed by their parameter path prefix."""
    part, layer, kind = name.split(".")
    block = (model.encoder if part == "encoder" else model.decoder).blocks[int(layer)]
    prefix = f"{part}.blocks.{layer}"
    if kind == "mlp":
        return {f"{prefix}.mlp.0": block.mlp[0], f"{prefix}.mlp.2": block.mlp[2]}
    attr = "attn" if kind in ("attn", "self_attn") else "cross_attn"
    mha = getattr(block, attr)
    return {f"{prefix}.{attr}.{p}": getattr(mha, p) for p in ("query", "key", "value", "out")}


def module_parameters(model: Whisper, name: str) -> dict[str, nn.Parameter]:
    """Weights of one gateable module and its pre-LayerNorm (what ``full`` fine-tuning trains)."""
    part, layer, kind = name.split(".")
    prefix = f"{part}.blocks.{layer}."
    sub = {"attn": ("attn.", "attn_ln."), "self_attn": ("attn.", "attn_ln."),
           "cross_attn": ("cross_attn.", "cross_attn_ln."), "mlp": ("mlp.", "mlp_ln.")}[kind]
    return {k: p for k, p in model.named_parameters()
            if k.startswith(prefix) and k[len(prefix):].startswith(sub)}


class LoRA(nn.Module):
    """Low-rank deltas on the Linear layers of the gated modules, applied by forward hooks."""

    def __init__(self, model: Whisper, names: list[str], rank: int, scale: float = 1.0):
        super().__init__()
        self.rank, self.scale, self.enabled = rank, scale, True
        self.A = nn.ParameterDict()
        self.B = nn.ParameterDict()
        self.handles = []
        for name in names:
            for path, lin in module_linears(model, name).items():
                key = path.replace(".", "_")
                self.A[key] = nn.Parameter(torch.randn(rank, lin.in_features) / math.sqrt(lin.in_features))
                self.B[key] = nn.Parameter(torch.zeros(lin.out_features, rank))
                self.handles.append(lin.register_forward_hook(self._hook(key)))
        self.paths = {path.replace(".", "_"): path for n in names for path in module_linears(model, n)}

    def _hook(self, key: str):
        def hook(_mod, inputs, output):
            if not self.enabled:
                return output
            return output + self.scale * (inputs[0] @ self.A[key].T) @ self.B[key].T
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()

    def state_tensors(self, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        out = {}
        for key, path in self.paths.items():
            out[f"{path}.A"] = self.A[key].detach().to(dtype).contiguous()
            out[f"{path}.B"] = self.B[key].detach().to(dtype).contiguous()
        return out


@dataclass
class Student:
    """The model with its trainable adaptation, and what the loop needs to know about it."""

    model: Whisper
    names: list[str]
    in_scope: np.ndarray
    trainable: list[nn.Parameter]
    lora: LoRA | None = None
    teacher: Whisper | None = None  # a frozen copy, only for KL in full fine-tuning
    encoder_frozen: bool = True

    def adaptation_state(self, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """Everything but the predictor that training changed (for checkpoints)."""
        if self.lora is not None:
            return self.lora.state_tensors(dtype)
        if self.model.skip_adapters:
            return {f"skip_adapters.{k}": v.detach().to(dtype).contiguous()
                    for k, v in self.model.skip_adapters.state_dict().items()}
        named = {id(p): k for k, p in self.model.named_parameters()}
        return {named[id(p)]: p.detach().to(dtype).contiguous() for p in self.trainable}

    def load_adaptation_state(self, tensors: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            if self.lora is not None:
                for key, path in self.lora.paths.items():
                    self.lora.A[key].copy_(tensors[f"{path}.A"])
                    self.lora.B[key].copy_(tensors[f"{path}.B"])
                return
            params = dict(self.model.named_parameters())
            for k, v in tensors.items():
                params[k].copy_(v)


def build_student(model: Whisper, cfg: TrainConfig) -> Student:
    names = list(model.gate_names)
    in_scope = modules_in_scope(names, cfg.scope)
    scoped = [n for n, s in zip(names, in_scope, strict=True) if s]
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    trainable: list[nn.Parameter] = []
    lora = teacher = None
    encoder_frozen = True
    if cfg.adapt == "skip-adapters":
        # A family may allow adapters on fewer modules (OWSM: not on the branches of a merge).
        model.add_skip_adapters(cfg.adapter_rank, getattr(model, "adapter_names", list)(scoped))
        trainable = list(model.skip_adapters.parameters())
    elif cfg.adapt == "lora":
        lora = LoRA(model, scoped, cfg.lora_rank)
        trainable = list(lora.parameters())
        encoder_frozen = cfg.scope == "decoder"
    elif cfg.adapt == "full":
        if cfg.kl_weight > 0:
            import copy

            teacher = copy.deepcopy(model)
        for n in scoped:
            trainable += list(module_parameters(model, n).values())
        encoder_frozen = cfg.scope == "decoder"
    for p in trainable:
        p.requires_grad_(True)
    return Student(model, names, in_scope, trainable, lora, teacher, encoder_frozen)


def item_loss(st: Student, ex: Example, gate: torch.Tensor, xa: torch.Tensor | None,
              kl_weight: float) -> tuple[torch.Tensor, float]:
    """Distillation loss of one utterance under keep-gates ``gate`` (L,), and its token accuracy."""
    model = st.model
    per_module = [gate[i:i + 1] if s else None for i, s in enumerate(st.in_scope)]
    xa_in = xa
    if xa is None:
        xa = model.embed_audio(ex.mel[None], per_module)
    cross = model.cross_kv(xa, per_module)
    seq = ex.prompt + ex.tokens
    inp = torch.tensor([seq])
    logits = model.decode(inp, cross, per_module)[0]
    p = len(ex.prompt)
    n_pred = len(ex.tokens) + (1 if ex.finished else 0)
    logits = logits[p - 1: p - 1 + n_pred]
    target = torch.tensor(ex.tokens + ([ex.eot] if ex.finished else []))
    loss = F.cross_entropy(logits, target)
    if kl_weight > 0:
        with torch.no_grad():
            teacher = st.teacher or model
            if st.lora is not None:
                st.lora.enabled = False
            try:
                # A cached encoder output (frozen encoder, decoder scope) is the teacher's own.
                txa = xa_in if xa_in is not None else teacher.embed_audio(ex.mel[None])
                tl = teacher.decode(inp, teacher.cross_kv(txa))[0][p - 1: p - 1 + n_pred]
            finally:
                if st.lora is not None:
                    st.lora.enabled = True
        loss = loss + kl_weight * F.kl_div(F.log_softmax(logits, -1), F.log_softmax(tl, -1),
                                           log_target=True, reduction="batchmean")
    acc = float((logits.argmax(-1) == target).float().mean())
    return loss, acc
