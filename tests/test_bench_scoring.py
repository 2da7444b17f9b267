"""The scoring the benchmark scripts add on top of edgegate's: no-loop comparisons, recounted budget tables."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("sacrebleu", reason="sacrebleu not installed: pip install sacrebleu")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_edge_adaptation  # noqa: E402
import gates_runtime_table  # noqa: E402


def _out(text: str, loop: bool = False) -> dict:
    return {"text": text, "loop": loop}


def test_a_looping_translation_is_compared_apart():
    refs = ["the cat sits on the mat", "we need five plates", "paul lives in france", "the film lasts an hour"]
    items = [{"id": str(i), "lang": "de", "task": "translate", "ref": r} for i, r in enumerate(refs)]
    base = [_out(r) for r in refs[:3]] + [_out("the film " * 100, loop=True)]
    edge = [_out(refs[0]), _out("we need many plates"), _out(refs[2]), _out(refs[3])]
    vs = bench_edge_adaptation.compare_to_base({"synth": items}, {"synth": {"base/full": base, "edge/dyn": edge}})
    whole, rest = vs["edge/dyn"]["synth"], vs["edge/dyn"]["synth"]["no_loops"]
    assert rest["n"] == 3
    assert whole["bleu_mean"]["diff"] > 0 > rest["bleu_mean"]["diff"]  # the loop alone made edge look better
    # with no loop on either side there is nothing to set apart
    vs = bench_edge_adaptation.compare_to_base({"synth": items}, {"synth": {"base/full": edge, "edge/dyn": edge}})
    assert "no_loops" not in vs["edge/dyn"]["synth"]


def test_a_budget_table_is_recounted_from_its_eval(tmp_path):
    utts = [{"budget": b, "set": "real", "lang": "en", "task": "transcribe", "reference": "ten of clubs",
             "hypothesis": hyp} for b, hyp in ((0.0, "10 of clubs"), (0.5, "10 of clones"))]
    (tmp_path / "eval.json").write_text(json.dumps({"utterances": utts}))
    stale = {"budget": 0.0, "real_errors": 1, "real_words": 3, "skipped_measured_ms": 0.0}
    (tmp_path / "budget_table.json").write_text(json.dumps(
        {"rows": [stale, {**stale, "budget": 0.5, "real_errors": 2, "skipped_measured_ms": 12.5}]}))
    table = gates_runtime_table.rescore(tmp_path / "budget_table.json")
    assert [(r["budget"], r["real_errors"], r["real_words"]) for r in table["rows"]] == [(0.0, 0, 3), (0.5, 1, 3)]
    assert table["rows"][1]["skipped_measured_ms"] == 12.5 and table["normalizer"] >= 2
