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
   fraction of the in-scope modules under the utterance's own planning costs (``edgegate.plan``,
   the same costs the runtime plans with).

Utterances run one at a time (micro-batches of 1): on a CPU that costs little, and each one sees
exactly its own trimmed encoder context (``audio_ctx``) as at inference, with no padding. The
gates are cut from the predictor's graph per utterance and their gradients pushed back through
the predictor once per step, so memory holds one utterance's activations.

Every random draw (batch indices, targets, language dropout, Gumbel noise) comes from one
generator that every rank advances identically for the whole global batch, so a run gives the
same result with 1 or N processes and after ``--resume``.

Pieces: settings in :mod:`edgegate.train_config`, data and teacher labels in
:mod:`edgegate.train_data`, the student and its loss in :mod:`edgegate.student`, checkpoints in
:mod:`edgegate.train_checkpoint`, the output files' formats in :mod:`edgegate.adaptation`.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from edgegate.adaptation import ADAPTERS_FILE, LORA_FILE, MODEL_FILE, save_adapters, save_finetuned, save_lora
from edgegate.gate_set import GATES_FILE, PREDICTOR_FILE, GateSpec
from edgegate.models.owsm_training import is_owsm_training, owsm_training_inputs
from edgegate.models.whisper import Whisper
from edgegate.plan import default_language_codes, language_index, task_index
from edgegate.predictor import (
    GatePredictor,
    PredictorConfig,
    gumbel_gates,
    save_predictor,
    sparsity_loss,
    temperature,
)
from edgegate.student import Student, build_student, item_loss
from edgegate.train_checkpoint import load_checkpoint, save_checkpoint
from edgegate.train_config import TrainConfig, TrainingError, parse_range
from edgegate.train_data import Example, check_entries, load_examples, measured_cost_table
from edgegate.train_loop import checkpoint_due, data_parallel

__all__ = ["TrainConfig", "TrainingError", "parse_range", "train", "calibration", "lr_at", "build_student",
           "item_loss", "load_examples"]


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio * lr`` (needed to land on targets)."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))


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


def _write_outputs(directory: Path, predictor: GatePredictor, st: Student, cfg: TrainConfig,
                   spec: GateSpec, dtype: torch.dtype) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    save_predictor(predictor, directory / PREDICTOR_FILE, extra_meta=spec.to_dict())
    if cfg.adapt == "skip-adapters":
        save_adapters(st.model, directory / ADAPTERS_FILE, "float16" if dtype == torch.float16 else "float32")
    elif cfg.adapt == "lora":
        save_lora(st.lora.state_tensors(dtype), directory / LORA_FILE, cfg.lora_rank, st.lora.scale)
    elif cfg.adapt == "full":
        save_finetuned(st.adaptation_state(dtype), directory / MODEL_FILE)
    (directory / GATES_FILE).write_text(json.dumps(spec.to_dict(), indent=1) + "\n")


@dataclass
class _Run:
    """One training run: its settings, ranks, data, student, predictor and optimiser."""

    cfg: TrainConfig
    out: Path
    examples: list[Example]
    st: Student
    predictor: GatePredictor
    opt: torch.optim.Optimizer
    gen: torch.Generator
    codes: list[str]
    dist: object = None
    rank: int = 0
    world: int = 1
    xa_cache: dict[int, torch.Tensor] = field(default_factory=dict)
    measured_costs: dict | None = None  # the ms table planned with (train-gates --cost-table), or None: FLOPs


def _labelled_examples(cfg: TrainConfig, model: Whisper, tokenizer, entries, out: Path, rank: int,
                       world: int, features=None, measured_costs: dict | None = None) -> list[Example]:
    """The utterances with teacher labels; those the dense model did not finish are left out."""
    torch.manual_seed(cfg.seed)
    model.eval()
    examples = load_examples(entries, model, tokenizer, cfg, out / "teacher_cache.json", rank, world,
                             progress=cfg.progress and rank == 0, features=features,
                             measured_costs=measured_costs)
    dropped = [e for e in examples if not e.finished] if cfg.drop_unfinished else []
    examples = [e for e in examples if e.finished or not cfg.drop_unfinished]
    if dropped and rank == 0:
        print(f"train-gates: {len(dropped)} of {len(dropped) + len(examples)} utterances left out: the dense "
              f"model did not finish them within {cfg.max_tokens} tokens (hallucination loops make bad labels)")
    if not examples:
        raise TrainingError(f"{cfg.manifest}: the dense model finished none of the utterances within "
                            f"{cfg.max_tokens} tokens; raise --max-tokens or use shorter audio")
    return examples


def training_inputs(cfg: TrainConfig, model: Whisper | None = None, tokenizer=None, entries=None):
    """(model, tokenizer, entries, OWSM inputs or None) of ``cfg``: the manifest's entries, a Whisper by
    name or path, or an OWSM checkpoint directory (its features and language codes, entries in its codes)."""
    from edgegate.data.manifest import read_manifest
    from edgegate.models.loaders import load_whisper
    from edgegate.models.registry import resolve_model, tokenizer_path
    from edgegate.tokenizer import WhisperTokenizer

    if entries is None:
        entries = read_manifest(cfg.manifest)
    owsm = None
    if model is None and is_owsm_training(cfg.model):  # another family: its model, features, codes
        owsm = owsm_training_inputs(cfg, entries)
        model, tokenizer, entries = owsm.model, owsm.tokenizer, owsm.entries
    if model is None or tokenizer is None:
        path = resolve_model(cfg.model)
        model = model or load_whisper(path)
        tokenizer = tokenizer or WhisperTokenizer.from_file(tokenizer_path(path))
    return model, tokenizer, entries, owsm


def _start(cfg: TrainConfig, model: Whisper | None, tokenizer, entries) -> _Run:
    """Read the data, label it, build the student, the predictor and the optimiser (seeded)."""
    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    dist, rank, world = data_parallel()
    model, tokenizer, entries, owsm = training_inputs(cfg, model, tokenizer, entries)
    check_entries(entries, tokenizer, cfg.manifest)
    out = Path(cfg.out)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    if dist:
        dist.barrier()
    # read once: the gate set records the very table it was trained with (OWSM features plan their own costs)
    measured = None
    if cfg.cost_table is not None and owsm is None:
        measured = measured_cost_table(cfg.cost_table, list(model.gate_names))
    examples = _labelled_examples(cfg, model, tokenizer, entries, out, rank, world,
                                  None if owsm is None else owsm.features, measured)
    st = build_student(model, cfg)
    codes = default_language_codes() if owsm is None else owsm.codes
    pcfg = PredictorConfig(n_modules=len(st.names), n_mels=model.dims.n_mels, n_languages=len(codes),
                           hidden=cfg.hidden)
    torch.manual_seed(cfg.seed)
    predictor = GatePredictor(pcfg).train()
    params = [{"params": list(predictor.parameters())}]
    if st.trainable:
        params.append({"params": st.trainable, "lr_scale": (cfg.adapt_lr or cfg.lr) / cfg.lr})
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    run = _Run(cfg, out, examples, st, predictor, opt, gen, codes, dist, rank, world, measured_costs=measured)
    # Frozen encoder and decoder-only gates: run the encoder once per utterance and keep it.
    if cfg.scope == "decoder" and st.encoder_frozen:
        # no_grad, not inference_mode: fine-tuned cross-attention K/V weights save xa for backward.
        with torch.no_grad():
            for i, ex in enumerate(examples):
                run.xa_cache[i] = model.embed_audio(ex.mel[None])
    if cfg.init_ranking == "ablation" and not cfg.resume:
        seed_ranking_from_ablation(predictor, st, examples, run.xa_cache, cfg, out, dist, rank, world)
    if dist:  # identical seeds give identical weights; make sure of it
        for p in list(predictor.parameters()) + st.trainable:
            dist.broadcast(p.data, 0)
    return run


def _step(run: _Run, step: int, context: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
          all_params: list) -> dict:
    """One optimiser step over a global batch; returns the step's log record."""
    cfg, gen, st, opt, dist = run.cfg, run.gen, run.st, run.opt, run.dist
    stats, langs, tasks = context
    in_scope = torch.from_numpy(st.in_scope)
    lo, hi = cfg.target_range
    B = cfg.batch_size
    # Every draw for the global batch, identical on all ranks.
    idx = torch.randint(len(run.examples), (B,), generator=gen)
    target = lo + (hi - lo) * torch.rand(B, generator=gen) ** cfg.target_power
    drop = torch.rand(B, generator=gen) < cfg.lang_dropout
    tau = temperature(step, cfg.steps, cfg.tau_start, cfg.tau_end)
    lang_in = torch.where(drop, torch.zeros_like(langs[idx]), langs[idx])
    logits = run.predictor(stats[idx], lang_in, tasks[idx], target)
    gates = gumbel_gates(logits, tau, hard=True, generator=gen)
    gates = torch.where(in_scope, gates, torch.ones_like(gates))
    for g in opt.param_groups:
        g["lr"] = lr_at(step, cfg) * g.get("lr_scale", 1.0)
    opt.zero_grad(set_to_none=True)

    local = list(range(run.rank, B, run.world))
    leaf = gates[local].detach().requires_grad_(True)
    task_sum, acc_sum, sparse = 0.0, 0.0, torch.zeros(())
    s_hats = torch.zeros(B)
    for j, b in enumerate(local):
        i = int(idx[b])
        ex = run.examples[i]
        loss, acc = item_loss(st, ex, leaf[j], run.xa_cache.get(i), cfg.kl_weight)
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
    return {"step": step + 1, "task_loss": float(metrics[0]) / n, "token_acc": float(metrics[1]) / n,
            "sparsity_loss": float(metrics[2]) / n, "s_hat": float(s_hats.mean()),
            "target": float(target.mean()), "abs_err": float((s_hats - target).abs().mean()),
            "tau": tau, "lr": lr_at(step, cfg)}


def _loop(run: _Run, start: int, history: list[dict]) -> None:
    """Steps ``start`` .. ``cfg.steps`` (or ``stop_after``), logging and checkpointing as configured."""
    cfg, rank, dist = run.cfg, run.rank, run.dist
    ex = run.examples
    context = (torch.stack([e.stats for e in ex]), torch.tensor([language_index(e.lang, run.codes) for e in ex]),
               torch.tensor([task_index(e.task) for e in ex]))
    all_params = [p for g in run.opt.param_groups for p in g["params"]]
    bar = None
    if cfg.progress and rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=start, desc="train-gates", unit="step", dynamic_ncols=True)
    log_path = run.out / "train_log.jsonl"
    t0 = time.time()
    for step in range(start, cfg.steps):
        rec = _step(run, step, context, all_params)
        rec["elapsed_s"] = round(time.time() - t0, 2)
        history.append(rec)
        if rank == 0:
            if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
                with open(log_path, "a") as f:
                    f.write(json.dumps(rec) + "\n")
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{rec['task_loss']:.3f}", s=f"{rec['s_hat']:.2f}/{rec['target']:.2f}")
        due, stop = checkpoint_due(step, cfg)
        if due:
            if rank == 0:
                save_checkpoint(run.out, step + 1, run.predictor, run.st, run.opt, run.gen, cfg, history)
            if dist:
                dist.barrier()
        if stop:
            break
    if bar is not None:
        bar.close()


def _finish(run: _Run, history: list[dict], seconds: float) -> dict:
    """Write the gate set (rank 0) and return the run's summary."""
    cfg, st = run.cfg, run.st
    lo, hi = cfg.target_range
    spec = GateSpec(model=cfg.model, scope=cfg.scope, adapt=cfg.adapt, audio_ctx=cfg.audio_ctx,
                    adapter_rank=cfg.adapter_rank if cfg.adapt == "skip-adapters" else 0,
                    lora_rank=cfg.lora_rank if cfg.adapt == "lora" else 0, language_codes=run.codes,
                    extra={"train": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()
                                     if k not in ("extra", "progress", "resume")},
                           "n_utterances": len(run.examples)})
    if run.measured_costs is not None:  # plan as trained: the PyTorch path has no bundle to measure
        spec.extra.update(cost_unit="ms", measured_costs=run.measured_costs)
    summary = {"steps": cfg.steps, "world_size": run.world, "seconds": seconds,
               "final": history[-1] if history else {}}
    if run.rank == 0:
        run.predictor.eval()
        dtype = torch.float16 if cfg.save_dtype == "float16" else torch.float32
        _write_outputs(run.out, run.predictor, st, cfg, spec, dtype)
        targets = sorted({0.1, 0.25, 0.5, 0.75, round(lo, 4), round(hi, 4), round((lo + hi) / 2, 4)})
        summary["calibration"] = calibration(run.predictor, run.examples, st.in_scope, run.codes, targets)
        (run.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def train(cfg: TrainConfig, model: Whisper | None = None, tokenizer=None, entries=None) -> dict:
    """Train a gate predictor (and its adaptation) as ``cfg`` says; returns a summary dict.

    Writes ``cfg.out``: ``predictor.safetensors``, the adaptation (``adapters.safetensors``,
    ``lora.safetensors`` or ``model.safetensors``), ``gates.json``, ``train_log.jsonl``,
    ``teacher_cache.json`` and ``checkpoint/`` (for ``--resume``).
    """
    run = _start(cfg, model, tokenizer, entries)
    start, history = 0, []
    if cfg.resume:
        start, history = load_checkpoint(run.out, run.predictor, run.st, run.opt, run.gen, cfg)
    t0 = time.time()
    try:
        _loop(run, start, history)
        if history and history[-1]["step"] < cfg.steps:  # stopped early: resume later with --resume
            return {"steps": history[-1]["step"], "world_size": run.world, "stopped": True,
                    "seconds": round(time.time() - t0, 1), "final": history[-1]}
        summary = _finish(run, history, round(time.time() - t0, 1))
    finally:
        if run.st.lora is not None:
            run.st.lora.remove()
    if run.dist:
        run.dist.barrier()
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
