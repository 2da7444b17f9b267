"""The OWSM fixture exported to a bundle and run by the torch-free runtime.

The runtime must give the PyTorch model's tokens (dense and for the three masks the parity tests
check against ESPnet, plus both branches of a layer skipped), and its encoder output and per-step
logits must match ESPnet's recorded tensors; it must do so with torch blocked.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edgegate.errors import BundleError  # noqa: E402
from edgegate.export.core import export_bundle  # noqa: E402
from edgegate.models.owsm_transcriber import OwsmModel  # noqa: E402
from edgegate.runtimes.execution import GraphDecoderState  # noqa: E402
from edgegate.runtimes.session import Session  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "owsm"
TOL = 1e-4
MASKS = {"dense": (), "mask_cgmlp": ("encoder.0.cgmlp",), "mask_attn": ("encoder.1.attn",),
         "mask_dec_ffn": ("decoder.1.ffn",), "both_branches": ("encoder.0.attn", "encoder.0.cgmlp")}


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
    with np.load(FIXTURE / "reference.npz", allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def wave(ref) -> np.ndarray:
    return ref["wave_int16"].astype(np.float32) / 32768


@pytest.fixture(scope="module")
def model() -> OwsmModel:
    torch.set_num_threads(1)
    return OwsmModel(FIXTURE / "owsm_tiny")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("owsm") / "bundle"
    export_bundle(out, target="cpu", model=str(FIXTURE / "owsm_tiny"), progress=False, log=lambda m: None)
    return out


@pytest.fixture(scope="module")
def session(bundle) -> Session:
    return Session.load(bundle, threads=1)


def _mask(names: list[str], skipped: tuple[str, ...]) -> list[bool]:
    return [n not in skipped for n in names]


def test_bundle_layout(bundle, session):
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["model"]["family"] == "owsm" and manifest["frontend"]["type"] == "owsm-log-mel"
    assert {"frontend.npz", "tokens.txt", "bpe.model"} <= set(manifest["files"])
    mods = {m["name"]: m for m in manifest["modules"]}
    assert mods["encoder.0.merge"]["gate"] == ["encoder.0.attn", "encoder.0.cgmlp"]
    assert mods["encoder.0.attn"]["skip"] == mods["encoder.0.cgmlp"]["skip"] == "zeros"
    assert mods["encoder.0.ffn"]["skip"] == "identity" and mods["decoder.1.src_kv"]["stage"] == "cross_kv"
    assert session.gate_names == OwsmModel(FIXTURE / "owsm_tiny").gate_names
    assert manifest["execution"]["encoder_positions"] == 49  # the fixture's 2-s window: 201 frames


@pytest.mark.parametrize("key", list(MASKS))
def test_runtime_tokens_equal_the_pytorch_model(model, session, wave, key):
    mask = _mask(model.gate_names, MASKS[key])
    ours = session.transcribe_windows(wave, language="eng", mask=mask)
    theirs = model.transcribe(wave, language="eng", mask=mask)
    assert ours.tokens == theirs.tokens and ours.text == theirs.text
    assert len(ours.tokens) == 49  # the random model runs to ESPnet's length limit: one token per position
    if key != "dense":  # the mask changes what is decoded: the comparison can tell masks apart
        assert ours.tokens != model.transcribe(wave, language="eng").tokens


def _runtime_encoder(session: Session, feats: np.ndarray, mask: list[bool]) -> dict[str, np.ndarray]:
    env = {"mel": feats[None]}
    for r in session.runner_list(np.array(mask)).per_window:
        r(env)
    return env


@pytest.mark.parametrize("key", ["dense", "mask_cgmlp", "mask_attn", "mask_dec_ffn"])
def test_runtime_matches_espnet_tensors(model, session, wave, ref, key):
    mask = _mask(model.gate_names, MASKS[key])
    feats = model.frontend(wave)
    env = _runtime_encoder(session, feats, mask)
    np.testing.assert_allclose(env["xa"][0], ref[f"encoder_out_{key}"], atol=TOL, rtol=0)
    tokens = ref["greedy_yseq"][: ref["logits_dense"].shape[0]]
    runners = session.runner_list(np.array(mask))
    state = GraphDecoderState(runners, {k: env[k] for k in runners.window_values}, session.limits.text_positions)
    logits = np.stack([state.step(np.array([[t]]))[0] for t in tokens])  # one token per step: the KV caches
    np.testing.assert_allclose(logits, ref[f"logits_{key}"], atol=TOL, rtol=0)


def test_beam_search_equals_the_pytorch_model(model, session, wave):
    mask = _mask(model.gate_names, MASKS["mask_cgmlp"])
    for beam in (2, 3):  # the caches follow the beams; the source K/V broadcast over them
        ours = session.transcribe_windows(wave, language="eng", beam_size=beam, mask=mask).tokens
        assert ours == model.transcribe(wave, language="eng", beam_size=beam, mask=mask).tokens, beam
    assert ours != model.transcribe(wave, language="eng", mask=mask).tokens  # beam search is not greedy here


def test_both_branches_skipped_skips_the_merge(model, session):
    runners = session.runner_list(np.array(_mask(model.gate_names, MASKS["both_branches"])))
    names = [r.name for r in runners.per_window]
    assert "encoder.0.merge" not in names and "encoder.1.merge" in names
    assert {"encoder.0.attn.zeros", "encoder.0.cgmlp.zeros"} <= set(names)
    one = [r.name for r in session.runner_list(np.array(_mask(model.gate_names, ("encoder.0.cgmlp",)))).per_window]
    assert "encoder.0.merge" in one and "encoder.0.cgmlp.zeros" in one


def test_language_identification_equals_the_pytorch_model(model, session, wave):
    ours, theirs = session.transcribe_windows(wave), model.transcribe(wave)
    assert ours.language == theirs.language
    assert abs(ours.language_probability - theirs.language_probability) < 1e-5
    assert ours.tokens == theirs.tokens


def test_transcribe_gives_segments_and_info_of_the_fixed_windows(session, wave):
    from edgegate.errors import EdgegateError

    segments, info = session.transcribe(wave, language="eng")
    segments = list(segments)
    assert [t for s in segments for t in s.tokens] == session.transcribe_windows(wave, language="eng").tokens
    assert info.language == "eng" and info.plan["mask"] is not None
    with pytest.raises(EdgegateError, match="Whisper-only"):
        session.transcribe(wave, language="eng", word_timestamps=True)


def test_wrong_frontend_for_the_family_is_one_line_error(bundle, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["frontend"]["type"] = "whisper-log-mel"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="frontend.type must be one of owsm-log-mel") as e:
        Session.load(copy)
    assert "\n" not in str(e.value)


TORCH_FREE = textwrap.dedent('''
    import json, sys
    import numpy as np
    sys.path.insert(0, sys.argv[2])
    from test_architecture import BLOCKER
    exec(BLOCKER)
    from edgegate.runtimes.session import Session
    wave = np.load(sys.argv[3])
    session = Session.load(sys.argv[1], threads=1)
    mask = [n != "encoder.0.cgmlp" for n in session.gate_names]
    out = {"dense": session.transcribe_windows(wave, language="eng").tokens,
           "masked": session.transcribe_windows(wave, language="eng", mask=mask).tokens,
           "leaked": sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED
                            or any(m == b or m.startswith(b + ".") for b in BLOCKED_EDGEGATE))}
    print(json.dumps(out))
''')


def test_owsm_bundle_runs_with_torch_blocked(bundle, model, wave, tmp_path):
    np.save(tmp_path / "wave.npy", wave)
    proc = subprocess.run([sys.executable, "-c", TORCH_FREE, str(bundle), str(ROOT / "tests"),
                           str(tmp_path / "wave.npy")], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["leaked"] == []
    assert out["dense"] == model.transcribe(wave, language="eng").tokens
    assert out["masked"] == model.transcribe(wave, language="eng", mask=_mask(model.gate_names,
                                                                             ("encoder.0.cgmlp",))).tokens


@pytest.mark.slow
def test_executorch_bundle_gives_the_same_tokens(model, wave, tmp_path):
    pytest.importorskip("executorch")
    out = tmp_path / "pte"
    export_bundle(out, target="android", model=str(FIXTURE / "owsm_tiny"), progress=False, log=lambda m: None)
    session = Session.load(out, threads=1)
    assert session.bundle.module_format == "pte"
    for key in ("dense", "mask_cgmlp", "mask_attn", "mask_dec_ffn"):
        mask = _mask(model.gate_names, MASKS[key])
        assert session.transcribe_windows(wave, language="eng", mask=mask).tokens == \
            model.transcribe(wave, language="eng", mask=mask).tokens, key


def test_export_refuses_a_predictor_of_another_shape(tmp_path):
    from edgegate.errors import ModelError
    from edgegate.predictor import GatePredictor, PredictorConfig

    pred = GatePredictor(PredictorConfig(n_modules=5))
    with pytest.raises(ModelError, match="14 gateable modules") as e:
        export_bundle(tmp_path / "b", model=str(FIXTURE / "owsm_tiny"), gates=pred, progress=False)
    assert "\n" not in str(e.value) and not (tmp_path / "b").exists()


def test_export_refuses_a_skip_adapter_on_a_branch(tmp_path):
    from edgegate.errors import ModelError
    from edgegate.models.owsm_loader import load_owsm

    ckpt = load_owsm(FIXTURE / "owsm_tiny")
    ckpt.model.add_skip_adapters(4, ["encoder.0.ffn", "encoder.1.cgmlp"])
    with pytest.raises(ModelError, match="encoder.1.cgmlp") as e:
        export_bundle(tmp_path / "b", model=ckpt, progress=False)
    assert "\n" not in str(e.value) and not (tmp_path / "b").exists()


@pytest.mark.slow
def test_owsm_v31_base_shape_exports_inspects_and_profiles(tmp_path, capsys):
    from edgegate.cli import main
    from edgegate.models.owsm_random import write_random_checkpoint

    bpe = FIXTURE / "owsm_tiny" / "data" / "token_list" / "bpe_unigram1600" / "bpe.model"
    ckpt = write_random_checkpoint(tmp_path / "base", bpe)
    out = tmp_path / "bundle"
    assert main(["export", "--target", "cpu", "--model", str(ckpt), "--out", str(out), "--no-progress"]) == 0
    assert main(["inspect", str(out), "--json"]) == 0
    manifest = json.loads(capsys.readouterr().out.split("\n", 1)[1])["manifest"]
    assert manifest["model"]["dims"]["d_model"] == 384 and manifest["execution"]["n_vocab"] == 50002
    flops = {m["name"]: m["flops"] for m in manifest["modules"]}
    assert len(manifest["gate_names"]) == 42 and 1.7e9 < flops["encoder.0.ffn"] < 1.8e9
    assert main(["profile", str(out), "--threads", "1", "--repeats", "1", "--tokens", "2", "--no-progress"]) == 0
    costs = json.loads((out / "manifest.json").read_text())["costs"]
    assert set(costs["ms"]) == set(manifest["gate_names"]) and costs["ms_meta"]["frames"] == 749
    assert all(v > 0 for v in costs["ms"].values())
