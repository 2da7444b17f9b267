"""The runtime works in a process where torch (and onnx, transformers) cannot be imported."""

import json
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("torch")

from edgegate.export.core import export_bundle  # noqa: E402

from tiny import tiny_predictor, tiny_whisper  # noqa: E402

BLOCKER = textwrap.dedent('''
    import sys

    BLOCKED = ("torch", "onnx", "onnxscript", "transformers", "safetensors", "torchaudio")

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"{name} is blocked in this test", name=name)
            return None

    sys.meta_path.insert(0, Blocker())
''')

SCRIPT = BLOCKER + textwrap.dedent('''
    import json
    import numpy as np

    import edgegate.runtimes
    from edgegate.runtimes.session import Session
    from edgegate.runtimes.bundle import Bundle
    from edgegate.commands import inspect, profiles  # the torch-free commands
    from edgegate.export.profiles import get_profile

    try:
        import torch  # noqa: F401
        raise SystemExit("torch imported although blocked")
    except ModuleNotFoundError:
        pass

    session = Session.load(sys.argv[1], threads=1)
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal(32000)).astype(np.float32)
    dense = session.transcribe_windows(audio, language="en", budget=0.0)
    gated = session.transcribe_windows(audio, language="en", budget=0.5)
    beam = session.transcribe_windows(audio, beam_size=2)
    print(json.dumps({
        "dense_tokens": dense.tokens, "gated_mask": gated.mask, "beam_language": beam.language,
        "leaked": sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED),
        "profile": get_profile("jetson").name,
    }))
''')


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    model = tiny_whisper()
    return export_bundle(tmp_path_factory.mktemp("torchfree") / "b", "cpu", model,
                         gates=tiny_predictor(len(model.gate_names)), progress=False, log=lambda m: None)


def test_runtime_transcribes_without_torch(bundle):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(bundle)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["leaked"] == []
    assert len(out["dense_tokens"]) > 0
    assert not all(out["gated_mask"])
    assert out["beam_language"]
    assert out["profile"] == "jetson-orin-nano"


def test_cli_inspect_without_torch(bundle):
    code = BLOCKER + textwrap.dedent('''
        import argparse
        from edgegate.commands import inspect
        p = argparse.ArgumentParser()
        inspect.register(p.add_subparsers())
        a = p.parse_args(["inspect", sys.argv[1]])
        rc = a.func(a)
        assert not any(m.split(".")[0] in BLOCKED for m in sys.modules)
        raise SystemExit(rc)
    ''')
    proc = subprocess.run([sys.executable, "-c", code, str(bundle)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "hashes   ok" in proc.stdout
