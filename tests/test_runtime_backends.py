"""The backend registry and the ONNX Runtime backend's thread-pool handling."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from edgegate.errors import BackendError
from edgegate.runtimes.backends import registry
from edgegate.runtimes.backends.base import Backend, Module


def test_names_and_aliases():
    assert registry.canonical("ORT") == "onnxruntime"
    assert registry.canonical("trt") == "tensorrt"
    with pytest.raises(BackendError, match="unknown backend 'coreml'"):
        registry.canonical("coreml")


def test_auto_follows_the_profile_order_and_format(monkeypatch):
    assert registry.choose_backend("auto", ["executorch", "onnxruntime"], "onnx") == "onnxruntime"
    assert registry.choose_backend("auto", ["tensorrt", "onnxruntime"], "onnx") == "onnxruntime"
    with pytest.raises(BackendError, match="reads pte bundles"):
        registry.choose_backend("executorch", ["onnxruntime"], "onnx")
    monkeypatch.setattr(registry.backend_class("executorch"), "is_available", classmethod(lambda c: False))
    with pytest.raises(BackendError, match="pip install executorch"):
        registry.choose_backend("auto", ["executorch"], "pte")


def test_missing_backends_name_the_fix(monkeypatch):
    monkeypatch.setattr(registry.backend_class("tensorrt"), "is_available", classmethod(lambda c: False))
    with pytest.raises(BackendError, match="pip install tensorrt"):
        registry.create_backend("tensorrt")
    cls = registry.backend_class("onnxruntime")
    monkeypatch.setattr(cls, "is_available", classmethod(lambda c: False))
    with pytest.raises(BackendError, match="pip install onnxruntime") as info:
        registry.create_backend("onnxruntime")
    assert "\n" not in str(info.value)


def test_interface_is_small_enough_to_implement():
    class Echo(Module):
        def __init__(self):
            self.name, self.input_names, self.output_names = "echo", ("x",), ("x_out",)

        def run(self, feed):
            return [feed["x"]]

    class NumpyBackend(Backend):
        name, pip_package, file_format = "numpy", "numpy", "onnx"

        @classmethod
        def is_available(cls):
            return True

        def load(self, path, name="", method=None):
            return Echo()

    m = NumpyBackend(threads=1).load("whatever.onnx")
    x = np.ones((1, 2, 3), np.float32)
    assert m(x=x)[0] is x


THREADS = textwrap.dedent('''
    import sys, warnings
    import numpy as np
    import onnx
    from onnx import TensorProto, helper
    from edgegate.runtimes.backends.ort import OrtBackend
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])])
    path = sys.argv[1] + "/relu.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    x = np.array([-1.0, 2.0], np.float32)
    for mode in ("session", "spin"):
        out = OrtBackend(threads=2, device="cpu", options={"threading": mode}).load(path).run({"x": x})[0]
        assert out.tolist() == [0.0, 2.0]
    for arena in ("shared", "off", "session", "shared"):  # the shared arena registers once per process
        be = OrtBackend(threads=1, device="cpu", options={"arena": arena})
        assert be.load(path).run({"x": x})[0].tolist() == [0.0, 2.0] and f"{arena} arena" in be.describe()
    a = OrtBackend(threads=2, device="cpu", options={"threading": "global"})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        b = OrtBackend(threads=1, device="cpu", options={"threading": "global"})  # second call: guarded
    assert any("already has 2 threads" in str(w.message) for w in caught)
    for be in (a, b):
        assert be.load(path).run({"x": x})[0].tolist() == [0.0, 2.0]
        assert "global pool" in be.describe()
    empty = np.zeros(0, np.float32)
    assert a.load(path).run({"x": empty})[0].shape == (0,)
    print("ok")
''')


def test_ort_thread_modes_and_global_pool_guard(tmp_path):
    pytest.importorskip("onnx")
    proc = subprocess.run([sys.executable, "-c", THREADS, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_ort_rejects_methods_and_bad_modes(tmp_path):
    from edgegate.runtimes.backends.ort import OrtBackend

    with pytest.raises(BackendError, match="threading mode"):
        OrtBackend(options={"threading": "turbo"})
    with pytest.raises(BackendError, match="arena mode"):
        OrtBackend(options={"arena": "huge"})
    with pytest.raises(BackendError, match="executorch"):
        OrtBackend(device="cpu").load(tmp_path / "x.onnx", method="forward")
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    with pytest.raises(BackendError, match="cannot load") as info:
        OrtBackend(device="cpu").load(tmp_path / "bad.onnx")
    assert "\n" not in str(info.value)


def test_ort_shrinks_the_arena_once_per_window(tmp_path):
    """Only the last encoder-stage graph returns the arena's free chunks (after the 1500-position peaks)."""
    onnx = pytest.importorskip("onnx")
    from types import SimpleNamespace

    from onnx import TensorProto, helper

    from edgegate.runtimes.backends.ort import OrtBackend

    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])])
    for name in ("a", "b", "c"):
        onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / f"{name}.onnx"))
    graphs = [SimpleNamespace(file="a.onnx", stage="encoder"), SimpleNamespace(file="b.onnx", stage="encoder"),
              SimpleNamespace(file="c.onnx", stage="decoder_step")]
    be = OrtBackend(threads=1, device="cpu")
    be.prepare(tmp_path, graphs, {})
    mods = {n: be.load(tmp_path / f"{n}.onnx") for n in ("a", "b", "c")}
    assert [n for n, m in mods.items() if m._run_options is not None] == ["b"]
    x = np.array([-1.0, 3.0], np.float32)
    assert all(m.run({"x": x})[0].tolist() == [0.0, 3.0] for m in mods.values())
    off = OrtBackend(threads=1, device="cpu", options={"arena": "off"})
    off.prepare(tmp_path, graphs, {})
    assert off.load(tmp_path / "b.onnx")._run_options is None
