"""A damaged bundle is refused at load, with one line naming the file, before anything runs."""

import argparse
import json
import shutil

import pytest

pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from edgegate.errors import BundleError  # noqa: E402
from edgegate.export.core import export_bundle  # noqa: E402
from edgegate.runtimes.session import Session  # noqa: E402

from tiny import tiny_predictor, tiny_whisper  # noqa: E402


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    model = tiny_whisper()
    return export_bundle(tmp_path_factory.mktemp("integrity") / "b", "cpu", model,
                         gates=tiny_predictor(len(model.gate_names)), progress=False, log=lambda m: None)


@pytest.fixture
def bundle(pristine, tmp_path):
    dst = tmp_path / "bundle"
    shutil.copytree(pristine, dst)
    return dst


@pytest.fixture
def no_sessions(monkeypatch):
    """Any ONNX Runtime session creation fails the test."""
    def forbidden(*args, **kwargs):
        raise AssertionError("an ONNX Runtime session was created for a refused bundle")

    monkeypatch.setattr(ort, "InferenceSession", forbidden)


def flip_byte(path, offset=None):
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0x01
    path.write_bytes(bytes(data))


def edit_manifest(bundle, fn):
    m = json.loads((bundle / "manifest.json").read_text())
    fn(m)
    (bundle / "manifest.json").write_text(json.dumps(m))


def refused(bundle, *fragments):
    with pytest.raises(BundleError) as info:
        Session.load(bundle)
    msg = str(info.value)
    assert "\n" not in msg
    for f in fragments:
        assert f in msg, msg
    return msg


@pytest.mark.parametrize("name", ["encoder.0.mlp.onnx", "decoder.logits.onnx", "decoder.1.mlp.adapter.onnx",
                                  "predictor.onnx", "tokenizer.json"])
def test_flipped_byte(bundle, no_sessions, name):
    flip_byte(bundle / name)
    refused(bundle, name, "SHA-256 mismatch")


def test_flipped_byte_in_onnx_header(bundle, no_sessions):
    flip_byte(bundle / "decoder.0.self_attn.onnx", offset=3)
    refused(bundle, "decoder.0.self_attn.onnx")


def test_missing_file(bundle, no_sessions):
    (bundle / "decoder.1.cross_kv.onnx").unlink()
    refused(bundle, "decoder.1.cross_kv.onnx", "missing")


def test_truncated_onnx(bundle, no_sessions):
    p = bundle / "encoder.stem.onnx"
    p.write_bytes(p.read_bytes()[:1000])
    refused(bundle, "encoder.stem.onnx", "truncated")


@pytest.mark.parametrize("version, fix", [(3, "upgrade edgegate"), (0, "re-export"), ("1", "re-export")])
def test_unknown_schema_version(bundle, no_sessions, version, fix):
    edit_manifest(bundle, lambda m: m.update(schema_version=version))
    refused(bundle, "manifest.json", "unknown schema version", fix)


def test_manifest_problems(bundle, no_sessions):
    (bundle / "manifest.json").write_text("{not json")
    refused(bundle, "manifest.json", "not valid JSON")
    (bundle / "manifest.json").unlink()
    refused(bundle, "manifest.json", "missing")


def test_unlisted_module_file_and_path_escape(bundle, no_sessions):
    edit_manifest(bundle, lambda m: m["files"].pop("encoder.1.mlp.onnx"))
    refused(bundle, "encoder.1.mlp.onnx", "no SHA-256")
    shutil.copy(bundle / "encoder.0.mlp.onnx", bundle / "x.onnx")

    def escape(m):
        m["modules"][0]["file"] = "../outside.onnx"
    edit_manifest(bundle, escape)
    refused(bundle, "outside the bundle")


def test_not_a_bundle(tmp_path, no_sessions):
    refused(tmp_path / "nowhere", "bundle not found")
    refused(tmp_path, "manifest.json", "missing")


def test_pristine_copy_loads(bundle):
    s = Session.load(bundle)
    assert s.has_predictor


def test_inspect_reports_failures(bundle, capsys):
    from edgegate.commands import inspect

    parser = argparse.ArgumentParser()
    inspect.register(parser.add_subparsers())
    args = parser.parse_args(["inspect", str(bundle)])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "hashes   ok" in out and "encoder.0.attn" in out and "predictor.onnx" in out
    flip_byte(bundle / "decoder.0.mlp.onnx")
    (bundle / "decoder.1.self_attn.onnx").unlink()
    assert args.func(args) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "decoder.0.mlp.onnx: SHA-256 mismatch" in out
    assert "decoder.1.self_attn.onnx: missing" in out
    args = parser.parse_args(["inspect", str(bundle), "--json"])
    assert args.func(args) == 1
    report = json.loads(capsys.readouterr().out)
    failed = {c["file"] for c in report["hash_check"] if not c["ok"]}
    assert failed == {"decoder.0.mlp.onnx", "decoder.1.self_attn.onnx"}
