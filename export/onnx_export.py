"""Export a gated Whisper as a bundle of per-module ONNX subgraphs (see ``edgegate.runtimes.bundle``).

Each gateable module becomes one graph computing its whole residual step ``x -> x + f(ln(x))``,
so skipping a module means not calling its graph. The decoder's self-attention graphs take and
return their layer's K/V cache, ``(batch, heads, past, head_dim)`` in and
``(batch, heads, past + t, head_dim)`` out, with the causal mask built inside the graph from the
two lengths: the same graph serves the prompt step (t = 3..4, past = 0, an empty cache) and every
later step (t = 1). Cross-attention is split into a once-per-utterance K/V projection graph and
a per-step attention graph whose K/V batch may be 1 while the query batch is the beam width
(ONNX MatMul broadcasts), so beam search never copies the audio K/V.

The TorchScript exporter (``dynamo=False``) is used: ~0.1 s per module instead of 1-4 s with
dynamo, and these graphs need no control flow. Weight sharing: the token embedding (n_vocab x d,
~106 MB fp32 for base) is stored twice, in ``decoder.embed.onnx`` and in ``decoder.logits.onnx``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import io
import platform
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import edgegate
from edgegate.budget import Budget
from edgegate.errors import BudgetError, ModelError
from edgegate.export.bundle_writer import BundleWriter
from edgegate.export.profiles import DeviceProfile, get_profile
from edgegate.frontend import CHUNK_LENGTH, HOP_LENGTH, N_FFT, N_FRAMES, SAMPLE_RATE
from edgegate.models.costs import always_on_costs, module_costs
from edgegate.models.whisper import MultiHeadAttention, Whisper
from edgegate.tokenizer import WhisperTokenizer

DEFAULT_OPSET = 17
# Cost table reference point: a padded 30-s window and a typical short utterance.
COST_FRAMES = 1500
COST_TOKENS = 32


# -- graph bodies ------------------------------------------------------------------------------
def _attention(attn: MultiHeadAttention, h: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """Scaled dot-product attention spelled out so that it exports to plain MatMul/Softmax."""
    q = attn.split_heads(attn.query(h))
    w = torch.matmul(q, k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
    if mask is not None:
        w = w.masked_fill(mask.logical_not(), float("-inf"))
    o = torch.matmul(torch.softmax(w, dim=-1), v)
    return attn.out(o.transpose(1, 2).flatten(2))


class Stem(nn.Module):
    def __init__(self, model: Whisper):
        super().__init__()
        enc = model.encoder
        self.conv1, self.conv2 = enc.conv1, enc.conv2
        self.register_buffer("positional_embedding", enc.positional_embedding.clone())

    def forward(self, mel: Tensor) -> Tensor:
        x = F.gelu(self.conv1(mel))
        x = F.gelu(self.conv2(x)).transpose(1, 2)
        return x + self.positional_embedding[: x.shape[1]]


class SelfAttention(nn.Module):
    """Encoder self-attention residual step (no mask)."""

    def __init__(self, attn: MultiHeadAttention, ln: nn.LayerNorm):
        super().__init__()
        self.attn, self.ln = attn, ln

    def forward(self, x: Tensor) -> Tensor:
        h = self.ln(x)
        k, v = self.attn.project_kv(h)
        return x + _attention(self.attn, h, k, v)


class MLP(nn.Module):
    def __init__(self, mlp: nn.Module, ln: nn.LayerNorm):
        super().__init__()
        self.mlp, self.ln = mlp, ln

    def forward(self, x: Tensor) -> Tensor:
        return x + self.mlp(self.ln(x))


class CachedSelfAttention(nn.Module):
    """Decoder self-attention step with its K/V cache and an in-graph causal mask."""

    def __init__(self, attn: MultiHeadAttention, ln: nn.LayerNorm):
        super().__init__()
        self.attn, self.ln = attn, ln

    def forward(self, x: Tensor, k_cache: Tensor, v_cache: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        h = self.ln(x)
        k_new, v_new = self.attn.project_kv(h)
        k = torch.cat([k_cache, k_new], dim=2)
        v = torch.cat([v_cache, v_new], dim=2)
        t = x.shape[1]
        total = k.shape[2]
        query_pos = torch.arange(t, device=x.device) + (total - t)
        mask = torch.arange(total, device=x.device).unsqueeze(0) <= query_pos.unsqueeze(1)
        return x + _attention(self.attn, h, k, v, mask), k, v


class CrossKV(nn.Module):
    def __init__(self, attn: MultiHeadAttention):
        super().__init__()
        self.attn = attn

    def forward(self, xa: Tensor) -> tuple[Tensor, Tensor]:
        return self.attn.project_kv(xa)


class CrossAttention(nn.Module):
    def __init__(self, attn: MultiHeadAttention, ln: nn.LayerNorm):
        super().__init__()
        self.attn, self.ln = attn, ln

    def forward(self, x: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return x + _attention(self.attn, self.ln(x), k, v)


class LayerNormOnly(nn.Module):
    def __init__(self, ln: nn.LayerNorm):
        super().__init__()
        self.ln = ln

    def forward(self, x: Tensor) -> Tensor:
        return self.ln(x)


class Embed(nn.Module):
    def __init__(self, model: Whisper):
        super().__init__()
        self.token_embedding = model.decoder.token_embedding
        self.positional_embedding = model.decoder.positional_embedding

    def forward(self, tokens: Tensor, positions: Tensor) -> Tensor:
        return self.token_embedding(tokens) + self.positional_embedding[positions]


class Logits(nn.Module):
    """Final LayerNorm and output projection of the last position only: (batch, n_vocab)."""

    def __init__(self, model: Whisper):
        super().__init__()
        self.ln = model.decoder.ln
        self.weight = model.decoder.token_embedding.weight

    def forward(self, x: Tensor) -> Tensor:
        return torch.matmul(self.ln(x[:, -1]), self.weight.t())


class Adapter(nn.Module):
    def __init__(self, adapter: nn.Module):
        super().__init__()
        self.adapter = adapter

    def forward(self, x: Tensor) -> Tensor:
        return x + self.adapter(x)


class PredictorScores(nn.Module):
    def __init__(self, predictor: nn.Module):
        super().__init__()
        self.predictor = predictor

    def forward(self, stats: Tensor, lang: Tensor, task: Tensor, budget: Tensor) -> Tensor:
        return self.predictor.keep_scores(stats, lang, task, budget)


# -- monolithic dense graphs (the benchmark's baseline) -----------------------------------------
class MonoEncoder(nn.Module):
    def __init__(self, model: Whisper):
        super().__init__()
        self.stem = Stem(model)
        blocks = model.encoder.blocks
        self.layers = nn.ModuleList(m for b in blocks for m in (SelfAttention(b.attn, b.attn_ln), MLP(b.mlp, b.mlp_ln)))
        self.ln_post = model.encoder.ln_post

    def forward(self, mel: Tensor) -> Tensor:
        x = self.stem(mel)
        for layer in self.layers:
            x = layer(x)
        return self.ln_post(x)


class MonoCrossKV(nn.Module):
    def __init__(self, model: Whisper):
        super().__init__()
        self.kv = nn.ModuleList(CrossKV(b.cross_attn) for b in model.decoder.blocks)

    def forward(self, xa: Tensor) -> list[Tensor]:
        return [t for kv in self.kv for t in kv(xa)]


class MonoDecoderStep(nn.Module):
    """tokens, positions, self K/V caches (2 per layer), cross K/V (2 per layer) -> logits, new caches."""

    def __init__(self, model: Whisper):
        super().__init__()
        self.embed = Embed(model)
        blocks = model.decoder.blocks
        self.self_attn = nn.ModuleList(CachedSelfAttention(b.attn, b.attn_ln) for b in blocks)
        self.cross = nn.ModuleList(CrossAttention(b.cross_attn, b.cross_attn_ln) for b in blocks)
        self.mlp = nn.ModuleList(MLP(b.mlp, b.mlp_ln) for b in blocks)
        self.logits = Logits(model)
        self.n = len(blocks)

    def forward(self, tokens: Tensor, positions: Tensor, *kv: Tensor) -> list[Tensor]:
        caches, cross = kv[: 2 * self.n], kv[2 * self.n:]
        x = self.embed(tokens, positions)
        new = []
        for i in range(self.n):
            x, k, v = self.self_attn[i](x, caches[2 * i], caches[2 * i + 1])
            new += [k, v]
            x = self.cross[i](x, cross[2 * i], cross[2 * i + 1])
            x = self.mlp[i](x)
        return [self.logits(x), *new]


# -- export plumbing ---------------------------------------------------------------------------
@dataclass
class GraphJob:
    """One ONNX file to write: the torch module, example inputs and the I/O signature."""

    name: str
    kind: str
    stage: str
    layer: int | None
    gate: str | None
    file: str
    module: nn.Module
    example: tuple[Tensor, ...]
    inputs: list[tuple[str, str, list[int | str]]]  # (name, dtype, shape with named dynamic axes)
    outputs: list[tuple[str, str, list[int | str]]]
    flops: float = 0.0
    adapter: GraphJob | None = None


def _dynamic_axes(specs: Sequence[tuple[str, str, list[int | str]]]) -> dict[str, dict[int, str]]:
    return {name: {i: a for i, a in enumerate(shape) if isinstance(a, str)} for name, _, shape in specs}


def export_graph(module: nn.Module, example: tuple[Tensor, ...], path: Path,
                 inputs: Sequence[tuple[str, str, list[int | str]]],
                 outputs: Sequence[tuple[str, str, list[int | str]]], opset: int = DEFAULT_OPSET) -> None:
    """One TorchScript-path ONNX export with named inputs/outputs and dynamic axes, quietly."""
    module = module.eval()
    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, example, str(path), dynamo=False, opset_version=opset, do_constant_folding=True,
            input_names=[n for n, _, _ in inputs], output_names=[n for n, _, _ in outputs],
            dynamic_axes={**_dynamic_axes(inputs), **_dynamic_axes(outputs)},
        )


def _adapters(model: Whisper) -> dict[str, nn.Module]:
    return {name: model.skip_adapters[name.replace(".", "_")] for name in model.gate_names
            if name.replace(".", "_") in model.skip_adapters}


def graph_jobs(model: Whisper) -> list[GraphJob]:
    """Every subgraph of the bundle in execution order, with its signature and cost."""
    d = model.dims
    da, dt = d.n_audio_state, d.n_text_state
    ht = d.n_text_head
    costs = module_costs(d, COST_FRAMES, COST_TOKENS)
    always = always_on_costs(d, COST_FRAMES, COST_TOKENS)
    adapters = _adapters(model)
    T, F2, t, past = 10, 20, 2, 3  # example sizes for tracing (dynamic in the graph)
    f32, i64 = "float32", "int64"
    xa_shape: list[int | str] = ["batch", "frames", da]
    xt_shape: list[int | str] = ["batch", "tokens", dt]
    ex_a = torch.randn(1, T, da)
    ex_t = torch.randn(1, t, dt)
    jobs: list[GraphJob] = []

    def with_adapter(job: GraphJob, dim: int, shape: list[int | str], example: Tensor) -> GraphJob:
        if job.gate in adapters:
            job.adapter = GraphJob(f"{job.gate}.adapter", "adapter", job.stage, job.layer, job.gate,
                                   f"{job.gate}.adapter.onnx", Adapter(adapters[job.gate]), (example,),
                                   [("x", f32, shape)], [("x_out", f32, shape)])
        return job

    jobs.append(GraphJob("encoder.stem", "stem", "encoder", None, None, "encoder.stem.onnx", Stem(model),
                         (torch.randn(1, d.n_mels, F2),), [("mel", f32, ["batch", d.n_mels, "mel_frames"])],
                         [("x", f32, xa_shape)], always["encoder.stem"].flops))
    for i, block in enumerate(model.encoder.blocks):
        for kind, mod in (("attn", SelfAttention(block.attn, block.attn_ln)), ("mlp", MLP(block.mlp, block.mlp_ln))):
            name = f"encoder.{i}.{kind}"
            jobs.append(with_adapter(GraphJob(name, kind, "encoder", i, name, f"{name}.onnx", mod, (ex_a,),
                                              [("x", f32, xa_shape)], [("x_out", f32, xa_shape)],
                                              costs[name].flops), da, xa_shape, ex_a))
    jobs.append(GraphJob("encoder.ln_post", "ln_post", "encoder", None, None, "encoder.ln_post.onnx",
                         LayerNormOnly(model.encoder.ln_post), (ex_a,), [("x", f32, xa_shape)],
                         [("xa", f32, xa_shape)], always["encoder.ln_post"].flops))
    kv_shape: list[int | str] = ["kv_batch", ht, "frames", dt // ht]
    kv_flops = 4 * COST_FRAMES * dt * dt
    for i, block in enumerate(model.decoder.blocks):
        gate = f"decoder.{i}.cross_attn"
        jobs.append(GraphJob(f"decoder.{i}.cross_kv", "cross_kv", "cross_kv", i, gate,
                             f"decoder.{i}.cross_kv.onnx", CrossKV(block.cross_attn),
                             (torch.randn(1, T, dt),), [("xa", f32, ["kv_batch", "frames", dt])],
                             [("k", f32, kv_shape), ("v", f32, kv_shape)], kv_flops))
    jobs.append(GraphJob("decoder.embed", "embed", "decoder_step", None, None, "decoder.embed.onnx", Embed(model),
                         (torch.zeros(1, t, dtype=torch.long), torch.arange(t)),
                         [("tokens", i64, ["batch", "tokens"]), ("positions", i64, ["tokens"])],
                         [("x", f32, xt_shape)], always["decoder.embed"].flops))
    cache_in: list[int | str] = ["batch", ht, "past", dt // ht]
    cache_out: list[int | str] = ["batch", ht, "total", dt // ht]
    for i, block in enumerate(model.decoder.blocks):
        name = f"decoder.{i}.self_attn"
        ex_cache = torch.randn(1, ht, past, dt // ht)
        jobs.append(with_adapter(GraphJob(
            name, "self_attn", "decoder_step", i, name, f"{name}.onnx",
            CachedSelfAttention(block.attn, block.attn_ln), (ex_t, ex_cache, ex_cache.clone()),
            [("x", f32, xt_shape), ("k_cache", f32, cache_in), ("v_cache", f32, cache_in)],
            [("x_out", f32, xt_shape), ("k_cache_out", f32, cache_out), ("v_cache_out", f32, cache_out)],
            costs[name].flops), dt, xt_shape, ex_t))
        name = f"decoder.{i}.cross_attn"
        ex_kv = torch.randn(1, ht, T, dt // ht)
        jobs.append(with_adapter(GraphJob(
            name, "cross_attn", "decoder_step", i, name, f"{name}.onnx",
            CrossAttention(block.cross_attn, block.cross_attn_ln), (ex_t, ex_kv, ex_kv.clone()),
            [("x", f32, xt_shape), ("k", f32, kv_shape), ("v", f32, kv_shape)], [("x_out", f32, xt_shape)],
            costs[name].flops - kv_flops), dt, xt_shape, ex_t))
        name = f"decoder.{i}.mlp"
        jobs.append(with_adapter(GraphJob(name, "mlp", "decoder_step", i, name, f"{name}.onnx",
                                          MLP(block.mlp, block.mlp_ln), (ex_t,), [("x", f32, xt_shape)],
                                          [("x_out", f32, xt_shape)], costs[name].flops), dt, xt_shape, ex_t))
    jobs.append(GraphJob("decoder.logits", "logits", "decoder_step", None, None, "decoder.logits.onnx", Logits(model),
                         (ex_t,), [("x", f32, xt_shape)], [("logits", f32, ["batch", d.n_vocab])],
                         always["decoder.logits"].flops))
    return jobs


def _tensor_specs(specs: Sequence[tuple[str, str, list[int | str]]]) -> list[dict[str, Any]]:
    return [{"name": n, "dtype": dt, "shape": list(shape)} for n, dt, shape in specs]


def _param_bytes(module: nn.Module) -> int:
    seen, total = set(), 0
    for t in list(module.parameters()) + list(module.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * 4
    return total


# -- model / predictor loading -----------------------------------------------------------------
def load_model(model: str | Path | Whisper, tokenizer: str | Path | None = None) -> tuple[Whisper, Path, str]:
    """(model, tokenizer.json path, display name) from a registered name, a checkpoint path or a model."""
    from edgegate.models.loaders import load_whisper
    from edgegate.models.registry import DEFAULT_MODEL, resolve_model, tokenizer_path

    if isinstance(model, Whisper):
        tok = Path(tokenizer) if tokenizer else tokenizer_path(resolve_model(DEFAULT_MODEL))
        return model.eval(), tok, "custom"
    path = resolve_model(model)
    tok = Path(tokenizer) if tokenizer else tokenizer_path(path)
    return load_whisper(path), tok, str(model)


def _is_gate_set(gates: str | Path) -> bool:
    """A gate-set directory of ``edgegate train-gates`` (or a shipped one by name), not a predictor file."""
    from edgegate.gated import GATES_FILE, shipped_gate_sets

    p = Path(gates).expanduser()
    return (p / GATES_FILE).is_file() or str(gates) in shipped_gate_sets()


def load_gates(gates: str | Path | nn.Module | None, model: Whisper) -> tuple[nn.Module | None, dict[str, Any]]:
    """The predictor and its metadata; a gate-set directory also adapts ``model`` in place.

    ``gates`` may be a predictor (module or ``.safetensors`` of ``save_predictor``) or a gate set
    (the ``--out`` directory of ``edgegate train-gates``, or a shipped name): its skip adapters /
    LoRA / fine-tuned weights are applied to ``model`` exactly as ``edgegate.gated.load_gated``
    does, and its ``gates.json`` (scope, audio_ctx, language codes) lands in ``meta["gate_set"]``.
    """
    if gates is None:
        return None, {}
    if isinstance(gates, nn.Module):
        pred, meta = gates, {}
    elif _is_gate_set(gates):
        from edgegate.gated import load_gated

        gw = load_gated(gates, model=model)
        pred, meta = gw.predictor, {"gate_set": gw.spec.to_dict(), "pinned": list(gw.pinned)}
    else:
        from edgegate.predictor import load_predictor

        pred, meta = load_predictor(gates)
    cfg = pred.config
    if cfg.n_modules != len(model.gate_names):
        raise ModelError(f"gate predictor has {cfg.n_modules} outputs but the model has {len(model.gate_names)} "
                         "gateable modules; train a predictor for this model")
    if cfg.n_mels != model.dims.n_mels:
        raise ModelError(f"gate predictor expects {cfg.n_mels} mel bins, the model {model.dims.n_mels}; "
                         "train a predictor for this model")
    names = meta.get("gate_names") if isinstance(meta, dict) else None
    if names is not None and list(names) != list(model.gate_names):
        raise ModelError("gate predictor was trained for different module names than this model's; "
                         "train a predictor for this model")
    return pred.eval(), meta


# -- the exporter ------------------------------------------------------------------------------
def load_export_inputs(model: str | Path | Whisper, tokenizer: str | Path | None,
                       gates: str | Path | nn.Module | None, profile: DeviceProfile, budget: float | None,
                       scope: str | None) -> tuple[Whisper, Path, str, nn.Module | None, dict[str, Any], Budget]:
    """What every exporter needs: the (adapted) model, its tokenizer, the predictor and the budget.

    Returns ``(whisper, tokenizer path, model name, predictor, predictor meta, budget)``. The
    budget's scope is ``scope``, else the gate set's (what its predictor was trained for), else
    the profile's; a profile pinning a module the model lacks is refused.
    """
    whisper, tok_path, model_name = load_model(model, tokenizer)
    if not Path(tok_path).is_file():
        raise ModelError(f"tokenizer not found at {tok_path}; pass tokenizer= (a Whisper tokenizer.json)")
    predictor, pred_meta = load_gates(gates, whisper)
    gate_set = pred_meta.get("gate_set") or {}
    value = profile.budget if budget is None else budget
    the_budget = Budget(value, scope or gate_set.get("scope") or profile.scope, profile.cost_unit, profile.pinned)
    for p in the_budget.pinned:
        if p not in whisper.gate_names:
            raise BudgetError(f"profile {profile.name} pins {p!r}, which is not a module of this model")
    return whisper, tok_path, model_name, predictor, pred_meta, the_budget


def predictor_entry(file: str, method: str | None, inputs: Sequence, outputs: Sequence, predictor: nn.Module,
                    pred_meta: dict[str, Any], gates: str | Path | nn.Module | None) -> dict[str, Any]:
    """The manifest's ``predictor`` entry: where its graph is, and how the runtime must feed it."""
    from edgegate.gated import default_language_codes

    cfg = predictor.config
    gate_set = pred_meta.get("gate_set") or {}
    return {
        "file": file, "method": method, "inputs": _tensor_specs(inputs), "outputs": _tensor_specs(outputs),
        "config": cfg.to_dict(), "meta": pred_meta,
        "stats": "per-mel-bin mean then population std over the real (unpadded) log-mel frames",
        "lang": "0 = unknown / auto-detect, else 1 + index in language_codes",
        "language_codes": gate_set.get("language_codes") or default_language_codes(cfg.n_languages),
        "task": "0 = transcribe, 1 = translate",
        "planning": "FLOPs of edgegate.models.costs at the utterance's encoder positions (after audio_ctx) "
                    "and edgegate.gated.estimate_tokens(duration) decoder positions",
        "source": None if isinstance(gates, nn.Module) else str(gates),
    }


def default_out(model_name: str, profile: DeviceProfile) -> Path:
    stem = Path(model_name).name if model_name not in ("", "custom") else "model"
    return Path("bundles") / f"{stem}-{profile.name}"



def manifest_core(whisper: Whisper, model_name: str, module_format: str, modules: list[dict[str, Any]],
                  predictor: dict[str, Any] | None, tok_path: str | Path, audio_ctx: int | None,
                  profile: DeviceProfile, budget: Budget | None) -> dict[str, Any]:
    """The manifest fields every exporter writes (model, modules, costs, tokenizer, frontend,
    decoding, profile, budget); each exporter adds its own format section and provenance."""
    tk = WhisperTokenizer.from_file(tok_path)
    gate_costs = module_costs(whisper.dims, COST_FRAMES, COST_TOKENS)
    return {
        "model": {"family": "whisper", "name": model_name, "dims": asdict(whisper.dims),
                  "skip_adapters": sorted(_adapters(whisper))},
        "module_format": module_format,
        "gate_names": list(whisper.gate_names),
        "modules": modules,
        "predictor": predictor,
        "costs": {
            "unit": "flops", "n_frames": COST_FRAMES, "n_tokens": COST_TOKENS,
            "note": "FLOPs (multiply-add = 2) per gateable module for a padded 30-s window and 32 decoder "
                    "positions; the runtime recomputes them for the real frame count",
            "gates": {k: c.flops for k, c in gate_costs.items()},
            "gate_param_bytes": {k: c.param_bytes for k, c in gate_costs.items()},
            "always_on": {k: c.flops for k, c in always_on_costs(whisper.dims, COST_FRAMES, COST_TOKENS).items()},
        },
        "tokenizer": {"file": "tokenizer.json", "language_codes": tk.language_codes, "eot": tk.eot, "sot": tk.sot},
        "frontend": {"type": "whisper-log-mel", "sample_rate": SAMPLE_RATE, "n_fft": N_FFT,
                     "hop_length": HOP_LENGTH, "n_mels": whisper.dims.n_mels, "chunk_length": CHUNK_LENGTH,
                     "n_frames": N_FRAMES},
        "decoding": {"max_tokens": whisper.dims.n_text_ctx // 2, "audio_ctx": audio_ctx},
        "profile": profile.to_dict(),
        "budget": budget.to_dict() if budget is not None else None,
    }

def export_bundle(out: str | Path | None = None, target: str | Path | DeviceProfile = "cpu",
                  model: str | Path | Whisper = "whisper-base", gates: str | Path | nn.Module | None = None,
                  budget: float | None = None, scope: str | None = None, force: bool = False,
                  progress: bool = True, tokenizer: str | Path | None = None,
                  opset: int | None = None, log: Callable[[str], None] | None = None) -> Path:
    """Write a bundle directory for ``target``; returns its path.

    ``gates``: a gate set (the ``--out`` directory of ``edgegate train-gates`` or a shipped name:
    its adaptation is applied to the model first, its scope and ``audio_ctx`` travel with the
    bundle) or a bare predictor (``.safetensors`` / module). ``budget``/``scope`` override the
    profile's default; a non-zero ``budget`` needs ``gates``. Refuses an existing ``out`` unless
    ``force``; the bundle appears atomically (one rename). A Whisper instance passed as ``model``
    is adapted in place when ``gates`` is a gate set.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr))
    profile = get_profile(target)
    if budget is not None and float(budget) > 0 and gates is None:
        raise BudgetError(f"--budget {budget} needs a gate predictor to rank modules: export with --gates PATH "
                          "(or drop --budget for a dense bundle)")
    model_name = "custom" if isinstance(model, Whisper) else str(model)
    out = Path(out) if out is not None else default_out(model_name, profile)
    BundleWriter.check_target(out.expanduser().resolve(), force)  # fail before any slow work

    fmt = profile.format
    if fmt == "pte":  # ExecuTorch targets (android): one multi-method .pte, same module wrappers
        from edgegate.export import executorch_export

        return executorch_export.export_executorch_bundle(out=out, target=profile, model=model, gates=gates,
                                                          budget=budget, scope=scope, force=force,
                                                          progress=progress, tokenizer=tokenizer, log=log)
    opset = opset or profile.opset
    whisper, tok_path, model_name, predictor, pred_meta, the_budget = load_export_inputs(
        model, tokenizer, gates, profile, budget, scope)
    gate_set = pred_meta.get("gate_set") or {}
    audio_ctx = gate_set.get("audio_ctx")

    jobs = graph_jobs(whisper)
    files = [j for job in jobs for j in (job, job.adapter) if j is not None]
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a core dependency
        tqdm = None
    bar = tqdm(total=len(files) + (predictor is not None), desc=f"export {profile.name}", unit="graph",
               disable=not progress or tqdm is None, file=sys.stderr) if tqdm else None
    modules: list[dict[str, Any]] = []
    with BundleWriter(out, force=force) as w:
        for job in jobs:
            entries = {}
            for j in (job, job.adapter):
                if j is None:
                    continue
                if bar:
                    bar.set_postfix_str(j.name)
                export_graph(j.module, j.example, w.path_for(j.file), j.inputs, j.outputs, opset)
                entries[j.kind] = w.add(j.file)
                if bar:
                    bar.update(1)
            modules.append({
                "name": job.name, "kind": job.kind, "stage": job.stage, "layer": job.layer, "gate": job.gate,
                "file": job.file, "method": None, "inputs": _tensor_specs(job.inputs),
                "outputs": _tensor_specs(job.outputs), "flops": float(job.flops),
                "param_bytes": _param_bytes(job.module),
                "adapter": None if job.adapter is None else {
                    "file": job.adapter.file, "method": None, "inputs": _tensor_specs(job.adapter.inputs),
                    "outputs": _tensor_specs(job.adapter.outputs),
                    "param_bytes": _param_bytes(job.adapter.module)},
            })
        pred_entry = None
        if predictor is not None:

            cfg = predictor.config
            n = len(whisper.gate_names)
            example = (torch.zeros(1, 2 * cfg.n_mels), torch.zeros(1, dtype=torch.long),
                       torch.zeros(1, dtype=torch.long), torch.zeros(1))
            ins = [("stats", "float32", ["batch", 2 * cfg.n_mels]), ("lang", "int64", ["batch"]),
                   ("task", "int64", ["batch"]), ("budget", "float32", ["batch"])]
            outs = [("keep", "float32", ["batch", n])]
            export_graph(PredictorScores(predictor), example, w.path_for("predictor.onnx"), ins, outs, opset)
            w.add("predictor.onnx")
            if bar:
                bar.update(1)
            pred_entry = predictor_entry("predictor.onnx", None, ins, outs, predictor, pred_meta, gates)
        if bar:
            bar.close()
        w.copy_in(tok_path, "tokenizer.json")

        manifest = manifest_core(whisper, model_name, fmt, modules, pred_entry, tok_path, audio_ctx, profile,
                                 the_budget if predictor is not None else None)
        manifest.update({
            "provenance": {
                "edgegate": edgegate.__version__, "torch": torch.__version__, "onnx_opset": opset,
                "exporter": "torch.onnx.export (TorchScript, dynamo=False)",
                "python": platform.python_version(),
                "created_utc": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
                "source_model": model_name,
                "notes": ["token embedding stored twice (decoder.embed.onnx and decoder.logits.onnx)"],
            },
        })
        try:
            import onnx

            manifest["provenance"]["onnx"] = onnx.__version__
        except ImportError:  # pragma: no cover
            pass
        path = w.finish(manifest)
    total = sum(int(e["bytes"]) for e in w.files.values())
    log(f"wrote {path} ({len(w.files)} files, {total / 1e6:.1f} MB, target {profile.name}, "
        f"{'predictor' if predictor is not None else 'no predictor: dense unless a mask is given'})")
    return path


def export_monolithic(model: Whisper, out: str | Path, opset: int = DEFAULT_OPSET) -> dict[str, Path]:
    """Dense monolithic graphs for comparison: encoder (mel -> xa), cross K/V, one decoder step."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    d = model.dims
    dt, ht, n = d.n_text_state, d.n_text_head, d.n_text_layer
    f32 = "float32"
    paths = {}
    paths["encoder"] = out / "mono_encoder.onnx"
    export_graph(MonoEncoder(model), (torch.randn(1, d.n_mels, 20),), paths["encoder"],
                 [("mel", f32, ["batch", d.n_mels, "mel_frames"])], [("xa", f32, ["batch", "frames", d.n_audio_state])],
                 opset)
    kv = ["kv_batch", ht, "frames", dt // ht]
    paths["cross_kv"] = out / "mono_cross_kv.onnx"
    export_graph(MonoCrossKV(model), (torch.randn(1, 10, dt),), paths["cross_kv"],
                 [("xa", f32, ["kv_batch", "frames", dt])],
                 [(f"{kind}{i}", f32, kv) for i in range(n) for kind in ("k", "v")], opset)
    cache_in = ["batch", ht, "past", dt // ht]
    cache_out = ["batch", ht, "total", dt // ht]
    ex_cache = [torch.randn(1, ht, 3, dt // ht) for _ in range(2 * n)]
    ex_cross = [torch.randn(1, ht, 10, dt // ht) for _ in range(2 * n)]
    ins = [("tokens", "int64", ["batch", "tokens"]), ("positions", "int64", ["tokens"])]
    ins += [(f"{kind}_cache{i}", f32, cache_in) for i in range(n) for kind in ("k", "v")]
    ins += [(f"cross_{kind}{i}", f32, kv) for i in range(n) for kind in ("k", "v")]
    outs = [("logits", f32, ["batch", d.n_vocab])]
    outs += [(f"{kind}_cache_out{i}", f32, cache_out) for i in range(n) for kind in ("k", "v")]
    paths["decoder_step"] = out / "mono_decoder_step.onnx"
    export_graph(MonoDecoderStep(model), (torch.zeros(1, 2, dtype=torch.long), torch.arange(2), *ex_cache, *ex_cross),
                 paths["decoder_step"], ins, outs, opset)
    return paths


def bundle_summary(path: str | Path) -> str:
    from edgegate.runtimes.bundle import Bundle

    b = Bundle.open(path, verify=False)
    return f"{b.path}: {len(b.modules)} modules, {b.total_bytes() / 1e6:.1f} MB"


__all__ = ["export_bundle", "export_monolithic", "graph_jobs", "export_graph", "load_model", "load_gates",
           "default_out"]
