"""edgegate profile: measured ms per gate in the manifest, hashes intact, ms budgets plan with time."""

import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from edgegate.budget import Budget, skipped_fraction  # noqa: E402
from edgegate.cli import main  # noqa: E402
from edgegate.errors import BudgetError  # noqa: E402
from edgegate.export.core import export_bundle  # noqa: E402
from edgegate.pipeline import MelFeatures  # noqa: E402
from edgegate.runtimes import latency  # noqa: E402
from edgegate.runtimes.bundle import Bundle  # noqa: E402
from edgegate.runtimes.session import Session  # noqa: E402

from tiny import TINY_ADAPTERS, tiny_predictor, tiny_whisper  # noqa: E402

ALWAYS_ON = ["encoder.stem", "encoder.ln_post", "decoder.embed", "decoder.logits"]
FAST = ["--no-progress", "--threads", "1", "--repeats", "3"]


def clip(seconds=2.0, seed=0):
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(int(16000 * seconds))).astype(np.float32)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    model = tiny_whisper()  # with skip adapters: their gates are charged net of the adapter
    return export_bundle(tmp_path_factory.mktemp("profile") / "b", "cpu", model,
                         gates=tiny_predictor(len(model.gate_names), seed=3), progress=False, log=lambda m: None)


@pytest.fixture(scope="module")
def profiled(pristine, tmp_path_factory):
    dst = tmp_path_factory.mktemp("profiled") / "b"
    shutil.copytree(pristine, dst)
    assert main(["profile", str(dst), "--frames", "1500", "--tokens", "16", *FAST]) == 0
    return dst


@pytest.fixture
def bundle(pristine, tmp_path):
    dst = tmp_path / "bundle"
    shutil.copytree(pristine, dst)
    return dst


def manifest(path):
    return json.loads((path / "manifest.json").read_text())


def test_profile_writes_ms_for_every_gate_and_keeps_the_bundle_valid(pristine, profiled, capsys):
    m, before = manifest(profiled), manifest(pristine)
    costs = m["costs"]
    assert list(costs["ms"]) == m["gate_names"]
    assert all(v > 0 for v in costs["ms"].values()), costs["ms"]
    assert list(costs["ms_always_on"]) == ALWAYS_ON and all(v > 0 for v in costs["ms_always_on"].values())
    meta = costs["ms_meta"]
    assert (meta["frames"], meta["tokens"], meta["backend"], meta["threads"]) == (1500, 16, "onnxruntime", 1)
    assert meta["machine"]["cpus"] and meta["date_utc"]
    assert sorted(meta["adapter_ms"]) == sorted(TINY_ADAPTERS)
    # nothing else in the manifest moved
    assert {k: v for k, v in m.items() if k != "costs"} == {k: v for k, v in before.items() if k != "costs"}
    assert {k: costs[k] for k in before["costs"]} == before["costs"]
    assert not [p for p in profiled.iterdir() if p.name.startswith(".")]  # no temp file left behind
    assert all(c.ok for c in Bundle.open(profiled).verify(raise_on_error=False))
    capsys.readouterr()
    assert main(["inspect", str(profiled)]) == 0
    out = capsys.readouterr().out
    assert "hashes   ok" in out and "measured gateable" in out


def test_decoder_gates_are_per_step_times_tokens_and_cross_attn_adds_its_kv(profiled):
    costs = manifest(profiled)["costs"]
    ms, step, tokens = costs["ms"], costs["ms_per_step"], costs["ms_meta"]["tokens"]
    for i in range(2):
        for kind in ("self_attn", "mlp"):
            g = f"decoder.{i}.{kind}"
            assert ms[g] == pytest.approx(step[g] * tokens, abs=1e-3)
        g = f"decoder.{i}.cross_attn"
        assert ms[g] > step[g] * tokens + 1e-3  # the once-per-utterance K/V projection is charged to the gate
    assert not any(n.startswith("encoder.") for n in step)


def test_ms_budget_plans_with_time_end_to_end(profiled, monkeypatch):
    session = Session.load(profiled, budget=Budget(0.5, "both", "ms"), threads=1)
    seen = {}
    real_costs = session.costs

    def spy(*args, **kwargs):
        seen[kwargs.get("unit", "flops")] = out = real_costs(*args, **kwargs)
        return out

    monkeypatch.setattr(session, "costs", spy)
    result = session.transcribe_windows(clip(), language="en")
    keep = np.array(result.mask)
    assert not keep.all() and result.text is not None
    assert skipped_fraction(keep, seen["ms"], session.gate_names) >= 0.5 - 1e-9
    # at the profiled shape the planner sees exactly the written table
    table = manifest(profiled)["costs"]["ms"]
    assert real_costs(1500, 16, unit="ms") == pytest.approx([table[n] for n in session.gate_names], rel=1e-12)


def test_ms_plan_differs_from_flop_plan_when_the_costs_disagree(profiled):
    session = Session.load(profiled, threads=1)
    flops = session.costs(1500, 16)
    # A device where time runs opposite to FLOPs: the cheapest module in FLOPs is the slowest.
    costs = session.bundle.manifest["costs"]
    costs["ms"] = {n: float(1e9 / f) for n, f in zip(session.gate_names, flops, strict=True)}
    del costs["ms_per_step"]  # a bare table is used as written, whatever the utterance's shape
    features = MelFeatures.of(clip(seed=1), session.dims["n_mels"])
    by_ms = session.plan(features, "en", "transcribe", Budget(0.5, "both", "ms")).mask
    by_flops = session.plan(features, "en", "transcribe", Budget(0.5, "both", "flops")).mask
    ms = session.costs(1500, 16, unit="ms")
    assert not np.array_equal(by_ms, by_flops)
    assert skipped_fraction(by_ms, ms, session.gate_names) >= 0.5 - 1e-9
    assert skipped_fraction(by_flops, ms, session.gate_names) < 0.5  # the FLOP plan misses the time budget


def test_measured_ms_rescales_to_the_utterance(profiled):
    costs = manifest(profiled)["costs"]
    terms = Bundle.open(profiled).gate_terms
    same = latency.measured_ms(costs, terms, 1500, 16)
    assert same == pytest.approx(costs["ms"], rel=1e-12)
    longer = latency.measured_ms(costs, terms, 1500, 64)
    shorter_audio = latency.measured_ms(costs, terms, 200, 16)
    step = costs["ms_per_step"]
    for g, v in costs["ms"].items():
        if g.startswith("encoder."):
            assert longer[g] == pytest.approx(v) and shorter_audio[g] < 0.5 * v
        elif g.endswith("self_attn"):  # attention over a longer cache: more than linear in the tokens
            assert longer[g] - v > 3 * 16 * step[g]
        else:  # 48 more steps at the same per-step time; cross-attention's K/V projection stays once
            assert longer[g] - v == pytest.approx(3 * 16 * step[g], rel=1e-6)
    assert shorter_audio["decoder.0.cross_attn"] < costs["ms"]["decoder.0.cross_attn"]
    assert shorter_audio["decoder.0.mlp"] == pytest.approx(costs["ms"]["decoder.0.mlp"])


def test_dry_run_leaves_the_manifest_byte_identical(bundle, capsys):
    before = (bundle / "manifest.json").read_bytes()
    assert main(["profile", str(bundle), "--dry-run", "--tokens", "8", *FAST]) == 0
    out = capsys.readouterr().out
    assert (bundle / "manifest.json").read_bytes() == before
    assert "dry run" in out and "decoder.1.cross_attn" in out and "GFLOP/s" in out


def test_failed_write_leaves_the_old_manifest(bundle, monkeypatch):
    before = (bundle / "manifest.json").read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(latency.os, "replace", broken)
    with pytest.raises(OSError):
        main(["profile", str(bundle), "--tokens", "4", *FAST])
    assert (bundle / "manifest.json").read_bytes() == before
    assert not [p for p in bundle.iterdir() if p.name.startswith(".")]  # the temp file was removed


@pytest.mark.parametrize("args, fragment", [
    (["--frames", "0"], "frames"), (["--frames", "1501"], "frames"), (["--tokens", "0"], "tokens"),
    (["--tokens", "65"], "tokens"), (["--repeats", "0"], "repeats"), (["--threads", "0"], "threads"),
])
def test_bad_numbers_are_one_line_errors(bundle, capsys, args, fragment):
    before = (bundle / "manifest.json").read_bytes()
    assert main(["profile", str(bundle), "--no-progress", *args]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and fragment in err and "\n" not in err
    assert (bundle / "manifest.json").read_bytes() == before


def test_missing_bundle_and_non_numbers(tmp_path, capsys):
    assert main(["profile", str(tmp_path / "nope")]) == 1
    assert "bundle not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["profile", str(tmp_path), "--frames", "many"])
    assert info.value.code == 2
    assert "expected an integer" in capsys.readouterr().err


def test_ms_budget_without_a_table_names_the_command(bundle):
    session = Session.load(bundle, budget=Budget(0.5, "both", "ms"), threads=1)
    with pytest.raises(BudgetError, match=f"edgegate profile {bundle}"):
        session.transcribe_windows(clip(), language="en")


def test_profile_runs_without_torch(bundle):
    code = textwrap.dedent('''
        import sys

        class Blocker:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "onnx", "transformers"):
                    raise ModuleNotFoundError(f"{name} is blocked in this test", name=name)

        sys.meta_path.insert(0, Blocker())
        from edgegate.cli import main
        rc = main(["profile", sys.argv[1], "--tokens", "4", "--repeats", "1", "--threads", "1", "--no-progress"])
        assert not any(m.split(".")[0] in ("torch", "onnx") for m in sys.modules), "torch leaked"
        raise SystemExit(rc)
    ''')
    proc = subprocess.run([sys.executable, "-c", code, str(bundle)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert manifest(bundle)["costs"]["ms_meta"]["tokens"] == 4
