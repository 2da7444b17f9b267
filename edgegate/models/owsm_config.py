"""An OWSM checkpoint's ``config.yaml`` read into what edgegate needs, refusing what it cannot run (no torch).

OWSM v3.1 is ESPnet's ``S2TTask`` with an E-Branchformer encoder (``abs_pos`` + ``selfattn``, conv2d x4
subsampling, macaron FFNs) and a pre-LN Transformer decoder. Any other choice in the config (a
relative-position encoder, qk-norm, a different frontend...) would be computed differently by our model,
so it is an error naming the setting, not a silent approximation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgegate.errors import ModelError

ENCODER_KINDS = ("ffn_macaron", "attn", "cgmlp", "ffn")
DECODER_KINDS = ("self_attn", "src_attn", "ffn")


@dataclass
class OwsmDims:
    """Sizes of an OWSM S2T model; the defaults are OWSM v3.1 base's (101M)."""

    n_mels: int = 80
    d_model: int = 384  # encoder output size = decoder attention dim
    n_encoder_layers: int = 6
    n_encoder_heads: int = 6
    encoder_ffn: int = 1536  # linear_units of both macaron FFNs
    cgmlp_units: int = 1536  # cgmlp_linear_units (the gating halves it)
    cgmlp_kernel: int = 31
    merge_kernel: int = 31
    n_decoder_layers: int = 6
    n_decoder_heads: int = 6
    decoder_ffn: int = 1536
    n_vocab: int = 50002


@dataclass(frozen=True)
class FrontendSettings:
    """ESPnet's DefaultFrontend settings and the input window (``preprocessor_conf.speech_length``)."""

    sample_rate: int = 16000
    n_fft: int = 512
    win_length: int = 400
    hop_length: int = 160
    n_mels: int = 80
    speech_length: float = 30.0  # seconds: every input is padded or trimmed to this


@dataclass(frozen=True)
class OwsmConfig:
    dims: OwsmDims
    frontend: FrontendSettings
    token_list: list[str] | str  # inline list, or a path relative to the checkpoint directory
    bpemodel: str | None
    stats_file: str | None
    notime_symbol: str = "<notimestamps>"
    first_time_symbol: str = "<0.00>"
    last_time_symbol: str = "<30.00>"


def gate_names(dims: OwsmDims) -> list[str]:
    """Gateable module names in execution order: all encoder modules, then all decoder modules."""
    names = [f"encoder.{i}.{k}" for i in range(dims.n_encoder_layers) for k in ENCODER_KINDS]
    names += [f"decoder.{i}.{k}" for i in range(dims.n_decoder_layers) for k in DECODER_KINDS]
    return names


# The parts that always run (the bundle's module names; the cost table and the exporter use these).
STEM, AFTER_NORM, EMBED, LOGITS = "encoder.stem", "encoder.after_norm", "decoder.embed", "decoder.logits"


def merge_name(layer: int) -> str:
    """E-Branchformer layer ``layer``'s merge: runs when its attention or its cgMLP runs."""
    return f"encoder.{layer}.merge"


def norm_final_name(layer: int) -> str:
    """E-Branchformer layer ``layer``'s closing LayerNorm (always runs, even when its FFN is skipped)."""
    return f"encoder.{layer}.norm_final"


def src_kv_name(layer: int) -> str:
    """The once-per-window K/V producer of decoder layer ``layer``'s source attention."""
    return f"decoder.{layer}.src_kv"


# (section, key, value OWSM v3.1 uses, ESPnet's default when the key is absent): anything else is
# computed differently by ESPnet than by our model.
_REQUIRED: list[tuple[str | None, str, Any, Any]] = [
    (None, "encoder", "e_branchformer", None), (None, "decoder", "transformer", None),
    (None, "frontend", "default", None), (None, "normalize", "global_mvn", None),
    (None, "preencoder", None, None), (None, "postencoder", None, None),
    ("encoder_conf", "attention_layer_type", "selfattn", "rel_selfattn"),
    ("encoder_conf", "pos_enc_layer_type", "abs_pos", "rel_pos"),
    ("encoder_conf", "input_layer", "conv2d", "conv2d"), ("encoder_conf", "use_ffn", True, False),
    ("encoder_conf", "macaron_ffn", True, False), ("encoder_conf", "use_linear_after_conv", False, False),
    ("encoder_conf", "gate_activation", "identity", "identity"), ("encoder_conf", "qk_norm", False, False),
    ("encoder_conf", "positionwise_layer_type", "linear", "linear"),
    ("encoder_conf", "ffn_activation_type", "swish", "swish"),
    ("encoder_conf", "interctc_layer_idx", None, None),
    ("decoder_conf", "input_layer", "embed", "embed"), ("decoder_conf", "normalize_before", True, True),
    ("decoder_conf", "concat_after", False, False), ("decoder_conf", "qk_norm", False, False),
    ("decoder_conf", "use_output_layer", True, True),
    ("frontend_conf", "window", "hann", "hann"), ("frontend_conf", "center", True, True),
    ("frontend_conf", "normalized", False, False), ("frontend_conf", "onesided", True, True),
    ("frontend_conf", "htk", False, False), ("frontend_conf", "apply_stft", True, True),
    ("normalize_conf", "norm_means", True, True), ("normalize_conf", "norm_vars", True, True),
]


def _check_supported(cfg: dict, source: str) -> None:
    for section, key, want, default in _REQUIRED:
        conf = cfg if section is None else (cfg.get(section) or {})
        got = conf.get(key, default)
        if got in ({}, [], "none"):
            got = None
        if got != want:
            name = key if section is None else f"{section}.{key}"
            raise ModelError(f"{source}: unsupported OWSM config {name}={got!r} (edgegate runs {want!r}, "
                             "as OWSM v3.1 does); use an OWSM v3.1-style E-Branchformer checkpoint")


def _sample_rate(value: Any) -> int:
    """``fs`` as ESPnet writes it: 16000 or '16k'."""
    if isinstance(value, str) and value.lower().endswith("k"):
        return int(float(value[:-1]) * 1000)
    return int(value)


def parse_config(cfg: dict, source: str = "config.yaml") -> OwsmConfig:
    """Dims, frontend and file references of an OWSM ``config.yaml``; ModelError for what we cannot run."""
    if not isinstance(cfg, dict) or "encoder_conf" not in cfg or "decoder_conf" not in cfg:
        raise ModelError(f"{source}: not an ESPnet S2T config (no encoder_conf/decoder_conf)")
    _check_supported(cfg, source)
    enc, dec, fe = cfg["encoder_conf"], cfg["decoder_conf"], cfg.get("frontend_conf") or {}
    pre = cfg.get("preprocessor_conf") or {}
    token_list = cfg.get("token_list")
    if not isinstance(token_list, (list, str)):
        raise ModelError(f"{source}: no token_list (expected a list or a tokens.txt path)")
    n_vocab = len(token_list) if isinstance(token_list, list) else 0  # 0: known once the file is read
    d = int(enc.get("output_size", 256))
    dims = OwsmDims(
        n_mels=int(fe.get("n_mels", 80)), d_model=d, n_encoder_layers=int(enc.get("num_blocks", 12)),
        n_encoder_heads=int(enc.get("attention_heads", 4)), encoder_ffn=int(enc.get("linear_units", 2048)),
        cgmlp_units=int(enc.get("cgmlp_linear_units", 2048)), cgmlp_kernel=int(enc.get("cgmlp_conv_kernel", 31)),
        merge_kernel=int(enc.get("merge_conv_kernel", 3)), n_decoder_layers=int(dec.get("num_blocks", 6)),
        n_decoder_heads=int(dec.get("attention_heads", 4)), decoder_ffn=int(dec.get("linear_units", 2048)),
        n_vocab=n_vocab)
    for name, heads in (("encoder", dims.n_encoder_heads), ("decoder", dims.n_decoder_heads)):
        if d % heads:
            raise ModelError(f"{source}: {name} attention_heads={heads} does not divide output_size={d}")
    frontend = FrontendSettings(
        sample_rate=_sample_rate(fe.get("fs", pre.get("fs", 16000))), n_fft=int(fe.get("n_fft", 512)),
        win_length=int(fe.get("win_length") or fe.get("n_fft", 512)), hop_length=int(fe.get("hop_length", 128)),
        n_mels=dims.n_mels, speech_length=float(pre.get("speech_length", 30)))
    if frontend.sample_rate != 16000:
        raise ModelError(f"{source}: unsupported sample rate {frontend.sample_rate} (edgegate runs 16 kHz)")
    return OwsmConfig(
        dims=dims, frontend=frontend, token_list=token_list, bpemodel=cfg.get("bpemodel"),
        stats_file=(cfg.get("normalize_conf") or {}).get("stats_file"),
        notime_symbol=pre.get("notime_symbol", "<notimestamps>"),
        first_time_symbol=pre.get("first_time_symbol", "<0.00>"),
        last_time_symbol=pre.get("last_time_symbol", "<30.00>"))


@dataclass(frozen=True)
class CheckpointFiles:
    root: Path  # the directory paths inside config.yaml are relative to
    config: Path
    model: Path


def _meta_files(root: Path) -> tuple[Path, Path] | None:
    """(config, model) named by ``meta.yaml`` (how ESPnet's model zoo packs a checkpoint), if it names them."""
    import yaml

    meta_path = root / "meta.yaml"
    if not meta_path.is_file():
        return None
    try:
        meta = yaml.safe_load(meta_path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ModelError(f"{meta_path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    config = (meta.get("yaml_files") or {}).get("s2t_train_config")
    model = (meta.get("files") or {}).get("s2t_model_file")
    if not config or not model:
        return None
    return root / config, root / model


def locate_checkpoint(directory: str | Path) -> CheckpointFiles:
    """config.yaml and the averaged .pth of an OWSM directory as downloaded (``meta.yaml`` + ``exp/``)."""
    root = Path(directory)
    if not root.is_dir():
        raise ModelError(f"{root}: not a directory; give the OWSM checkpoint directory (with meta.yaml and exp/)")
    named = _meta_files(root)
    if named is None:
        configs = [c for c in sorted(root.glob("exp/*/config.yaml")) if list(c.parent.glob("*.pth"))]
        if len(configs) != 1:
            found = "none" if not configs else ", ".join(str(c.relative_to(root)) for c in configs)
            raise ModelError(f"{root}: expected one exp/*/config.yaml with a .pth beside it, found {found}; "
                             "give the directory as downloaded (with its meta.yaml)")
        models = sorted(configs[0].parent.glob("*.pth"))
        averaged = [m for m in models if "ave" in m.name]
        if len(models) > 1 and len(averaged) != 1:
            raise ModelError(f"{configs[0].parent}: several .pth files ({', '.join(m.name for m in models)}); "
                             "keep the averaged one or add a meta.yaml naming it")
        named = configs[0], (averaged or models)[0]
    for path in named:
        if not path.is_file():
            raise ModelError(f"{root}: missing {path.relative_to(root)} (named by meta.yaml); re-download the "
                             "checkpoint directory")
    return CheckpointFiles(root, *named)


def is_owsm_dir(path: str | Path) -> bool:
    """Whether ``path`` looks like an OWSM/ESPnet S2T checkpoint directory (cheap; no weights read)."""
    root = Path(path)
    return root.is_dir() and ((root / "meta.yaml").is_file() or any(root.glob("exp/*/config.yaml")))
