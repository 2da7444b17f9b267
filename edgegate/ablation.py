"""Per-module ablation: how much the distillation loss rises when one module alone is skipped.

Why it exists: the hard straight-through Gumbel gradient is a first-order guess at what removing a
module costs. On whisper-base it ranked ``encoder.3.attn`` as the cheapest module to drop while
skipping it alone takes the teacher-forced accuracy to ~0.1, and 750 steps did not correct it
(docs/training.md). Measuring each module's real damage once, before training, and seeding the
predictor's keep/skip margins with the resulting ranking starts training from a sensible order;
training then only has to learn the context- and budget-dependent corrections.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

LossFn = Callable[[object, torch.Tensor], float]


def module_damage(loss_fn: LossFn, examples: Sequence, in_scope: np.ndarray, progress: bool = False) -> np.ndarray:
    """Mean loss increase over ``examples`` when each in-scope module alone is skipped.

    ``loss_fn(example, keep_gates)`` returns the (distillation) loss of one utterance under a
    (L,) float keep-gate vector. Out-of-scope entries of the result are 0. Loss increases are
    clipped at 0: a module whose removal happens to help is as cheap to skip as one that is free.
    """
    in_scope = np.asarray(in_scope, dtype=bool)
    L = len(in_scope)
    damage = np.zeros(L)
    it = examples
    if progress:
        from tqdm import tqdm

        it = tqdm(examples, desc="module ablation", unit="utt", dynamic_ncols=True)
    with torch.no_grad():
        for ex in it:
            ones = torch.ones(L)
            dense = loss_fn(ex, ones)
            for i in np.flatnonzero(in_scope):
                g = ones.clone()
                g[i] = 0.0
                damage[i] += max(loss_fn(ex, g) - dense, 0.0)
    return damage / max(len(examples), 1)


def ranking_margins(damage: np.ndarray, costs: np.ndarray, in_scope: np.ndarray,
                    lo: float = 0.5, hi: float = 4.0) -> np.ndarray:
    """Keep-minus-skip logit margins (L,) ordered by damage per unit of cost saved.

    The module whose removal hurts least per FLOP gets ``lo`` (dropped first), the most harmful
    per FLOP gets ``hi``; margins are evenly spaced by rank so that no single measurement's scale
    dominates. Out-of-scope modules get ``hi`` (they are never planned anyway).
    """
    in_scope = np.asarray(in_scope, dtype=bool)
    costs = np.asarray(costs, dtype=np.float64)
    margins = np.full(len(in_scope), hi)
    idx = np.flatnonzero(in_scope)
    if len(idx) == 0:
        return margins
    share = costs[idx] / max(costs[idx].sum(), 1e-30)
    priority = np.maximum(damage[idx], 1e-6) / np.maximum(share, 1e-12)
    order = np.argsort(priority, kind="stable")
    ranks = np.empty(len(idx))
    ranks[order] = np.arange(len(idx))
    margins[idx] = lo + (hi - lo) * ranks / max(len(idx) - 1, 1)
    return margins
