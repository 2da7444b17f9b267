"""The bundle on disk: schema, reader and integrity check (torch-free).

A bundle is a directory written by ``edgegate export``::

    manifest.json                  schema, model dims, modules in execution order, hashes, ...
    tokenizer.json                 Whisper's tokenizer
    predictor.onnx                 gate predictor (only when exported with --gates)
    encoder.stem.onnx              conv stem + positional embedding          (always runs)
    encoder.<i>.attn.onnx          x -> x + attn(ln(x))                      (gated)
    encoder.<i>.mlp.onnx           x -> x + mlp(ln(x))                       (gated)
    encoder.ln_post.onnx           final encoder LayerNorm                   (always runs)
    decoder.<i>.cross_kv.onnx      cross-attention K/V, once per utterance   (gated by decoder.<i>.cross_attn)
    decoder.embed.onnx             token + positional embedding              (always runs)
    decoder.<i>.self_attn.onnx     x, K/V cache -> x + attn(...), grown cache (gated)
    decoder.<i>.cross_attn.onnx    x, K, V -> x + attn(ln(x), K, V)          (gated)
    decoder.<i>.mlp.onnx           x -> x + mlp(ln(x))                       (gated)
    decoder.logits.onnx            final LayerNorm + output projection, last position only
    <gate>.adapter.onnx            x -> x + adapter(x): runs only in place of a skipped module

``Bundle.open`` refuses a bundle before anything is executed: unknown format or schema version,
a file listed in the manifest that is missing, of the wrong size or with the wrong SHA-256, or
a module whose file the manifest does not list. Every refusal is one :class:`BundleError` line
naming the file and the fix.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from edgegate.errors import BundleError

FORMAT = "edgegate-bundle"
SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = (1,)
MANIFEST = "manifest.json"

# Stages of a module: the encoder runs once per window, cross_kv once per window for kept
# cross-attention, decoder_step once per decoding step.
STAGES = ("encoder", "cross_kv", "decoder_step")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int | str, ...]  # ints are fixed sizes, strings name dynamic axes

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TensorSpec:
        return cls(d["name"], d["dtype"], tuple(d["shape"]))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class ModuleSpec:
    """One subgraph of the bundle.

    ``gate`` names the gateable module that decides whether this subgraph runs (None: always
    runs); ``adapter`` is the file of the skip adapter that runs in its place when it is skipped.
    ``method`` is for multi-method program formats (ExecuTorch ``.pte``): the method to load from
    ``file``; None for one-graph-per-file formats such as ONNX.
    """

    name: str
    kind: str
    stage: str
    layer: int | None
    gate: str | None
    file: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    flops: float = 0.0
    param_bytes: int = 0
    method: str | None = None
    adapter: str | None = None
    adapter_method: str | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModuleSpec:
        adapter = d.get("adapter") or {}
        return cls(
            name=d["name"], kind=d["kind"], stage=d["stage"], layer=d.get("layer"), gate=d.get("gate"),
            file=d["file"], inputs=tuple(TensorSpec.from_dict(t) for t in d["inputs"]),
            outputs=tuple(TensorSpec.from_dict(t) for t in d["outputs"]), flops=float(d.get("flops", 0.0)),
            param_bytes=int(d.get("param_bytes", 0)), method=d.get("method"),
            adapter=adapter.get("file"), adapter_method=adapter.get("method"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "kind": self.kind, "stage": self.stage, "layer": self.layer, "gate": self.gate,
            "file": self.file, "method": self.method,
            "inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs],
            "flops": self.flops, "param_bytes": self.param_bytes,
            "adapter": None if self.adapter is None else {"file": self.adapter, "method": self.adapter_method},
        }


@dataclass
class FileCheck:
    file: str
    ok: bool
    problem: str = ""


def _safe_relpath(bundle: Path, rel: Any, where: str) -> Path:
    if not isinstance(rel, str) or not rel:
        raise BundleError(f"{bundle / MANIFEST}: {where} has no file name; re-export the bundle")
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts or "\\" in rel:
        raise BundleError(f"{bundle / MANIFEST}: {where} points outside the bundle ({rel!r}); "
                          "refusing it, re-export the bundle")
    return bundle / p


@dataclass
class Bundle:
    """A bundle directory whose manifest has been read (and, by default, whose files were verified)."""

    path: Path
    manifest: dict[str, Any]
    modules: list[ModuleSpec] = field(default_factory=list)

    # -- reading -----------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, verify: bool = True) -> Bundle:
        path = Path(path).expanduser()
        if not path.exists():
            raise BundleError(f"bundle not found: {path}; export one with: edgegate export --target cpu --out {path}")
        if path.is_file():
            raise BundleError(f"{path} is a file; a bundle is the directory written by edgegate export")
        manifest = read_manifest(path)
        bundle = cls(path, manifest)
        try:
            bundle.modules = [ModuleSpec.from_dict(m) for m in manifest["modules"]]
        except (KeyError, TypeError) as exc:
            raise BundleError(f"{path / MANIFEST}: module entry lacks {exc}; re-export the bundle") from None
        bundle._check_references()
        if verify:
            bundle.verify(raise_on_error=True)
        return bundle

    def _check_references(self) -> None:
        """Every file a module, the predictor or the tokenizer uses must be listed with its hash."""
        files = self.manifest["files"]
        needed = [(m.file, f"module {m.name}") for m in self.modules]
        needed += [(m.adapter, f"adapter of {m.name}") for m in self.modules if m.adapter]
        needed.append((self.manifest["tokenizer"]["file"], "tokenizer"))
        if self.manifest.get("predictor"):
            needed.append((self.manifest["predictor"]["file"], "predictor"))
        for rel, what in needed:
            _safe_relpath(self.path, rel, what)
            if rel not in files:
                raise BundleError(f"{self.path / MANIFEST}: {what} uses {rel}, which has no SHA-256 entry; "
                                  "re-export the bundle")
        for rel in files:
            _safe_relpath(self.path, rel, "files entry")

    def check_files(self, stop_at_first: bool = False) -> list[FileCheck]:
        """Size and SHA-256 of every listed file (sizes first: a truncated file fails without hashing)."""
        results = []
        for rel, entry in self.manifest["files"].items():
            p = self.path / rel
            if not p.is_file():
                results.append(FileCheck(rel, False, "missing"))
            elif "bytes" in entry and p.stat().st_size != int(entry["bytes"]):
                results.append(FileCheck(rel, False, f"size {p.stat().st_size} bytes, expected {entry['bytes']} "
                                                     "(truncated or replaced)"))
            elif sha256_file(p) != entry.get("sha256"):
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
            raise BundleError(f"bundle {self.path}: file {r.file} is {r.problem}; "
                              "re-export the bundle (edgegate export ... --force) or copy it again")
        return results

    # -- views -------------------------------------------------------------------------------
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
    def tokenizer_file(self) -> Path:
        return self.path / self.manifest["tokenizer"]["file"]

    def module(self, name: str) -> ModuleSpec:
        for m in self.modules:
            if m.name == name:
                return m
        raise BundleError(f"{self.path / MANIFEST}: no module named {name!r}; re-export the bundle")

    def gate_costs(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.manifest["costs"]["gates"].items()}

    def total_bytes(self) -> int:
        return sum(int(e.get("bytes", 0)) for e in self.manifest["files"].values())


_REQUIRED = ("format", "schema_version", "model", "gate_names", "modules", "files", "tokenizer", "frontend",
             "costs")


def read_manifest(path: Path) -> dict[str, Any]:
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise BundleError(f"{mpath} is missing: {path} is not an edgegate bundle (or is incomplete); "
                          "re-export it")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{mpath} is not valid JSON ({exc.__class__.__name__}); re-export the bundle") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        fmt = manifest.get("format") if isinstance(manifest, dict) else None
        raise BundleError(f"{mpath}: format {fmt!r} is not {FORMAT!r}; this is not an edgegate bundle")
    version = manifest.get("schema_version")
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        newer = isinstance(version, int) and version > max(SUPPORTED_SCHEMA_VERSIONS)
        fix = "upgrade edgegate" if newer else "re-export the bundle with this edgegate"
        raise BundleError(f"{mpath}: unknown schema version {version!r} (this edgegate reads "
                          f"{', '.join(map(str, SUPPORTED_SCHEMA_VERSIONS))}); {fix}")
    missing = [k for k in _REQUIRED if k not in manifest]
    if missing:
        raise BundleError(f"{mpath}: missing key(s) {', '.join(missing)}; re-export the bundle")
    if not isinstance(manifest["files"], dict):
        raise BundleError(f"{mpath}: 'files' must map file names to hashes; re-export the bundle")
    return manifest
