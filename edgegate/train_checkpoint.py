"""Gate-training checkpoints: ``<out>/checkpoint`` replaced atomically, resumable bit for bit.

Everything is safetensors or plain tensors, ints, floats, lists and dicts (the trainer state loads
with ``torch.load(weights_only=True)``): no pickle code runs on resume.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import torch

from edgegate.gate_set import PREDICTOR_FILE
from edgegate.predictor import GatePredictor, save_predictor
from edgegate.student import Student
from edgegate.train_config import TrainConfig, TrainingError

CHECKPOINT_DIR = "checkpoint"
TRAINER_STATE = "trainer_state.pt"

def save_checkpoint(out: Path, step: int, predictor: GatePredictor, st: Student, opt, gen: torch.Generator,
                    cfg: TrainConfig, history: list[dict]) -> Path:
    """Atomically replace ``out/checkpoint`` with the state after ``step`` steps."""
    from safetensors.torch import save_file

    final = out / CHECKPOINT_DIR
    tmp = out / f".{CHECKPOINT_DIR}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_predictor(predictor, tmp / PREDICTOR_FILE, extra_meta={"step": step})
    adapt = st.adaptation_state(torch.float32)
    if adapt:
        save_file(adapt, str(tmp / "adaptation.safetensors"))
    # Plain tensors, ints, floats, lists and dicts only: loads with torch.load(weights_only=True).
    torch.save({"step": step, "optimizer": opt.state_dict(), "generator": gen.get_state(),
                "config": json.dumps(asdict(cfg)), "history": json.dumps(history)}, tmp / TRAINER_STATE)
    old = out / f".{CHECKPOINT_DIR}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(out: Path, predictor: GatePredictor, st: Student, opt, gen: torch.Generator,
                    cfg: TrainConfig) -> tuple[int, list[dict]]:
    from safetensors.torch import load_file

    from edgegate.predictor import load_predictor

    ck = out / CHECKPOINT_DIR
    if not (ck / TRAINER_STATE).exists():
        raise TrainingError(f"--resume: no checkpoint in {ck}; run without --resume to start training")
    state = torch.load(ck / TRAINER_STATE, weights_only=True)
    old = json.loads(state["config"])
    for k in ("model", "scope", "adapt", "adapter_rank", "lora_rank", "audio_ctx", "hidden", "max_tokens"):
        if old.get(k) != getattr(cfg, k):
            raise TrainingError(f"--resume: checkpoint was trained with {k}={old.get(k)!r}, this run has "
                                f"{getattr(cfg, k)!r}; use the same settings or another --out")
    saved, _ = load_predictor(ck / PREDICTOR_FILE)
    predictor.load_state_dict(saved.state_dict())
    if (ck / "adaptation.safetensors").exists():
        st.load_adaptation_state(load_file(str(ck / "adaptation.safetensors")))
    opt.load_state_dict(state["optimizer"])
    gen.set_state(state["generator"])
    return int(state["step"]), json.loads(state["history"])
