"""Budgets in the runtime: predictor -> exact planner -> mask; dense without a predictor."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edgegate.adaptation import ADAPTERS_FILE, save_adapters  # noqa: E402
from edgegate.errors import BudgetError, EdgegateError  # noqa: E402
from edgegate.export.core import export_bundle  # noqa: E402
from edgegate.gate_set import GATES_FILE, PREDICTOR_FILE, GateSpec  # noqa: E402
from edgegate.gated import load_gated  # noqa: E402
from edgegate.models.registry import resolve_model, tokenizer_path  # noqa: E402
from edgegate.predictor import save_predictor  # noqa: E402
from edgegate.runtimes.session import Session  # noqa: E402
from edgegate.tokenizer import WhisperTokenizer  # noqa: E402
from edgegate.transcriber import WhisperModel  # noqa: E402

from tiny import TINY_ADAPTERS, tiny_predictor, tiny_whisper  # noqa: E402


def clip(seconds=2.0, seed=0):
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(int(16000 * seconds))).astype(np.float32)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny gate set as `edgegate train-gates` writes it, its PyTorch GatedWhisper, and two bundles."""
    root = tmp_path_factory.mktemp("budget")
    trained = tiny_whisper()  # carries the skip adapters
    pred = tiny_predictor(len(trained.gate_names), seed=3)
    gates = root / "gates"
    gates.mkdir()
    save_adapters(trained, gates / ADAPTERS_FILE)
    save_predictor(pred, gates / PREDICTOR_FILE)
    spec = GateSpec(model="tiny", scope="both", adapt="skip-adapters", audio_ctx=24, adapter_rank=8)
    (gates / GATES_FILE).write_text(json.dumps(spec.to_dict()))
    tok = WhisperTokenizer.from_file(tokenizer_path(resolve_model("whisper-base")))
    reference = load_gated(gates, model=WhisperModel(tiny_whisper(adapters=()), tok, threads=1))
    gated = export_bundle(root / "gated", "cpu", tiny_whisper(adapters=()), gates=gates, budget=0.4,
                          precision="fp32", progress=False, log=lambda m: None)
    dense = export_bundle(root / "dense", "cpu", tiny_whisper(), precision="fp32", progress=False, log=lambda m: None)
    # the PyTorch reference decodes over the full vocabulary
    return reference, Session.load(gated, threads=1, full_vocab=True), Session.load(dense, threads=1, full_vocab=True)


def test_default_budget_comes_from_the_bundle(setup):
    reference, gated, _ = setup
    assert gated.has_predictor and gated.budget.value == 0.4 and gated.budget.scope == "both"
    assert gated.audio_ctx == 24  # the gate set's trimmed context travels with the bundle
    assert sorted(gated.adapters) == sorted(TINY_ADAPTERS)
    audio = clip()
    result = gated.transcribe_windows(audio, language="en")
    expected_mask = reference.plan(audio, "en", "transcribe", 0.4).mask
    assert result.mask == expected_mask.tolist()
    assert not all(result.mask)  # something was skipped
    costs = gated.costs()
    assert costs[~np.array(result.mask)].sum() / costs.sum() > 0.2
    assert result.tokens == reference.transcribe_windows(audio, language="en", budget=0.4).tokens
    assert result.timings["predictor"] > 0


@pytest.mark.parametrize("budget, language, task", [(0.7, None, "transcribe"), (0.25, "de", "translate")])
def test_per_call_budget_and_context(setup, budget, language, task):
    reference, gated, _ = setup
    audio = clip(seed=1)
    result = gated.transcribe_windows(audio, language=language, task=task, budget=budget)
    ref = reference.transcribe_windows(audio, language=language, task=task, budget=budget)
    assert result.mask == ref.mask
    assert result.tokens == ref.tokens


def test_zero_budget_is_dense_and_skips_the_predictor(setup):
    _, gated, _ = setup
    result = gated.transcribe_windows(clip(), language="en", budget=0.0)
    assert all(result.mask)


def test_no_predictor_runs_dense_and_refuses_budgets(setup):
    _, gated, dense = setup
    assert dense.budget is None and not dense.has_predictor
    assert all(dense.transcribe_windows(clip(), language="en").mask)
    with pytest.raises(BudgetError, match="--gates") as info:
        dense.transcribe_windows(clip(), language="en", budget=0.5)
    assert "\n" not in str(info.value)
    with pytest.raises(BudgetError, match="--gates"):
        Session.load(dense.bundle, budget=0.5)
    mask = [True] * len(dense.gate_names)
    mask[-1] = False
    assert dense.transcribe_windows(clip(), language="en", mask=mask).mask == mask  # explicit masks always work


def test_bad_requests(setup):
    _, gated, _ = setup
    n = len(gated.gate_names)
    with pytest.raises(BudgetError, match="either mask or budget"):
        gated.transcribe_windows(clip(), mask=[True] * n, budget=0.5)
    with pytest.raises(BudgetError, match="one value per gateable module"):
        gated.transcribe_windows(clip(), mask=[True] * (n - 1))
    with pytest.raises(BudgetError, match=r"\[0, 1\)"):
        gated.transcribe_windows(clip(), budget=1.5)
    with pytest.raises(EdgegateError, match="unknown task"):
        gated.transcribe_windows(clip(), task="summarize")
    with pytest.raises(EdgegateError, match="unknown language"):
        gated.transcribe_windows(clip(), language="klingon")
