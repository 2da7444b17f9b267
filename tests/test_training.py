"""Gate training on a tiny random Whisper: targets are hit, gradients flow, resume and DDP agree."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edgegate.models.whisper import ModelDims, Whisper  # noqa: E402

TINY = dict(n_audio_state=32, n_audio_head=2, n_audio_layer=4, n_text_state=32, n_text_head=2, n_text_layer=4)
PAIRS = [("en", "transcribe"), ("de", "transcribe"), ("de", "translate"), ("es", "translate")]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_corpus(folder: Path, n: int = 8, varied: bool = True) -> Path:
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        samples = int(16000 * (0.5 + 0.15 * i)) if varied else 16000
        t = np.arange(samples) / 16000
        x = 0.3 * np.sin(2 * np.pi * (150 + 60 * i) * t) + 0.05 * rng.standard_normal(samples)
        sf.write(folder / f"u{i}.wav", x.astype(np.float32), 16000)
        lang, task = PAIRS[i % len(PAIRS)]
        lines.append(json.dumps({"audio": f"u{i}.wav", "lang": lang, "task": task, "text": "a test"}))
    manifest = folder / "train.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def tiny_pt(tmp_path_factory) -> Path:
    """A tiny random Whisper saved as an OpenAI-style checkpoint (the CLI loads it by path)."""
    torch.manual_seed(0)
    dims = ModelDims(**TINY)
    path = tmp_path_factory.mktemp("tiny") / "tiny.pt"
    torch.save({"dims": asdict(dims), "model_state_dict": Whisper(dims).state_dict()}, path)
    return path


def config(corpus: Path, out: Path, tiny_pt: Path, **kw):
    from edgegate.training import TrainConfig

    base = dict(manifest=str(corpus), out=str(out), model=str(tiny_pt), steps=6, batch_size=2, max_tokens=4,
                drop_unfinished=False, progress=False, checkpoint_every=3, log_every=1, adapter_rank=4,
                threads=1)
    base.update(kw)
    return TrainConfig(**base)


def load_tiny(path: Path) -> Whisper:
    from edgegate.models.loaders import load_whisper

    return load_whisper(path)


@pytest.fixture(scope="module")
def even_corpus(tmp_path_factory) -> Path:
    """Utterances of equal length: the same mask skips the same cost share in each of them."""
    return write_corpus(tmp_path_factory.mktemp("even"), varied=False)


@pytest.mark.parametrize("target", [0.25, 0.5, 0.7])
def test_sparsity_loss_drives_achieved_sparsity_to_target(even_corpus, tiny_pt, tokenizer, tmp_path, target):
    from edgegate.training import train

    # A flat (dense) start, so that reaching the target is the sparsity loss's doing.
    cfg = config(even_corpus, tmp_path, tiny_pt, steps=120, lr=3e-3, alpha=10.0, target_range=(target, target),
                 checkpoint_every=1000, log_every=1, init_ranking="flat")
    summary = train(cfg, model=load_tiny(tiny_pt), tokenizer=tokenizer)
    log = [json.loads(x) for x in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 120
    # The hard gates sampled in the last 20 steps skip the target share of the in-scope FLOPs ...
    achieved = float(np.mean([r["s_hat"] for r in log[-20:]]))
    assert abs(achieved - target) <= 0.05, (achieved, summary)
    # ... having started far from it (the predictor starts dense) ...
    assert abs(log[0]["s_hat"] - target) > 0.15
    # ... and the noise-free argmax of the predictor is near it too (the planner makes it exact).
    assert abs(summary["calibration"][f"{target:g}"] - target) <= 0.1, summary


def test_gradients_reach_predictor_through_hard_gates(corpus, tiny_pt, tokenizer, tmp_path):
    from edgegate.plan import language_index, task_index
    from edgegate.predictor import GatePredictor, PredictorConfig, gumbel_gates
    from edgegate.training import build_student, item_loss, load_examples

    cfg = config(corpus, tmp_path, tiny_pt)
    model = load_tiny(tiny_pt)
    from edgegate.data.manifest import read_manifest

    examples = load_examples(read_manifest(corpus)[:2], model, tokenizer, cfg, None)
    st = build_student(model, cfg)
    pred = GatePredictor(PredictorConfig(n_modules=len(st.names)))
    ex = examples[0]
    logits = pred(ex.stats[None], torch.tensor([language_index(ex.lang)]), torch.tensor([task_index(ex.task)]),
                  torch.tensor([0.5]))
    gates = gumbel_gates(logits, tau=1.0, generator=torch.Generator().manual_seed(0))
    assert set(gates.detach().unique().tolist()) <= {0.0, 1.0}  # hard in the forward pass
    loss, _ = item_loss(st, ex, gates[0], None, 0.0)  # task loss only: no sparsity term
    loss.backward()
    assert pred.fc2.weight.grad is not None and pred.fc2.weight.grad.abs().sum() > 0
    assert pred.fc1.weight.grad.abs().sum() > 0


def test_ranking_margins_order_by_damage_per_cost():
    from edgegate.ablation import ranking_margins

    damage = np.array([1.0, 0.01, 0.5, 9.0, 0.2])
    costs = np.array([10.0, 1.0, 1.0, 1.0, 100.0])
    in_scope = np.array([True, True, True, True, False])
    m = ranking_margins(damage, costs, in_scope, lo=0.5, hi=4.0)
    # damage per cost share: 0.1, 0.01, 0.5, 9 -> module 1 is dropped first, module 3 last
    assert np.argsort(m[:4]).tolist() == [1, 0, 2, 3]
    assert m[1] == 0.5 and m[3] == 4.0 and m[4] == 4.0


def test_ablation_seeds_predictor_so_a_fatal_module_is_kept(corpus, tiny_pt, tokenizer, tmp_path):
    """The straight-through gradient once ranked a fatal module first to drop (encoder.3.attn on
    whisper-base); the ablation pass measures it, and the seeded predictor keeps it longest."""
    from edgegate.predictor import load_predictor
    from edgegate.training import train

    model = load_tiny(tiny_pt)
    with torch.no_grad():  # make decoder.1.mlp carry the signal: removing it wrecks the output
        model.decoder.blocks[1].mlp[2].weight.mul_(50.0)
    fatal = "decoder.1.mlp"
    train(config(corpus, tmp_path, tiny_pt, steps=1, ablation_utts=3), model=model, tokenizer=tokenizer)
    report = json.loads((tmp_path / "ablation.json").read_text())["modules"]
    assert len(report) == len(model.gate_names)
    assert max(report, key=lambda k: report[k]["damage"]) == fatal
    pred, _ = load_predictor(tmp_path)
    names = list(model.gate_names)
    assert report[fatal]["margin"] == max(r["margin"] for r in report.values())
    stats = torch.zeros(1, 2 * model.dims.n_mels)
    scores = pred.keep_scores(stats, torch.tensor([0]), torch.tensor([0]), torch.tensor([0.5]))[0]
    assert names[int(scores.argmax())] == fatal


def _state(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    ck = out / "checkpoint"
    tensors = {f"p.{k}": v for k, v in load_file(str(ck / "predictor.safetensors")).items()}
    tensors.update({f"a.{k}": v for k, v in load_file(str(ck / "adaptation.safetensors")).items()})
    return tensors


def _assert_same(a: dict, b: dict, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= atol, worst


def test_resume_continues_to_the_same_state(corpus, tiny_pt, tokenizer, tmp_path):
    from edgegate.training import train

    train(config(corpus, tmp_path / "straight", tiny_pt), tokenizer=tokenizer)
    interrupted = tmp_path / "resumed"
    train(config(corpus, interrupted, tiny_pt, stop_after=3), tokenizer=tokenizer)
    state = torch.load(interrupted / "checkpoint" / "trainer_state.pt", weights_only=True)
    assert state["step"] == 3
    summary = train(config(corpus, interrupted, tiny_pt, resume=True), tokenizer=tokenizer)
    assert summary["final"]["step"] == 6
    _assert_same(_state(tmp_path / "straight"), _state(interrupted))
    log = [json.loads(x)["step"] for x in (interrupted / "train_log.jsonl").read_text().splitlines()]
    assert log == [1, 2, 3, 4, 5, 6]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_match_one(corpus, tiny_pt, tokenizer, tmp_path):
    """torchrun-style launch (env:// with gloo) of 2 ranks gives the single-process result."""
    from edgegate.training import train

    train(config(corpus, tmp_path / "one", tiny_pt, batch_size=4, steps=3), tokenizer=tokenizer)
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE="2",
               OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "edgegate.commands.train_gates", "--manifest", str(corpus), "--model", str(tiny_pt),
           "--out", str(tmp_path / "two"), "--steps", "3", "--batch-size", "4", "--max-tokens", "4",
           "--adapter-rank", "4", "--checkpoint-every", "3", "--keep-unfinished", "--threads", "1",
           "--no-progress"]
    procs = [subprocess.Popen(cmd, env=dict(env, RANK=str(r), LOCAL_RANK=str(r)), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert '"world_size": 2' in outs[0]
    _assert_same(_state(tmp_path / "one"), _state(tmp_path / "two"), atol=1e-6)


def test_outputs_load_and_plan_within_budget(corpus, tiny_pt, tokenizer, tmp_path):
    from edgegate.audio import load_audio
    from edgegate.budget import skipped_fraction
    from edgegate.gated import load_gated
    from edgegate.models.costs import module_costs
    from edgegate.training import train
    from edgegate.transcriber import WhisperModel

    train(config(corpus, tmp_path, tiny_pt), tokenizer=tokenizer)
    gw = load_gated(tmp_path, model=WhisperModel(load_tiny(tiny_pt), tokenizer))
    assert gw.spec.adapt == "skip-adapters" and len(gw.model.skip_adapters) == len(gw.gate_names)
    audio = str(corpus.parent / "u3.wav")
    dense = WhisperModel(load_tiny(tiny_pt), tokenizer).transcribe_windows(audio, language="de", audio_ctx=gw.audio_ctx)
    r0 = gw.transcribe_windows(audio, language="de", budget=0.0)
    assert all(r0.mask) and r0.tokens == dense.tokens  # budget 0 is the dense model, adapters idle
    plan = gw.plan(load_audio(audio), "de", "transcribe", 0.5)
    mask, costs = plan.mask, plan.costs
    assert skipped_fraction(mask, costs, gw.gate_names) >= 0.5
    r = gw.transcribe_windows(audio, language="de", budget=0.5)
    assert r.mask == [bool(m) for m in mask] and not all(r.mask)
    assert list(module_costs(gw.model.dims, 100)) == gw.gate_names == gw.planner.gate_names


@pytest.mark.parametrize("adapt,scope", [("none", "decoder"), ("lora", "both"), ("full", "encoder"),
                                         ("full", "decoder")])
def test_other_adaptation_modes_train_and_load(corpus, tiny_pt, tokenizer, tmp_path, adapt, scope):
    from edgegate.gated import load_gated
    from edgegate.training import train
    from edgegate.transcriber import WhisperModel

    cfg = config(corpus, tmp_path, tiny_pt, adapt=adapt, scope=scope, steps=2, checkpoint_every=2, lora_rank=2,
                 kl_weight=0.5 if adapt != "none" else 0.0)
    summary = train(cfg, tokenizer=tokenizer)
    assert np.isfinite(summary["final"]["task_loss"])
    base = load_tiny(tiny_pt)
    gw = load_gated(tmp_path, model=WhisperModel(load_tiny(tiny_pt), tokenizer))
    changed = [k for k, v in gw.model.state_dict().items()
               if k in base.state_dict() and not torch.equal(v, base.state_dict()[k])]
    if adapt == "none":
        assert not changed
    else:
        assert changed  # the adaptation was applied to the loaded model
        part = "decoder" if scope == "decoder" else None
        if scope == "encoder":
            assert all(k.startswith("encoder.blocks.") for k in changed)
        assert part is None or all(k.startswith(part) for k in changed)
    r = gw.transcribe_windows(str(corpus.parent / "u1.wav"), language="de", budget=0.4)
    if scope == "decoder":
        assert all(r.mask[: 2 * TINY["n_audio_layer"]])  # encoder modules are out of scope


def test_bad_inputs_give_one_line_errors(tmp_path, tiny_pt, corpus, capsys):
    from edgegate.commands.train_gates import main

    def _cli(args: list[str]) -> tuple[int, str]:
        code = main(args)
        return code, capsys.readouterr().err.strip()

    base = ["--model", str(tiny_pt), "--out", str(tmp_path / "o"), "--steps", "1", "--no-progress"]
    missing = tmp_path / "missing.jsonl"
    missing.write_text(json.dumps({"audio": "nope.wav", "lang": "en", "task": "transcribe"}) + "\n")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    klingon = tmp_path / "klingon.jsonl"
    klingon.write_text(json.dumps({"audio": str(corpus.parent / "u0.wav"), "lang": "tlh", "task": "transcribe"})
                       + "\n")
    cases = [
        (["--manifest", str(missing)], "audio file not found"),
        (["--manifest", str(empty)], "no entries"),
        (["--manifest", str(klingon)], "unknown language 'tlh'"),
        (["--manifest", str(corpus), "--target-range", "0.5,1.2"], "target range"),
        (["--manifest", str(corpus), "--target-range", "abc"], "bad target range"),
        (["--manifest", str(tmp_path / "absent.jsonl")], "manifest not found"),
    ]
    for extra, needle in cases:
        code, err = _cli(extra + base)
        assert code == 1, (extra, err)
        assert len(err.splitlines()) == 1 and err.startswith("error: ") and needle in err, (extra, err)


def test_resume_without_checkpoint_and_with_other_settings_fails_clearly(corpus, tiny_pt, tokenizer, tmp_path):
    from edgegate.training import TrainingError, train

    with pytest.raises(TrainingError, match="no checkpoint"):
        train(config(corpus, tmp_path, tiny_pt, resume=True), tokenizer=tokenizer)
    train(config(corpus, tmp_path, tiny_pt, steps=3), tokenizer=tokenizer)
    with pytest.raises(TrainingError, match="scope"):
        train(replace(config(corpus, tmp_path, tiny_pt, resume=True), scope="decoder"), tokenizer=tokenizer)


def test_cost_table_trains_on_measured_milliseconds(corpus, tiny_pt, tokenizer, tmp_path):
    """--cost-table: the planning costs of every example are the profiled bundle's ms at that utterance's
    shape (not FLOPs); a bundle that was never profiled is refused with the command that fixes it."""
    pytest.importorskip("onnxruntime")
    from edgegate.budget import BudgetError
    from edgegate.cli import main
    from edgegate.export.core import export_bundle
    from edgegate.models.costs import flop_costs
    from edgegate.runtimes.bundle import Bundle
    from edgegate.runtimes.latency import measured_gate_ms
    from edgegate.train_data import measured_cost_table, planning_cost_fn
    from edgegate.training import train

    model = load_tiny(tiny_pt)
    bundle = export_bundle(tmp_path / "bundle", "cpu", model, progress=False, log=lambda m: None)
    with pytest.raises(BudgetError, match="edgegate profile") as exc:
        measured_cost_table(str(bundle), model.gate_names)
    assert "\n" not in str(exc.value)
    assert main(["profile", str(bundle), "--frames", "100", "--tokens", "4", "--no-progress", "--threads", "1",
                 "--repeats", "2"]) == 0
    fn = planning_cost_fn(model, measured_cost_table(str(bundle), model.gate_names))
    expected = measured_gate_ms(Bundle.open(bundle, verify=False), model.gate_names, 40, 6)
    assert np.allclose(fn(40, 6), expected) and (expected > 0).all()
    flops = flop_costs(model.dims, model.context_tail)(40, 6)
    assert not np.allclose(expected / expected.sum(), flops / flops.sum())
    out = tmp_path / "gates"
    train(config(corpus, out, tiny_pt, steps=2, cost_table=str(bundle)), tokenizer=tokenizer)
    spec = json.loads((out / "gates.json").read_text())
    assert spec["train"]["cost_table"] == str(bundle)
    # the gate set carries its table: the PyTorch path (transcribe --budget, eval, adapt --masks-from) plans
    # in the ms it was trained with, without the bundle
    assert spec["cost_unit"] == "ms" and set(spec["measured_costs"]) >= {"ms", "ms_meta"}
    from edgegate.gated import load_gated
    from edgegate.plan import estimate_tokens

    bundle.rename(tmp_path / "moved")
    gw = load_gated(out, model=model)
    audio = np.random.default_rng(0).standard_normal(16000 * 2).astype(np.float32) * 0.1
    plan = gw.plan(audio, "en", "transcribe", 0.5)
    moved = Bundle.open(tmp_path / "moved", verify=False)
    assert plan.budget.cost_unit == "ms"
    expected = measured_gate_ms(moved, model.gate_names, plan.encoder_frames // 2, estimate_tokens(2.0))
    assert np.allclose(plan.costs, expected)
    # exported for a FLOP-budget target, the bundle still budgets in the unit the gates were trained on
    b2 = export_bundle(tmp_path / "b2", "cpu", model, gates=out, progress=False, log=lambda m: None)
    assert json.loads((b2 / "manifest.json").read_text())["budget"]["cost_unit"] == "ms"


def test_cost_table_that_is_not_a_bundle_is_refused_before_loading(corpus, tiny_pt, tmp_path):
    from edgegate.training import TrainingError

    with pytest.raises(TrainingError, match="cost-table") as exc:
        config(corpus, tmp_path / "g", tiny_pt, cost_table=str(tmp_path / "nowhere")).validate()
    assert "\n" not in str(exc.value)
