"""Gate training: one readable loop (nanoGPT style) that teaches the predictor which modules to skip.

Per step, for a global batch of utterances (split across DDP ranks):
1. sample a sparsity target ``s ~ U(target_range)`` per utterance and feed it to the predictor
   with the utterance's context (pooled log-mel stats, language, task);
2. draw hard straight-through Gumbel-Softmax gates at an annealed temperature;
3. run the student (the Whisper model with those gates; skipped modules replaced by their skip
   adapter, LoRA or fine-tuned weights depending on ``adapt``) teacher-forced on the dense
   model's own greedy tokens: task loss = cross-entropy to them (+ optional KL to the dense
   logits), on both transcribe and translate;
4. sparsity loss = alpha * (|s_hat - s| + (s_hat - s)^2), ``s_hat`` the FLOP-weighted skipped
   fraction of the in-scope modules under the utterance's own planning costs.

Utterances run one at a time (micro-batches of 1): on a CPU that costs little, and each one sees
exactly its own trimmed encoder context (``audio_ctx``) as at inference, with no padding. The
gates are cut from the predictor's graph per utterance and their gradients pushed back through
the predictor once per step, so memory holds one utterance's activations.

Every random draw (batch indices, targets, language dropout, Gumbel noise) comes from one
generator that every rank advances identically for the whole global batch, so a run gives the
same result with 1 or N processes and after ``--resume``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgegate.budget import modules_in_scope, validate_scope
from edgegate.errors import BudgetError, EdgegateError
from edgegate.gated import (
    ADAPTERS_FILE,
    GATES_FILE,
    LORA_FILE,
    LORA_FORMAT,
    MODEL_FILE,
    PREDICTOR_FILE,
    GateSpec,
    default_language_codes,
    language_index,
    planning_costs,
    save_adapters,
    task_index,
    utterance_context,
)
from edgegate.models.whisper import Whisper
from edgegate.predictor import (
    GatePredictor,
    PredictorConfig,
    gumbel_gates,
    save_predictor,
    sparsity_loss,
    temperature,
)

ADAPT_MODES = ("none", "skip-adapters", "lora", "full")
INIT_RANKINGS = ("ablation", "flat")
CHECKPOINT_DIR = "checkpoint"
TRAINER_STATE = "trainer_state.pt"


class TrainingError(EdgegateError):
    """Training cannot start or continue as configured."""


@dataclass
class TrainConfig:
    manifest: str
    out: str = "runs/gates"
    model: str = "whisper-base"
    scope: str = "both"
    adapt: str = "skip-adapters"
    adapter_rank: int = 32
    lora_rank: int = 8
    steps: int = 300
    batch_size: int = 8
    lr: float = 3e-3
    adapt_lr: float | None = None  # learning rate of the adapted weights (default: lr); ~1e-5..1e-4 for lora/full
    weight_decay: float = 0.0
    warmup: int = 10
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    target_range: tuple[float, float] = (0.0, 0.8)
    target_power: float = 1.0  # targets lo + (hi - lo) * u**power, u ~ U(0, 1): > 1 favours low budgets
    alpha: float = 4.0
    tau_start: float = 2.0
    tau_end: float = 0.3
    kl_weight: float = 0.0
    audio_ctx: int | None = 32
    lang_dropout: float = 0.1
    max_tokens: int = 96
    drop_unfinished: bool = True  # leave out utterances the teacher did not finish (loops)
    hidden: int = 128
    init_ranking: str = "ablation"  # "ablation": seed the predictor with measured per-module damage; "flat"
    ablation_utts: int = 16
    seed: int = 0
    checkpoint_every: int = 50
    log_every: int = 10
    resume: bool = False
    stop_after: int | None = None  # stop (with a checkpoint) after this step: time-sliced jobs
    save_dtype: str = "float16"
    threads: int | None = None
    progress: bool = True
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        validate_scope(self.scope)
        if self.adapt not in ADAPT_MODES:
            raise TrainingError(f"unknown adaptation {self.adapt!r}: use one of {', '.join(ADAPT_MODES)}")
        lo, hi = self.target_range
        if not (0.0 <= lo <= hi < 1.0) or any(math.isnan(v) for v in (lo, hi)):
            raise BudgetError(f"target range {lo:g}..{hi:g} is not inside [0, 1): pass LO,HI with "
                              "0 <= LO <= HI < 1, e.g. --target-range 0,0.8")
        for name in ("steps", "batch_size", "checkpoint_every", "log_every", "max_tokens"):
            if getattr(self, name) < 1:
                raise TrainingError(f"{name.replace('_', '-')} must be >= 1: got {getattr(self, name)}")
        if self.adapt == "skip-adapters" and self.adapter_rank < 1:
            raise TrainingError("adapter rank must be >= 1 for skip adapters")
        if not self.target_power > 0:
            raise TrainingError(f"target power must be > 0: got {self.target_power}")
        if not self.lr > 0:
            raise TrainingError(f"learning rate must be > 0: got {self.lr}")
        if self.adapt_lr is not None and not self.adapt_lr > 0:
            raise TrainingError(f"adapt learning rate must be > 0: got {self.adapt_lr}")
        if self.audio_ctx is not None and self.audio_ctx < 0:
            raise TrainingError(f"audio-ctx margin must be >= 0 encoder positions: got {self.audio_ctx}")
        if self.init_ranking not in INIT_RANKINGS:
            raise TrainingError(f"unknown --init-ranking {self.init_ranking!r}: use one of {', '.join(INIT_RANKINGS)}")
        if self.ablation_utts < 1:
            raise TrainingError(f"ablation-utts must be >= 1: got {self.ablation_utts}")
        if self.save_dtype not in ("float16", "float32"):
            raise TrainingError("save dtype must be float16 or float32")


def parse_range(text: str) -> tuple[float, float]:
    """'0,0.8' or '0.3' -> (lo, hi); a one-line BudgetError on anything else."""
    parts = [p for p in str(text).replace(":", ",").split(",") if p.strip()]
    try:
        vals = [float(p) for p in parts]
    except ValueError:
        vals = []
    if len(vals) == 1:
        vals = vals * 2
    if len(vals) != 2:
        raise BudgetError(f"bad target range {text!r}: pass LO,HI such as 0,0.8 (fractions of cost to skip)")
    return vals[0], vals[1]


# -- data ------------------------------------------------------------------------------------
@dataclass
class Example:
    mel: torch.Tensor  # (n_mels, frames): the trimmed encoder input
    stats: torch.Tensor  # (2 * n_mels,)
    lang: str
    task: str
    prompt: list[int]
    tokens: list[int]  # the dense teacher's greedy tokens
    finished: bool  # the teacher emitted <|endoftext|> within max_tokens
    costs: torch.Tensor  # (L,) planning FLOPs
    eot: int
    audio: str = ""


def _model_fingerprint(model: Whisper) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        if "skip_adapters" in k:
            continue
        h.update(k.encode())
        h.update(v.detach().flatten()[:64].float().numpy().tobytes())
    return h.hexdigest()[:16]


def teacher_tokens(model: Whisper, tokenizer, mel: torch.Tensor, lang: str, task: str,
                   max_tokens: int) -> tuple[list[int], bool]:
    """The dense model's greedy tokens for one trimmed mel (the distillation labels)."""
    from edgegate.decoding import decode
    from edgegate.transcriber import TorchDecoderState

    gates = model.split_gates(None)
    with torch.inference_mode():
        xa = model.embed_audio(mel[None], gates)
        cross = model.cross_kv(xa, gates)
    res = decode(lambda: TorchDecoderState(model, cross, gates), tokenizer, model.dims.n_vocab, lang, task,
                 1, max_tokens=max_tokens)
    return res.tokens, len(res.tokens) < max_tokens


def load_examples(entries, model: Whisper, tokenizer, cfg: TrainConfig, cache_path: Path | None,
                  rank: int = 0, world: int = 1, progress: bool = False) -> list[Example]:
    """Features and teacher labels for every manifest entry (labels cached in ``cache_path``)."""
    from edgegate.audio import load_audio

    fp = _model_fingerprint(model)
    cache: dict[str, list] = {}
    if cache_path is not None and cache_path.exists():
        try:
            cache = json.loads(cache_path.read_text())
        except json.JSONDecodeError:
            cache = {}
    examples: list[Example | None] = [None] * len(entries)
    todo: list[int] = []
    keys: list[str] = []
    feats = []
    for i, e in enumerate(entries):
        samples = load_audio(e.audio)[: 30 * 16000]
        window, stats, n_frames = utterance_context(samples, model.dims.n_mels)
        from edgegate.pipeline import encoder_frames

        frames = encoder_frames(n_frames, cfg.audio_ctx)
        mel = torch.from_numpy(np.ascontiguousarray(window[:, :frames]))
        names, costs = planning_costs(model.dims, n_frames, cfg.audio_ctx, len(samples) / 16000)
        key = f"{fp}|{cfg.audio_ctx}|{cfg.max_tokens}|{e.lang}|{e.task}|{e.audio}"
        keys.append(key)
        feats.append((mel, torch.from_numpy(stats), torch.from_numpy(costs).float()))
        if key not in cache:
            todo.append(i)
    # Teacher labels: each rank labels its share; the shares are exchanged when running DDP.
    mine = todo[rank::world]
    labelled: dict[str, list] = {}
    it = mine
    if progress:
        from tqdm import tqdm

        it = tqdm(mine, desc="teacher labels", unit="utt", dynamic_ncols=True)
    for i in it:
        e = entries[i]
        toks, finished = teacher_tokens(model, tokenizer, feats[i][0], e.lang, e.task, cfg.max_tokens)
        labelled[keys[i]] = [toks, finished]
    if world > 1:
        import torch.distributed as dist

        gathered: list = [None] * world
        dist.all_gather_object(gathered, labelled)
        for g in gathered:
            labelled.update(g)
    cache.update(labelled)
    if cache_path is not None and rank == 0 and labelled:
        tmp = cache_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(cache))
        os.replace(tmp, cache_path)
    for i, e in enumerate(entries):
        toks, finished = cache[keys[i]]
        mel, stats, costs = feats[i]
        examples[i] = Example(mel, stats, e.lang, e.task, tokenizer.sot_sequence(e.lang, e.task), list(toks),
                              bool(finished), costs, tokenizer.eot, e.audio)
    return examples  # type: ignore[return-value]


def check_entries(entries, tokenizer, manifest: str) -> None:
    if not entries:
        raise TrainingError(f"{manifest}: manifest has no entries; add one JSON object per line")
    codes = set(tokenizer.language_codes)
    for i, e in enumerate(entries, start=1):
        if e.lang not in codes:
            raise TrainingError(f"{manifest}: entry {i} ({Path(e.audio).name}) has unknown language "
                                f"{e.lang!r}; use a Whisper language code such as en, de, es, fr, it")
        if e.task == "translate" and e.lang == "en":
            raise TrainingError(f"{manifest}: entry {i} asks to translate English to English; use transcribe")


# -- adaptation --------------------------------------------------------------------------------
def module_linears(model: Whisper, name: str) -> dict[str, nn.Linear]:
    """The nn.Linear layers of one gateable module, keyed by their parameter path prefix."""
    part, layer, kind = name.split(".")
    block = (model.encoder if part == "encoder" else model.decoder).blocks[int(layer)]
    prefix = f"{part}.blocks.{layer}"
    if kind == "mlp":
        return {f"{prefix}.mlp.0": block.mlp[0], f"{prefix}.mlp.2": block.mlp[2]}
    attr = "attn" if kind in ("attn", "self_attn") else "cross_attn"
    mha = getattr(block, attr)
    return {f"{prefix}.{attr}.{p}": getattr(mha, p) for p in ("query", "key", "value", "out")}


def module_parameters(model: Whisper, name: str) -> dict[str, nn.Parameter]:
    """Weights of one gateable module and its pre-LayerNorm (what ``full`` fine-tuning trains)."""
    part, layer, kind = name.split(".")
    prefix = f"{part}.blocks.{layer}."
    sub = {"attn": ("attn.", "attn_ln."), "self_attn": ("attn.", "attn_ln."),
           "cross_attn": ("cross_attn.", "cross_attn_ln."), "mlp": ("mlp.", "mlp_ln.")}[kind]
    return {k: p for k, p in model.named_parameters()
            if k.startswith(prefix) and k[len(prefix):].startswith(sub)}


class LoRA(nn.Module):
    """Low-rank deltas on the Linear layers of the gated modules, applied by forward hooks."""

    def __init__(self, model: Whisper, names: list[str], rank: int, scale: float = 1.0):
        super().__init__()
        self.rank, self.scale, self.enabled = rank, scale, True
        self.A = nn.ParameterDict()
        self.B = nn.ParameterDict()
        self.handles = []
        for name in names:
            for path, lin in module_linears(model, name).items():
                key = path.replace(".", "_")
                self.A[key] = nn.Parameter(torch.randn(rank, lin.in_features) / math.sqrt(lin.in_features))
                self.B[key] = nn.Parameter(torch.zeros(lin.out_features, rank))
                self.handles.append(lin.register_forward_hook(self._hook(key)))
        self.paths = {path.replace(".", "_"): path for n in names for path in module_linears(model, n)}

    def _hook(self, key: str):
        def hook(_mod, inputs, output):
            if not self.enabled:
                return output
            return output + self.scale * (inputs[0] @ self.A[key].T) @ self.B[key].T
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()

    def state_tensors(self, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        out = {}
        for key, path in self.paths.items():
            out[f"{path}.A"] = self.A[key].detach().to(dtype).contiguous()
            out[f"{path}.B"] = self.B[key].detach().to(dtype).contiguous()
        return out


def load_lora_merged(model: Whisper, path: Path) -> None:
    """Merge a saved LoRA (``W += scale * B @ A``) into ``model``'s weights."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != LORA_FORMAT:
        raise TrainingError(f"{path} is not an edgegate LoRA file")
    scale = float(meta.get("scale", "1"))
    tensors = load_file(str(path))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for k in tensors:
            if k.endswith(".A"):
                base = k[:-2]
                w = params[f"{base}.weight"]
                w += scale * tensors[f"{base}.B"].float() @ tensors[k].float()


@dataclass
class Student:
    """The model with its trainable adaptation, and what the loop needs to know about it."""

    model: Whisper
    names: list[str]
    in_scope: np.ndarray
    trainable: list[nn.Parameter]
    lora: LoRA | None = None
    teacher: Whisper | None = None  # a frozen copy, only for KL in full fine-tuning
    encoder_frozen: bool = True

    def adaptation_state(self, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """Everything but the predictor that training changed (for checkpoints)."""
        if self.lora is not None:
            return self.lora.state_tensors(dtype)
        if self.model.skip_adapters:
            return {f"skip_adapters.{k}": v.detach().to(dtype).contiguous()
                    for k, v in self.model.skip_adapters.state_dict().items()}
        named = {id(p): k for k, p in self.model.named_parameters()}
        return {named[id(p)]: p.detach().to(dtype).contiguous() for p in self.trainable}

    def load_adaptation_state(self, tensors: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            if self.lora is not None:
                for key, path in self.lora.paths.items():
                    self.lora.A[key].copy_(tensors[f"{path}.A"])
                    self.lora.B[key].copy_(tensors[f"{path}.B"])
                return
            params = dict(self.model.named_parameters())
            for k, v in tensors.items():
                params[k].copy_(v)


def build_student(model: Whisper, cfg: TrainConfig) -> Student:
    names = list(model.gate_names)
    in_scope = modules_in_scope(names, cfg.scope)
    scoped = [n for n, s in zip(names, in_scope, strict=True) if s]
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    trainable: list[nn.Parameter] = []
    lora = teacher = None
    encoder_frozen = True
    if cfg.adapt == "skip-adapters":
        model.add_skip_adapters(cfg.adapter_rank, scoped)
        trainable = list(model.skip_adapters.parameters())
    elif cfg.adapt == "lora":
        lora = LoRA(model, scoped, cfg.lora_rank)
        trainable = list(lora.parameters())
        encoder_frozen = cfg.scope == "decoder"
    elif cfg.adapt == "full":
        if cfg.kl_weight > 0:
            import copy

            teacher = copy.deepcopy(model)
        for n in scoped:
            trainable += list(module_parameters(model, n).values())
        encoder_frozen = cfg.scope == "decoder"
    for p in trainable:
        p.requires_grad_(True)
    return Student(model, names, in_scope, trainable, lora, teacher, encoder_frozen)


# -- the loop ----------------------------------------------------------------------------------
def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio * lr`` (needed to land on targets)."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))


def item_loss(st: Student, ex: Example, gate: torch.Tensor, xa: torch.Tensor | None,
              kl_weight: float) -> tuple[torch.Tensor, float]:
    """Distillation loss of one utterance under keep-gates ``gate`` (L,), and its token accuracy."""
    model = st.model
    per_module = [gate[i:i + 1] if s else None for i, s in enumerate(st.in_scope)]
    xa_in = xa
    if xa is None:
        xa = model.embed_audio(ex.mel[None], per_module)
    cross = model.cross_kv(xa, per_module)
    seq = ex.prompt + ex.tokens
    inp = torch.tensor([seq])
    logits = model.decode(inp, cross, per_module)[0]
    p = len(ex.prompt)
    n_pred = len(ex.tokens) + (1 if ex.finished else 0)
    logits = logits[p - 1: p - 1 + n_pred]
    target = torch.tensor(ex.tokens + ([ex.eot] if ex.finished else []))
    loss = F.cross_entropy(logits, target)
    if kl_weight > 0:
        with torch.no_grad():
            teacher = st.teacher or model
            if st.lora is not None:
                st.lora.enabled = False
            try:
                # A cached encoder output (frozen encoder, decoder scope) is the teacher's own.
                txa = xa_in if xa_in is not None else teacher.embed_audio(ex.mel[None])
                tl = teacher.decode(inp, teacher.cross_kv(txa))[0][p - 1: p - 1 + n_pred]
            finally:
                if st.lora is not None:
                    st.lora.enabled = True
        loss = loss + kl_weight * F.kl_div(F.log_softmax(logits, -1), F.log_softmax(tl, -1),
                                           log_target=True, reduction="batchmean")
    acc = float((logits.argmax(-1) == target).float().mean())
    return loss, acc


def seed_ranking_from_ablation(predictor: GatePredictor, st: Student, examples: list[Example],
                               xa_cache: dict[int, torch.Tensor], cfg: TrainConfig, out: Path,
                               dist=None, rank: int = 0, world: int = 1) -> np.ndarray:
    """Measure each in-scope module's damage on a few utterances and seed the predictor's margins.

    Writes ``out/ablation.json`` (rank 0). Returns the margins.
    """
    from edgegate.ablation import module_damage, ranking_margins
    from edgegate.predictor import seed_margins

    n = min(cfg.ablation_utts, len(examples))
    picks = [int(i) for i in np.linspace(0, len(examples) - 1, n).round().astype(int)]

    def loss_fn(i: int, gate: torch.Tensor) -> float:
        return float(item_loss(st, examples[i], gate, xa_cache.get(i), 0.0)[0])

    mine = picks[rank::world]
    total = torch.from_numpy(module_damage(loss_fn, mine, st.in_scope, progress=cfg.progress and rank == 0)
                             * len(mine))
    if dist:
        dist.all_reduce(total)
    damage = total.numpy() / n
    costs = torch.stack([examples[i].costs for i in picks]).mean(0).numpy()
    margins = ranking_margins(damage, costs, st.in_scope)
    seed_margins(predictor, torch.from_numpy(margins).float())
    if rank == 0:
        report = {"utterances": n, "modules": {name: {"damage": round(float(d), 4), "margin": round(float(m), 3),
                                                      "cost_share": round(float(c / costs.sum()), 5)}
                                               for name, d, m, c, s in zip(st.names, damage, margins, costs,
                                                                           st.in_scope, strict=True) if s}}
        (out / "ablation.json").write_text(json.dumps(report, indent=1) + "\n")
    return margins


def _dist():
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo")
        return dist, dist.get_rank(), dist.get_world_size()
    return None, 0, 1


def _write_outputs(directory: Path, predictor: GatePredictor, st: Student, cfg: TrainConfig,
                   spec: GateSpec, dtype: torch.dtype) -> None:
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    save_predictor(predictor, directory / PREDICTOR_FILE, extra_meta=spec.to_dict())
    if cfg.adapt == "skip-adapters":
        save_adapters(st.model, directory / ADAPTERS_FILE, "float16" if dtype == torch.float16 else "float32")
    elif cfg.adapt == "lora":
        save_file(st.lora.state_tensors(dtype), str(directory / LORA_FILE),
                  metadata={"format": LORA_FORMAT, "rank": str(cfg.lora_rank), "scale": str(st.lora.scale)})
    elif cfg.adapt == "full":
        save_file(st.adaptation_state(dtype), str(directory / MODEL_FILE),
                  metadata={"format": "edgegate-finetuned-weights"})
    (directory / GATES_FILE).write_text(json.dumps(spec.to_dict(), indent=1) + "\n")


def save_checkpoint(out: Path, step: int, predictor: GatePredictor, st: Student, opt, gen: torch.Generator,
                    cfg: TrainConfig, history: list[dict]) -> Path:
    """Atomically replace ``out/checkpoint`` with the state after ``step`` steps."""
    from safetensors.torch import save_file

    final = out / CHECKPOINT_DIR
    tmp = out / f".{CHECKPOINT_DIR}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_predictor(predictor, tmp / PREDICTOR_FILE, extra_meta={"step": step})
    adapt = st.adaptation_state(torch.float32)
    if adapt:
        save_file(adapt, str(tmp / "adaptation.safetensors"))
    # Plain tensors, ints, floats, lists and dicts only: loads with torch.load(weights_only=True).
    torch.save({"step": step, "optimizer": opt.state_dict(), "generator": gen.get_state(),
                "config": json.dumps(asdict(cfg)), "history": json.dumps(history)}, tmp / TRAINER_STATE)
    old = out / f".{CHECKPOINT_DIR}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(out: Path, predictor: GatePredictor, st: Student, opt, gen: torch.Generator,
                    cfg: TrainConfig) -> tuple[int, list[dict]]:
    from safetensors.torch import load_file

    from edgegate.predictor import load_predictor

    ck = out / CHECKPOINT_DIR
    if not (ck / TRAINER_STATE).exists():
        raise TrainingError(f"--resume: no checkpoint in {ck}; run without --resume to start training")
    state = torch.load(ck / TRAINER_STATE, weights_only=True)
    old = json.loads(state["config"])
    for k in ("model", "scope", "adapt", "adapter_rank", "lora_rank", "audio_ctx", "hidden", "max_tokens"):
        if old.get(k) != getattr(cfg, k):
            raise TrainingError(f"--resume: checkpoint was trained with {k}={old.get(k)!r}, this run has "
                                f"{getattr(cfg, k)!r}; use the same settings or another --out")
    saved, _ = load_predictor(ck / PREDICTOR_FILE)
    predictor.load_state_dict(saved.state_dict())
    if (ck / "adaptation.safetensors").exists():
        st.load_adaptation_state(load_file(str(ck / "adaptation.safetensors")))
    opt.load_state_dict(state["optimizer"])
    gen.set_state(state["generator"])
    return int(state["step"]), json.loads(state["history"])


def train(cfg: TrainConfig, model: Whisper | None = None, tokenizer=None, entries=None) -> dict:
    """Train a gate predictor (and its adaptation) as ``cfg`` says; returns a summary dict.

    Writes ``cfg.out``: ``predictor.safetensors``, the adaptation (``adapters.safetensors``,
    ``lora.safetensors`` or ``model.safetensors``), ``gates.json``, ``train_log.jsonl``,
    ``teacher_cache.json`` and ``checkpoint/`` (for ``--resume``).
    """
    from edgegate.data.manifest import read_manifest
    from edgegate.models.loaders import load_whisper
    from edgegate.models.registry import resolve_model, tokenizer_path
    from edgegate.tokenizer import WhisperTokenizer

    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    dist, rank, world = _dist()
    if entries is None:
        entries = read_manifest(cfg.manifest)
    if model is None or tokenizer is None:
        path = resolve_model(cfg.model)
        model = model or load_whisper(path)
        tokenizer = tokenizer or WhisperTokenizer.from_file(tokenizer_path(path))
    check_entries(entries, tokenizer, cfg.manifest)
    out = Path(cfg.out)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    if dist:
        dist.barrier()

    torch.manual_seed(cfg.seed)
    model.eval()
    examples = load_examples(entries, model, tokenizer, cfg, out / "teacher_cache.json", rank, world,
                             progress=cfg.progress and rank == 0)
    dropped = [e for e in examples if not e.finished] if cfg.drop_unfinished else []
    examples = [e for e in examples if e.finished or not cfg.drop_unfinished]
    if dropped and rank == 0:
        print(f"train-gates: {len(dropped)} of {len(dropped) + len(examples)} utterances left out: the dense "
              f"model did not finish them within {cfg.max_tokens} tokens (hallucination loops make bad labels)")
    if not examples:
        raise TrainingError(f"{cfg.manifest}: the dense model finished none of the utterances within "
                            f"{cfg.max_tokens} tokens; raise --max-tokens or use shorter audio")
    st = build_student(model, cfg)
    codes = default_language_codes()
    pcfg = PredictorConfig(n_modules=len(st.names), n_mels=model.dims.n_mels, n_languages=len(codes),
                           hidden=cfg.hidden)
    torch.manual_seed(cfg.seed)
    predictor = GatePredictor(pcfg).train()
    params = [{"params": list(predictor.parameters())}]
    if st.trainable:
        params.append({"params": st.trainable, "lr_scale": (cfg.adapt_lr or cfg.lr) / cfg.lr})
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    in_scope = torch.from_numpy(st.in_scope)

    # Frozen encoder and decoder-only gates: run the encoder once per utterance and keep it.
    xa_cache: dict[int, torch.Tensor] = {}
    if cfg.scope == "decoder" and st.encoder_frozen:
        # no_grad, not inference_mode: fine-tuned cross-attention K/V weights save xa for backward.
        with torch.no_grad():
            for i, ex in enumerate(examples):
                xa_cache[i] = model.embed_audio(ex.mel[None])

    if cfg.init_ranking == "ablation" and not cfg.resume:
        seed_ranking_from_ablation(predictor, st, examples, xa_cache, cfg, out, dist, rank, world)
    if dist:  # identical seeds give identical weights; make sure of it
        for p in list(predictor.parameters()) + st.trainable:
            dist.broadcast(p.data, 0)
    start, history = 0, []
    if cfg.resume:
        start, history = load_checkpoint(out, predictor, st, opt, gen, cfg)
    stats = torch.stack([e.stats for e in examples])
    langs = torch.tensor([language_index(e.lang, codes) for e in examples])
    tasks = torch.tensor([task_index(e.task) for e in examples])
    lo, hi = cfg.target_range
    all_params = [p for g in opt.param_groups for p in g["params"]]

    bar = None
    if cfg.progress and rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=start, desc="train-gates", unit="step", dynamic_ncols=True)
    log_path = out / "train_log.jsonl"
    t0 = time.time()
    B = cfg.batch_size
    for step in range(start, cfg.steps):
        # Every draw for the global batch, identical on all ranks.
        idx = torch.randint(len(examples), (B,), generator=gen)
        target = lo + (hi - lo) * torch.rand(B, generator=gen) ** cfg.target_power
        drop = torch.rand(B, generator=gen) < cfg.lang_dropout
        tau = temperature(step, cfg.steps, cfg.tau_start, cfg.tau_end)
        lang_in = torch.where(drop, torch.zeros_like(langs[idx]), langs[idx])
        logits = predictor(stats[idx], lang_in, tasks[idx], target)
        gates = gumbel_gates(logits, tau, hard=True, generator=gen)
        gates = torch.where(in_scope, gates, torch.ones_like(gates))
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg) * g.get("lr_scale", 1.0)
        opt.zero_grad(set_to_none=True)

        local = list(range(rank, B, world))
        leaf = gates[local].detach().requires_grad_(True)
        task_sum, acc_sum, sparse = 0.0, 0.0, torch.zeros(())
        s_hats = torch.zeros(B)
        for j, b in enumerate(local):
            i = int(idx[b])
            ex = examples[i]
            loss, acc = item_loss(st, ex, leaf[j], xa_cache.get(i), cfg.kl_weight)
            (loss / B).backward()
            task_sum += float(loss.detach())
            acc_sum += acc
            sl, s_hat = sparsity_loss(gates[b:b + 1], ex.costs, target[b:b + 1], cfg.alpha, in_scope)
            sparse = sparse + sl / B
            s_hats[b] = s_hat.detach()[0]
        if local:
            ((gates[local] * leaf.grad).sum() + sparse).backward()
        metrics = torch.tensor([task_sum, acc_sum, float(sparse.detach()) * B, len(local)], dtype=torch.float64)
        if dist:
            for p in all_params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                dist.all_reduce(p.grad)
            dist.all_reduce(metrics)
            dist.all_reduce(s_hats)
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(all_params, cfg.grad_clip)
        opt.step()

        n = float(metrics[3])
        rec = {"step": step + 1, "task_loss": float(metrics[0]) / n, "token_acc": float(metrics[1]) / n,
               "sparsity_loss": float(metrics[2]) / n, "s_hat": float(s_hats.mean()),
               "target": float(target.mean()), "abs_err": float((s_hats - target).abs().mean()),
               "tau": tau, "lr": lr_at(step, cfg), "elapsed_s": round(time.time() - t0, 2)}
        history.append(rec)
        if rank == 0:
            if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
                with open(log_path, "a") as f:
                    f.write(json.dumps(rec) + "\n")
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{rec['task_loss']:.3f}", s=f"{rec['s_hat']:.2f}/{rec['target']:.2f}")
        stop = cfg.stop_after is not None and step + 1 >= cfg.stop_after and step + 1 < cfg.steps
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps or stop:
            if rank == 0:
                save_checkpoint(out, step + 1, predictor, st, opt, gen, cfg, history)
            if dist:
                dist.barrier()
        if stop:
            break
    if bar is not None:
        bar.close()
    if history and history[-1]["step"] < cfg.steps:  # stopped early: resume later with --resume
        if st.lora is not None:
            st.lora.remove()
        return {"steps": history[-1]["step"], "world_size": world, "stopped": True,
                "seconds": round(time.time() - t0, 1), "final": history[-1]}

    spec = GateSpec(model=cfg.model, scope=cfg.scope, adapt=cfg.adapt, audio_ctx=cfg.audio_ctx,
                    adapter_rank=cfg.adapter_rank if cfg.adapt == "skip-adapters" else 0,
                    lora_rank=cfg.lora_rank if cfg.adapt == "lora" else 0, language_codes=codes,
                    extra={"train": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()
                                     if k not in ("extra", "progress", "resume")},
                           "n_utterances": len(examples)})
    summary = {"steps": cfg.steps, "world_size": world, "seconds": round(time.time() - t0, 1),
               "final": history[-1] if history else {}}
    if rank == 0:
        predictor.eval()
        dtype = torch.float16 if cfg.save_dtype == "float16" else torch.float32
        _write_outputs(out, predictor, st, cfg, spec, dtype)
        targets = sorted({0.1, 0.25, 0.5, 0.75, round(lo, 4), round(hi, 4), round((lo + hi) / 2, 4)})
        summary["calibration"] = calibration(predictor, examples, st.in_scope, codes, targets)
        (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    if st.lora is not None:
        st.lora.remove()
    if dist:
        dist.barrier()
    return summary


def calibration(predictor: GatePredictor, examples: list[Example], in_scope: np.ndarray, codes: list[str],
                targets=(0.1, 0.25, 0.5, 0.75)) -> dict[str, float]:
    """Cost-weighted skipped fraction of the predictor's argmax gates (no noise, no planner), per target.

    The planner enforces budgets exactly at run time; this says how well the predictor itself
    learned to hit them.
    """
    stats = torch.stack([e.stats for e in examples])
    langs = torch.tensor([language_index(e.lang, codes) for e in examples])
    tasks = torch.tensor([task_index(e.task) for e in examples])
    costs = torch.stack([e.costs for e in examples]) * torch.from_numpy(in_scope).float()
    out = {}
    with torch.no_grad():
        for t in targets:
            logits = predictor(stats, langs, tasks, torch.full((len(examples),), float(t)))
            keep = (logits[..., 1] > logits[..., 0]).float()
            keep = torch.where(torch.from_numpy(in_scope), keep, torch.ones_like(keep))
            s = ((1 - keep) * costs).sum(-1) / costs.sum(-1)
            out[f"{t:g}"] = round(float(s.mean()), 4)
    return out
