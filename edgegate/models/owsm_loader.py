"""Load an OWSM checkpoint directory, as users download it, into ``edgegate.models.owsm.Owsm``.

The layout (paths inside ``config.yaml`` are relative to the directory)::

    meta.yaml
    exp/s2t_train_<tag>/config.yaml
    exp/s2t_train_<tag>/valid.total_count.ave_5best.pth      # a plain dict of tensors
    exp/s2t_stats_raw_bpe50000/train/feats_stats.npz
    data/token_list/bpe_unigram50000/{bpe.model,tokens.txt}

The ``.pth`` is read with ``torch.load(weights_only=True)`` (no pickle code runs) and loaded
strictly: ESPnet itself loads with ``strict=False``, where a wrong key goes unnoticed; here a missing or
unexpected key, or a shape that does not match the config, is a one-line ``ModelError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgegate.errors import ModelError
from edgegate.frontend_owsm import OwsmFrontend, load_stats
from edgegate.models.owsm import Owsm
from edgegate.models.owsm_config import OwsmConfig, locate_checkpoint, parse_config
from edgegate.tokenizer_owsm import OwsmTokenizer


@dataclass
class OwsmCheckpoint:
    model: Owsm
    tokenizer: OwsmTokenizer
    frontend: OwsmFrontend
    config: OwsmConfig
    directory: Path


def _listing(keys: list[str]) -> str:
    return ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")


def _read_config(path: Path) -> OwsmConfig:
    import yaml

    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ModelError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    return parse_config(cfg, str(path))


def _required(root: Path, relative: str | None, what: str) -> Path:
    if not relative:
        raise ModelError(f"{root}: config.yaml names no {what}")
    path = root / relative
    if not path.is_file():
        raise ModelError(f"{root}: missing {relative} ({what}, named in config.yaml); re-download the checkpoint "
                         "directory")
    return path


def _tokenizer(root: Path, config: OwsmConfig) -> OwsmTokenizer:
    bpe = _required(root, config.bpemodel, "the sentencepiece bpe.model")
    if isinstance(config.token_list, str):
        tokens = OwsmTokenizer.from_files(_required(root, config.token_list, "the token list"), bpe).token_list
    else:
        tokens = config.token_list
        beside = bpe.parent / "tokens.txt"
        if beside.is_file() and OwsmTokenizer.from_files(beside).token_list != tokens:
            raise ModelError(f"{beside} differs from config.yaml's token_list; the checkpoint directory is mixed "
                             "up, re-download it")
    return OwsmTokenizer(tokens, bpe, config.notime_symbol, config.first_time_symbol, config.last_time_symbol)


def load_state(model: Owsm, state: dict[str, torch.Tensor], source: str | Path) -> Owsm:
    """Strict load: every key present, none extra, every shape as the config says."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    if missing:
        raise ModelError(f"{source}: weights missing for {_listing(missing)}; not a checkpoint of this config")
    unexpected = [k for k in state if k not in expected]
    if unexpected:
        raise ModelError(f"{source}: unexpected weights {_listing(unexpected)}; this config.yaml does not "
                         "describe this checkpoint")
    for k, v in state.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise ModelError(f"{source}: {k} has shape {tuple(v.shape)}, the config gives {tuple(expected[k].shape)}")
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model.eval()


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a corrupt or pickled file
        raise ModelError(f"{path}: cannot read as a weights-only checkpoint ({str(exc).splitlines()[0]})") from exc
    if isinstance(state, dict) and isinstance(state.get("module"), dict):
        state = state["module"]  # as ESPnet unwraps it
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path}: not a plain dict of tensors (an ESPnet averaged .pth)")
    return state


def load_owsm(directory: str | Path) -> OwsmCheckpoint:
    """Model (eval mode), tokenizer and numpy frontend of an OWSM checkpoint directory."""
    files = locate_checkpoint(directory)
    config = _read_config(files.config)
    tokenizer = _tokenizer(files.root, config)
    config.dims.n_vocab = len(tokenizer.token_list)
    stats = _required(files.root, config.stats_file, "the feats_stats.npz of the global MVN")
    load_stats(stats)  # fails early, with the file's name, if it is not what ESPnet wrote
    model = load_state(Owsm(config.dims, config.frontend.n_fft), _read_weights(files.model), files.model)
    fe = config.frontend
    # The checkpoint's copies of the mel matrix and statistics are the ones ESPnet computes with.
    frontend = OwsmFrontend(model.frontend.logmel.melmat.numpy(), model.normalize.mean.numpy().astype(np.float64),
                            model.normalize.std.numpy().astype(np.float64), fe.n_fft, fe.win_length, fe.hop_length,
                            fe.sample_rate, fe.speech_length)
    return OwsmCheckpoint(model, tokenizer, frontend, config, files.root)
