"""The example programs under apps/ (voice commands, file transcriber, live demo)."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

APPS = Path(__file__).resolve().parent.parent / "apps"


def load_app(name: str):
    spec = importlib.util.spec_from_file_location(f"apps_{name}", APPS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("text, actions", [
    ("Turn the lights on.", ["lights_on"]),
    ("Lights, on!", ["lights_on"]),
    ("Turn off the lights.", ["lights_off"]),
    ("lights off", ["lights_off"]),
    ("Light soff", ["lights_off"]),
    ("Volume up please, and then stop.", ["volume_up", "stop"]),
    ("Turn it down.", ["volume_down"]),
    ("Hello there, how are you?", []),
])
def test_voice_command_matching(text, actions):
    vc = load_app("voice_commands")
    assert [m.action for m in vc.match_commands(text)] == actions


def test_home_actions():
    vc = load_app("voice_commands")
    home = vc.Home()
    assert home.do("lights_on").startswith("lights on")
    for _ in range(10):
        home.do("volume_up")
    assert home.volume == 10 and home.log[0] == "lights_on"


@pytest.mark.slow
def test_voice_commands_app_on_synthesized_speech(tmp_path, capsys):
    if shutil.which("espeak-ng") is None or shutil.which("sox") is None:
        pytest.skip("espeak-ng and sox are needed to synthesize the commands")
    import soundfile as sf

    from edgegate.data.tts import synthesize

    parts = [np.zeros(8000, np.float32)]
    for i, phrase in enumerate(["Turn the lights on.", "Make it louder.", "Stop the music."]):
        wav = synthesize(phrase, "en", "en-us", 0.9, 50, tmp_path / f"p{i}.wav")
        parts += [sf.read(wav, dtype="float32")[0], np.zeros(16000, np.float32)]
    commands = tmp_path / "commands.wav"
    sf.write(commands, np.concatenate(parts), 16000)
    code = load_app("voice_commands").main(["--input", str(commands), "--fast", "--profile", "cpu"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "-> lights_on" in out and "-> volume_up" in out and "-> stop" in out, out
    assert "no gate predictor" in err  # the cpu profile's budget is set aside for the PyTorch model


@pytest.mark.slow
def test_transcribe_files_app(librivox, tmp_path, capsys):
    path, ref = min(librivox, key=lambda c: c[0].stat().st_size)
    code = load_app("transcribe_files").main([str(path), str(tmp_path / "missing.wav"), "--language", "en",
                                              "--split"])
    out, err = capsys.readouterr()
    assert code == 1  # one file failed
    assert "young man" in out.lower() and "error: audio file not found" in err and "Traceback" not in err
