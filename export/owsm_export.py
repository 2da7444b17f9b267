"""The export core's OWSM inputs: the checkpoint directory, its gate set or predictor, the budget.

``edgegate export --model OWSM_DIR`` lands here through :func:`edgegate.export.core.export_with`,
which lays out the bundle with :mod:`edgegate.export.owsm_graphs` exactly as it does Whisper's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from edgegate.errors import ModelError
from edgegate.export.core import FamilyExport
from edgegate.export.owsm_graphs import family_manifest, module_jobs, window_frames, write_family_files
from edgegate.export.profiles import DeviceProfile
from edgegate.models.owsm_config import is_owsm_dir
from edgegate.models.owsm_loader import OwsmCheckpoint, load_owsm


def is_owsm(model: Any) -> bool:
    """Whether an export's ``model`` argument is an OWSM (a checkpoint directory or a loaded checkpoint)."""
    if isinstance(model, OwsmCheckpoint):
        return True
    return isinstance(model, (str, Path)) and is_owsm_dir(Path(model).expanduser())


def load_owsm_gates(gates: str | Path | nn.Module | None, ckpt: OwsmCheckpoint
                    ) -> tuple[nn.Module | None, dict[str, Any]]:
    """The predictor and its metadata; a gate set (``edgegate train-gates --model OWSM_DIR --out``) also
    puts its adaptation into ``ckpt.model``."""
    from edgegate.gate_set import GATES_FILE, PREDICTOR_FILE, GateSpec, is_gate_set, resolve_gates_dir
    from edgegate.predictor import load_predictor

    model = ckpt.model
    if gates is None:
        return None, {}
    if isinstance(gates, nn.Module):
        pred, meta = gates, {}
    elif is_gate_set(gates):
        from edgegate.adaptation import apply_adaptation

        d = resolve_gates_dir(gates)
        spec = GateSpec.read(d / GATES_FILE)
        pred, _ = load_predictor(d / PREDICTOR_FILE)
        apply_adaptation(model, d, spec)
        meta = {"gate_set": spec.to_dict(), "pinned": []}
    else:
        pred, meta = load_predictor(gates)
    cfg = pred.config
    if cfg.n_modules != len(model.gate_names) or cfg.n_mels != model.dims.n_mels:
        raise ModelError(f"gate predictor has {cfg.n_modules} outputs over {cfg.n_mels} mel bins, but this OWSM "
                         f"has {len(model.gate_names)} gateable modules over {model.dims.n_mels}; train a predictor "
                         "for this model (edgegate train-gates --model OWSM_DIR)")
    names = meta.get("gate_names") if isinstance(meta, dict) else None
    if names is not None and list(names) != list(model.gate_names):
        raise ModelError("gate predictor was trained for different module names than this OWSM's; train a "
                         "predictor for this model")
    if (meta.get("gate_set") or {}).get("audio_ctx") is not None:
        raise ModelError("this gate set trims the encoder context (audio_ctx), which OWSM does not support; "
                         "retrain it with --audio-ctx none")
    # The predictor's language index counts the model's own codes (OWSM's ISO 639-3 tokens), not Whisper's.
    meta = {**meta, "language_codes": ckpt.tokenizer.language_codes[: cfg.n_languages]}
    return pred.eval(), meta


def family_export(model: str | Path | OwsmCheckpoint, gates: Any, profile: DeviceProfile, budget: float | None,
                  scope: str | None) -> FamilyExport:
    """The loaded OWSM inputs and the functions that lay out its bundle."""
    ckpt = model if isinstance(model, OwsmCheckpoint) else load_owsm(Path(model).expanduser())
    name = str(model) if isinstance(model, (str, Path)) else "custom"
    predictor, meta = load_owsm_gates(gates, ckpt)
    the_budget = profile.export_budget(meta.get("gate_set") or {}, ckpt.model.gate_names, budget, scope, "OWSM model")
    return FamilyExport(ckpt.model.eval(), name, predictor, meta, the_budget,
                        lambda: module_jobs(ckpt.model, window_frames(ckpt)),
                        lambda: family_manifest(ckpt, name), lambda w: write_family_files(w, ckpt),
                        precision="fp32")  # int8 OWSM modules are untested against ESPnet: opt in with --precision


__all__ = ["is_owsm", "family_export", "load_owsm_gates"]
