"""A gate set on disk: the directory ``edgegate train-gates`` writes (or a shipped one), torch-free.

    gates.json              what was trained: model, scope, adaptation, audio_ctx, language codes
    predictor.safetensors   the gate predictor
    adapters.safetensors    skip adapters     } the adaptation, one of them (edgegate.adaptation)
    lora.safetensors        LoRA deltas       }
    model.safetensors       fine-tuned weights}
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgegate.errors import ModelError

GATES_FILE = "gates.json"
GATES_FORMAT = "edgegate-gates"
PREDICTOR_FILE = "predictor.safetensors"
ASSETS_DIR = Path(__file__).resolve().parent / "assets"


@dataclass
class GateSpec:
    """What ``gates.json`` records about a trained gate set."""

    model: str
    scope: str = "both"
    adapt: str = "skip-adapters"
    audio_ctx: int | None = None
    adapter_rank: int = 0
    lora_rank: int = 0
    language_codes: list[str] | None = None
    extra: dict[str, Any] | None = None

    @property
    def cost_unit(self) -> str:
        """What the gates were trained to budget: "flops", or "ms" (``train-gates --cost-table``)."""
        return (self.extra or {}).get("cost_unit", "flops")

    @property
    def measured_costs(self) -> dict[str, Any] | None:
        """The profiled ms table an "ms" gate set was trained with (``ms``, ``ms_per_step``, ``ms_meta``)."""
        return (self.extra or {}).get("measured_costs")

    def to_dict(self) -> dict[str, Any]:
        d = {"format": GATES_FORMAT, "schema_version": 1, "model": self.model, "scope": self.scope,
             "adapt": self.adapt, "audio_ctx": self.audio_ctx, "adapter_rank": self.adapter_rank,
             "lora_rank": self.lora_rank, "language_codes": self.language_codes}
        d.update(self.extra or {})
        return d

    @classmethod
    def read(cls, path: Path) -> GateSpec:
        try:
            d = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelError(f"cannot read {path} ({exc}); re-run edgegate train-gates") from None
        if d.get("format") != GATES_FORMAT:
            raise ModelError(f"{path} is not an edgegate gates file (format {d.get('format')!r})")
        known = ("model", "scope", "adapt", "audio_ctx", "adapter_rank", "lora_rank", "language_codes")
        extra = {k: v for k, v in d.items() if k not in known + ("format", "schema_version")}
        return cls(**{k: d[k] for k in known if k in d}, extra=extra)


# The shipped gate set ``transcribe --budget`` uses for a registered model: gates are trained on one model at
# one encoder context (gates.json), so each model gets the set trained on it; anything else gets whisper-base's.
DEFAULT_GATE_SETS = {"whisper-base": "whisper-base-decoder", "whisper-base-edge": "whisper-base-edge-decoder"}


def default_gate_set(model: str | os.PathLike) -> str:
    """The shipped gate set for ``model`` (a registered name or a checkpoint path)."""
    return DEFAULT_GATE_SETS.get(str(model), DEFAULT_GATE_SETS["whisper-base"])


def shipped_gate_sets() -> list[str]:
    if not ASSETS_DIR.is_dir():
        return []
    return sorted(p.name for p in ASSETS_DIR.iterdir() if (p / GATES_FILE).exists())


def resolve_gates_dir(name_or_path: str | os.PathLike) -> Path:
    """A trained gate directory, or a shipped one by model name (``whisper-base``)."""
    p = Path(name_or_path).expanduser()
    if p.is_dir() and (p / GATES_FILE).exists():
        return p
    shipped = ASSETS_DIR / str(name_or_path)
    if (shipped / GATES_FILE).exists():
        return shipped
    if p.is_dir():
        raise ModelError(f"{p} has no {GATES_FILE}: pass the --out directory of edgegate train-gates")
    raise ModelError(f"no gate set {str(name_or_path)!r}: not a directory written by edgegate train-gates "
                     f"and not a shipped one ({', '.join(shipped_gate_sets()) or 'none shipped'})")


def is_gate_set(gates: str | os.PathLike) -> bool:
    """A gate-set directory (or a shipped name), as opposed to a bare predictor file."""
    return (Path(gates).expanduser() / GATES_FILE).is_file() or str(gates) in shipped_gate_sets()


__all__ = ["GATES_FILE", "GATES_FORMAT", "PREDICTOR_FILE", "ASSETS_DIR", "GateSpec", "shipped_gate_sets",
           "DEFAULT_GATE_SETS", "default_gate_set",
           "resolve_gates_dir", "is_gate_set"]
