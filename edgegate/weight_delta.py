"""Fine-tuned weights shipped as a compact difference to the base checkpoint.

A full fine-tune of Whisper base changes ~45 M parameters: 90 MB in fp16. The difference to the
base is small and smooth, so it is stored as int8 with one fp32 scale per output row (matrices) or in
fp16 (vectors), ~1 byte per parameter; the file is safetensors with the base model's fingerprint in
its metadata, and applying it to any other model is refused.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from edgegate.errors import ModelError

DELTA_FORMAT = "edgegate-weight-delta-int8"


def model_fingerprint(model: torch.nn.Module) -> str:
    """A short hash of the weights, so that caches and deltas never meet another model's."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        if "skip_adapters" in k:
            continue
        h.update(k.encode())
        h.update(v.detach().flatten()[:256].float().numpy().tobytes())
    return h.hexdigest()[:16]


def quantize_delta(delta: torch.Tensor) -> dict[str, torch.Tensor]:
    if delta.dim() < 2:
        return {"fp16": delta.to(torch.float16)}
    rows = delta.reshape(delta.shape[0], -1).float()
    scale = rows.abs().amax(dim=1).clamp_min(1e-12) / 127.0
    q = torch.round(rows / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return {"q": q.reshape(delta.shape), "scale": scale}


def dequantize_delta(parts: dict[str, torch.Tensor]) -> torch.Tensor:
    if "fp16" in parts:
        return parts["fp16"].float()
    q = parts["q"]
    return (q.reshape(q.shape[0], -1).float() * parts["scale"][:, None]).reshape(q.shape)


def save_delta(tuned: dict[str, torch.Tensor], base: dict[str, torch.Tensor], path: str | os.PathLike,
               metadata: dict[str, str]) -> Path:
    """Write ``tuned - base`` for every tuned tensor (atomically)."""
    from safetensors.torch import save_file

    tensors = {}
    for name, value in tuned.items():
        for part, t in quantize_delta(value.detach().float() - base[name].float()).items():
            tensors[f"{name}::{part}"] = t.contiguous()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata={"format": DELTA_FORMAT, **metadata})
    os.replace(tmp, path)
    return path


def read_delta(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The dequantised differences by parameter name, and the file's metadata."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            raw = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises several types for a damaged file
        raise ModelError(f"{path}: not a readable weight-delta file ({e}); re-download it or re-run "
                         "edgegate adapt") from None
    if meta.get("format") != DELTA_FORMAT:
        raise ModelError(f"{path}: not an edgegate weight delta (format {meta.get('format')!r})")
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in raw.items():
        name, _, part = key.rpartition("::")
        grouped.setdefault(name, {})[part] = t
    return {name: dequantize_delta(parts) for name, parts in grouped.items()}, meta


def apply_delta(model: torch.nn.Module, path: str | os.PathLike, fingerprint: str) -> dict[str, str]:
    """Add the file's differences to ``model`` in place; refuses a delta made for another base."""
    deltas, meta = read_delta(path)
    if meta.get("base_fingerprint") != fingerprint:
        raise ModelError(f"{path} was made for base weights {meta.get('base_fingerprint')}, not these "
                         f"({fingerprint}): load it onto the model it was trained from")
    params = dict(model.named_parameters())
    missing = [n for n in deltas if n not in params]
    if missing:
        raise ModelError(f"{path}: parameters {missing[:3]} do not exist in this model")
    with torch.no_grad():
        for name, d in deltas.items():
            params[name].add_(d.to(params[name].dtype))
    return meta
