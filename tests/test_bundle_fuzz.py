"""The bundle reader under attack: a real manifest mutated a thousand ways.

Each example takes the manifest of a real exported bundle and changes it: a key deleted, a value
of the wrong type, a huge or non-finite number, a wrong hash, a file named ``../../etc/passwd``
or ``/etc/passwd``, a listed file replaced by a symlink out of the bundle. Loading must then either
succeed or raise :class:`BundleError` with a one-line message, and must never open a file outside
the bundle directory (every ``open`` is watched).
"""

from __future__ import annotations

import builtins
import io
import json
import math
import os
import re
import shutil
from pathlib import Path

import pytest

pytest.importorskip("torch")
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from edgegate.errors import BundleError  # noqa: E402
from edgegate.export.core import export_bundle  # noqa: E402
from edgegate.runtimes.bundle import Bundle  # noqa: E402

from tiny import tiny_predictor, tiny_whisper  # noqa: E402

ESCAPES = ["../../etc/passwd", "/etc/passwd", "../outside.onnx", "a/../../x", "..", "./../x", "C:\\x.onnx",
           "x\x00.onnx", "", "/", "~/x", "manifest.json/../../x"]
HUGE = [2 ** 70, -(2 ** 70), 10 ** 400, 1e308, -1e308, math.inf, -math.inf, math.nan, -1, 0, 1 << 31]
STRINGS = ESCAPES + ["x", "encoder.0.attn", "float64", "batch", "speakers", "a\nb", "é" * 300, "0" * 64, "f" * 64]
leaf = st.one_of(st.none(), st.booleans(), st.sampled_from(HUGE), st.integers(-5, 5000),
                 st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(STRINGS), st.text(max_size=20))
json_values = st.recursive(leaf, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.sampled_from(["name", "file", "shape", "value", "gate", "x", ""]) | st.text(max_size=8), inner, max_size=4),
    max_leaves=8)


@pytest.fixture(scope="module")
def fuzz_bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    model = tiny_whisper(n_audio_state=16, n_text_state=16, n_audio_head=2, n_text_head=2)  # small files
    path = export_bundle(root / "bundle", "cpu", model, gates=tiny_predictor(len(model.gate_names)), budget=0.3,
                         progress=False, log=lambda m: None)
    (root / "outside.onnx").write_bytes((path / "encoder.0.attn.onnx").read_bytes())
    return path


def paths_of(value, prefix=()):
    """Every (path, value) of a JSON tree, the root excluded."""
    out = []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        out.append((prefix + (k,), v))
        out += paths_of(v, prefix + (k,))
    return out


def mutate(manifest: dict, path: tuple, action: str, new) -> dict:
    m = json.loads(json.dumps(manifest))
    parent = m
    for k in path[:-1]:
        parent = parent[k]
    key = path[-1]
    if action == "delete":
        if isinstance(parent, dict):
            del parent[key]
        else:
            parent.pop(key)
    elif action == "rename" and isinstance(parent, dict):  # a file listed under another (escaping) name
        parent[new if isinstance(new, str) else "../../etc/passwd"] = parent.pop(key)
    else:
        parent[key] = new
    return m


class OpenWatch:
    """Records every path opened (builtins.open, io.open, os.open) while active."""

    def __init__(self, monkeypatch):
        self.opened: list[Path] = []
        real_open, real_io_open, real_os_open = builtins.open, io.open, os.open

        def watch(real):
            def opener(file, *args, **kwargs):
                if isinstance(file, (str, os.PathLike)):
                    self.opened.append(Path(os.fsdecode(file)))
                return real(file, *args, **kwargs)
            return opener

        monkeypatch.setattr(builtins, "open", watch(real_open))
        monkeypatch.setattr(io, "open", watch(real_io_open))
        monkeypatch.setattr(os, "open", watch(real_os_open))


def check_load(bundle: Path, watch: OpenWatch) -> str:
    """'ok' or 'refused'; anything but a one-line BundleError, or an open outside, fails the test."""
    watch.opened.clear()
    try:
        Bundle.open(bundle)
        outcome = "ok"
    except BundleError as exc:
        assert "\n" not in str(exc), str(exc)
        outcome = "refused"
    inside = bundle.resolve()
    absolute = [p if p.is_absolute() else Path.cwd() / p for p in watch.opened]
    outside = [p for p in absolute if not p.resolve().is_relative_to(inside)]
    assert not outside, outside
    return outcome


MUTATIONS = st.tuples(st.integers(0, 10 ** 9), st.sampled_from(["replace", "replace", "delete", "rename"]),
                      json_values, st.booleans())


@settings(max_examples=1000, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(mutation=MUTATIONS)
def test_mutated_manifests_load_or_fail_in_one_line(fuzz_bundle, monkeypatch, mutation):
    pick, action, new, symlink = mutation
    original = (fuzz_bundle / "manifest.json").read_text()
    manifest = json.loads(original)
    paths = paths_of(manifest)
    path, _ = paths[pick % len(paths)]
    listed = sorted(manifest["files"])
    target = fuzz_bundle / listed[pick % len(listed)]
    backup = target.read_bytes()
    try:
        (fuzz_bundle / "manifest.json").write_text(json.dumps(mutate(manifest, path, action, new)))
        if symlink:  # the same bytes, but a link out of the bundle: only the link check can refuse it
            target.unlink()
            target.symlink_to(fuzz_bundle.parent / "outside.onnx")
        with monkeypatch.context() as mp:
            check_load(fuzz_bundle, OpenWatch(mp))
    finally:
        (fuzz_bundle / "manifest.json").write_text(original)
        if target.is_symlink():
            target.unlink()
            target.write_bytes(backup)


def test_the_fuzzer_hits_both_outcomes(fuzz_bundle, monkeypatch):
    """Mutations are not all refused (nor all accepted): a field the reader does not use passes."""
    original = (fuzz_bundle / "manifest.json").read_text()
    manifest = json.loads(original)
    watch = OpenWatch(monkeypatch)
    try:
        outcomes = set()
        for path, new in [(("provenance", "python"), "9.9"), (("modules", 0, "flops"), "many"),
                          (("files", "tokenizer.json", "sha256"), "0" * 64)]:
            (fuzz_bundle / "manifest.json").write_text(json.dumps(mutate(manifest, path, "replace", new)))
            outcomes.add(check_load(fuzz_bundle, watch))
        assert outcomes == {"ok", "refused"}
    finally:
        (fuzz_bundle / "manifest.json").write_text(original)


@pytest.mark.parametrize("where, value, fragment", [
    (("modules", 3, "file"), "../../etc/passwd", "outside the bundle"),
    (("modules", 3, "file"), "/etc/passwd", "outside the bundle"),
    (("tokenizer", "file"), "../outside.onnx", "outside the bundle"),
    (("execution", "text_positions"), 2 ** 70, "execution.text_positions"),
    (("costs", "terms", "gates", "encoder.0.attn", "t"), 1e308, "costs.terms.gates"),
    (("modules", 5, "inputs", 0, "shape", 0), "speakers", "shape"),
    (("modules", 5, "inputs", 0, "value"), "nowhere", "reads 'nowhere'"),
    (("schema_version",), 1, "edgegate export ... --force"),
])
def test_named_attacks(fuzz_bundle, monkeypatch, where, value, fragment):
    original = (fuzz_bundle / "manifest.json").read_text()
    try:
        (fuzz_bundle / "manifest.json").write_text(json.dumps(mutate(json.loads(original), where, "replace", value)))
        with pytest.raises(BundleError, match=re.escape(fragment)) as info:
            Bundle.open(fuzz_bundle)
        assert "\n" not in str(info.value)
    finally:
        (fuzz_bundle / "manifest.json").write_text(original)


def test_symlinked_module_file_is_refused(fuzz_bundle, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(fuzz_bundle, copy)
    target = copy / "encoder.0.attn.onnx"
    target.unlink()
    target.symlink_to(fuzz_bundle.parent / "outside.onnx")  # identical bytes, right hash, but outside
    with pytest.raises(BundleError, match="link out of the bundle"):
        Bundle.open(copy)
