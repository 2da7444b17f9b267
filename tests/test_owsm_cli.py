"""``edgegate transcribe --model OWSM_DIR``: the PyTorch OWSM path from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
sf = pytest.importorskip("soundfile")

from edgegate.cli import main  # noqa: E402

FIXTURE = Path(__file__).parent / "fixtures" / "owsm"


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
    with np.load(FIXTURE / "reference.npz", allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def wav(ref, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("owsm_cli") / "clip.wav"
    sf.write(path, ref["wave_int16"], 16000, subtype="PCM_16")
    return path


def test_transcribe_prints_espnet_greedy_text(wav, ref, capsys):
    assert main(["transcribe", str(wav), "--model", str(FIXTURE / "owsm_tiny"), "--language", "en",
                 "--threads", "1"]) == 0
    assert capsys.readouterr().out.strip() == str(ref["greedy_text_nospecial"])


def test_transcribe_json_detects_the_language(wav, ref, capsys):
    assert main(["transcribe", str(wav), "--model", str(FIXTURE / "owsm_tiny"), "--format", "json",
                 "--threads", "1"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["language"] == str(ref["lid_langs"][0]).strip("<>")


@pytest.mark.parametrize("extra", [["--budget", "0.2"], ["--vad"], ["--language", "klingon"]])
def test_unsupported_options_are_one_line_errors(wav, capsys, extra):
    assert main(["transcribe", str(wav), "--model", str(FIXTURE / "owsm_tiny"), *extra]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
