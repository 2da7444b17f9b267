"""Gate-training settings: :class:`TrainConfig`, its checks and :class:`TrainingError` (no torch)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from edgegate.budget import validate_scope
from edgegate.errors import BudgetError, EdgegateError

ADAPT_MODES = ("none", "skip-adapters", "lora", "full")
INIT_RANKINGS = ("ablation", "flat")


class TrainingError(EdgegateError):
    """Training cannot start or continue as configured."""


@dataclass
class TrainConfig:
    manifest: str
    out: str = "runs/gates"
    model: str = "whisper-base"
    scope: str = "both"
    adapt: str = "skip-adapters"
    adapter_rank: int = 32
    lora_rank: int = 8
    steps: int = 300
    batch_size: int = 8
    lr: float = 3e-3
    adapt_lr: float | None = None  # learning rate of the adapted weights (default: lr); ~1e-5..1e-4 for lora/full
    weight_decay: float = 0.0
    warmup: int = 10
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    target_range: tuple[float, float] = (0.0, 0.8)
    target_power: float = 1.0  # targets lo + (hi - lo) * u**power, u ~ U(0, 1): > 1 favours low budgets
    alpha: float = 4.0
    tau_start: float = 2.0
    tau_end: float = 0.3
    kl_weight: float = 0.0
    audio_ctx: int | None = 32
    # A profiled bundle whose measured ms per module are the planning costs (None: FLOPs). On a CPU a
    # decoder cross-attention is 4x an MLP in FLOPs (its K/V projection) but 1.3x in time.
    cost_table: str | None = None
    lang_dropout: float = 0.1
    max_tokens: int = 96
    drop_unfinished: bool = True  # leave out utterances the teacher did not finish (loops)
    hidden: int = 128
    init_ranking: str = "ablation"  # "ablation": seed the predictor with measured per-module damage; "flat"
    ablation_utts: int = 16
    seed: int = 0
    checkpoint_every: int = 50
    log_every: int = 10
    resume: bool = False
    stop_after: int | None = None  # stop (with a checkpoint) after this step: time-sliced jobs
    save_dtype: str = "float16"
    threads: int | None = None
    progress: bool = True
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        validate_scope(self.scope)
        if self.adapt not in ADAPT_MODES:
            raise TrainingError(f"unknown adaptation {self.adapt!r}: use one of {', '.join(ADAPT_MODES)}")
        lo, hi = self.target_range
        if not (0.0 <= lo <= hi < 1.0) or any(math.isnan(v) for v in (lo, hi)):
            raise BudgetError(f"target range {lo:g}..{hi:g} is not inside [0, 1): pass LO,HI with "
                              "0 <= LO <= HI < 1, e.g. --target-range 0,0.8")
        for name in ("steps", "batch_size", "checkpoint_every", "log_every", "max_tokens"):
            if getattr(self, name) < 1:
                raise TrainingError(f"{name.replace('_', '-')} must be >= 1: got {getattr(self, name)}")
        if self.adapt == "skip-adapters" and self.adapter_rank < 1:
            raise TrainingError("adapter rank must be >= 1 for skip adapters")
        if not self.target_power > 0:
            raise TrainingError(f"target power must be > 0: got {self.target_power}")
        if not self.lr > 0:
            raise TrainingError(f"learning rate must be > 0: got {self.lr}")
        if self.adapt_lr is not None and not self.adapt_lr > 0:
            raise TrainingError(f"adapt learning rate must be > 0: got {self.adapt_lr}")
        if self.audio_ctx is not None and self.audio_ctx < 0:
            raise TrainingError(f"audio-ctx margin must be >= 0 encoder positions: got {self.audio_ctx}")
        if self.init_ranking not in INIT_RANKINGS:
            raise TrainingError(f"unknown --init-ranking {self.init_ranking!r}: use one of {', '.join(INIT_RANKINGS)}")
        if self.ablation_utts < 1:
            raise TrainingError(f"ablation-utts must be >= 1: got {self.ablation_utts}")
        if self.cost_table is not None and not (Path(self.cost_table).expanduser() / "manifest.json").is_file():
            raise TrainingError(f"--cost-table {self.cost_table} is not a bundle (no manifest.json): pass a "
                                "bundle directory measured with edgegate profile")
        if self.save_dtype not in ("float16", "float32"):
            raise TrainingError("save dtype must be float16 or float32")


def parse_range(text: str) -> tuple[float, float]:
    """'0,0.8' or '0.3' -> (lo, hi); a one-line BudgetError on anything else."""
    parts = [p for p in str(text).replace(":", ",").split(",") if p.strip()]
    try:
        vals = [float(p) for p in parts]
    except ValueError:
        vals = []
    if len(vals) == 1:
        vals = vals * 2
    if len(vals) != 2:
        raise BudgetError(f"bad target range {text!r}: pass LO,HI such as 0,0.8 (fractions of cost to skip)")
    return vals[0], vals[1]
