"""The layering the code promises, checked: the runtime's import graph, where module names are
spelled, file and function sizes.

- ``edgegate.runtimes`` (and everything it imports) never imports ``edgegate.gated``,
  ``edgegate.training``, ``edgegate.export`` or torch: once by importing it in a subprocess where
  those (and onnx, transformers) cannot be imported, once by walking the static imports of every
  file under ``runtimes/``.
- ``edgegate.plan`` (the one planner of every path) is numpy-only in the same sense.
- Module names are assembled from f-strings only where the model defines them and where the
  manifest writer lays them out.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The package layout of pyproject.toml: edgegate.export = export/, edgegate.runtimes = runtimes/.
PACKAGE_DIRS = {"edgegate.export": ROOT / "export", "edgegate.runtimes": ROOT / "runtimes",
                "edgegate": ROOT / "edgegate"}
FORBIDDEN_EDGEGATE = ("edgegate.gated", "edgegate.training", "edgegate.export")
FORBIDDEN_TOP = ("torch", "onnx", "onnxscript", "transformers", "safetensors", "torchaudio")
# Imported inside a function, on purpose: the ExecuTorch Python bindings link libtorch, so that
# backend imports torch when it is created (and only then).
LAZY_TORCH_OK = {"edgegate.runtimes.backends.executorch"}

BLOCKER = textwrap.dedent('''
    import sys

    BLOCKED = ("torch", "onnx", "onnxscript", "transformers", "safetensors", "torchaudio")
    BLOCKED_EDGEGATE = ("edgegate.gated", "edgegate.training", "edgegate.export")

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED or any(name == b or name.startswith(b + ".") for b in BLOCKED_EDGEGATE):
                raise ModuleNotFoundError(f"{name} is blocked in this test", name=name)
            return None

    sys.meta_path.insert(0, Blocker())
''')


def module_file(name: str) -> Path | None:
    """The source file of an edgegate module, following the package-dir mapping."""
    for prefix in sorted(PACKAGE_DIRS, key=len, reverse=True):
        if name == prefix or name.startswith(prefix + "."):
            rest = name[len(prefix):].lstrip(".").split(".") if name != prefix else []
            base = PACKAGE_DIRS[prefix].joinpath(*rest)
            for candidate in (base.with_suffix(".py"), base / "__init__.py"):
                if candidate.is_file():
                    return candidate
            return None
    return None


def module_name(path: Path) -> str:
    for prefix, d in sorted(PACKAGE_DIRS.items(), key=lambda kv: len(str(kv[1])), reverse=True):
        if path.is_relative_to(d):
            parts = list(path.relative_to(d).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            return ".".join([prefix, *parts])
    raise AssertionError(path)


def imports_of(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at module level?) for every import statement of a file."""
    tree = ast.parse(path.read_text())
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    top_level = {id(n) for n in tree.body} | {id(n) for s in tree.body if isinstance(s, ast.If) for n in s.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, id(node) in top_level) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names]
            # "from pkg import submodule" imports the submodule; "from mod import name" imports mod.
            targets = [n for n in names if module_file(n) is not None] or [base]
            out += [(t, id(node) in top_level) for t in targets]
    return out


def closure(start: list[str], include_lazy: bool) -> dict[str, tuple[str, bool]]:
    """Every module reachable from ``start`` -> (who imported it first, at module level?)."""
    seen: dict[str, tuple[str, bool]] = {s: ("", True) for s in start}
    todo = list(start)
    while todo:
        mod = todo.pop()
        f = module_file(mod)
        if f is None:
            continue
        for target, at_top in imports_of(f):
            if not (at_top or include_lazy):
                continue
            parts = target.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c imports a and a.b too
                name = ".".join(parts[:i])
                if name not in seen:
                    seen[name] = (mod, at_top)
                    if name.startswith("edgegate"):
                        todo.append(name)
    return seen


def runtime_modules() -> list[str]:
    return sorted(module_name(p) for p in (ROOT / "runtimes").rglob("*.py"))


def test_static_imports_of_the_runtime():
    reach = closure(runtime_modules() + ["edgegate.plan"], include_lazy=True)
    bad = {m: by for m, by in reach.items()
           if any(m == f or m.startswith(f + ".") for f in FORBIDDEN_EDGEGATE)}
    assert not bad, f"the runtime reaches {bad}"
    torchy = {m: by for m, by in reach.items() if m.split(".")[0] in FORBIDDEN_TOP}
    lazy_ok = {m for m, (by, at_top) in torchy.items() if not at_top and by in LAZY_TORCH_OK and m == "torch"}
    assert set(torchy) - lazy_ok == set(), f"torch-side imports reached: {torchy}"
    # the walk sees what it should: the runtime does reach the shared numpy modules
    assert {"edgegate.plan", "edgegate.budget", "edgegate.pipeline", "edgegate.decoding"} <= set(reach)
    assert {"edgegate.models.owsm_windows", "edgegate.frontend_owsm", "edgegate.tokenizer_owsm"} <= set(reach)


def test_plan_imports_only_numpy_side_modules():
    reach = closure(["edgegate.plan"], include_lazy=True)
    assert not [m for m in reach if m.split(".")[0] in FORBIDDEN_TOP]
    assert not [m for m in reach if any(m.startswith(f) for f in FORBIDDEN_EDGEGATE)]


def test_runtime_imports_with_torch_and_the_pytorch_side_blocked():
    # The OWSM bundle path (runtimes/family.py imports these lazily) is checked here too.
    owsm = ["edgegate.models.owsm_windows", "edgegate.frontend_owsm", "edgegate.tokenizer_owsm"]
    mods = ", ".join(repr(m) for m in runtime_modules() + ["edgegate.plan", "edgegate.pipeline"] + owsm)
    code = BLOCKER + textwrap.dedent(f'''
        import importlib
        for m in ({mods}):
            importlib.import_module(m)
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED
                        or any(m == b or m.startswith(b + ".") for b in BLOCKED_EDGEGATE))
        print("leaked:", leaked)
        raise SystemExit(1 if leaked else 0)
    ''')
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "leaked: []" in proc.stdout


def test_the_blocker_really_blocks():
    """The subprocess check can fail: importing the PyTorch side under the blocker is refused."""
    code = BLOCKER + "import edgegate.gated\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode != 0 and "is blocked in this test" in proc.stderr


MODULE_NAME_FSTRING = re.compile(r'f"(encoder|decoder)\.\{')
# Where a model family defines its names (and its cost table keyed by them), and where the manifest
# writer lays out the modules (OWSM's always-on names are spelled in owsm_config.py too).
NAME_OWNERS = {"edgegate/models/whisper_layout.py", "export/whisper_graphs.py", "edgegate/models/owsm_config.py",
               "edgegate/models/owsm_costs.py"}


def production_files() -> list[Path]:
    return [p for d in ("edgegate", "export", "runtimes") for p in (ROOT / d).rglob("*.py")]


def test_module_names_are_spelled_only_by_the_model_and_the_manifest_writer():
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in production_files()
            for i, line in enumerate(p.read_text().splitlines(), 1)
            if MODULE_NAME_FSTRING.search(line) and str(p.relative_to(ROOT)) not in NAME_OWNERS]
    assert not hits, hits
    owners = "".join((ROOT / f).read_text() for f in NAME_OWNERS)
    assert MODULE_NAME_FSTRING.search(owners)  # the pattern does match where names are made


# Left long on purpose, each with its reason (the report names them too).
KNOWN_LONG: set[str] = set()


@pytest.mark.parametrize("limit_lines, limit_function", [(500, 80)])
def test_file_and_function_sizes(limit_lines, limit_function):
    long_files, long_functions = [], []
    for p in production_files():
        text = p.read_text()
        if text.count("\n") > limit_lines:
            long_files.append(f"{p.relative_to(ROOT)} ({text.count(chr(10))} lines)")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > limit_function and f"{p.relative_to(ROOT)}:{node.name}" not in KNOWN_LONG:
                    long_functions.append(f"{p.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    assert not long_files and not long_functions, long_files + long_functions
