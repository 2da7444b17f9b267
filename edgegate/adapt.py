"""Edge adaptation (``edgegate adapt``): teach a Whisper checkpoint to run on its real audio length and to
tolerate skipped modules, while keeping what it knows.

The recipe follows audio-context fine-tuning (FUTO's whisper-acft) and LayerDrop:
- **teacher**: the unmodified model, dense, on Whisper's full 30-s window, decodes each utterance greedily
  and is then teacher-forced on its own tokens; the outputs of every decoder block and the final
  normalised state are the targets. They are computed once, on first use, and cached on disk in fp16
  (``TeacherCache``), so the first epoch streams and later epochs cost only the student;
- **student**: a copy that sees (a) the real frames plus a random margin of ``margin`` encoder positions
  (dynamic context, no padding), (b) augmented audio (``edgegate.data.augment``), and (c) on part of the
  utterances, random module drops over ``drop_scope`` with a drop probability drawn per utterance, so that
  the gates it will serve find the model tolerant;
- **loss**: the relative L2 distance of every decoder block's output to the teacher's (each layer
  normalised by the teacher's mean square, so that all layers count), plus an optional KL to the teacher's
  logits (recomputed from the cached final state with the frozen token embedding, which is also the
  output projection); small learning rates, AdamW, warm-up and cosine decay.

Training is one loop (nanoGPT style) over batches of one utterance per process; with ``WORLD_SIZE`` > 1
(``torchrun``) the gradients are averaged across processes by hand, which lets a process whose
utterance has no usable teacher (a decoding loop) contribute nothing without stalling the others.
Every random draw of a step comes from a generator seeded by (seed, step, rank): a resumed run takes the
same draws as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from edgegate.adapt_config import BEFORE_SETTING, CHECKPOINT_DIR, DELTA_FILE, RESUME_KEYS, AdaptConfig, AdaptError
from edgegate.models.whisper import Whisper
from edgegate.teacher import Targets, TeacherCache, teacher_targets, window_mel
from edgegate.train_loop import checkpoint_due, data_parallel
from edgegate.weight_delta import model_fingerprint


# -- the student -----------------------------------------------------------------------------------
def trainable_parameters(model: Whisper, which: str) -> dict[str, torch.nn.Parameter]:
    """Every block, stem and final norm (``blocks``), the encoder only or the decoder only; never the embeddings.

    The token embedding is also the output projection: keeping it frozen keeps the vocabulary's
    geometry, and lets the teacher's logits be recomputed from its cached final state.
    """
    frozen = ("decoder.token_embedding", "decoder.positional_embedding", "skip_adapters")
    out = {}
    for name, p in model.named_parameters():
        if any(name.startswith(f) for f in frozen) or which in ("encoder", "decoder") and not name.startswith(
                f"{which}."):
            continue
        out[name] = p
    return out


def draw_mask(model: Whisper, cfg: AdaptConfig, rng: np.random.Generator, planned=None) -> list[bool] | None:
    """LayerDrop: None (dense) on ``p_dense`` of the utterances, else each in-scope module dropped with p;
    with ``planned`` (budget -> kept modules, from --masks-from) the gate predictor's plan at a random budget."""
    if (cfg.drop_scope == "none" and planned is None) or rng.random() < cfg.p_dense:
        return None
    p = rng.uniform(cfg.drop_min, cfg.drop_max)
    if planned is not None:
        return list(planned(p))
    keep = []
    for name in model.gate_names:
        in_scope = (cfg.drop_scope == "both" or name.startswith(cfg.drop_scope)) and (
            not cfg.drop_only or name in cfg.drop_only)
        keep.append(not (in_scope and rng.random() < p))
    return keep


def student_loss(model: Whisper, mel: np.ndarray, targets: Targets, keep: list[bool] | None,
                 kl_weight: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Relative L2 of every decoder block's output to the teacher's (+ KL of the logits)."""
    gates = model.split_gates(None if keep is None else torch.tensor(keep))
    xa = model.embed_audio(torch.from_numpy(np.ascontiguousarray(mel[None])), gates)
    hidden: list[torch.Tensor] = []
    logits = model.decode(torch.tensor([targets.prompt + targets.tokens]), model.cross_kv(xa, gates), gates,
                          hidden=hidden)
    teacher = torch.from_numpy(targets.hidden.astype(np.float32))
    per_layer = [((h[0] - t) ** 2).mean() / (t ** 2).mean().clamp_min(1e-6) for h, t in zip(hidden, teacher,
                                                                                           strict=True)]
    loss = torch.stack(per_layer).mean()
    info = {"hidden": float(loss.detach()), "last": float(per_layer[-1].detach())}
    with torch.no_grad():
        t_logits = teacher[-1] @ model.decoder.token_embedding.weight.T
        info["agree"] = float((logits[0].argmax(-1) == t_logits.argmax(-1)).float().mean())
    if kl_weight > 0:
        kl = F.kl_div(F.log_softmax(logits[0], -1), F.log_softmax(t_logits, -1), log_target=True,
                      reduction="batchmean")
        loss = loss + kl_weight * kl
        info["kl"] = float(kl.detach())
    return loss, info


def lr_at(step: int, cfg: AdaptConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


# -- the loop --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Item:
    audio: str
    lang: str
    task: str
    text: str = ""  # the reference (transcript, or the English translation)


def load_items(manifests: list[str], tokenizer) -> list[Item]:
    from edgegate.data.manifest import read_manifest

    items = []
    for m in manifests:
        for e in read_manifest(m):
            tokenizer.normalize_language(e.lang)  # a one-line error for a language Whisper lacks
            items.append(Item(str(e.audio), e.lang, e.task, e.text))
    if not items:
        raise AdaptError(f"{', '.join(manifests)}: no utterances; build a corpus first "
                         "(edgegate corpus synth --out data/synth)")
    return items


def item_at(step: int, rank: int, world: int, n: int, seed: int, repeat: int = 1) -> int:
    """Epoch by epoch through one seeded permutation each, interleaved across ranks; each utterance is
    used for ``repeat`` consecutive steps."""
    epoch, pos = divmod((step // repeat) * world + rank, n)
    return int(np.random.default_rng([seed, epoch]).permutation(n)[pos])


def average_gradients(params: list[torch.nn.Parameter], contributed: int, dist) -> int:
    """Average the gradients of the processes that had an utterance; returns how many had one."""
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params]
                     + [torch.tensor([float(contributed)])])
    if dist:
        dist.all_reduce(flat)
    count = int(flat[-1])
    if count:
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = (flat[offset: offset + n] / count).view_as(p).clone()
            offset += n
    return count


def save_checkpoint(out: Path, step: int, params: dict[str, torch.nn.Parameter], opt, cfg: AdaptConfig,
                    history: list[dict]) -> None:
    """Atomically replace ``out/checkpoint``: a crash leaves the previous one whole."""
    from safetensors.torch import save_file

    final, tmp, old = out / CHECKPOINT_DIR, out / f".{CHECKPOINT_DIR}.tmp", out / f".{CHECKPOINT_DIR}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: p.detach().contiguous() for k, p in params.items()}, str(tmp / "trainable.safetensors"))
    torch.save(opt.state_dict(), tmp / "optimizer.pt")  # tensors and numbers: loads with weights_only=True
    (tmp / "state.json").write_text(json.dumps({"step": step, "config": asdict(cfg), "history": history}))
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(out: Path, params: dict[str, torch.nn.Parameter], opt, cfg: AdaptConfig
                    ) -> tuple[int, list[dict]]:
    from safetensors.torch import load_file

    ck = out / CHECKPOINT_DIR
    if not (ck / "state.json").exists():
        raise AdaptError(f"--resume: no checkpoint in {ck}; run without --resume to start")
    state = json.loads((ck / "state.json").read_text())
    old = state["config"]
    for k in RESUME_KEYS:
        mine = getattr(cfg, k)
        theirs = old.get(k, BEFORE_SETTING.get(k, getattr(AdaptConfig, k, None)))  # keys newer than the checkpoint
        if (list(mine) if isinstance(mine, tuple) else mine) != theirs:
            raise AdaptError(f"--resume: the checkpoint was trained with {k}={theirs!r}, this run has "
                             f"{mine!r}; use the same settings or another --out")
    tensors = load_file(str(ck / "trainable.safetensors"))
    if set(tensors) != set(params):
        raise AdaptError(f"--resume: {ck} holds other parameters than this run trains; use another --out")
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(tensors[k])
    opt.load_state_dict(torch.load(ck / "optimizer.pt", weights_only=True))
    return int(state["step"]), list(state["history"])


def teacher_margin(teacher: Whisper, cfg: AdaptConfig) -> int | None:
    """The teacher's encoder margin: None (full window) unless ``teacher_context`` is ``auto``, where the
    model's own rule holds; a model without one cannot be its own dynamic-context teacher."""
    if cfg.teacher_context == "full":
        return None
    if teacher.default_audio_ctx is None:
        raise AdaptError(f"{cfg.model} has no encoder-context rule, so --teacher-audio-ctx auto has nothing to "
                         "follow: use --teacher-audio-ctx full, or an edge model such as whisper-base-edge")
    return int(teacher.default_audio_ctx)


def targets_for(item: Item, cache: TeacherCache, teacher: Whisper, tokenizer, cfg: AdaptConfig,
                samples: np.ndarray) -> Targets:
    margin = teacher_margin(teacher, cfg)
    key = cache.key(item.audio, item.lang, item.task, cfg.max_tokens, margin)
    targets = cache.get(key)
    if targets is None:
        targets = teacher_targets(teacher, tokenizer, samples, item.lang, item.task, cfg.max_tokens, margin)
        cache.put(key, targets)
    return targets


def teacher_wer(targets: Targets, reference: str, tokenizer) -> float:
    """WER of the teacher's greedy output against the manifest's reference text."""
    from edgegate.textnorm import wer

    return wer([reference], [tokenizer.decode([int(t) for t in targets.tokens])])


def teacher_is_right(targets: Targets, item: Item, tokenizer, cfg: AdaptConfig) -> bool:
    """True unless the teacher's output is further from the reference than asked: WER at most
    ``--teacher-max-wer``; for translate, with ``--teacher-translate-overlap``, a word overlap at least that."""
    if item.task == "translate" and cfg.teacher_translate_overlap is not None:
        from edgegate.textnorm import word_overlap

        said = tokenizer.decode([int(t) for t in targets.tokens])
        return word_overlap(item.text, said) >= cfg.teacher_translate_overlap
    return cfg.teacher_max_wer is None or teacher_wer(targets, item.text, tokenizer) <= cfg.teacher_max_wer


def student_input(samples: np.ndarray, cfg: AdaptConfig, n_mels: int, rng: np.random.Generator
                  ) -> tuple[np.ndarray, int]:
    """Augmented audio -> the mel the student sees: real frames + a random margin, or on ``p_full`` of the
    utterances the whole 30-s window (margin reported as -1)."""
    from edgegate.data.augment import Augmenter
    from edgegate.plan import encoder_frames

    if cfg.augment:
        samples = Augmenter(rng).apply(samples)
    mel, n_frames = window_mel(samples, n_mels)
    margin = int(rng.integers(cfg.margin[0], cfg.margin[1] + 1))
    if cfg.p_full > 0 and rng.random() < cfg.p_full:  # drawn only when asked: older runs resume identically
        return mel, -1
    return mel[:, :encoder_frames(n_frames, margin)], margin


def mask_planner(cfg: AdaptConfig, model: Whisper, tokenizer):
    """The gate set of ``--masks-from`` as a planner over ``model`` (no adapters: the student learns to do
    without the skipped modules), or None."""
    if cfg.masks_from is None:
        return None
    from edgegate.gated import load_gated
    from edgegate.transcriber import WhisperModel

    return load_gated(cfg.masks_from, model=WhisperModel(model, tokenizer), adaptation=False)


def init_student(student: Whisper, cfg: AdaptConfig, fingerprint: str) -> None:
    """Add ``--init-from``'s weight delta to the student (it must have been made on this model)."""
    if cfg.init_from is None:
        return
    from edgegate.models.registry import read_adapt_spec
    from edgegate.weight_delta import apply_delta

    directory = Path(cfg.init_from).expanduser()
    spec = read_adapt_spec(directory)
    apply_delta(student, directory / spec.get("delta", DELTA_FILE), fingerprint)


def _load(cfg: AdaptConfig, model: Whisper | None, tokenizer):
    from edgegate.models.loaders import load_whisper
    from edgegate.models.registry import resolve_model, tokenizer_path
    from edgegate.tokenizer import WhisperTokenizer

    if model is None or tokenizer is None:
        path = resolve_model(cfg.model)
        model = model or load_whisper(path)
        tokenizer = tokenizer or WhisperTokenizer.from_file(tokenizer_path(path))
    if len(model.skip_adapters):
        raise AdaptError(f"{cfg.model}: a model with skip adapters cannot be adapted; adapt the plain checkpoint "
                         "and train the gates afterwards")
    return model.eval(), tokenizer


def _trim_log(path: Path, step: int) -> None:
    """Keep the log's records up to ``step`` (the checkpoint resumed from): a run killed after its last
    checkpoint must not leave the steps it will redo twice in the log."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(f"{line}\n" for line in kept))
    os.replace(tmp, path)


def _log(out: Path, rec: dict) -> None:
    with open(out / "adapt_log.jsonl", "a") as f:
        f.write(json.dumps(rec) + "\n")


@dataclass
class _Run:
    """What one adaptation run holds between steps."""

    student: Whisper
    teacher: Whisper
    tokenizer: object
    items: list[Item]
    cache: TeacherCache
    params: dict[str, torch.nn.Parameter]
    base: dict[str, torch.Tensor]
    opt: torch.optim.Optimizer
    fingerprint: str
    out: Path
    dist: object
    rank: int
    world: int
    planner: object = None  # the --masks-from gate set (GatedWhisper over the student), or None


def _setup(cfg: AdaptConfig, model: Whisper | None, tokenizer) -> _Run:
    import copy

    from edgegate.models.registry import cache_dir

    dist, rank, world = data_parallel()
    student, tokenizer = _load(cfg, model, tokenizer)
    teacher_margin(student, cfg)  # fail before the corpus is read
    if unknown := [n for n in cfg.drop_only if n not in student.gate_names]:
        raise AdaptError(f"--drop-only: {', '.join(unknown)} not modules of {cfg.model}; its modules are "
                         f"{', '.join(student.gate_names[:3])} ... {student.gate_names[-1]}")
    items = load_items(cfg.manifests, tokenizer)
    teacher = copy.deepcopy(student).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    fingerprint = model_fingerprint(teacher)
    cache = TeacherCache(cfg.teacher_cache or cache_dir() / "teacher" / fingerprint)
    init_student(student, cfg, fingerprint)
    params = trainable_parameters(student, cfg.train)
    for name, p in student.named_parameters():
        p.requires_grad_(name in params)
    # the delta is to the unmodified model (the teacher), so that an --init-from run ships as one file
    teacher_params = dict(teacher.named_parameters())
    base = {k: teacher_params[k].detach().clone() for k in params}
    opt = torch.optim.AdamW(list(params.values()), lr=cfg.lr, weight_decay=0.0)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    return _Run(student, teacher, tokenizer, items, cache, params, base, opt, fingerprint, out, dist, rank, world,
                mask_planner(cfg, student, tokenizer))


def adapt_step(run: _Run, step: int, cfg: AdaptConfig) -> tuple[dict[str, float], int]:
    """One step: this process's utterance (teacher from the cache or computed), the student's loss,
    gradients averaged over the processes that had a usable utterance, one optimiser step."""
    from edgegate.audio import load_audio

    rng = np.random.default_rng([cfg.seed, step, run.rank])
    item = run.items[item_at(step, run.rank, run.world, len(run.items), cfg.seed, cfg.repeat)]
    # the stand-ins follow step // repeat, so the repeats of a step reuse them (their teacher is cached by then)
    stand_in = np.random.default_rng([cfg.seed, step // cfg.repeat, run.rank, 1])
    retried = 0
    while True:
        samples = load_audio(item.audio)
        targets = targets_for(item, run.cache, run.teacher, run.tokenizer, cfg, samples)
        usable = (targets.finished or cfg.keep_unfinished) and teacher_is_right(targets, item, run.tokenizer, cfg)
        if usable or retried >= cfg.retry_rejected:
            break
        item = run.items[int(stand_in.integers(len(run.items)))]
        retried += 1
    for g in run.opt.param_groups:
        g["lr"] = lr_at(step, cfg)
    run.opt.zero_grad(set_to_none=True)
    info: dict[str, float] = {}
    if usable:
        if run.student.context_tail and cfg.train != "decoder":
            run.student.forget_padding_states()  # the padding's states follow the encoder as it learns
        mel, margin = student_input(samples, cfg, run.student.dims.n_mels, rng)
        planned = None
        if run.planner is not None:
            def planned(budget: float) -> list[bool]:
                return run.planner.plan(samples, item.lang, item.task, budget).kept
        keep = draw_mask(run.student, cfg, rng, planned)
        loss, info = student_loss(run.student, mel, targets, keep, cfg.kl_weight)
        loss.backward()
        info.update(full=float(margin < 0), dropped=0 if keep is None else keep.count(False), retried=retried)
        if margin >= 0:
            info["margin"] = margin
    plist = list(run.params.values())
    count = average_gradients(plist, int(usable), run.dist)
    if count:
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(plist, cfg.grad_clip)
        run.opt.step()
    return info, count


def adapt(cfg: AdaptConfig, model: Whisper | None = None, tokenizer=None) -> dict:
    """Run (or resume) an adaptation as ``cfg`` says; returns a summary. Writes ``cfg.out``:
    ``adaptation.safetensors`` (int8 weight deltas), ``adapt.json``, ``adapt_log.jsonl``, ``checkpoint/``."""
    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run = _setup(cfg, model, tokenizer)
    start, history = load_checkpoint(run.out, run.params, run.opt, cfg) if cfg.resume else (0, [])
    if run.rank == 0:
        _trim_log(run.out / "adapt_log.jsonl", start)
    bar = None
    if cfg.progress and run.rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=start, desc="adapt", unit="step", dynamic_ncols=True)
    t0, window = time.time(), []
    for step in range(start, cfg.steps):
        info, count = adapt_step(run, step, cfg)
        window.append(info)
        logged = run.rank == 0 and (step + 1) % cfg.log_every == 0
        rec = _record(step, cfg, window, count, len(run.cache) if logged else -1, time.time() - t0)
        if rec is not None:
            window = []
            history.append(rec)
            if run.rank == 0:
                _log(run.out, rec)
        if bar is not None:
            bar.update(1)
            if info:
                bar.set_postfix(hidden=f"{info['hidden']:.3f}", agree=f"{info['agree']:.2f}")
        due, stop = checkpoint_due(step, cfg)
        if due:
            if run.rank == 0:
                save_checkpoint(run.out, step + 1, run.params, run.opt, cfg, history)
                write_result(run.out, run.params, run.base, cfg, run.fingerprint, step + 1, history,
                             run.student.context_tail)
            if run.dist:
                run.dist.barrier()
        if stop:
            break
    if bar is not None:
        bar.close()
    if run.dist:
        run.dist.barrier()
    return {"steps_done": history[-1]["step"] if history else start, "world_size": run.world,
            "seconds": round(time.time() - t0, 1), "teacher_cached": len(run.cache), "final": history[-1:]}


def write_result(out: Path, params: dict[str, torch.nn.Parameter], base: dict[str, torch.Tensor],
                 cfg: AdaptConfig, fingerprint: str, step: int, history: list[dict],
                 context_tail: bool = False) -> None:
    """The shippable result as of ``step``: int8 weight deltas and ``adapt.json`` (both atomic)."""
    from edgegate.runtimes.bundle import sha256_file
    from edgegate.weight_delta import save_delta

    meta = {"base_model": cfg.model, "base_fingerprint": fingerprint, "audio_ctx_margin": str(cfg.margin[1]),
            "steps": str(step)}
    path = save_delta({k: p.detach() for k, p in params.items()}, base, out / DELTA_FILE, meta)
    spec = {"base_model": cfg.model, "base_fingerprint": fingerprint, "audio_ctx": cfg.margin[1],
            "delta": DELTA_FILE, "delta_sha256": sha256_file(path), "context_tail": context_tail, "steps_done": step,
            "config": asdict(cfg),
            "last_log": history[-1:]}
    tmp = out / ".adapt.json.tmp"
    tmp.write_text(json.dumps(spec, indent=1) + "\n")
    os.replace(tmp, out / "adapt.json")


def _record(step: int, cfg: AdaptConfig, window: list[dict], count: int, cached: int, elapsed: float
            ) -> dict | None:
    """Every ``log_every`` steps: the means of the window's losses (this process's utterances)."""
    if (step + 1) % cfg.log_every and step + 1 != cfg.steps:
        return None
    done = [w for w in window if w]
    rec: dict = {"step": step + 1, "lr": lr_at(step, cfg), "elapsed_s": round(elapsed, 1), "used": len(done),
                 "of": len(window), "ranks_last": count}
    for key in ("hidden", "last", "agree", "kl", "margin", "full", "dropped", "retried"):
        vals = [w[key] for w in done if key in w]
        if vals:
            rec[key] = round(float(np.mean(vals)), 5)
    if cached >= 0:
        rec["teacher_cached"] = cached
    return rec
