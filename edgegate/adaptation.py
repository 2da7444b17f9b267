"""The adaptation of a gate set on disk: skip adapters, LoRA deltas, fine-tuned weights (torch).

A gate set adapts the base model in one of three ways (``gates.json`` ``adapt``):

- ``skip-adapters``: ``adapters.safetensors``, one small bypass per gated module that runs only
  in place of a skipped module (the dense path stays bit-identical);
- ``lora``: ``lora.safetensors``, low-rank deltas ``W += scale * B @ A`` merged into the weights
  at load time (metadata: rank, scale);
- ``full``: ``model.safetensors``, fine-tuned weights of the gated modules.

This module holds the file formats, their writers and readers, and :func:`apply_adaptation`,
which the gated model, the exporter and training use alike. Safetensors only: no pickle.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgegate.errors import ModelError
from edgegate.gate_set import GATES_FILE, GateSpec

ADAPTERS_FILE = "adapters.safetensors"
ADAPTERS_FORMAT = "edgegate-skip-adapters"
LORA_FILE = "lora.safetensors"
LORA_FORMAT = "edgegate-lora"
MODEL_FILE = "model.safetensors"
FINETUNED_FORMAT = "edgegate-finetuned-weights"


# -- skip adapters ------------------------------------------------------------------------------
def save_adapters(model: Any, path: Path, dtype: str = "float32") -> Path:
    """Skip adapters of ``model`` as safetensors (keys as in ``model.skip_adapters``)."""
    import torch
    from safetensors.torch import save_file

    td = {"float32": torch.float32, "float16": torch.float16}[dtype]
    tensors = {k: v.detach().to("cpu", td).contiguous() for k, v in model.skip_adapters.state_dict().items()}
    names = [n for n in model.gate_names if n.replace(".", "_") in model.skip_adapters]
    rank = next(iter(model.skip_adapters.values())).down.out_features if names else 0
    save_file(tensors, str(path), metadata={"format": ADAPTERS_FORMAT, "names": json.dumps(names),
                                            "rank": str(rank)})
    return path


def _read(path: Path, what: str) -> tuple[dict[str, str], dict[str, Any]]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        return meta, load_file(str(path))
    except Exception as exc:  # safetensors raises several types for missing or corrupt files
        raise ModelError(f"cannot read {what} {path} ({exc}); re-run edgegate train-gates") from None


def load_adapters(model: Any, path: Path) -> None:
    """Attach and fill the skip adapters saved by :func:`save_adapters` (stored fp16 or fp32)."""
    meta, tensors = _read(path, "skip adapters")
    if meta.get("format") != ADAPTERS_FORMAT:
        raise ModelError(f"{path} is not an edgegate skip-adapter file")
    names = json.loads(meta["names"])
    unknown = [n for n in names if n not in model.gate_names]
    if unknown:
        raise ModelError(f"{path} has adapters for {unknown[:3]}, which this model does not have: "
                         "the gates were trained for another model")
    model.add_skip_adapters(int(meta["rank"]), names)
    try:
        model.skip_adapters.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"{path} does not match the model ({str(exc).splitlines()[0]})") from None


# -- LoRA ---------------------------------------------------------------------------------------
def save_lora(tensors: Mapping[str, Any], path: Path, rank: int, scale: float) -> Path:
    """LoRA deltas as ``<weight path>.A`` (rank x in) and ``<weight path>.B`` (out x rank) tensors."""
    from safetensors.torch import save_file

    save_file(dict(tensors), str(path), metadata={"format": LORA_FORMAT, "rank": str(rank), "scale": str(scale)})
    return path


def load_lora_merged(model: Any, path: Path) -> None:
    """Merge a saved LoRA (``W += scale * B @ A``) into ``model``'s weights."""
    import torch

    meta, tensors = _read(path, "LoRA")
    if meta.get("format") != LORA_FORMAT:
        raise ModelError(f"{path} is not an edgegate LoRA file")
    scale = float(meta.get("scale", "1"))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for k in tensors:
            if k.endswith(".A"):
                base = k[:-2]
                if f"{base}.weight" not in params or f"{base}.B" not in tensors:
                    raise ModelError(f"{path} has a LoRA delta for {base}, which this model does not have")
                w = params[f"{base}.weight"]
                w += scale * tensors[f"{base}.B"].float() @ tensors[k].float()


# -- fine-tuned weights ---------------------------------------------------------------------------
def save_finetuned(tensors: Mapping[str, Any], path: Path) -> Path:
    from safetensors.torch import save_file

    save_file(dict(tensors), str(path), metadata={"format": FINETUNED_FORMAT})
    return path


def load_finetuned(model: Any, path: Path) -> None:
    _, state = _read(path, "fine-tuned weights")
    missing = model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    if missing.unexpected_keys:
        raise ModelError(f"{path} has unexpected weights {missing.unexpected_keys[:3]}")


def apply_adaptation(model: Any, directory: Path, spec: GateSpec) -> None:
    """Put the trained adaptation of the gate set in ``directory`` into ``model`` (in place)."""
    if spec.adapt == "skip-adapters":
        load_adapters(model, directory / ADAPTERS_FILE)
    elif spec.adapt == "lora":
        load_lora_merged(model, directory / LORA_FILE)
    elif spec.adapt == "full":
        load_finetuned(model, directory / MODEL_FILE)
    elif spec.adapt != "none":
        raise ModelError(f"unknown adaptation {spec.adapt!r} in {directory / GATES_FILE}")


__all__ = ["ADAPTERS_FILE", "ADAPTERS_FORMAT", "LORA_FILE", "LORA_FORMAT", "MODEL_FILE", "save_adapters",
           "load_adapters", "save_lora", "load_lora_merged", "save_finetuned", "load_finetuned", "apply_adaptation"]
