"""What gate training needs of an OWSM checkpoint: model, tokenizer, language codes and per-utterance features.

``edgegate train-gates --model OWSM_DIR`` runs the project's training loop (``edgegate.training``)
unchanged; only these inputs differ from Whisper's:
- features: the first input window's normalised features (frames, n_mels), what ``Owsm.embed_audio``
  reads; the predictor's statistics over its real frames; planning costs at the full window's encoder
  positions (OWSM never trims its input: ``--audio-ctx`` does not apply);
- languages: the manifest may give Whisper's codes (``en``) or OWSM's (``eng``); the predictor's
  language index counts OWSM's codes (``tokenizer.language_codes``);
- adaptation: skip adapters only on modules whose skip leaves the residual stream (the FFNs and the
  decoder modules). A branch's (attention, cgMLP) adapter would have to bypass the merge, which the
  runtime cannot run yet; LoRA and full fine-tuning are not wired for OWSM's module names yet.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgegate.models.owsm import Owsm
from edgegate.models.owsm_config import is_owsm_dir
from edgegate.models.owsm_costs import flop_costs
from edgegate.models.owsm_loader import OwsmCheckpoint, load_owsm
from edgegate.models.owsm_windows import OwsmWindows, owsm_planner, subsampled
from edgegate.tokenizer_owsm import OwsmTokenizer
from edgegate.train_config import TrainingError


@dataclass
class OwsmTrainingInputs:
    model: Owsm
    tokenizer: OwsmTokenizer
    entries: list
    codes: list[str]
    features: Any  # samples -> (encoder input (frames, n_mels), stats (2 n_mels,), planning costs (L,))


def window_features(ckpt: OwsmCheckpoint):
    """``features(samples)`` for training: the first window, its statistics and planning FLOPs."""
    positions = subsampled(1 + ckpt.frontend.window_samples // ckpt.frontend.hop_length)
    planner = owsm_planner(ckpt.model.gate_names, flop_costs(ckpt.model.dims), positions, None, [], "")

    def features(samples: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        windows = OwsmWindows(samples[: ckpt.frontend.window_samples], ckpt.frontend)
        request = windows.request
        costs = planner.planning_costs(request, None)
        return (torch.from_numpy(windows.features[0]), torch.from_numpy(request.stats.astype(np.float32)),
                torch.from_numpy(costs).float())

    return features


def is_owsm_training(model: Any) -> bool:
    return isinstance(model, (str, Path)) and is_owsm_dir(Path(model).expanduser())


def owsm_training_inputs(cfg: Any, entries: list) -> OwsmTrainingInputs:
    """Load the checkpoint named by ``cfg.model`` and put the manifest's languages into OWSM's codes."""
    if cfg.adapt in ("lora", "full"):
        raise TrainingError(f"--adapt {cfg.adapt} is not supported for OWSM yet; use --adapt skip-adapters "
                            "(FFNs and decoder modules) or none")
    if cfg.audio_ctx is not None:
        raise TrainingError("OWSM always runs full input windows, so --audio-ctx does not apply: pass "
                            "--audio-ctx none")
    ckpt = load_owsm(Path(cfg.model).expanduser())
    tok = ckpt.tokenizer
    out = []
    for i, e in enumerate(entries, start=1):
        try:
            out.append(replace(e, lang=tok.normalize_language(e.lang)))
        except Exception:
            raise TrainingError(f"{cfg.manifest}: entry {i} has language {e.lang!r}, which this OWSM model does "
                                f"not have; use one of {', '.join(tok.language_codes)}") from None
    return OwsmTrainingInputs(ckpt.model, tok, out, list(tok.language_codes), window_features(ckpt))


__all__ = ["OwsmTrainingInputs", "owsm_training_inputs", "is_owsm_training", "window_features"]
