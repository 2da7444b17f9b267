"""Write a bundle atomically: files into a temp directory beside the target, hashes into the
manifest, then one rename. Shared by every exporter (ONNX now, ExecuTorch next). Torch-free.

    with BundleWriter(out, force=False) as w:       # refuses an existing out without force
        path = w.path_for("encoder.0.attn.onnx")     # write the file there yourself...
        w.add("encoder.0.attn.onnx")                 # ...then register it (size + SHA-256)
        w.copy_in(tokenizer_json, "tokenizer.json")
        w.finish(manifest)                           # writes manifest.json, renames into place

An exception inside the ``with`` block removes the temp directory and leaves ``out`` untouched.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from edgegate.errors import BundleError
from edgegate.runtimes.bundle import FORMAT, MANIFEST, SCHEMA_VERSION, sha256_file


class BundleWriter:
    def __init__(self, out: str | Path, force: bool = False):
        self.out = Path(out).expanduser().resolve()
        self.force = force
        self.files: dict[str, dict[str, Any]] = {}
        self.tmp: Path | None = None
        self.check_target(self.out, force)

    @staticmethod
    def check_target(out: Path, force: bool) -> None:
        if out.exists() and not force:
            raise BundleError(f"{out} already exists; pass --force to overwrite it or choose another --out")
        if out.exists() and not out.is_dir():
            raise BundleError(f"{out} exists and is not a directory; remove it or choose another --out")
        if out.exists() and any(out.iterdir()) and not (out / MANIFEST).exists():
            raise BundleError(f"{out} is a non-empty directory that is not a bundle; refusing to replace it "
                              "even with --force; choose another --out")

    def __enter__(self) -> BundleWriter:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.tmp-", dir=self.out.parent))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.tmp, 0o777 & ~umask)  # mkdtemp makes it private; a bundle is an ordinary directory
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.tmp is not None and self.tmp.exists():
            shutil.rmtree(self.tmp, ignore_errors=True)

    def path_for(self, rel: str) -> Path:
        assert self.tmp is not None, "use BundleWriter as a context manager"
        p = self.tmp / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def add(self, rel: str) -> dict[str, Any]:
        p = self.path_for(rel)
        if not p.is_file():
            raise BundleError(f"exporter bug: {rel} was registered but not written")
        entry = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        self.files[rel] = entry
        return entry

    def copy_in(self, src: str | Path, rel: str) -> dict[str, Any]:
        shutil.copyfile(src, self.path_for(rel))
        return self.add(rel)

    def write_json(self, rel: str, data: Any) -> dict[str, Any]:
        self.path_for(rel).write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        return self.add(rel)

    def finish(self, manifest: dict[str, Any]) -> Path:
        """Write manifest.json (with format, schema version and the file table) and move into place."""
        assert self.tmp is not None
        manifest = {"format": FORMAT, "schema_version": SCHEMA_VERSION, **manifest,
                    "files": dict(sorted(self.files.items()))}
        (self.tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n",
                                         encoding="utf-8")
        old = None
        if self.out.exists():
            self.check_target(self.out, self.force)  # re-check: it may have appeared meanwhile
            old = self.out.parent / f".{self.out.name}.old-{os.getpid()}"
            os.replace(self.out, old)
        try:
            os.replace(self.tmp, self.out)
        except OSError:
            if old is not None:
                os.replace(old, self.out)
            raise
        self.tmp = None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.out
