"""Device profiles: which backend, precision, threads and default budget a target gets.

Built-in targets (``edgegate profiles`` lists them):

=================  ==========================  =========  =======  ======  =======
target             backends (in order)         precision  threads  budget  scope
=================  ==========================  =========  =======  ======  =======
cpu                onnxruntime                 int8       2        0.3     both
android            executorch, onnxruntime     int8       4        0.4     both
jetson-orin-nano   tensorrt, onnxruntime       fp16       6        0.5     decoder
jetson-agx-orin    tensorrt, onnxruntime       fp16       8        0.3     decoder
=================  ==========================  =========  =======  ======  =======

Precision is the module graphs' (``edgegate export --precision`` overrides it): int8 is dynamic
int8 weights with reduce_range on ONNX Runtime (:data:`edgegate.export.quantize.PRECISION_METHODS`)
and XNNPACK's dynamically quantised linears in a ``.pte``; fp16 is what TensorRT builds its
engines in. The gate predictor and skip adapters always stay fp32.

``--target jetson`` means ``jetson-orin-nano``. The budgets follow DESIGN.md section 5: on CPU
the encoder dominates so both scopes are gated; on a Jetson GPU the autoregressive decoder is
launch-bound, which is where decoder pruning pays. A budget only applies to a bundle that
carries a gate predictor (``edgegate export --gates``); without one the runtime runs dense.

User profiles are TOML or JSON files with the same keys (``name`` required)::

    name = "pi5"
    description = "Raspberry Pi 5, 4 cores"
    base = "cpu"           # optional: start from a built-in and override
    threads = 4
    budget = 0.5
    scope = "encoder"

Pass a file path to ``--target``, or drop files into ``$EDGEGATE_PROFILES`` (a directory) or the
user config directory (``<config>/edgegate/profiles/``) to make them ``--target NAME``.
This module is torch-free.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from edgegate.budget import COST_UNITS, SCOPES, Budget, validate_budget
from edgegate.errors import BudgetError, EdgegateError

PRECISIONS = ("fp32", "int8", "fp16")
FORMATS = ("onnx", "pte")
DEVICES = ("auto", "cpu", "gpu")


class ProfileError(EdgegateError):
    """A device profile cannot be found or is invalid."""


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    description: str = ""
    backends: tuple[str, ...] = ("onnxruntime",)  # preference order for --backend auto
    format: str = "onnx"  # module file format the exporter writes
    precision: str = "fp32"
    device: str = "auto"  # cpu forces the CPU even where a GPU provider exists
    threads: int = 2
    budget: float = 0.0
    scope: str = "both"
    cost_unit: str = "flops"
    pinned: tuple[str, ...] = ()
    opset: int = 17
    source: str = "built-in"

    def __post_init__(self) -> None:
        def bad(what: str) -> ProfileError:
            return ProfileError(f"device profile {self.name!r} ({self.source}): {what}")

        if not self.name or not isinstance(self.name, str):
            raise bad("needs a non-empty 'name'")
        if self.precision not in PRECISIONS:
            raise bad(f"precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        if self.format not in FORMATS:
            raise bad(f"format {self.format!r} is not one of {', '.join(FORMATS)}")
        if self.device not in DEVICES:
            raise bad(f"device {self.device!r} is not one of {', '.join(DEVICES)}")
        if self.scope not in SCOPES:
            raise bad(f"scope {self.scope!r} is not one of {', '.join(SCOPES)}")
        if self.cost_unit not in COST_UNITS:
            raise bad(f"cost_unit {self.cost_unit!r} is not one of {', '.join(COST_UNITS)}")
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1:
            raise bad(f"threads must be a positive integer, got {self.threads!r}")
        if not isinstance(self.opset, int) or self.opset < 17:
            raise bad(f"opset must be an integer >= 17, got {self.opset!r}")
        try:
            object.__setattr__(self, "budget", validate_budget(self.budget))
        except EdgegateError as exc:
            raise bad(str(exc)) from None
        if isinstance(self.backends, str):
            object.__setattr__(self, "backends", (self.backends,))
        object.__setattr__(self, "backends", tuple(self.backends))
        object.__setattr__(self, "pinned", tuple(self.pinned))
        if not self.backends:
            raise bad("lists no backends")

    def export_budget(self, gate_set: dict[str, Any], gate_names: list[str], budget: float | None = None,
                      scope: str | None = None, model_kind: str = "model") -> Budget:
        """The budget a bundle is exported with: ``budget``/``scope`` as asked, else the gate set's scope and
        this profile's value. The unit the gates were trained to budget wins over the profile's: an ms set
        planned in FLOPs skips other modules than it learned to skip. Pinning a module the model lacks is
        refused."""
        value = self.budget if budget is None else budget
        the_budget = Budget(value, scope or gate_set.get("scope") or self.scope,
                            gate_set.get("cost_unit") or self.cost_unit, self.pinned)
        for p in the_budget.pinned:
            if p not in gate_names:
                raise BudgetError(f"profile {self.name} pins {p!r}, which is not a module of this {model_kind}")
        return the_budget

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["backends"] = list(self.backends)
        d["pinned"] = list(self.pinned)
        return d


BUILTIN: dict[str, DeviceProfile] = {p.name: p for p in (
    DeviceProfile("cpu", "x86-64 / arm64 CPU with ONNX Runtime", ("onnxruntime",), "onnx", "int8", "cpu",
                  threads=2, budget=0.3, scope="both"),
    DeviceProfile("android", "Android phone, ExecuTorch with XNNPACK (ONNX Runtime as fallback)",
                  ("executorch", "onnxruntime"), "pte", "int8", "cpu", threads=4, budget=0.4, scope="both"),
    DeviceProfile("jetson-orin-nano", "NVIDIA Jetson Orin Nano, TensorRT fp16 (engines built on the device)",
                  ("tensorrt", "onnxruntime"), "onnx", "fp16", "gpu", threads=6, budget=0.5, scope="decoder"),
    DeviceProfile("jetson-agx-orin", "NVIDIA Jetson AGX Orin, TensorRT fp16 (engines built on the device)",
                  ("tensorrt", "onnxruntime"), "onnx", "fp16", "gpu", threads=8, budget=0.3, scope="decoder"),
)}
ALIASES = {"jetson": "jetson-orin-nano", "orin-nano": "jetson-orin-nano", "agx-orin": "jetson-agx-orin",
           "x86": "cpu", "phone": "android"}
_FIELDS = {f.name for f in fields(DeviceProfile)}


def user_profile_dirs() -> list[Path]:
    dirs = []
    env = os.environ.get("EDGEGATE_PROFILES")
    if env:
        dirs += [Path(p) for p in env.split(os.pathsep) if p]
    from platformdirs import user_config_dir

    dirs.append(Path(user_config_dir("edgegate")) / "profiles")
    return dirs


def _read_file(path: Path) -> dict[str, Any]:
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                try:
                    import tomli as tomllib  # type: ignore[no-redef]
                except ModuleNotFoundError:
                    raise ProfileError(f"{path}: reading TOML on Python 3.10 needs tomli (pip install tomli), "
                                       "or write the profile as JSON") from None
            data = tomllib.loads(text)
    except ProfileError:
        raise
    except Exception as exc:  # json / toml decode errors
        raise ProfileError(f"{path}: not a valid {path.suffix.lstrip('.').upper() or 'TOML'} profile ({exc})") from None
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: a profile must be a table/object of keys")
    return data


def profile_from_dict(data: dict[str, Any], source: str) -> DeviceProfile:
    data = dict(data)
    base_name = data.pop("base", None)
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise ProfileError(f"{source}: unknown profile key(s) {', '.join(unknown)}; "
                           f"known: {', '.join(sorted(_FIELDS - {'source'}))}")
    if "name" not in data:
        raise ProfileError(f"{source}: a profile needs a 'name'")
    data["source"] = source
    if "backends" in data and isinstance(data["backends"], list):
        data["backends"] = tuple(data["backends"])
    if base_name is not None:
        base = BUILTIN.get(ALIASES.get(base_name, base_name))
        if base is None:
            raise ProfileError(f"{source}: base {base_name!r} is not a built-in profile ({', '.join(BUILTIN)})")
        try:
            return replace(base, **data)
        except TypeError as exc:
            raise ProfileError(f"{source}: {exc}") from None
    try:
        return DeviceProfile(**data)
    except TypeError as exc:
        raise ProfileError(f"{source}: {exc}") from None


def load_profile_file(path: str | Path) -> DeviceProfile:
    path = Path(path).expanduser()
    if not path.is_file():
        raise ProfileError(f"profile file not found: {path}")
    return profile_from_dict(_read_file(path), str(path))


def user_profiles() -> dict[str, DeviceProfile]:
    found: dict[str, DeviceProfile] = {}
    for d in user_profile_dirs():
        if not d.is_dir():
            continue
        for p in sorted(d.iterdir()):
            if p.suffix.lower() in (".toml", ".json"):
                prof = load_profile_file(p)
                found.setdefault(prof.name, prof)
    return found


def all_profiles() -> dict[str, DeviceProfile]:
    """Built-in profiles, then user profiles (a user profile may not shadow a built-in name)."""
    out = dict(BUILTIN)
    for name, prof in user_profiles().items():
        out.setdefault(name, prof)
    return out


def get_profile(target: str | Path | DeviceProfile) -> DeviceProfile:
    """A built-in name or alias, a user profile name, or a path to a .toml / .json profile."""
    if isinstance(target, DeviceProfile):
        return target
    key = str(target)
    if key in BUILTIN or key in ALIASES:
        return BUILTIN[ALIASES.get(key, key)]
    if key.endswith((".toml", ".json")) or os.sep in key:
        return load_profile_file(key)
    users = user_profiles()
    if key in users:
        return users[key]
    names = sorted(BUILTIN) + sorted(ALIASES) + sorted(users)
    raise ProfileError(f"unknown target {key!r}: use one of {', '.join(names)} or a profile file "
                       "(.toml/.json); edgegate profiles lists them")


__all__ = ["DeviceProfile", "ProfileError", "BUILTIN", "ALIASES", "get_profile", "all_profiles",
           "load_profile_file", "profile_from_dict", "user_profiles"]
