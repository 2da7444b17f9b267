"""The bundle on disk: reader, validation and integrity check (torch-free).

A bundle is a directory written by ``edgegate export``::

    manifest.json                  schema, model limits, the execution plan, hashes, costs, ...
    tokenizer.json                 Whisper's tokenizer
    predictor.onnx                 gate predictor (only when exported with --gates)
    encoder.stem.onnx              conv stem + positional embedding          (always runs)
    encoder.<i>.attn.onnx          x -> x + attn(ln(x))                      (gated)
    encoder.<i>.mlp.onnx           x -> x + mlp(ln(x))                       (gated)
    encoder.ln_post.onnx           final encoder LayerNorm                   (always runs)
    decoder.<i>.cross_kv.onnx      cross-attention K/V, once per window      (gated by decoder.<i>.cross_attn)
    decoder.embed.onnx             token + positional embedding              (always runs)
    decoder.<i>.self_attn.onnx     x, K/V cache -> x + attn(...), grown cache (gated)
    decoder.<i>.cross_attn.onnx    x, K, V -> x + attn(ln(x), K, V)          (gated)
    decoder.<i>.mlp.onnx           x -> x + mlp(ln(x))                       (gated)
    decoder.logits.onnx            final LayerNorm + output projection, last position only
    <gate>.adapter.onnx            x -> x + adapter(x): runs only in place of a skipped module

(an ExecuTorch bundle holds every graph as a method of one ``model.pte``). What the manifest may
say is :mod:`edgegate.runtimes.schema`. ``Bundle.open`` refuses a bundle before anything is
executed: unknown format or schema version (an older bundle names ``edgegate export --force``), a
field of the wrong type or out of range, a file path that leaves the bundle directory (``..``,
absolute, or a symlink out of it), a file listed in the manifest that is missing, of the wrong
size or with the wrong SHA-256, or a module whose file the manifest does not list. Every refusal
is one :class:`BundleError` line naming the field or file and the fix; no file outside the
bundle directory is ever opened.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from edgegate.budget import Budget
from edgegate.cost_model import CostTerms
from edgegate.errors import BudgetError, BundleError
from edgegate.files import sha256_file
from edgegate.runtimes.family import family_files, validate_family
from edgegate.runtimes.schema import (
    FORMAT,
    MANIFEST,
    MODULE_FORMATS,
    SCHEMA_VERSION,
    GraphSpec,
    Limits,
    ModuleSpec,
    as_choice,
    as_dict,
    as_int,
    as_list,
    as_name,
    as_str,
    axis_bounds,
    fail,
    num_table,
    printable,
    show,
    terms_table,
)

MAX_MANIFEST_BYTES = 64 << 20
__all__ = ["Bundle", "FileCheck", "read_manifest", "sha256_file", "MANIFEST", "FORMAT", "SCHEMA_VERSION"]
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_PREDICTOR_INPUTS = ("stats", "lang", "task", "budget")


@dataclass
class FileCheck:
    file: str
    ok: bool
    problem: str = ""


def _inside(bundle: Path, rel: Any, where: str) -> Path:
    """``bundle / rel`` if it stays inside the bundle (symlinks followed), else a BundleError."""
    rel = as_str(rel, where)
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts or "\\" in rel or "\x00" in rel or not p.parts:
        raise fail(where, f"points outside the bundle ({show(rel)}); refusing it", "re-export the bundle")
    if not (bundle / p).resolve().is_relative_to(bundle.resolve()):
        raise fail(where, f"({show(rel)}) is a link out of the bundle directory; refusing it",
                   "re-export the bundle or copy it without links")
    return bundle / p


@dataclass
class Bundle:
    """A bundle directory whose manifest was read and validated (and, by default, whose files were verified)."""

    path: Path
    manifest: dict[str, Any]
    modules: list[ModuleSpec] = field(default_factory=list)
    limits: Limits | None = None

    # -- reading -----------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, verify: bool = True) -> Bundle:
        path = Path(path).expanduser()
        if not path.exists():
            raise BundleError(f"bundle not found: {path}; export one with: edgegate export --target cpu --out {path}")
        if path.is_file():
            raise BundleError(f"{path} is a file; a bundle is the directory written by edgegate export")
        manifest = read_manifest(path)
        try:
            bundle = cls(path, manifest)
            bundle._validate()
        except BundleError as exc:
            raise BundleError(f"{path}/{exc}") from None
        if verify:
            bundle.verify(raise_on_error=True)
        return bundle

    def _validate(self) -> None:
        m = self.manifest
        as_choice(m.get("module_format", "onnx"), "module_format", MODULE_FORMATS)
        names = [as_name(n, "gate_names") for n in as_list(m.get("gate_names"), "gate_names", 4096)]
        if len(set(names)) != len(names):
            raise fail("gate_names", "repeats a name")
        self.limits = Limits.from_dict(m.get("execution"))
        self.modules = [ModuleSpec.from_dict(d, f"modules[{i}]") for i, d in
                        enumerate(as_list(m.get("modules"), "modules", 8192))]
        self._validate_modules(names)
        self._validate_sections(names)
        self._check_files()
        self._check_dataflow(names)

    def _check_dataflow(self, names: list[str]) -> None:
        """The dense runner list must add up: every value a graph reads is fed or written before it."""
        from edgegate.runtimes.execution import check_dataflow

        try:
            check_dataflow(self.modules, names, self.limits.state)
        except BundleError as exc:
            raise BundleError(f"{MANIFEST}: {exc}") from None

    def _validate_modules(self, names: list[str]) -> None:
        fmt = self.module_format
        seen: set[str] = set()
        for mod in self.modules:
            if mod.name in seen:
                raise fail(f"module {mod.name}", "appears twice")
            seen.add(mod.name)
            unknown = [g for g in mod.gates if g not in names]
            if unknown:
                raise fail(f"module {mod.name}", f"has gate {show(unknown[0])}, which gate_names does not list")
            for g in (mod.graph, mod.adapter_graph):
                if g is not None and (g.method is None) != (fmt == "onnx"):
                    raise fail(f"module {mod.name}", f"method {show(g.method)} does not fit {fmt} module files")
        gated = {g for mod in self.modules for g in mod.gates}
        missing = [n for n in names if n not in gated]
        if missing:
            raise fail("gate_names", f"lists {show(missing[0])}, which no module runs")

    def _validate_sections(self, names: list[str]) -> None:
        m = self.manifest
        validate_family(m, self.limits.n_mels)  # frontend and tokenizer of the model's family
        dims = as_dict(as_dict(m.get("model"), "model").get("dims"), "model.dims")
        for k, v in dims.items():
            as_int(v, f"model.dims[{show(k)}]")
        decoding = as_dict(m.get("decoding", {}), "decoding")
        as_int(decoding.get("max_tokens", 1), "decoding.max_tokens", 1, self.limits.text_positions)
        as_int(decoding.get("audio_ctx"), "decoding.audio_ctx", 0, self.limits.encoder_positions, none=True)
        if not isinstance(decoding.get("context_tail", False), bool):
            raise fail("decoding.context_tail", f"is {show(decoding['context_tail'])}, not true or false")
        self._validate_costs(names)
        self._validate_profile(names)
        pred = m.get("predictor")
        if pred is not None:
            g = GraphSpec.from_dict(pred, "predictor", "predictor", "predictor")
            if tuple(t.name for t in g.inputs) != _PREDICTOR_INPUTS or len(g.outputs) != 1:
                raise fail("predictor", f"must take {', '.join(_PREDICTOR_INPUTS)} and return keep scores")
            as_int(as_dict(pred.get("config", {}), "predictor.config").get("n_languages", 99),
                   "predictor.config.n_languages", 1, 10_000)
            codes = pred.get("language_codes")
            for c in [] if codes is None else as_list(codes, "predictor.language_codes", 10_000):
                as_str(c, "predictor.language_codes")
        ex = m.get("executorch")
        if ex is not None:
            for k, v in as_dict(as_dict(ex, "executorch").get("axes", {}), "executorch.axes").items():
                bounds = [as_int(x, f"executorch.axes[{show(k)}]") for x in as_list(v, "executorch.axes", 3)]
                if len(bounds) != 3 or not bounds[0] <= bounds[1] <= bounds[2]:
                    raise fail(f"executorch.axes[{show(k)}]", "must be [min, opt, max]")

    def _validate_costs(self, names: list[str]) -> None:
        costs = as_dict(self.manifest.get("costs"), "costs")
        terms = as_dict(costs.get("terms"), "costs.terms")
        gates = terms_table(terms.get("gates"), "costs.terms.gates")
        terms_table(terms.get("always_on", {}), "costs.terms.always_on")
        if list(gates) != names:
            raise fail("costs.terms.gates", "must list every gate of gate_names, in order")
        num_table(costs.get("gates", {}), "costs.gates")
        for key in ("ms", "ms_always_on", "ms_per_step"):
            if key in costs:
                num_table(costs[key], f"costs.{key}")
        if "ms_meta" in costs:
            meta = as_dict(costs["ms_meta"], "costs.ms_meta")
            as_int(meta.get("frames"), "costs.ms_meta.frames", 1, self.limits.encoder_positions, none=True)
            as_int(meta.get("tokens"), "costs.ms_meta.tokens", 1, self.limits.text_positions, none=True)

    def _validate_profile(self, names: list[str]) -> None:
        prof = as_dict(self.manifest.get("profile") or {}, "profile")
        for b in as_list(prof.get("backends", []), "profile.backends", 16):
            as_name(b, "profile.backends")
        as_int(prof.get("threads"), "profile.threads", 1, 1024, none=True)
        as_choice(prof.get("device", "auto"), "profile.device", ("auto", "cpu", "gpu"))
        as_name(prof.get("precision", "fp32"), "profile.precision")
        budget = self.manifest.get("budget")
        if budget is not None:
            try:
                pinned = Budget.from_profile({"budget": as_dict(budget, "budget")}).pinned
            except (BudgetError, TypeError) as exc:
                raise fail("budget", f"is invalid ({show(str(exc))})") from None
            if not all(isinstance(p, str) for p in pinned) or not set(pinned) <= set(names):
                raise fail("budget.pinned", "names a module that gate_names does not list")

    def _check_files(self) -> None:
        """Every file a graph or the tokenizer uses must be listed with its hash, inside the bundle."""
        files = as_dict(self.manifest.get("files"), "files")
        for rel, entry in files.items():
            _inside(self.path, rel, "files entry")
            entry = as_dict(entry, f"files[{show(rel)}]")
            if not isinstance(entry.get("sha256"), str) or not _SHA256.match(entry["sha256"]):
                raise fail(f"files[{show(rel)}].sha256", f"must be 64 hex digits, got {show(entry.get('sha256'))}")
            as_int(entry.get("bytes"), f"files[{show(rel)}].bytes")
        needed = [(g.file, f"graph {g.name}") for g in self.graphs()]
        needed += family_files(self.manifest)
        for rel, what in needed:
            _inside(self.path, rel, what)
            if rel not in files:
                raise fail(what, f"uses {rel}, which has no SHA-256 entry")

    def check_files(self, stop_at_first: bool = False) -> list[FileCheck]:
        """Size and SHA-256 of every listed file (sizes first: a truncated file fails without hashing)."""
        results = []
        for rel, entry in self.manifest["files"].items():
            p = _inside(self.path, rel, "files entry")
            if p.is_symlink() or not p.is_file():
                results.append(FileCheck(rel, False, "missing" if not p.is_symlink() else "a link"))
            elif p.stat().st_size != int(entry["bytes"]):
                results.append(FileCheck(rel, False, f"size {p.stat().st_size} bytes, expected {entry['bytes']} "
                                                     "(truncated or replaced)"))
            elif sha256_file(p) != entry["sha256"]:
                results.append(FileCheck(rel, False, "SHA-256 mismatch (corrupted or modified)"))
            else:
                results.append(FileCheck(rel, True))
            if stop_at_first and not results[-1].ok:
                break
        return results

    def verify(self, raise_on_error: bool = True) -> list[FileCheck]:
        results = self.check_files(stop_at_first=raise_on_error)
        bad = [r for r in results if not r.ok]
        if bad and raise_on_error:
            r = bad[0]
            raise BundleError(f"bundle {self.path}: file {printable(r.file)} is {r.problem}; "
                              "re-export the bundle (edgegate export ... --force) or copy it again")
        return results

    # -- views -------------------------------------------------------------------------------
    @property
    def module_format(self) -> str:
        return self.manifest.get("module_format", "onnx")

    @property
    def dims(self) -> dict[str, int]:
        return self.manifest["model"]["dims"]

    @property
    def gate_names(self) -> list[str]:
        return list(self.manifest["gate_names"])

    @property
    def predictor(self) -> dict[str, Any] | None:
        return self.manifest.get("predictor")

    @property
    def profile(self) -> dict[str, Any]:
        return self.manifest.get("profile") or {}

    @property
    def budget(self) -> dict[str, Any] | None:
        return self.manifest.get("budget")

    @property
    def decoding(self) -> dict[str, Any]:
        return self.manifest.get("decoding") or {}

    @property
    def tokenizer_file(self) -> Path:
        return self.path / self.manifest["tokenizer"]["file"]

    @property
    def gate_terms(self) -> dict[str, CostTerms]:
        return terms_table(self.manifest["costs"]["terms"]["gates"], "costs.terms.gates")

    @property
    def always_on_terms(self) -> dict[str, CostTerms]:
        return terms_table(self.manifest["costs"]["terms"].get("always_on", {}), "costs.terms.always_on")

    def module(self, name: str) -> ModuleSpec:
        for m in self.modules:
            if m.name == name:
                return m
        raise BundleError(f"{self.path / MANIFEST}: no module named {name!r}; re-export the bundle")

    def graphs(self) -> list[GraphSpec]:
        """Every loadable graph: modules, their skip adapters, the predictor; with their files' hashes."""
        out = [g for m in self.modules for g in (m.graph, m.adapter_graph) if g is not None]
        if self.predictor is not None:
            out.append(GraphSpec.from_dict(self.predictor, "predictor", "predictor", "predictor"))
        files = self.manifest.get("files", {})
        return [GraphSpec(g.name, g.stage, g.file, g.method, g.inputs, g.outputs, g.param_bytes,
                          files.get(g.file, {}).get("sha256", "")) for g in out]

    def axis_bounds(self, max_batch: int | None = None, max_step_tokens: int | None = None
                    ) -> dict[str, tuple[int, int, int]]:
        """Bounds of the named axes: what an ExecuTorch program was planned for, else the limits'."""
        ex = self.manifest.get("executorch") or {}
        if ex.get("axes") and max_batch is None and max_step_tokens is None:
            return {k: tuple(int(x) for x in v) for k, v in ex["axes"].items()}
        from edgegate.runtimes.schema import DEFAULT_MAX_BATCH, DEFAULT_MAX_STEP_TOKENS

        return axis_bounds(self.limits, max_batch or DEFAULT_MAX_BATCH, max_step_tokens or DEFAULT_MAX_STEP_TOKENS)

    def total_bytes(self) -> int:
        return sum(int(e.get("bytes", 0)) for e in self.manifest["files"].values())


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of bundle directory ``path`` as a dict whose format and schema version are current."""
    mpath = path / MANIFEST
    if mpath.is_symlink() or not mpath.is_file():
        raise BundleError(f"{mpath} is missing: {path} is not an edgegate bundle (or is incomplete); "
                          "re-export it")
    if mpath.stat().st_size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{mpath} is larger than {MAX_MANIFEST_BYTES >> 20} MB; this is not an edgegate manifest")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise BundleError(f"{mpath} is not valid JSON ({exc.__class__.__name__}); re-export the bundle") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        fmt = manifest.get("format") if isinstance(manifest, dict) else None
        raise BundleError(f"{mpath}: format {show(fmt)} is not {FORMAT!r}; this is not an edgegate bundle")
    version = manifest.get("schema_version")
    if isinstance(version, int) and not isinstance(version, bool) and 1 <= version < SCHEMA_VERSION:
        raise BundleError(f"{mpath}: bundle schema version {version} is older than this edgegate's "
                          f"{SCHEMA_VERSION}; re-export it: edgegate export ... --force")
    if version != SCHEMA_VERSION or isinstance(version, bool):
        newer = isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION
        fix = "upgrade edgegate" if newer else "re-export the bundle with this edgegate"
        raise BundleError(f"{mpath}: unknown schema version {show(version)} (this edgegate reads "
                          f"{SCHEMA_VERSION}); {fix}")
    return manifest
