import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgegate.budget import (
    SCOPES,
    Budget,
    keep_mask,
    modules_in_scope,
    skipped_fraction,
    validate_budget,
)
from edgegate.errors import BudgetError, EdgegateError

EPS = 1e-9


def whisper_names(n_enc: int, n_dec: int) -> list[str]:
    names = []
    for i in range(n_enc):
        names += [f"encoder.{i}.attn", f"encoder.{i}.mlp"]
    for i in range(n_dec):
        names += [f"decoder.{i}.self_attn", f"decoder.{i}.cross_attn", f"decoder.{i}.mlp"]
    return names


BASE = whisper_names(6, 6)


def kept_cost(mask, costs, in_scope):
    return float(costs[in_scope & mask].sum())


def test_whisper_base_has_30_modules_split_by_scope():
    assert len(BASE) == 30
    assert modules_in_scope(BASE, "encoder").sum() == 12
    assert modules_in_scope(BASE, "decoder").sum() == 18
    assert modules_in_scope(BASE, "both").all()
    assert not (modules_in_scope(BASE, "encoder") & modules_in_scope(BASE, "decoder")).any()


def test_planner_properties_over_random_cases():
    rng = np.random.default_rng(1234)
    n_infeasible = 0
    for _ in range(300):
        names = whisper_names(int(rng.integers(0, 5)), int(rng.integers(0, 5)))
        if not names:
            continue
        n = len(names)
        costs = rng.lognormal(0.0, 1.0, size=n)
        costs[rng.random(n) < 0.1] = 0.0  # zero-cost modules must not break anything
        scores = rng.random(n)
        if rng.random() < 0.3:
            scores = np.round(scores, 1)  # many ties exercise the deterministic tie-break
        scope = SCOPES[int(rng.integers(0, 3))]
        pinned = [nm for nm in names if rng.random() < 0.1]
        in_scope = modules_in_scope(names, scope)
        total = float(costs[in_scope].sum())

        full = keep_mask(names, costs, scores, 0.0, scope, pinned)
        assert full.all(), "budget 0 must keep every module"

        budgets = np.sort(np.concatenate([[0.0], rng.random(6), [0.999]]))
        prev_kept = math.inf
        pinned_idx = [names.index(p) for p in pinned]
        for b in budgets:
            pinned_cost = float(costs[pinned_idx][in_scope[pinned_idx]].sum())
            try:
                mask = keep_mask(names, costs, scores, float(b), scope, pinned)
            except BudgetError as e:
                # Only the pinned modules may make a budget infeasible.
                assert pinned_cost > (1 - b) * total * (1 + EPS)
                assert "pinned" in str(e) and "largest achievable budget" in str(e)
                n_infeasible += 1
                prev_kept = -math.inf  # higher budgets are infeasible as well
                continue
            assert prev_kept != -math.inf, "a higher budget became feasible again"
            assert mask.dtype == bool and mask.shape == (n,)
            kept = kept_cost(mask, costs, in_scope)
            assert kept <= (1 - b) * total + EPS * total
            if total > 0:  # an empty or zero-cost scope has nothing to skip and reports 0
                assert skipped_fraction(mask, costs, names, scope) >= b - EPS
            assert mask[pinned_idx].all()
            assert mask[~in_scope].all()
            assert kept <= prev_kept + EPS * total, "a higher budget kept more cost"
            prev_kept = kept
            # Deterministic: the same inputs always give the same plan.
            assert np.array_equal(mask, keep_mask(names, costs, scores, float(b), scope, pinned))
    assert n_infeasible > 0, "the random cases should include some infeasible pinned sets"


def test_highest_scores_kept_first():
    names = ["decoder.0.self_attn", "decoder.0.cross_attn", "decoder.0.mlp", "decoder.1.mlp"]
    mask = keep_mask(names, np.ones(4), np.array([0.1, 0.9, 0.5, 0.7]), 0.5)
    assert mask.tolist() == [False, True, False, True]


def test_skipped_module_does_not_stop_cheaper_later_ones():
    names = ["encoder.0.attn", "encoder.0.mlp", "encoder.1.attn"]
    # Allowance is 5.5: the top-scored module (10) cannot fit, the next two (1 + 2) can.
    mask = keep_mask(names, np.array([10.0, 1.0, 2.0]), np.array([0.9, 0.5, 0.1]), 0.5)
    assert mask.tolist() == [False, True, True]


def test_ties_prefer_lower_cost_then_execution_order():
    names = ["encoder.0.attn", "encoder.0.mlp", "encoder.1.attn", "encoder.1.mlp"]
    costs = np.array([2.0, 1.0, 1.0, 1.0])
    mask = keep_mask(names, costs, np.full(4, 0.5), 0.6)  # allowance 2.0: two unit modules
    assert mask.tolist() == [False, True, True, False]


def test_exact_fraction_is_not_lost_to_rounding():
    names = whisper_names(0, 1)
    # (1 - 1/3) * 3 is not exactly 2.0 in floating point; two of three must still be kept.
    mask = keep_mask(names, np.ones(3), np.array([0.3, 0.2, 0.1]), 1 / 3)
    assert mask.sum() == 2


def test_out_of_scope_modules_do_not_count():
    costs = np.ones(30)
    mask = keep_mask(BASE, costs, np.linspace(0, 1, 30), 0.5, scope="decoder")
    dec = modules_in_scope(BASE, "decoder")
    assert mask[~dec].all()
    assert mask[dec].sum() == 9
    assert skipped_fraction(mask, costs, BASE, "decoder") == pytest.approx(0.5)
    assert skipped_fraction(mask, costs, BASE, "both") == pytest.approx(9 / 30)


def test_infeasible_pinned_names_modules_and_max_budget():
    names = whisper_names(1, 0)
    with pytest.raises(BudgetError, match=r"encoder\.0\.mlp.*largest achievable budget is 0\.2500"):
        keep_mask(names, np.array([1.0, 3.0]), np.array([0.5, 0.5]), 0.5, pinned=["encoder.0.mlp"])


def test_pinned_outside_scope_is_free():
    names = whisper_names(1, 1)
    costs = np.ones(5)
    mask = keep_mask(names, costs, np.zeros(5), 0.9, scope="decoder", pinned=["encoder.0.attn"])
    assert mask[0] and mask[1]


@pytest.mark.parametrize("bad", [1.0, 1.5, -0.1, float("nan"), float("inf"), "abc", None])
def test_bad_budget_values(bad):
    with pytest.raises(BudgetError, match=r"budget must be in \[0, 1\)"):
        keep_mask(BASE, np.ones(30), np.ones(30), bad)
    with pytest.raises(BudgetError):
        validate_budget(bad)


def test_budget_error_is_one_line_and_user_facing():
    with pytest.raises(EdgegateError) as e:
        validate_budget(2)
    assert "\n" not in str(e.value) and "0 = dense" in str(e.value)


def test_unknown_scope_and_pinned_and_shapes():
    with pytest.raises(BudgetError, match="encoder, decoder, both"):
        keep_mask(BASE, np.ones(30), np.ones(30), 0.3, scope="decoders")
    with pytest.raises(BudgetError, match="decoder.9.mlp"):
        keep_mask(BASE, np.ones(30), np.ones(30), 0.3, pinned=["decoder.9.mlp"])
    with pytest.raises(BudgetError, match="shape"):
        keep_mask(BASE, np.ones(29), np.ones(30), 0.3)
    with pytest.raises(BudgetError, match="NaN"):
        keep_mask(BASE, np.ones(30), np.full(30, np.nan), 0.3)
    with pytest.raises(BudgetError, match=">= 0"):
        keep_mask(BASE, -np.ones(30), np.ones(30), 0.3)
    with pytest.raises(BudgetError, match="unique"):
        keep_mask(["encoder.0.attn"] * 2, np.ones(2), np.ones(2), 0.3)


def test_budget_dataclass_from_profile():
    b = Budget.from_profile({"name": "pixel8", "budget": 0.4, "scope": "decoder", "cost_unit": "ms"})
    assert (b.value, b.scope, b.cost_unit, b.pinned) == (0.4, "decoder", "ms", ())
    nested = Budget.from_profile({"budget": {"value": 0.25, "pinned": ["decoder.0.mlp"]}})
    assert nested == Budget(0.25, "both", "flops", ("decoder.0.mlp",))
    assert Budget.from_profile(nested.to_dict()) == nested
    with pytest.raises(BudgetError):
        Budget.from_profile({"budget": 1.2})
    with pytest.raises(BudgetError, match="cost unit"):
        Budget(0.1, cost_unit="joules")
    mask = Budget(0.5, "encoder").keep_mask(BASE, np.ones(30), np.arange(30.0))
    assert skipped_fraction(mask, np.ones(30), BASE, "encoder") == 0.5


def test_budget_module_is_torch_free():
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    code = "import sys, edgegate.budget; assert 'torch' not in sys.modules, 'budget imported torch'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, env=env)
