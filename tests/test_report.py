"""`edgegate report`: pictures and a Markdown summary from eval results."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("matplotlib")

from edgegate.cli import main  # noqa: E402
from edgegate.evaluation import Utterance, summarize  # noqa: E402


def _fake_results(path):
    names = ["encoder.0.attn", "encoder.0.mlp", "decoder.0.self_attn"]
    utts = []
    for b, mask, hyp in [(0.0, [True, True, True], "he was not an ill disposed young man"),
                         (0.5, [True, False, True], "he was not an ill young man")]:
        for lang, task, ref in [("en", "transcribe", "he was not an ill disposed young man"),
                                ("de", "translate", "he was not an ill disposed young man")]:
            utts.append(Utterance("set", "a.wav", lang, task, b, ref, hyp, sum(mask), 3, 0.5 * b, 0.4 * b,
                                  1.0 - b, 3.0, mask))
    report = summarize(utts, [0.0, 0.5], names)
    path.write_text(json.dumps(report))
    return report


def test_report_from_eval_json(tmp_path, capsys):
    results = tmp_path / "eval.json"
    report = _fake_results(results)
    assert report["groups"]["set/en/transcribe"]["0.5"]["value"] == pytest.approx(12.5)
    assert main(["report", str(results), "--out", str(tmp_path / "out")]) == 0
    out = tmp_path / "out"
    for name in ("keep_heatmap.png", "quality.png", "latency.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    md = (out / "report.md").read_text()
    assert "| 0.5 | 25.0% | 20.0% |" in md and "set | en | transcribe | 0.5" in md


def test_report_rejects_other_json(tmp_path, capsys):
    bad = tmp_path / "eval.json"
    bad.write_text('{"hello": 1}')
    assert main(["report", str(bad)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "edgegate eval" in err and "\n" not in err
