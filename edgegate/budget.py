"""Sparsity budgets and the exact budget planner.

A budget is the fraction of *gateable cost to skip*, in [0, 1): 0 runs the model dense,
0.5 skips half of the in-scope cost. Cost is whatever the device profile counts (FLOPs by
default, measured milliseconds after ``edgegate profile``).

The predictor only ranks modules; this planner turns its keep scores into a binary mask that
meets the budget exactly, so a device never runs more than its profile allows whatever the
predictor learned. numpy only: the torch-free runtime imports this module.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgegate.errors import BudgetError

SCOPES = ("encoder", "decoder", "both")
COST_UNITS = ("flops", "ms")

# Float sums over a few dozen costs differ from the exact value by ~1e-15 relative; this
# slack only absorbs that rounding and never lets a plan keep measurably more than allowed.
REL_EPS = 1e-9


def validate_budget(value: Any) -> float:
    """Return ``value`` as a float in [0, 1) or raise :class:`BudgetError`."""
    try:
        b = float(value)
    except (TypeError, ValueError):
        raise BudgetError(
            f"budget must be in [0, 1): got {value!r} (0 = dense, 0.5 = skip half the gateable cost)"
        ) from None
    if math.isnan(b) or not 0.0 <= b < 1.0:
        raise BudgetError(
            f"budget must be in [0, 1): got {value!r} (0 = dense, 0.5 = skip half the gateable cost)"
        )
    return b


def validate_scope(scope: Any) -> str:
    if scope not in SCOPES:
        raise BudgetError(f"unknown budget scope {scope!r}: use one of {', '.join(SCOPES)}")
    return scope


def module_scope(name: str) -> str:
    """The scope of a module name: the prefix before the first dot."""
    return name.split(".", 1)[0]


def modules_in_scope(names: Sequence[str], scope: str) -> np.ndarray:
    """Boolean array, True where ``names[i]`` is gateable under ``scope``."""
    validate_scope(scope)
    if scope == "both":
        return np.ones(len(names), dtype=bool)
    return np.array([module_scope(n) == scope for n in names], dtype=bool)


def _as_vector(x: Any, n: int, what: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.shape != (n,):
        raise BudgetError(f"{what} must have one value per module, shape ({n},): got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise BudgetError(f"{what} contain NaN or infinity: pass finite values for every module")
    return arr


def _check_names(names: Sequence[str]) -> list[str]:
    names = list(names)
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise BudgetError(f"module names must be unique: {', '.join(dup)} repeated; fix the module list")
    return names


def keep_mask(
    names: Sequence[str],
    costs: np.ndarray,
    keep_scores: np.ndarray,
    budget: float,
    scope: str = "both",
    pinned: Collection[str] = (),
) -> np.ndarray:
    """Binary keep-mask (True = run the module) that skips at least ``budget`` of in-scope cost.

    Out-of-scope modules are always kept and do not count toward the budget; pinned modules
    are always kept and do count. The rest are visited by descending keep score (ties: lower
    cost first, then execution order) and kept while they fit in the remaining allowance of
    ``(1 - budget) * C`` kept cost. A module that does not fit is skipped and the walk goes
    on, so cheaper, lower-scoring modules can still use the leftover allowance.
    """
    names = _check_names(names)
    n = len(names)
    costs = _as_vector(costs, n, "costs")
    scores = _as_vector(keep_scores, n, "keep scores")
    if np.any(costs < 0):
        bad = [names[i] for i in np.flatnonzero(costs < 0)]
        raise BudgetError(f"module costs must be >= 0: {', '.join(bad)} negative; re-run the cost profile")
    b = validate_budget(budget)
    in_scope = modules_in_scope(names, scope)

    index = {name: i for i, name in enumerate(names)}
    unknown = sorted(set(pinned) - index.keys())
    if unknown:
        raise BudgetError(
            f"pinned module(s) {', '.join(unknown)} not in the model: pin names from its module list"
        )
    is_pinned = np.zeros(n, dtype=bool)
    is_pinned[[index[p] for p in pinned]] = True

    mask = np.ones(n, dtype=bool)
    if b == 0.0:
        return mask

    total = float(costs[in_scope].sum())
    tol = REL_EPS * total
    allowance = (1.0 - b) * total
    kept = float(costs[in_scope & is_pinned].sum())
    if kept > allowance + tol:
        pinned_in_scope = [names[i] for i in np.flatnonzero(in_scope & is_pinned)]
        max_budget = 1.0 - kept / total
        raise BudgetError(
            f"pinned modules {', '.join(pinned_in_scope)} alone exceed budget {b:g} "
            f"(scope {scope}): the largest achievable budget is {max_budget:.4f}; "
            "lower the budget or unpin modules"
        )

    candidates = np.flatnonzero(in_scope & ~is_pinned)
    # lexsort sorts by the last key first: score descending, then cost, then execution order.
    order = candidates[np.lexsort((candidates, costs[candidates], -scores[candidates]))]
    for i in order:
        c = float(costs[i])
        if kept + c <= allowance + tol:
            kept += c
        else:
            mask[i] = False
    return mask


def skipped_fraction(mask: np.ndarray, costs: np.ndarray, names: Sequence[str], scope: str = "both") -> float:
    """Cost-weighted fraction of in-scope modules that ``mask`` skips (0.0 if the scope costs nothing)."""
    names = list(names)
    n = len(names)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != (n,):
        raise BudgetError(f"mask must have one value per module, shape ({n},): got shape {mask.shape}")
    costs = _as_vector(costs, n, "costs")
    in_scope = modules_in_scope(names, scope)
    total = float(costs[in_scope].sum())
    if total <= 0.0:
        return 0.0
    return float(costs[in_scope & ~mask].sum()) / total


@dataclass(frozen=True)
class Budget:
    """A device budget: skip ``value`` of the ``scope``'s cost, counted in ``cost_unit``."""

    value: float = 0.0
    scope: str = "both"
    cost_unit: str = "flops"
    pinned: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "value", validate_budget(self.value))
        validate_scope(self.scope)
        if self.cost_unit not in COST_UNITS:
            raise BudgetError(f"unknown cost unit {self.cost_unit!r}: use one of {', '.join(COST_UNITS)}")
        if isinstance(self.pinned, str):
            raise BudgetError(f"pinned must be a list of module names, not the string {self.pinned!r}")
        object.__setattr__(self, "pinned", tuple(self.pinned))

    @classmethod
    def from_profile(cls, profile: Mapping[str, Any]) -> Budget:
        """Read a budget from a device profile.

        Accepts ``{"budget": 0.5, "scope": ..., "cost_unit": ..., "pinned": [...]}`` or the same
        keys nested under ``"budget"`` (with the fraction as ``"value"``); other keys are ignored
        so a whole profile can be passed.
        """
        if not isinstance(profile, Mapping):
            raise BudgetError(f"device profile must be a JSON object: got {type(profile).__name__}")
        spec = profile.get("budget", profile)
        if isinstance(spec, Mapping):
            value = spec.get("value", 0.0)
            src = spec
        else:
            value = spec
            src = profile
        return cls(
            value=value,
            scope=src.get("scope", "both"),
            cost_unit=src.get("cost_unit", "flops"),
            pinned=tuple(src.get("pinned", ())),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "scope": self.scope,
            "cost_unit": self.cost_unit,
            "pinned": list(self.pinned),
        }

    def keep_mask(self, names: Sequence[str], costs: np.ndarray, keep_scores: np.ndarray) -> np.ndarray:
        """:func:`keep_mask` with this budget's value, scope and pinned modules."""
        return keep_mask(names, costs, keep_scores, self.value, self.scope, self.pinned)
