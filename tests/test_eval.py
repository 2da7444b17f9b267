"""Evaluation: metrics per (set, language, task) and budget, JSON + table + two PNGs, CLI."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from edgegate.data.manifest import ManifestEntry
from edgegate.evaluation import evaluate, format_table, write_report
from edgegate.pipeline import Segment, Transcription

NAMES = ["encoder.0.attn", "encoder.0.mlp", "decoder.0.self_attn", "decoder.0.cross_attn", "decoder.0.mlp"]
COSTS = np.array([4.0, 4.0, 1.0, 1.0, 2.0])
FIXED = 8.0  # always-on FLOPs


def fake_result(text: str, mask: list[bool], task: str) -> Transcription:
    return Transcription(text, [Segment(0, 0.0, 1.0, text, [1, 2, 3])], "xx", None, 1.0, task, mask,
                         {"total": 0.25})


def fake_model(entry_text: dict[str, str]):
    """Budget 0: the reference itself; budget > 0: skips encoder.0.mlp and drops the last word."""

    def transcribe(audio, lang, task, budget):
        ref = entry_text[audio]
        if budget == 0:
            return fake_result(ref, [True] * 5, task)
        return fake_result(" ".join(ref.split()[:-1]), [True, False, True, True, True], task)

    return transcribe


@pytest.fixture
def entries():
    return [
        ManifestEntry("a.wav", "en", "transcribe", "the cat sat on the mat"),
        ManifestEntry("b.wav", "en", "transcribe", "a dog ran far away"),
        ManifestEntry("c.wav", "de", "translate", "the weather is nice today in berlin"),
    ]


def test_metrics_flops_and_keep_rates(entries, tmp_path):
    model = fake_model({e.audio: e.text for e in entries})
    report = evaluate({"set": entries}, model, [0.0, 0.5], NAMES, cost_fn=lambda r: (COSTS, FIXED),
                      progress=False)
    en = report["groups"]["set/en/transcribe"]
    assert en["0"]["value"] == 0.0 and en["0"]["metric"] == "wer"
    # two deleted words out of 11 reference words
    assert en["0.5"]["value"] == pytest.approx(100 * 2 / 11, abs=0.01)
    assert en["0.5"]["vs_dense"] == pytest.approx(100 * 2 / 11, abs=0.01)
    de = report["groups"]["set/de/translate"]
    assert de["0"]["metric"] == "bleu" and de["0"]["value"] == pytest.approx(100.0)
    assert de["0.5"]["value"] < 100.0
    assert en["0.5"]["skipped_gated_flops"] == pytest.approx(4 / 12, abs=1e-4)
    assert en["0.5"]["skipped_total_flops"] == pytest.approx(4 / 20, abs=1e-4)
    assert en["0.5"]["kept_modules"] == 4 and en["0"]["kept_modules"] == 5
    assert report["keep_rate"]["set/en/transcribe"]["0.5"] == [1.0, 0.0, 1.0, 1.0, 1.0]
    assert en["0.5"]["latency_s"] == pytest.approx(0.25)

    paths = write_report(report, tmp_path / "out")
    loaded = json.loads(paths["json"].read_text())
    assert loaded["groups"] == report["groups"] and len(loaded["utterances"]) == 6
    for key in ("heatmap", "quality"):
        assert paths[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths[key].stat().st_size > 5000
    table = format_table(report)
    assert table.count("\n") == 1 + 4  # header, rule, 2 groups x 2 budgets
    assert "| set | en | transcribe | 0.5 | 2 | WER 18.2 | WER 18.2 | 33.3% | 20.0% | 4.0 | 0.25 |" in table


def test_no_budgets_or_no_entries_is_a_clear_error(entries):
    from edgegate.errors import EdgegateError

    with pytest.raises(EdgegateError, match="no budgets"):
        evaluate({"set": entries}, fake_model({}), [], NAMES, progress=False)
    with pytest.raises(EdgegateError, match="nothing to evaluate"):
        evaluate({"set": []}, fake_model({}), [0.0], NAMES, progress=False)


def test_whisper_cost_fn_counts_decoded_tokens():
    from edgegate.evaluation import whisper_cost_fn
    from edgegate.models.costs import module_costs

    dims = SimpleNamespace(n_mels=80, n_audio_state=64, n_audio_layer=2, n_audio_mlp=256, n_text_state=64,
                           n_text_layer=2, n_text_mlp=256, n_vocab=51865, n_text_ctx=448)
    r = fake_result("x", None, "transcribe")  # 1 s of audio, 3 tokens
    costs, fixed = whisper_cost_fn(dims, 10)(r)
    ref = module_costs(dims, n_frames=50 + 10, n_tokens=4 + 3 + 1)
    assert np.allclose(costs, [c.flops for c in ref.values()]) and fixed > 0


def test_eval_cli_on_trained_tiny_gates(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    from test_training import config, load_tiny, write_corpus

    from edgegate.commands.eval import main
    from edgegate.models.registry import resolve_model, tokenizer_path
    from edgegate.tokenizer import WhisperTokenizer
    from edgegate.training import train

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tok = WhisperTokenizer.from_file(tokenizer_path(resolve_model("whisper-base")))
        corpus = write_corpus(tmp_path / "c", n=4)
        from dataclasses import asdict

        from edgegate.models.whisper import ModelDims, Whisper

        torch.manual_seed(0)
        dims = ModelDims(n_audio_state=32, n_audio_head=2, n_audio_layer=2, n_text_state=32, n_text_head=2,
                         n_text_layer=2)
        tiny = tmp_path / "tiny.pt"
        torch.save({"dims": asdict(dims), "model_state_dict": Whisper(dims).state_dict()}, tiny)
        train(config(corpus, tmp_path / "gates", tiny, steps=2), model=load_tiny(tiny), tokenizer=tok)
        out = tmp_path / "eval"
        code = main(["--manifest", str(corpus), "--gates", str(tmp_path / "gates"), "--model", str(tiny),
                     "--budgets", "0,0.3", "--out", str(out), "--no-progress", "--threads", "1"])
    finally:
        torch.set_num_threads(n)
    printed = capsys.readouterr().out
    assert code == 0
    assert (out / "eval.json").exists() and (out / "keep_heatmap.png").exists() and (out / "quality.png").exists()
    report = json.loads((out / "eval.json").read_text())
    assert set(report["groups"]) == {"train/en/transcribe", "train/de/transcribe", "train/de/translate",
                                     "train/es/translate"}
    row = report["groups"]["train/de/transcribe"]["0.3"]
    # The planner met 0.3 with its token estimate; a random model decodes 224 tokens instead, so
    # the measured share (decoder-heavy) is lower but not zero.
    assert row["skipped_gated_flops"] > 0 and row["kept_modules"] < 10
    assert report["groups"]["train/de/transcribe"]["0"]["skipped_gated_flops"] == 0.0
    assert "| train | de | transcribe | 0.3 |" in printed


def test_eval_cli_rejects_bad_budgets(tmp_path, capsys):
    from edgegate.commands.eval import main

    (tmp_path / "m.jsonl").write_text(json.dumps({"audio": "/nonexistent.wav", "lang": "en", "task": "transcribe"})
                                      + "\n")
    assert main(["--manifest", str(tmp_path / "m.jsonl"), "--budgets", "0,1.5", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: budget must be in [0, 1)") and len(err.splitlines()) == 1


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    """A tiny random Whisper exported as a cpu bundle whose own context rule is margin 8."""
    pytest.importorskip("torch")
    from edgegate.export.core import export_bundle

    from tiny import tiny_whisper

    out = tmp_path_factory.mktemp("eval_bundle") / "tiny"
    return export_bundle(out, "cpu", tiny_whisper(), precision="fp32", audio_ctx=8, progress=False,
                         log=lambda m: None)


def noise_manifest(tmp_path, seed: int):
    """A one-entry manifest of 1 s of quiet noise (what a random tiny model is fed)."""
    import soundfile as sf

    wav = tmp_path / "a.wav"
    sf.write(wav, (np.random.default_rng(seed).standard_normal(16000) * 0.05).astype(np.float32), 16000)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"audio": str(wav), "lang": "en", "task": "transcribe", "text": "a"}) + "\n")
    return manifest


@pytest.mark.parametrize(("flag", "used", "frames"), [("trained", "auto", 2 * (50 + 8)), ("none", "full", 3000),
                                                      ("20", 20, 2 * (50 + 20))])
def test_eval_on_a_bundle_runs_the_context_asked_for(tiny_bundle, tmp_path, monkeypatch, flag, used, frames):
    """--audio-ctx reaches the runtime: 'trained' is the bundle's own rule, 'none' the full window, N a margin."""
    from edgegate.commands.eval import main
    from edgegate.runtimes.session import Session

    manifest = noise_manifest(tmp_path, seed=0)
    seen = []
    encode = Session.encode

    def spy(self, mel, mask):
        seen.append(mel.shape[-1])
        return encode(self, mel, mask)

    monkeypatch.setattr(Session, "encode", spy)
    out = tmp_path / "eval"
    # --dense-check off: the random model loops, and a trimmed window would fall back to the full one
    assert main(["--bundle", str(tiny_bundle), "--manifest", str(manifest), "--budgets", "0", "--audio-ctx", flag,
                 "--out", str(out), "--no-progress", "--threads", "1", "--dense-check", "off"]) == 0
    assert json.loads((out / "eval.json").read_text())["audio_ctx"] == used
    assert seen and set(seen) == {frames}


def test_eval_counts_the_windows_that_fell_back_to_the_full_context(tiny_bundle, tmp_path):
    from edgegate.commands.eval import main

    out = tmp_path / "eval"
    assert main(["--bundle", str(tiny_bundle), "--manifest", str(noise_manifest(tmp_path, seed=0)), "--budgets", "0",
                 "--audio-ctx", "20", "--out", str(out), "--no-progress", "--threads", "1"]) == 0
    report = json.loads((out / "eval.json").read_text())
    assert report["overall"]["0"]["context_fallbacks"] == 1  # the random model loops on its one trimmed window
    assert [u["context_fallbacks"] for u in report["utterances"]] == [1]


def test_eval_max_tokens_caps_every_window(tiny_bundle, tmp_path, monkeypatch):
    """--max-tokens reaches the decoder: a random model loops to the model's limit without it, to N with it."""
    from edgegate.commands.eval import main
    from edgegate.runtimes.session import Session

    manifest = noise_manifest(tmp_path, seed=1)
    lengths = []
    run = Session.transcribe_windows

    def spy(self, *a, **k):
        r = run(self, *a, **k)
        lengths.append(len(r.tokens))
        return r

    monkeypatch.setattr(Session, "transcribe_windows", spy)
    for cap in (None, 5):
        flags = [] if cap is None else ["--max-tokens", str(cap)]
        assert main(["--bundle", str(tiny_bundle), "--manifest", str(manifest), "--budgets", "0", *flags,
                     "--out", str(tmp_path / f"e{cap}"), "--no-progress", "--threads", "1"]) == 0
    assert lengths[0] > 5 and 0 < lengths[1] <= 5
    assert main(["--bundle", str(tiny_bundle), "--manifest", str(manifest), "--max-tokens", "0",
                 "--out", str(tmp_path / "bad"), "--no-progress"]) == 1
