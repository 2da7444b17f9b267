"""Gates on OWSM, end to end on the fixture: train-gates (a few steps), export with the gate set, the
runtime's budget plans, the PyTorch model with the same adaptation, the ablation pass and the report's
heatmap with its attention-vs-cgMLP table. The fixture has random weights: these tests show that the
machinery works on OWSM's modules, not which modules matter (that needs real weights)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
sf = pytest.importorskip("soundfile")

from edgegate.adaptation import apply_adaptation  # noqa: E402
from edgegate.cli import main  # noqa: E402
from edgegate.gate_set import GateSpec  # noqa: E402
from edgegate.models.owsm_costs import flop_costs  # noqa: E402
from edgegate.models.owsm_transcriber import OwsmModel  # noqa: E402
from edgegate.models.owsm_windows import OwsmWindows, owsm_planner  # noqa: E402
from edgegate.predictor import load_predictor  # noqa: E402
from edgegate.runtimes.session import Session  # noqa: E402

FIXTURE = Path(__file__).parent / "fixtures" / "owsm"
MODEL = FIXTURE / "owsm_tiny"
ENTRIES = [("en", "transcribe"), ("deu", "transcribe"), ("fr", "translate"), ("eng", "transcribe")]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("owsm_corpus")
    with np.load(FIXTURE / "reference.npz", allow_pickle=False) as z:
        wave = z["wave_int16"].astype(np.float32) / 32768
    rng = np.random.default_rng(0)
    lines = []
    for i, (lang, task) in enumerate(ENTRIES):
        sf.write(folder / f"u{i}.wav", (wave + 0.05 * i * rng.standard_normal(len(wave))).astype(np.float32), 16000)
        lines.append(json.dumps({"audio": str(folder / f"u{i}.wav"), "lang": lang, "task": task, "text": "a test"}))
    (folder / "m.jsonl").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture(scope="module")
def gates(corpus) -> Path:
    torch.set_num_threads(1)
    out = corpus / "gates"
    # The random fixture never emits <eos>: keep its unfinished labels (8 tokens each).
    assert main(["train-gates", "--manifest", str(corpus / "m.jsonl"), "--model", str(MODEL), "--out", str(out),
                 "--steps", "4", "--batch-size", "2", "--audio-ctx", "none", "--keep-unfinished", "--max-tokens",
                 "8", "--ablation-utts", "2", "--no-progress", "--threads", "1"]) == 0
    return out


@pytest.fixture(scope="module")
def bundle(gates, corpus) -> Path:
    out = corpus / "bundle"
    assert main(["export", "--target", "cpu", "--model", str(MODEL), "--gates", str(gates), "--out", str(out),
                 "--no-progress"]) == 0
    return out


def test_gate_set_of_owsm(gates):
    spec = GateSpec.read(gates / "gates.json")
    owsm = OwsmModel(MODEL)
    assert spec.language_codes == owsm.tokenizer.language_codes and "eng" in spec.language_codes
    pred, _ = load_predictor(gates / "predictor.safetensors")
    assert pred.config.n_modules == len(owsm.gate_names) == 14
    ablation = json.loads((gates / "ablation.json").read_text())["modules"]
    assert {"encoder.0.cgmlp", "encoder.0.attn", "decoder.1.src_attn"} <= set(ablation)  # OWSM's modules ablated
    apply_adaptation(owsm.model, gates, spec)
    adapted = set(owsm.model.skip_adapters)
    assert "encoder_0_ffn" in adapted and "decoder_1_src_attn" in adapted
    assert not {n for n in adapted if n.endswith(("_attn", "_cgmlp")) and n.startswith("encoder")}  # no branch


def test_runtime_plans_as_pytorch_and_runs_the_same_tokens(gates, bundle, corpus):
    session = Session.load(bundle, threads=1)
    owsm = OwsmModel(MODEL)
    spec = GateSpec.read(gates / "gates.json")
    apply_adaptation(owsm.model, gates, spec)
    pred, _ = load_predictor(gates / "predictor.safetensors")
    wave, _ = sf.read(corpus / "u0.wav", dtype="float32")
    request = OwsmWindows(wave, owsm.frontend).request
    positions = session.limits.encoder_positions

    def scores(stats, lang, task, budget):
        with torch.no_grad():
            return pred.keep_scores(torch.from_numpy(stats).float()[None], torch.tensor([lang]), torch.tensor([task]),
                                    torch.tensor([budget]))[0].numpy()

    planner = owsm_planner(owsm.gate_names, flop_costs(owsm.model.dims), positions, scores, spec.language_codes, "")
    seen = set()
    for budget in (0.0, 0.3, 0.6):
        result = session.transcribe_windows(wave, language="en", budget=budget)
        theirs = planner.plan(request, "eng", "transcribe", session._as_budget(session.bundle, budget), None)
        assert result.mask == theirs.kept, budget  # the same plan on both sides
        assert result.tokens == owsm.transcribe(wave, language="en", mask=result.mask).tokens, budget
        seen.add(tuple(result.mask))
    assert len(seen) == 3  # three budgets, three different plans: the comparison covers skips and adapters


def test_report_heatmap_and_branch_table(bundle, corpus, tmp_path):
    out = tmp_path / "report"
    assert main(["report", str(bundle), "--manifest", str(corpus / "m.jsonl"), "--budgets", "0,0.6", "--out",
                 str(out), "--no-progress"]) == 0
    assert (out / "keep_heatmap.png").stat().st_size > 1000
    md = (out / "report.md").read_text()
    assert "Attention vs cgMLP branches" in md and "| m/deu/transcribe | 0.6 |" in md
    report = json.loads((out / "eval.json").read_text())
    assert report["gate_names"][2] == "encoder.0.cgmlp"
    assert {"m/en/transcribe", "m/fr/translate"} <= set(report["keep_rate"])


@pytest.mark.parametrize(("extra", "needle"), [(["--adapt", "lora"], "not supported for OWSM"),
                                               (["--audio-ctx", "32"], "--audio-ctx none")])
def test_unsupported_training_settings_are_one_line_errors(corpus, tmp_path, capsys, extra, needle):
    argv = ["train-gates", "--manifest", str(corpus / "m.jsonl"), "--model", str(MODEL), "--out", str(tmp_path / "g"),
            "--steps", "1", "--no-progress", *extra]
    if "--audio-ctx" not in extra:
        argv += ["--audio-ctx", "none"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err


def test_ablate_measures_owsm_modules_and_compares_the_branches(corpus, tmp_path, capsys):
    out = tmp_path / "ablation.json"
    assert main(["ablate", "--manifest", str(corpus / "m.jsonl"), "--model", str(MODEL), "--audio-ctx", "none",
                 "--keep-unfinished", "--max-tokens", "8", "--out", str(out), "--no-progress", "--threads", "1"]) == 0
    result = json.loads(out.read_text())
    mods = result["modules"]
    assert len(mods) == 14 and result["utterances"] == 4
    assert all(m["damage"] >= 0 for m in mods.values()) and max(m["damage"] for m in mods.values()) > 1e-3
    overall = result["branches"]["overall"]
    for kind in ("attn", "cgmlp"):  # the branch summary is the mean over the encoder layers' branches
        assert overall[kind] == pytest.approx((mods[f"encoder.0.{kind}"]["damage"] + mods[f"encoder.1.{kind}"]
                                               ["damage"]) / 2, abs=2e-5)
    assert {"eng/transcribe", "deu/transcribe", "fra/translate"} == set(result["branches"]["per_group"])
    assert "branches (mean damage)" in capsys.readouterr().out


def test_eval_of_owsm_gates_on_pytorch_points_to_the_bundle(gates, corpus, tmp_path, capsys):
    assert main(["eval", "--gates", str(gates), "--manifest", str(corpus / "m.jsonl"), "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert "OWSM checkpoint" in err and "edgegate eval --bundle" in err and "\n" not in err
