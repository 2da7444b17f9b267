"""The export core: one path from a (gated) model to a bundle, whatever the target writes.

    export_bundle(out, target="cpu", model="whisper-base", gates=None, budget=None, ...)

1. checks that fail before any slow work: the budget needs a predictor, ``out`` may be written;
2. the inputs: the model (adapted by its gate set), its tokenizer, the predictor, the budget;
3. the family's module jobs (:mod:`edgegate.export.whisper_graphs`) plus the predictor's graph;
4. the target writes the graphs (:class:`Target`: ``onnx_export.OnnxTarget`` one ONNX file per
   graph, ``executorch_export.ExecuTorchTarget`` one multi-method ``.pte``) under a progress bar;
5. module entries as :class:`edgegate.runtimes.schema.ModuleSpec`, the predictor entry,
   provenance and the manifest, written atomically by :class:`BundleWriter`.
"""

from __future__ import annotations

import datetime as _dt
import platform
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

import edgegate
from edgegate.budget import Budget
from edgegate.errors import BudgetError, ModelError
from edgegate.export.bundle_writer import BundleWriter
from edgegate.export.graph_job import GraphJob, ModuleJob, param_bytes
from edgegate.export.profiles import PRECISIONS, DeviceProfile, get_profile
from edgegate.models.whisper import Whisper
from edgegate.runtimes.schema import GraphSpec, Limits, ModuleSpec, TensorSpec

PREDICTOR = "predictor"


class Target(Protocol):
    """What a target does with the graphs; the core does everything else."""

    format: str  # the bundle's module_format: "onnx" or "pte"
    precisions: dict[str, str]  # after write: graph name -> the precision its weights have

    def steps(self, graphs: Sequence[GraphJob]) -> int:
        """Progress ticks the target will report for these graphs."""

    def write(self, graphs: Sequence[GraphJob], writer: BundleWriter, tick: Callable[[str], None],
              limits: Limits) -> dict[str, GraphSpec]:
        """Write every graph into the bundle; return each graph's file, method and signature by name."""

    def sections(self) -> dict[str, Any]:
        """Manifest sections of this target (e.g. ``executorch``)."""

    def provenance(self) -> dict[str, Any]:
        """What wrote the files (versions, exporter, notes)."""


# -- inputs ---------------------------------------------------------------------------------------
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


def load_gates(gates: str | Path | nn.Module | None, model: Whisper) -> tuple[nn.Module | None, dict[str, Any]]:
    """The predictor and its metadata; a gate-set directory also adapts ``model`` in place.

    ``gates`` may be a predictor (module or ``.safetensors`` of ``save_predictor``) or a gate set
    (the ``--out`` directory of ``edgegate train-gates``, or a shipped name): its skip adapters /
    LoRA / fine-tuned weights are applied to ``model`` exactly as ``edgegate.gated.load_gated``
    does, and its ``gates.json`` (scope, audio_ctx, language codes) lands in ``meta["gate_set"]``.
    """
    from edgegate.gate_set import is_gate_set

    if gates is None:
        return None, {}
    if isinstance(gates, nn.Module):
        pred, meta = gates, {}
    elif is_gate_set(gates):
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


def load_export_inputs(model: str | Path | Whisper, tokenizer: str | Path | None,
                       gates: str | Path | nn.Module | None, profile: DeviceProfile, budget: float | None,
                       scope: str | None) -> tuple[Whisper, Path, str, nn.Module | None, dict[str, Any], Budget]:
    """What every target needs: the (adapted) model, its tokenizer, the predictor and the budget.

    Returns ``(whisper, tokenizer path, model name, predictor, predictor meta, budget)``. The
    budget's scope is ``scope``, else the gate set's (what its predictor was trained for), else
    the profile's; a profile pinning a module the model lacks is refused.
    """
    whisper, tok_path, model_name = load_model(model, tokenizer)
    if not Path(tok_path).is_file():
        raise ModelError(f"tokenizer not found at {tok_path}; pass tokenizer= (a Whisper tokenizer.json)")
    predictor, pred_meta = load_gates(gates, whisper)
    the_budget = profile.export_budget(pred_meta.get("gate_set") or {}, whisper.gate_names, budget, scope)
    return whisper, tok_path, model_name, predictor, pred_meta, the_budget


# -- the predictor's graph -------------------------------------------------------------------------
class PredictorScores(nn.Module):
    def __init__(self, predictor: nn.Module):
        super().__init__()
        self.predictor = predictor

    def forward(self, stats: Tensor, lang: Tensor, task: Tensor, budget: Tensor) -> Tensor:
        return self.predictor.keep_scores(stats, lang, task, budget)


def predictor_job(predictor: nn.Module, n_gates: int) -> GraphJob:
    n_mels = predictor.config.n_mels
    example = (torch.zeros(1, 2 * n_mels), torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long),
               torch.zeros(1))
    ins = (TensorSpec("stats", "float32", ("batch", 2 * n_mels), "stats"),
           TensorSpec("lang", "int64", ("batch",), "lang"), TensorSpec("task", "int64", ("batch",), "task"),
           TensorSpec("budget", "float32", ("batch",), "budget"))
    outs = (TensorSpec("keep", "float32", ("batch", n_gates), "keep"),)
    return GraphJob(PREDICTOR, PREDICTOR, PredictorScores(predictor), example, ins, outs)


def predictor_entry(graph: GraphSpec, predictor: nn.Module, pred_meta: dict[str, Any],
                    gates: str | Path | nn.Module | None) -> dict[str, Any]:
    """The manifest's ``predictor`` entry: where its graph is, and how the runtime must feed it."""
    from edgegate.plan import default_language_codes

    cfg = predictor.config
    gate_set = pred_meta.get("gate_set") or {}
    entry = graph.to_dict()
    entry.pop("param_bytes")
    return {
        **entry, "config": cfg.to_dict(), "meta": pred_meta,
        "stats": "per-mel-bin mean then population std over the real (unpadded) log-mel frames",
        "lang": "0 = unknown / auto-detect, else 1 + index in language_codes",
        "language_codes": (gate_set.get("language_codes") or pred_meta.get("language_codes")
                           or default_language_codes(cfg.n_languages)),
        "task": "0 = transcribe, 1 = translate",
        "planning": "edgegate.plan: FLOPs of the cost terms at the utterance's encoder positions (after audio_ctx) "
                    "and estimate_tokens(duration) decoder positions",
        "source": None if isinstance(gates, nn.Module) else str(gates),
    }


# -- the bundle ------------------------------------------------------------------------------------
def module_spec(job: ModuleJob, graphs: dict[str, GraphSpec], precisions: dict[str, str] | None = None
                ) -> ModuleSpec:
    """The manifest entry of one module job, with the files, methods and precision the target wrote."""
    def spec(g: GraphJob) -> GraphSpec:
        w = graphs[g.name]
        return GraphSpec(g.name, g.stage, w.file, w.method, w.inputs, w.outputs, param_bytes(g.module))

    return ModuleSpec(job.name, job.kind, job.stage, job.layer, job.gates, spec(job.graph), job.flops, job.skip,
                      (precisions or {}).get(job.name, "fp32"), None if job.adapter is None else spec(job.adapter))


def default_out(model_name: str, profile: DeviceProfile) -> Path:
    stem = Path(model_name).name if model_name not in ("", "custom") else "model"
    return Path("bundles") / f"{stem}-{profile.name}"


def _progress(total: int, desc: str, progress: bool) -> tuple[Any, Callable[[str], None]]:
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit="step", disable=not progress, file=sys.stderr)

    def tick(label: str) -> None:
        bar.set_postfix_str(label)
        bar.update(1)

    return bar, tick


def bundle_audio_ctx(audio_ctx: str | int | None, whisper: Whisper, pred_meta: dict[str, Any]) -> int | None:
    """The bundle's encoder-context rule: a margin in encoder positions, or None (full 30-s context).

    ``"auto"``: the gate set's ``audio_ctx`` when it has one, else the model's own rule
    (``default_audio_ctx``, set by edge-adapted models), else full context. ``"full"``/None: full
    context. An integer: that margin.
    """
    if audio_ctx is None or audio_ctx == "full":
        return None
    if audio_ctx == "auto":
        gate_set = pred_meta.get("gate_set") or {}
        if "audio_ctx" in gate_set:
            return gate_set["audio_ctx"]
        return getattr(whisper, "default_audio_ctx", None)
    n_ctx = getattr(getattr(whisper, "dims", None), "n_audio_ctx", None)
    if n_ctx is None:
        raise ModelError(f"audio_ctx {audio_ctx!r}: this model family runs its full window only; use auto or full")
    try:
        margin = int(audio_ctx)
    except (TypeError, ValueError):
        margin = -1
    if isinstance(audio_ctx, bool) or margin < 0 or margin > n_ctx:
        raise ModelError(f"audio_ctx must be full, auto or a margin 0..{n_ctx} encoder positions, got {audio_ctx!r}")
    return margin


def export_with(target: Target, out: str | Path | None, profile: DeviceProfile, model: str | Path | Whisper,
                gates: str | Path | nn.Module | None, budget: float | None, scope: str | None, force: bool,
                progress: bool, tokenizer: str | Path | None, log: Callable[[str], None],
                precision: str | None = None, audio_ctx: str | int | None = "auto", full_vocab: bool = False) -> Path:
    """Write a bundle for ``profile`` with ``target``; see :func:`export_bundle` for the arguments."""
    from edgegate.export.whisper_graphs import alignment_section

    family = _family(model, tokenizer, gates, profile, budget, scope)
    whisper, model_name, predictor, pred_meta, the_budget = (family.model, family.name, family.predictor,
                                                             family.pred_meta, family.budget)
    out = Path(out) if out is not None else default_out(model_name, profile)
    ctx = bundle_audio_ctx(audio_ctx, whisper, pred_meta)
    jobs = family.jobs()
    asked = precision or family.precision or profile.precision
    for j in jobs:  # module graphs only: skip adapters and the predictor stay fp32
        j.graph.precision = stage_precision(asked, j.stage, getattr(whisper, "context_tail", False))
    use_shards = family.tok_path is not None and hasattr(target, "shards") and not full_vocab
    shards = _shards(family.tok_path, whisper.dims.n_vocab) if use_shards else None
    if shards is not None:
        target.shards = shards.shards
    graphs = [g for j in jobs for g in (j.graph, j.adapter) if g is not None]
    if predictor is not None:
        graphs.append(predictor_job(predictor, len(whisper.gate_names)))
    # Word-timestamp alignment graphs (run only when asked for): ONNX bundles of families that have them.
    align_jobs, align_meta = family.alignment() if family.alignment and target.format == "onnx" else ([], None)
    graphs += align_jobs
    manifest = family.manifest()
    bar, tick = _progress(target.steps(graphs), f"export {profile.name} ({target.format})", progress)
    with BundleWriter(out, force=force) as w:
        try:
            written = target.write(graphs, w, tick, Limits.from_dict(manifest["execution"]))
        finally:
            bar.close()
        manifest["decoding"]["audio_ctx"] = ctx
        if getattr(whisper, "context_tail", False):
            manifest["decoding"]["context_tail"] = True
        manifest.update({
            "module_format": target.format,
            "modules": [module_spec(j, written, target.precisions).to_dict() for j in jobs],
            "predictor": None if predictor is None else predictor_entry(written[PREDICTOR], predictor, pred_meta,
                                                                        gates),
            "alignment": None if align_meta is None else alignment_section(align_meta, written),
            "tokenizer": family.files(w),
            "vocabulary": _vocabulary_entry(w, shards, getattr(target, "token_embedding", None)),
            "profile": profile.to_dict(),
            "budget": the_budget.to_dict() if predictor is not None else None,
            **target.sections(),
            "provenance": {"edgegate": edgegate.__version__, "torch": torch.__version__,
                           "python": platform.python_version(),
                           "created_utc": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
                           "source_model": model_name, **target.provenance()},
        })
        path = w.finish(manifest)
    total = sum(int(e["bytes"]) for e in w.files.values())
    log(f"wrote {path} ({len(w.files)} files, {total / 1e6:.1f} MB, {len(graphs)} graphs, target {profile.name}, "
        f"{'predictor' if predictor is not None else 'no predictor: dense unless a mask is given'})")
    return path


@dataclass
class FamilyExport:
    """What the core needs of a model family: the loaded inputs and how to lay out their bundle."""

    model: nn.Module  # has gate_names
    name: str
    predictor: nn.Module | None
    pred_meta: dict[str, Any]
    budget: Budget
    jobs: Callable[[], list[ModuleJob]]
    manifest: Callable[[], dict[str, Any]]
    files: Callable[[BundleWriter], dict[str, Any]]  # writes tokenizer (and frontend) files; the tokenizer entry
    alignment: Callable[[], tuple[list[GraphJob], dict[str, Any]]] | None = None  # word-timestamp graphs
    tok_path: Path | None = None  # a Whisper tokenizer: the bundle gets its vocabulary shards
    precision: str | None = None  # the family's module precision when --precision is not given (None: profile's)


def _family(model: Any, tokenizer: str | Path | None, gates: Any, profile: DeviceProfile, budget: float | None,
            scope: str | None) -> FamilyExport:
    from edgegate.export import owsm_export

    if owsm_export.is_owsm(model):
        return owsm_export.family_export(model, gates, profile, budget, scope)
    from edgegate.export.whisper_graphs import alignment_jobs, family_manifest, module_jobs

    whisper, tok_path, name, predictor, pred_meta, the_budget = load_export_inputs(
        model, tokenizer, gates, profile, budget, scope)
    return FamilyExport(whisper, name, predictor, pred_meta, the_budget, lambda: module_jobs(whisper),
                        lambda: family_manifest(whisper, name), lambda w: _tokenizer_entry(w, tok_path),
                        lambda: alignment_jobs(whisper, name), tok_path)


def _shards(tok_path: Path, n_vocab: int) -> Any:
    from edgegate.tokenizer import WhisperTokenizer
    from edgegate.vocabulary import shipped_shards

    return shipped_shards(WhisperTokenizer.from_file(tok_path), n_vocab)


def _vocabulary_entry(w: BundleWriter, shards: Any, table: dict[str, Any] | None) -> dict[str, Any] | None:
    """The manifest's ``vocabulary``: the shard file and which shards are on by default (None: full only)."""
    from edgegate.vocabulary import DEFAULT_ON, SHIPPED

    if shards is None or table is None or not table.get("shard_templates"):
        return None
    w.copy_in(SHIPPED, "vocab_shards.npz")
    return {"file": "vocab_shards.npz", "languages": shards.languages, "default_on": list(DEFAULT_ON),
            "translate": "en", "sizes": {k: int(len(v)) for k, v in shards.shards.items()},
            "note": "per (language, task) the logits graph computes only the shard's rows (translate: English); "
                    "off with full_vocab / --full-vocab; languages outside default_on use the full vocabulary"}


def _tokenizer_entry(w: BundleWriter, tok_path: Path) -> dict[str, Any]:
    from edgegate.tokenizer import WhisperTokenizer

    tk = WhisperTokenizer.from_file(tok_path)
    w.copy_in(tok_path, "tokenizer.json")
    return {"file": "tokenizer.json", "language_codes": tk.language_codes, "eot": tk.eot, "sot": tk.sot}


def stage_precision(asked: str, stage: str, context_tail: bool) -> str:
    """The precision one module graph gets. A context-tail model's encoder stays fp32 under int8: with int8
    encoder weights the trimmed window drifted from its padding tail (191 held-out utterances: WER 58.7 %
    against 49.5 % at full context, Italian BLEU 4.4 against 14.2), with an fp32 encoder and an int8 decoder
    it holds (41.3 % against 40.8 %, BLEU 9.1 against 9.6; docs/adaptation.md). A trimmed encoder is cheap."""
    if context_tail and asked == "int8" and stage == "encoder":
        return "fp32"
    return asked


def export_bundle(out: str | Path | None = None, target: str | Path | DeviceProfile = "cpu",
                  model: str | Path | Whisper = "whisper-base", gates: str | Path | nn.Module | None = None,
                  budget: float | None = None, scope: str | None = None, force: bool = False,
                  progress: bool = True, tokenizer: str | Path | None = None,
                  opset: int | None = None, log: Callable[[str], None] | None = None,
                  precision: str | None = None, audio_ctx: str | int | None = "auto",
                  full_vocab: bool = False) -> Path:
    """Write a bundle directory for ``target``; returns its path.

    ``precision``: the module graphs' (``fp32``, ``int8``, ``fp16``; None = the profile's: cpu and
    android int8, jetson fp16); the predictor and skip adapters stay fp32. ``audio_ctx``: the
    bundle's encoder-context rule (see :func:`bundle_audio_ctx`). ``full_vocab``: write no vocabulary
    shards (every request decodes over the full vocabulary).

    ``gates``: a gate set (the ``--out`` directory of ``edgegate train-gates`` or a shipped name:
    its adaptation is applied to the model first, its scope and ``audio_ctx`` travel with the
    bundle) or a bare predictor (``.safetensors`` / module). ``budget``/``scope`` override the
    profile's default; a non-zero ``budget`` needs ``gates``. Refuses an existing ``out`` unless
    ``force``; the bundle appears atomically (one rename). A Whisper instance passed as ``model``
    is adapted in place when ``gates`` is a gate set. A profile with ``format = "pte"`` (android)
    writes an ExecuTorch bundle (:func:`edgegate.export.executorch_export.export_executorch_bundle`).
    """
    log = log or (lambda msg: print(msg, file=sys.stderr))
    profile = get_profile(target)
    check_request(profile, out, model, gates, budget, force)
    if precision is not None and precision not in PRECISIONS:
        raise ModelError(f"unknown precision {precision!r}; use one of: {', '.join(PRECISIONS)}")
    if profile.format == "pte":
        from edgegate.export import executorch_export

        return executorch_export.export_executorch_bundle(out=out, target=profile, model=model, gates=gates,
                                                          budget=budget, scope=scope, force=force,
                                                          progress=progress, tokenizer=tokenizer, log=log,
                                                          precision=precision, audio_ctx=audio_ctx)
    from edgegate.export.onnx_export import OnnxTarget

    return export_with(OnnxTarget(opset or profile.opset), out, profile, model, gates, budget, scope, force,
                       progress, tokenizer, log, precision, audio_ctx, full_vocab)


def check_request(profile: DeviceProfile, out: str | Path | None, model: str | Path | Whisper,
                  gates: Any, budget: float | None, force: bool) -> None:
    """What fails in a second, before any slow work: a budget without a predictor, an ``out`` in the way."""
    if budget is not None and float(budget) > 0 and gates is None:
        raise BudgetError(f"--budget {budget} needs a gate predictor to rank modules: export with --gates PATH "
                          "(or drop --budget for a dense bundle)")
    model_name = str(model) if isinstance(model, (str, Path)) else "custom"
    target = Path(out) if out is not None else default_out(model_name, profile)
    BundleWriter.check_target(target.expanduser().resolve(), force)


__all__ = ["export_bundle", "export_with", "check_request", "load_model", "load_gates", "load_export_inputs",
           "predictor_job", "predictor_entry", "module_spec", "bundle_audio_ctx", "default_out", "Target", "PREDICTOR",
           "FamilyExport"]
