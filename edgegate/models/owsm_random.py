"""An OWSM checkpoint directory of a given shape with random weights, laid out as downloaded.

No OWSM weights are reachable from this project's machines; this gives the real *shape* (OWSM v3.1
base: d 384, 6 + 6 layers, 50,002 tokens) to exporting, profiling and gate-training tests and
benchmarks. Nothing measured on it says anything about real OWSM quality. The directory is what
:func:`edgegate.models.owsm_loader.load_owsm` reads (``meta.yaml``, ``exp/*/config.yaml`` and ``.pth``,
``feats_stats.npz``, ``tokens.txt``; ``bpe.model`` is copied from the given one, since decoding
text needs only the token list).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
import yaml

from edgegate.frontend_owsm import slaney_mel_filters
from edgegate.models.owsm import Owsm
from edgegate.models.owsm_config import OwsmDims

LANGS = ("eng", "deu", "fra", "spa", "jpn", "zho", "rus", "ita")
EXP = "exp/s2t_train_random_raw_bpe50000"
TOKENS = "data/token_list/bpe_unigram50000/tokens.txt"
BPE = "data/token_list/bpe_unigram50000/bpe.model"
STATS = "exp/s2t_stats_raw_bpe50000/train/feats_stats.npz"


def token_list(n_vocab: int, languages: tuple[str, ...] = LANGS) -> list[str]:
    """OWSM's layout: blank, unk, specials, languages, tasks, timestamps, pieces, then sos/eos/sop."""
    head = ["<blank>", "<unk>", "<na>", "<nospeech>", *[f"<{c}>" for c in languages], "<asr>",
            *[f"<st_{c}>" for c in languages], "<notimestamps>", *[f"<{i * 0.02:.2f}>" for i in range(1501)]]
    n_pieces = n_vocab - len(head) - 3
    if n_pieces < 1:
        raise ValueError(f"a vocabulary of {n_vocab} has no room for the {len(head) + 3} special tokens")
    return head + [f"\u2581w{i}" for i in range(n_pieces)] + ["<sos>", "<eos>", "<sop>"]


def _config(dims: OwsmDims, speech_length: float) -> dict:
    return {
        "token_type": "bpe", "bpemodel": BPE, "token_list": TOKENS, "model": "espnet",
        "preprocessor": "s2t", "preprocessor_conf": {"fs": 16000, "speech_length": speech_length,
                                                     "notime_symbol": "<notimestamps>",
                                                     "first_time_symbol": "<0.00>", "last_time_symbol": "<30.00>"},
        "frontend": "default", "frontend_conf": {"n_fft": 512, "win_length": 400, "hop_length": 160, "fs": "16k"},
        "normalize": "global_mvn", "normalize_conf": {"stats_file": STATS},
        "encoder": "e_branchformer",
        "encoder_conf": {"output_size": dims.d_model, "attention_heads": dims.n_encoder_heads,
                         "attention_layer_type": "selfattn", "pos_enc_layer_type": "abs_pos", "qk_norm": False,
                         "cgmlp_linear_units": dims.cgmlp_units, "cgmlp_conv_kernel": dims.cgmlp_kernel,
                         "use_linear_after_conv": False, "gate_activation": "identity",
                         "num_blocks": dims.n_encoder_layers, "input_layer": "conv2d",
                         "linear_units": dims.encoder_ffn, "positionwise_layer_type": "linear", "use_ffn": True,
                         "macaron_ffn": True, "merge_conv_kernel": dims.merge_kernel},
        "decoder": "transformer",
        "decoder_conf": {"attention_heads": dims.n_decoder_heads, "linear_units": dims.decoder_ffn,
                         "num_blocks": dims.n_decoder_layers},
    }


def write_random_checkpoint(directory: str | Path, bpe_model: str | Path, dims: OwsmDims | None = None,
                            speech_length: float = 30.0, seed: int = 0) -> Path:
    """Write an OWSM checkpoint directory of shape ``dims`` (default: v3.1 base) with random weights."""
    dims = dims or OwsmDims()
    root = Path(directory)
    tokens = token_list(dims.n_vocab)
    for rel in (EXP, Path(TOKENS).parent, Path(STATS).parent):
        (root / rel).mkdir(parents=True, exist_ok=True)
    (root / TOKENS).write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    shutil.copyfile(bpe_model, root / BPE)
    np.savez(root / STATS, count=np.array(1000.0), sum=np.zeros(dims.n_mels), sum_square=np.full(dims.n_mels, 1000.0))
    (root / EXP / "config.yaml").write_text(yaml.safe_dump(_config(dims, speech_length)), encoding="utf-8")
    torch.manual_seed(seed)
    model = Owsm(dims)
    model.frontend.logmel.melmat.copy_(torch.from_numpy(slaney_mel_filters(16000, 512, dims.n_mels)))
    torch.save(model.state_dict(), root / EXP / "valid.total_count.ave_5best.pth")
    meta = {"files": {"s2t_model_file": f"{EXP}/valid.total_count.ave_5best.pth"},
            "yaml_files": {"s2t_train_config": f"{EXP}/config.yaml"}}
    (root / "meta.yaml").write_text(yaml.safe_dump(meta), encoding="utf-8")
    return root


__all__ = ["write_random_checkpoint", "token_list"]
