"""The gate predictor: context + budget -> per-module keep/skip logits (Someki et al., ICLR 2025).

One forward pass per utterance, before the speech model runs. Inputs are the time-averaged
log-mel statistics, the language and task tokens, and the device budget, so one predictor
serves every budget. Training uses hard straight-through Gumbel-Softmax gates and the
paper's |.| + (.)^2 sparsity penalty; at run time the budget planner
(:mod:`edgegate.budget`) turns :meth:`GatePredictor.keep_scores` into an exact mask.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgegate.errors import EdgegateError, ModelError

FORMAT = "edgegate-gate-predictor"
SCHEMA_VERSION = 1
SUFFIX = ".safetensors"
DEFAULT_FILENAME = "predictor" + SUFFIX

# Budget features: the raw value plus sin/cos at a few frequencies, so a small MLP can place
# sharp thresholds anywhere in [0, 1) instead of only a linear ramp.
N_BUDGET_FREQS = 4
KEEP, SKIP = 1, 0


@dataclass
class PredictorConfig:
    """Shape of a :class:`GatePredictor`.

    ``n_languages`` counts the known language codes; the language embedding has one more row
    because index 0 means "unknown / auto-detect". 99 is Whisper's multilingual vocabulary
    (large-v3 has 100).
    """

    n_modules: int
    n_mels: int = 80
    n_languages: int = 99
    n_tasks: int = 2  # 0 transcribe, 1 translate
    hidden: int = 128
    embed: int = 32

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise EdgegateError(f"predictor config {f.name} must be a positive integer: got {v!r}")

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PredictorConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ModelError(
                f"predictor config has unknown keys {', '.join(unknown)}: it was written by a newer "
                "edgegate; upgrade edgegate"
            )
        return cls(**d)


def budget_features(budget: torch.Tensor) -> torch.Tensor:
    """(B,) budget -> (B, 1 + 2 * N_BUDGET_FREQS) features."""
    b = budget.unsqueeze(-1)
    freqs = math.pi * torch.arange(1, N_BUDGET_FREQS + 1, dtype=b.dtype, device=b.device)
    return torch.cat([b, torch.sin(b * freqs), torch.cos(b * freqs)], dim=-1)


def mel_stats(log_mel: torch.Tensor) -> torch.Tensor:
    """(B, n_mels, T) or (n_mels, T) log-mel -> (B, 2 * n_mels): per-bin mean then population std.

    Slice away Whisper's 30-s padding before calling: silence frames would swamp the stats.
    The numpy equivalent is ``np.concatenate([x.mean(-1), x.std(-1)], -1)`` (ddof=0).
    """
    if log_mel.dim() == 2:
        log_mel = log_mel.unsqueeze(0)
    if log_mel.dim() != 3 or log_mel.shape[-1] < 1:
        raise EdgegateError(
            f"log-mel must have shape (batch, n_mels, frames) with frames >= 1: got {tuple(log_mel.shape)}"
        )
    return torch.cat([log_mel.mean(-1), log_mel.std(-1, correction=0)], dim=-1)


class GatePredictor(nn.Module):
    """Context MLP: (mel stats, language, task, budget) -> logits (B, n_modules, 2); index 1 = keep."""

    def __init__(self, config: PredictorConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.stats_norm = nn.LayerNorm(2 * c.n_mels)
        self.lang_embed = nn.Embedding(c.n_languages + 1, c.embed)
        self.task_embed = nn.Embedding(c.n_tasks, c.embed)
        in_dim = 2 * c.n_mels + 2 * c.embed + 1 + 2 * N_BUDGET_FREQS
        self.fc1 = nn.Linear(in_dim, c.hidden)
        self.fc2 = nn.Linear(c.hidden, 2 * c.n_modules)
        # Start dense: a positive keep-minus-skip margin keeps ~95% of modules in the first hard
        # samples, so training begins from the working model. Small (not zero) weights let the
        # context still move the logits and let gradients reach fc1.
        with torch.no_grad():
            self.fc2.weight.mul_(0.1)
            bias = self.fc2.bias.view(c.n_modules, 2)
            bias[:, KEEP] = 1.5
            bias[:, SKIP] = -1.5

    def forward(
        self, stats: torch.Tensor, lang: torch.Tensor, task: torch.Tensor, budget: torch.Tensor
    ) -> torch.Tensor:
        c = self.config
        if stats.dim() != 2 or stats.shape[-1] != 2 * c.n_mels:
            raise EdgegateError(
                f"stats must have shape (batch, {2 * c.n_mels}) (mean and std of {c.n_mels} mel bins): "
                f"got {tuple(stats.shape)}; compute them with edgegate.predictor.mel_stats"
            )
        x = torch.cat(
            [
                self.stats_norm(stats),
                self.lang_embed(lang),
                self.task_embed(task),
                budget_features(budget.to(stats.dtype)),
            ],
            dim=-1,
        )
        h = F.gelu(self.fc1(x))
        return self.fc2(h).view(-1, c.n_modules, 2)

    def keep_scores(
        self, stats: torch.Tensor, lang: torch.Tensor, task: torch.Tensor, budget: torch.Tensor
    ) -> torch.Tensor:
        """(B, n_modules) keep probabilities: the ranking the budget planner consumes."""
        return torch.softmax(self(stats, lang, task, budget), dim=-1)[..., KEEP]


def seed_margins(pred: GatePredictor, margins: torch.Tensor | list[float]) -> None:
    """Set the output bias so that keep-minus-skip logits start at ``margins`` (n_modules,).

    The context weights stay small, so the initial ranking (what the planner consumes) is the
    seeded one; see :mod:`edgegate.ablation` for where the margins come from.
    """
    m = torch.as_tensor(margins, dtype=pred.fc2.bias.dtype)
    if m.shape != (pred.config.n_modules,):
        raise EdgegateError(f"margins must have shape ({pred.config.n_modules},): got {tuple(m.shape)}")
    with torch.no_grad():
        bias = pred.fc2.bias.view(pred.config.n_modules, 2)
        bias[:, KEEP] = m / 2
        bias[:, SKIP] = -m / 2


def n_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def gumbel_gates(
    logits: torch.Tensor, tau: float, hard: bool = True, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Sample keep-gates (B, n_modules) from (B, n_modules, 2) logits with Gumbel-Softmax.

    ``hard=True`` returns exactly 0/1 in the forward pass with the soft sample's gradient
    (straight-through); ``hard=False`` returns the soft keep probability of the sample.
    """
    if not tau > 0:
        raise EdgegateError(f"Gumbel temperature must be > 0: got {tau!r}")
    if logits.shape[-1] != 2:
        raise EdgegateError(
            f"gate logits must end in a (skip, keep) axis of size 2: got {tuple(logits.shape)}"
        )
    # Exponential(1) -> Gumbel(0, 1) as in torch's gumbel_softmax, but with a generator hook.
    expo = torch.empty_like(logits).exponential_(generator=generator)
    soft = torch.softmax((logits - expo.log()) / tau, dim=-1)[..., KEEP]
    if not hard:
        return soft
    # torch's own hard path computes y_hard - y_soft + y_soft, which can land one ulp away from
    # 1.0; adding an exact zero (soft - soft) keeps the forward values bit-exact 0/1.
    hard_gate = (soft >= 0.5).to(soft.dtype)
    return hard_gate + (soft - soft.detach())


def temperature(step: int, total: int, start: float = 5.0, end: float = 0.5) -> float:
    """Exponentially annealed Gumbel temperature: ``start`` at step 0, ``end`` from step ``total`` on."""
    if not (start > 0 and end > 0):
        raise EdgegateError(f"temperatures must be > 0: got start={start!r}, end={end!r}")
    if total <= 0:
        return float(end)
    frac = min(max(step / total, 0.0), 1.0)
    return float(start * (end / start) ** frac)


def sparsity_loss(
    gates: torch.Tensor,
    costs: torch.Tensor,
    target: torch.Tensor | float,
    alpha: float = 1.0,
    scope_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paper's sparsity penalty on cost-weighted skipped fraction.

    ``gates`` (B, L) are keep-gates, ``costs`` (L,), ``target`` a float or (B,) per-item target,
    ``scope_mask`` (L,) bool selects the gateable modules (default all). Returns
    ``(alpha * mean(|s_hat - s| + (s_hat - s)^2), s_hat)`` with ``s_hat`` of shape (B,).
    The squared term is what made the paper hit its targets; |.| alone undershot.
    """
    if gates.dim() != 2:
        raise EdgegateError(f"gates must have shape (batch, n_modules): got {tuple(gates.shape)}")
    L = gates.shape[-1]
    costs = torch.as_tensor(costs, dtype=gates.dtype, device=gates.device)
    if costs.shape != (L,):
        raise EdgegateError(f"costs must have shape ({L},) to match the gates: got {tuple(costs.shape)}")
    if scope_mask is not None:
        scope_mask = torch.as_tensor(scope_mask, dtype=torch.bool, device=gates.device)
        if scope_mask.shape != (L,):
            raise EdgegateError(f"scope_mask must have shape ({L},): got {tuple(scope_mask.shape)}")
        costs = costs * scope_mask.to(costs.dtype)
    total = costs.sum()
    if not total > 0:
        raise EdgegateError("in-scope modules have zero total cost: pass positive costs or a wider scope")
    s_hat = ((1.0 - gates) * costs).sum(-1) / total
    target = torch.as_tensor(target, dtype=gates.dtype, device=gates.device)
    diff = s_hat - target
    loss = alpha * (diff.abs() + diff.pow(2)).mean()
    return loss, s_hat


def _resolve_path(path: str | Path) -> Path:
    p = Path(path)
    if p.is_dir():
        return p / DEFAULT_FILENAME
    if p.suffix != SUFFIX:
        return p.with_name(p.name + SUFFIX)
    return p


def save_predictor(pred: GatePredictor, path: str | Path, extra_meta: dict[str, Any] | None = None) -> Path:
    """Write ``pred`` as one safetensors file; config and ``extra_meta`` go in its JSON metadata.

    ``path`` may be a directory (writes ``predictor.safetensors`` in it), a ``.safetensors`` file
    or a path without extension. Returns the file written. No pickle anywhere.
    """
    from safetensors.torch import save_file

    try:
        meta_json = json.dumps(extra_meta or {}, sort_keys=True)
    except (TypeError, ValueError) as e:
        raise EdgegateError(f"predictor metadata must be JSON-serialisable: {e}") from None
    out = _resolve_path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in pred.state_dict().items()}
    metadata = {
        "format": FORMAT,
        "schema_version": str(SCHEMA_VERSION),
        "config": json.dumps(pred.config.to_dict(), sort_keys=True),
        "meta": meta_json,
    }
    save_file(tensors, str(out), metadata=metadata)
    return out


def load_predictor(path: str | Path) -> tuple[GatePredictor, dict[str, Any]]:
    """Load a predictor written by :func:`save_predictor`; returns ``(predictor in eval mode, meta)``."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    p = _resolve_path(path)
    if not p.is_file():
        raise ModelError(f"gate predictor not found at {p}: pass the file written by save_predictor")
    try:
        with safe_open(str(p), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(p))
    except Exception as e:  # safetensors raises several types for corrupt headers
        raise ModelError(f"cannot read gate predictor {p} ({e}): re-export or re-train it") from None
    if metadata.get("format") != FORMAT:
        raise ModelError(f"{p} is not an edgegate gate predictor (format {metadata.get('format')!r})")
    version = int(metadata.get("schema_version", "0"))
    if version > SCHEMA_VERSION:
        raise ModelError(f"{p} has predictor schema {version}, newer than {SCHEMA_VERSION}: upgrade edgegate")
    try:
        config = PredictorConfig.from_dict(json.loads(metadata["config"]))
        meta = json.loads(metadata.get("meta", "{}"))
    except (KeyError, json.JSONDecodeError) as e:
        raise ModelError(f"{p} has broken predictor metadata ({e}): re-export or re-train it") from None
    pred = GatePredictor(config)
    try:
        pred.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise ModelError(f"{p} weights do not match its config ({first}): re-export or re-train it") from None
    pred.eval()
    return pred, meta
