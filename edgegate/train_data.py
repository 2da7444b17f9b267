"""Gate-training data: per utterance its trimmed mel, context, planning costs and the dense teacher's
tokens (the distillation labels, cached on disk)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgegate.models.costs import flop_costs
from edgegate.models.whisper import Whisper
from edgegate.pipeline import MelFeatures
from edgegate.plan import Planner
from edgegate.train_config import TrainConfig, TrainingError
from edgegate.weight_delta import model_fingerprint


@dataclass
class Example:
    mel: torch.Tensor  # (n_mels, frames): the trimmed encoder input
    stats: torch.Tensor  # (2 * n_mels,)
    lang: str
    task: str
    prompt: list[int]
    tokens: list[int]  # the dense teacher's greedy tokens
    finished: bool  # the teacher emitted <|endoftext|> within max_tokens
    costs: torch.Tensor  # (L,) planning costs (FLOPs, or ms with --cost-table)
    eot: int
    audio: str = ""


MEASURED_KEYS = ("ms", "ms_per_step", "ms_meta")


def measured_cost_table(bundle_dir: str, gate_names: list[str]) -> dict:
    """The measured ms of a profiled bundle (``edgegate profile``) for these gates: what a gate set trained
    with ``--cost-table`` plans with and carries in its gates.json; a one-line error if it was never
    profiled or is another model's."""
    from edgegate.runtimes.bundle import Bundle
    from edgegate.runtimes.latency import measured_gate_ms

    bundle = Bundle.open(bundle_dir, verify=False)  # only its manifest is read
    measured_gate_ms(bundle, gate_names, 1500, 32)
    costs = bundle.manifest["costs"]
    return {k: costs[k] for k in MEASURED_KEYS if k in costs}


def planning_cost_fn(model, measured: dict | None = None):
    """The costs gates are trained with: FLOPs at the trimmed context, or ``measured`` (``measured_cost_table``)."""
    fn = flop_costs(model.dims, model.context_tail, measured)
    if measured is None:
        return fn
    return lambda positions, n_tokens, unit="flops": fn(positions, n_tokens, "ms")


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
                  rank: int = 0, world: int = 1, progress: bool = False, features=None,
                  measured_costs: dict | None = None) -> list[Example]:
    """Features and teacher labels for every manifest entry (labels cached in ``cache_path``).

    ``features(samples) -> (encoder input, stats, planning costs)`` is the model family's (None:
    Whisper's trimmed log-mel; OWSM's is ``edgegate.models.owsm_training.window_features``).
    ``measured_costs``: plan in these measured ms (``measured_cost_table``) instead of FLOPs.
    """
    from edgegate.audio import load_audio

    fp = model_fingerprint(model)
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
    planner = Planner(model.gate_names, planning_cost_fn(model, measured_costs)) if features is None else None
    for i, e in enumerate(entries):
        samples = load_audio(e.audio)[: 30 * 16000]
        if features is not None:
            feats.append(features(samples))
        else:
            mel_features = MelFeatures.of(samples, model.dims.n_mels)
            request = mel_features.request
            frames = planner.fixed(None, request, cfg.audio_ctx).encoder_frames
            mel = torch.from_numpy(np.ascontiguousarray(mel_features.mel[:, :frames]))
            costs = planner.planning_costs(request, cfg.audio_ctx)
            feats.append((mel, torch.from_numpy(request.stats), torch.from_numpy(costs).float()))
        key = f"{fp}|{cfg.audio_ctx}|{cfg.max_tokens}|{e.lang}|{e.task}|{e.audio}"
        keys.append(key)
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
