import math

import numpy as np
import pytest
import torch

from edgegate.errors import EdgegateError, ModelError
from edgegate.predictor import (
    GatePredictor,
    PredictorConfig,
    gumbel_gates,
    load_predictor,
    mel_stats,
    n_parameters,
    save_predictor,
    sparsity_loss,
    temperature,
)

WHISPER_BASE_PARAMS = 72.6e6


def inputs(cfg: PredictorConfig, batch: int, gen: torch.Generator, budget=None):
    stats = torch.randn(batch, 2 * cfg.n_mels, generator=gen)
    lang = torch.randint(0, cfg.n_languages + 1, (batch,), generator=gen)
    task = torch.randint(0, cfg.n_tasks, (batch,), generator=gen)
    if budget is None:
        budget = torch.rand(batch, generator=gen)
    elif not torch.is_tensor(budget):
        budget = torch.full((batch,), float(budget))
    return stats, lang, task, budget


def test_parameter_count_is_tiny_next_to_whisper_base():
    pred = GatePredictor(PredictorConfig(n_modules=30))
    n = n_parameters(pred)
    assert n < 0.01 * WHISPER_BASE_PARAMS
    assert n < 150_000
    print(f"gate predictor parameters (30 modules): {n}")


def test_starts_dense_and_shapes():
    cfg = PredictorConfig(n_modules=30)
    pred = GatePredictor(cfg)
    gen = torch.Generator().manual_seed(0)
    x = inputs(cfg, 16, gen)
    logits = pred(*x)
    assert logits.shape == (16, 30, 2)
    assert (logits[..., 1] > logits[..., 0]).all()
    scores = pred.keep_scores(*x)
    assert scores.shape == (16, 30)
    assert ((scores > 0.5) & (scores < 1)).all()
    with pytest.raises(EdgegateError, match="mel_stats"):
        pred(torch.zeros(16, 80), *x[1:])


def test_config_validation():
    with pytest.raises(EdgegateError, match="n_modules"):
        PredictorConfig(n_modules=0)
    with pytest.raises(ModelError, match="unknown keys"):
        PredictorConfig.from_dict({"n_modules": 3, "colour": 1})


def test_mel_stats_matches_numpy():
    x = torch.randn(2, 80, 37, dtype=torch.float64)
    ref = np.concatenate([x.numpy().mean(-1), x.numpy().std(-1)], -1)
    np.testing.assert_allclose(mel_stats(x).numpy(), ref, rtol=1e-12)
    assert mel_stats(x[0]).shape == (1, 160)


def test_gates_are_exactly_binary():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(64, 30, 2, generator=gen) * 3
    for tau in (5.0, 1.0, 0.5, 0.1):
        gates = gumbel_gates(logits.requires_grad_(), tau, generator=gen)
        assert gates.shape == (64, 30)
        assert ((gates == 0.0) | (gates == 1.0)).all()
    soft = gumbel_gates(logits, 1.0, hard=False, generator=gen)
    assert ((soft > 0) & (soft < 1)).all()
    with pytest.raises(EdgegateError):
        gumbel_gates(logits, 0.0)


def test_hard_gate_frequency_follows_keep_probability():
    p_keep = 0.3
    logits = torch.tensor([[[0.0, math.log(p_keep / (1 - p_keep))]]]).expand(20000, 1, 2)
    gates = gumbel_gates(logits, 0.7, generator=torch.Generator().manual_seed(2))
    assert gates.mean().item() == pytest.approx(p_keep, abs=0.02)


def test_gradients_reach_first_layer_through_hard_gates():
    cfg = PredictorConfig(n_modules=30)
    torch.manual_seed(0)
    pred = GatePredictor(cfg)
    gen = torch.Generator().manual_seed(3)
    gates = gumbel_gates(pred(*inputs(cfg, 32, gen)), 1.0, generator=gen)
    weights = torch.randn(30, generator=gen)
    (gates * weights).sum().backward()
    for p in (pred.fc1.weight, pred.lang_embed.weight, pred.stats_norm.weight):
        assert p.grad is not None and torch.isfinite(p.grad).all()
        assert p.grad.abs().sum() > 0


def test_temperature_anneals_exponentially():
    assert temperature(0, 100) == pytest.approx(5.0)
    assert temperature(100, 100) == pytest.approx(0.5)
    assert temperature(500, 100) == pytest.approx(0.5)
    assert temperature(50, 100) == pytest.approx(math.sqrt(5.0 * 0.5))
    taus = [temperature(s, 100) for s in range(101)]
    assert all(a > b for a, b in zip(taus, taus[1:], strict=False))


def test_sparsity_loss_values_and_scope():
    gates = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    costs = torch.tensor([1.0, 1.0, 2.0, 4.0])
    loss, s_hat = sparsity_loss(gates, costs, 0.5, alpha=2.0)
    torch.testing.assert_close(s_hat, torch.tensor([3 / 8, 0.0]))
    d = s_hat - 0.5
    torch.testing.assert_close(loss, 2.0 * (d.abs() + d**2).mean())
    scope = torch.tensor([True, True, True, False])
    _, s_scope = sparsity_loss(gates, costs, torch.tensor([0.5, 0.2]), scope_mask=scope)
    torch.testing.assert_close(s_scope, torch.tensor([3 / 4, 0.0]))
    with pytest.raises(EdgegateError, match="shape"):
        sparsity_loss(gates, costs[:3], 0.5)
    with pytest.raises(EdgegateError, match="zero total cost"):
        sparsity_loss(gates, costs, 0.5, scope_mask=torch.zeros(4, dtype=torch.bool))


def test_sparsity_loss_alone_reaches_budget_targets():
    """One predictor trained across sampled targets hits each target it is given as budget."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    cfg = PredictorConfig(n_modules=12, n_mels=16, n_languages=4)
    pred = GatePredictor(cfg)
    costs = torch.rand(12, generator=gen) * 0.9 + 0.1
    steps, batch = 400, 64
    opt = torch.optim.Adam(pred.parameters(), lr=1e-2)
    # Decaying the step size settles the stochastic gates; a constant rate keeps them hopping.
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for step in range(steps):
        target = torch.rand(batch, generator=gen) * 0.8 + 0.1
        gates = gumbel_gates(pred(*inputs(cfg, batch, gen, target)), temperature(step, steps), generator=gen)
        loss, _ = sparsity_loss(gates, costs, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()

    pred.eval()
    with torch.no_grad():
        for target in (0.2, 0.5, 0.8):
            gates = gumbel_gates(pred(*inputs(cfg, 512, gen, target)), 0.5, generator=gen)
            _, s_hat = sparsity_loss(gates, costs, target)
            assert s_hat.mean().item() == pytest.approx(target, abs=0.05), f"target {target}"


def test_save_load_round_trip(tmp_path):
    cfg = PredictorConfig(n_modules=30, n_languages=7, hidden=64)
    torch.manual_seed(4)
    pred = GatePredictor(cfg)
    with torch.no_grad():  # move off the init so a silent re-init would be caught
        for p in pred.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    meta = {"modules": [f"m{i}" for i in range(30)], "budget_range": [0.0, 0.9]}
    written = save_predictor(pred, tmp_path / "gates", meta)
    assert written == tmp_path / "gates.safetensors"
    assert written.read_bytes()[:8] != b"\x80\x04\x95"  # not a pickle

    x = inputs(cfg, 8, torch.Generator().manual_seed(5))
    for path in (tmp_path / "gates", written):
        loaded, loaded_meta = load_predictor(path)
        assert loaded.config == cfg
        assert loaded_meta == meta
        assert not loaded.training
        with torch.no_grad():
            assert torch.equal(pred(*x), loaded(*x))

    save_predictor(pred, tmp_path)  # a directory gets predictor.safetensors
    assert load_predictor(tmp_path)[1] == {}


def test_load_errors(tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(ModelError, match="not found"):
        load_predictor(tmp_path / "missing")
    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ModelError, match="not an edgegate gate predictor"):
        load_predictor(tmp_path / "other.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(ModelError, match="cannot read"):
        load_predictor(tmp_path / "junk.safetensors")
    with pytest.raises(EdgegateError, match="JSON"):
        save_predictor(GatePredictor(PredictorConfig(n_modules=2)), tmp_path / "p", {"x": object()})
