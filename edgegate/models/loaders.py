"""Load Whisper weights from the formats users have into ``edgegate.models.whisper.Whisper``.

- CTranslate2 / faster-whisper directory: ``model.bin`` (+ ``config.json``, ``tokenizer.json``)
- Hugging Face ``transformers`` directory: ``config.json`` + ``model.safetensors`` (sharded too)
- OpenAI ``whisper`` checkpoint ``.pt``: ``{"dims": ..., "model_state_dict": ...}``, read with
  ``torch.load(weights_only=True)`` so that no pickle code runs.
- an adapted model (what ``edgegate adapt`` writes, and ``whisper-base-edge``): ``adapt.json`` naming the
  base model and its fingerprint, the encoder-context rule and an int8 weight-delta file with its SHA-256.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch

from edgegate.errors import ModelError
from edgegate.models.ct2_reader import read_ct2_model
from edgegate.models.whisper import ModelDims, Whisper


def _build(dims: ModelDims, state: dict[str, torch.Tensor], source: Path) -> Whisper:
    model = Whisper(dims)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    if missing:
        raise ModelError(f"{source}: weights missing for {missing[:3]}{'...' if len(missing) > 3 else ''}")
    for k, v in state.items():
        if k in expected and tuple(v.shape) != tuple(expected[k].shape):
            raise ModelError(f"{source}: {k} has shape {tuple(v.shape)}, expected {tuple(expected[k].shape)}")
    model.load_state_dict({k: state[k].float() for k in expected}, strict=True)
    return model.eval()


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.float32))


# -- CTranslate2 -----------------------------------------------------------------------------
def load_ct2(directory: str | Path) -> Whisper:
    directory = Path(directory)
    spec, v = read_ct2_model(directory / "model.bin")
    if spec != "WhisperSpec":
        raise ModelError(f"{directory}: CTranslate2 model is a {spec}, not a Whisper model")
    n_audio_layer = len({k.split("/")[1] for k in v if re.match(r"encoder/layer_\d+/", k)})
    n_text_layer = len({k.split("/")[1] for k in v if re.match(r"decoder/layer_\d+/", k)})
    d_a = v["encoder/conv1/weight"].shape[0]
    d_t = v["decoder/embeddings/weight"].shape[1]
    dims = ModelDims(
        n_mels=v["encoder/conv1/weight"].shape[1], n_audio_ctx=v["encoder/position_encodings/encodings"].shape[0],
        n_audio_state=d_a, n_audio_head=int(v["encoder/num_heads"]), n_audio_layer=n_audio_layer,
        n_vocab=v["decoder/embeddings/weight"].shape[0],
        n_text_ctx=v["decoder/position_encodings/encodings"].shape[0], n_text_state=d_t,
        n_text_head=int(v["decoder/num_heads"]), n_text_layer=n_text_layer,
        n_audio_mlp=v["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        n_text_mlp=v["decoder/layer_0/ffn/linear_0/weight"].shape[0],
    )
    s: dict[str, torch.Tensor] = {}

    def ln(dst: str, src: str) -> None:
        s[f"{dst}.weight"], s[f"{dst}.bias"] = _t(v[f"{src}/gamma"]), _t(v[f"{src}/beta"])

    def linear(dst: str, src: str, bias: bool = True) -> None:
        s[f"{dst}.weight"] = _t(v[f"{src}/weight"])
        if bias:
            s[f"{dst}.bias"] = _t(v[f"{src}/bias"])

    def fused(dst_names: list[str], src: str, d: int) -> None:
        w, b = _t(v[f"{src}/weight"]), _t(v[f"{src}/bias"])
        for j, name in enumerate(dst_names):
            s[f"{name}.weight"] = w[j * d:(j + 1) * d]
            if not name.endswith("key"):  # Whisper's key projection has no bias (CT2 stores zeros)
                s[f"{name}.bias"] = b[j * d:(j + 1) * d]

    def ffn(dst: str, src: str) -> None:
        ln(f"{dst}.mlp_ln", f"{src}/ffn/layer_norm")
        linear(f"{dst}.mlp.0", f"{src}/ffn/linear_0")
        linear(f"{dst}.mlp.2", f"{src}/ffn/linear_1")

    for name in ("encoder.conv1", "encoder.conv2"):
        linear(name, name.replace(".", "/"))
    s["encoder.positional_embedding"] = _t(v["encoder/position_encodings/encodings"])
    def self_attention(dst: str, src: str, d: int) -> None:
        ln(f"{dst}.attn_ln", f"{src}/self_attention/layer_norm")
        fused([f"{dst}.attn.query", f"{dst}.attn.key", f"{dst}.attn.value"], f"{src}/self_attention/linear_0", d)
        linear(f"{dst}.attn.out", f"{src}/self_attention/linear_1")

    for i in range(n_audio_layer):
        dst, src = f"encoder.blocks.{i}", f"encoder/layer_{i}"
        self_attention(dst, src, d_a)
        ffn(dst, src)
    ln("encoder.ln_post", "encoder/layer_norm")
    s["decoder.token_embedding.weight"] = _t(v["decoder/embeddings/weight"])
    s["decoder.positional_embedding"] = _t(v["decoder/position_encodings/encodings"])
    for i in range(n_text_layer):
        dst, src = f"decoder.blocks.{i}", f"decoder/layer_{i}"
        self_attention(dst, src, d_t)
        ln(f"{dst}.cross_attn_ln", f"{src}/attention/layer_norm")
        linear(f"{dst}.cross_attn.query", f"{src}/attention/linear_0")
        fused([f"{dst}.cross_attn.key", f"{dst}.cross_attn.value"], f"{src}/attention/linear_1", d_t)
        linear(f"{dst}.cross_attn.out", f"{src}/attention/linear_2")
        ffn(dst, src)
    ln("decoder.ln", "decoder/layer_norm")
    return _build(dims, s, directory)


# -- Hugging Face transformers ---------------------------------------------------------------
def load_hf(directory: str | Path) -> Whisper:
    from safetensors.torch import load_file

    directory = Path(directory)
    cfg = json.loads((directory / "config.json").read_text())
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise ModelError(f"{directory}: no *.safetensors weights (save with safe_serialization=True)")
    raw: dict[str, torch.Tensor] = {}
    for f in files:
        raw.update(load_file(str(f)))
    raw = {k.removeprefix("model."): t for k, t in raw.items()}
    dims = ModelDims(
        n_mels=cfg["num_mel_bins"], n_audio_ctx=cfg["max_source_positions"], n_audio_state=cfg["d_model"],
        n_audio_head=cfg["encoder_attention_heads"], n_audio_layer=cfg["encoder_layers"],
        n_vocab=cfg["vocab_size"], n_text_ctx=cfg["max_target_positions"], n_text_state=cfg["d_model"],
        n_text_head=cfg["decoder_attention_heads"], n_text_layer=cfg["decoder_layers"],
        n_audio_mlp=cfg["encoder_ffn_dim"], n_text_mlp=cfg["decoder_ffn_dim"],
    )
    s: dict[str, torch.Tensor] = {}
    attn = {"q_proj": "query", "k_proj": "key", "v_proj": "value", "out_proj": "out"}

    def copy_attn(dst: str, src: str) -> None:
        for h, o in attn.items():
            s[f"{dst}.{o}.weight"] = raw[f"{src}.{h}.weight"]
            if o != "key":
                s[f"{dst}.{o}.bias"] = raw[f"{src}.{h}.bias"]

    def copy(dst: str, src: str) -> None:
        s[f"{dst}.weight"], s[f"{dst}.bias"] = raw[f"{src}.weight"], raw[f"{src}.bias"]

    def copy_block(part: str, i: int) -> None:
        dst, src = f"{part}.blocks.{i}", f"{part}.layers.{i}"
        copy_attn(f"{dst}.attn", f"{src}.self_attn")
        copy(f"{dst}.attn_ln", f"{src}.self_attn_layer_norm")
        if part == "decoder":
            copy_attn(f"{dst}.cross_attn", f"{src}.encoder_attn")
            copy(f"{dst}.cross_attn_ln", f"{src}.encoder_attn_layer_norm")
        copy(f"{dst}.mlp.0", f"{src}.fc1")
        copy(f"{dst}.mlp.2", f"{src}.fc2")
        copy(f"{dst}.mlp_ln", f"{src}.final_layer_norm")

    try:
        copy("encoder.conv1", "encoder.conv1")
        copy("encoder.conv2", "encoder.conv2")
        s["encoder.positional_embedding"] = raw["encoder.embed_positions.weight"]
        for i in range(dims.n_audio_layer):
            copy_block("encoder", i)
        copy("encoder.ln_post", "encoder.layer_norm")
        s["decoder.token_embedding.weight"] = raw["decoder.embed_tokens.weight"]
        s["decoder.positional_embedding"] = raw["decoder.embed_positions.weight"]
        for i in range(dims.n_text_layer):
            copy_block("decoder", i)
        copy("decoder.ln", "decoder.layer_norm")
    except KeyError as exc:
        raise ModelError(f"{directory}: not a transformers Whisper checkpoint (missing {exc})") from exc
    return _build(dims, s, directory)


# -- OpenAI whisper --------------------------------------------------------------------------
def load_openai(path: str | Path) -> Whisper:
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"{path}: cannot read as a weights-only OpenAI Whisper checkpoint ({exc})") from exc
    if not isinstance(ckpt, dict) or "dims" not in ckpt or "model_state_dict" not in ckpt:
        raise ModelError(f"{path}: not an OpenAI Whisper checkpoint (expected keys 'dims', 'model_state_dict')")
    dims = ModelDims(**ckpt["dims"])
    return _build(dims, ckpt["model_state_dict"], path)


# -- adapted (base + weight delta) ------------------------------------------------------------
def load_adapted(directory: str | Path) -> Whisper:
    """The base model plus the directory's weight delta (if it has one), checked by SHA-256 and base fingerprint.

    The model's ``default_audio_ctx`` is the adaptation's encoder-context margin: callers that pass
    ``audio_ctx="auto"`` run it on the real audio length plus that margin. ``context_tail`` (a registered
    edge model's rule) appends the padding's states to trimmed windows (edgegate.context_tail).
    """
    from edgegate.models.registry import read_adapt_spec, resolve_model
    from edgegate.weight_delta import apply_delta, model_fingerprint

    directory = Path(directory)
    spec = read_adapt_spec(directory)
    model = load_whisper(resolve_model(spec["base_model"]))
    if spec.get("delta", "adaptation.safetensors") is not None:
        delta = directory / spec.get("delta", "adaptation.safetensors")
        if not delta.is_file():
            raise ModelError(f"{directory}: weight delta {delta.name} is missing; re-run edgegate adapt")
        expected = spec.get("delta_sha256")
        if expected:
            from edgegate.runtimes.bundle import sha256_file

            digest = sha256_file(delta)
            if digest != expected:
                raise ModelError(f"{delta}: SHA-256 {digest[:12]}... does not match adapt.json ({expected[:12]}...): "
                                 "the file is damaged or was changed; reinstall or re-run edgegate adapt")
        apply_delta(model, delta, model_fingerprint(model))
    ctx = spec.get("audio_ctx")
    model.default_audio_ctx = None if ctx is None else int(ctx)
    # An adaptation of an edge model (a registered rule) inherits its context tail unless it says otherwise.
    model.context_tail = bool(spec.get("context_tail", model.context_tail))
    return model.eval()


def detect_format(path: str | Path) -> str:
    """'ct2', 'hf', 'openai' or 'adapted' for a path, or raise naming what was expected."""
    path = Path(path)
    if path.is_file() and path.suffix in (".pt", ".pth"):
        return "openai"
    if path.is_dir():
        if (path / "adapt.json").exists():
            return "adapted"
        if (path / "model.bin").exists():
            return "ct2"
        if (path / "config.json").exists() and any(path.glob("*.safetensors")):
            return "hf"
    raise ModelError(
        f"{path}: not a Whisper checkpoint edgegate can read; give a CTranslate2 directory (model.bin), "
        "a transformers directory (config.json + *.safetensors), an OpenAI .pt file or an edgegate adapt "
        "directory (adapt.json)")


def load_whisper(path: str | Path) -> Whisper:
    loaders = {"ct2": load_ct2, "hf": load_hf, "openai": load_openai, "adapted": load_adapted}
    return loaders[detect_format(path)](path)
