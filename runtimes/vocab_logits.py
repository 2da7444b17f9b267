"""The vocabulary shard on the runtime: a logits graph over the shard's rows only, scattered back.

A bundle with a ``vocabulary`` section stores the shards (``vocab_shards.npz``) and, per shard, a
weightless template of the logits graph (``token_embedding.shard_templates``). The first request
that plans a shard gathers the shard's rows from the bundle's one token-embedding table
(memory-mapped, same bytes and scales as the full logits graph) and loads the template with those
rows as initializers (ONNX Runtime ``SessionOptions.add_initializer``: the weights are constants of
the session, so its int8 kernels prepack them). The module then returns ``(batch, n_vocab)`` logits
with ``-inf`` outside the shard (:func:`edgegate.vocabulary.scatter_logits`), so decoding, its token
filters and beam search are unchanged. A few shard modules are kept (LRU).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgegate.errors import BundleError
from edgegate.runtimes.backends.base import Backend, Module
from edgegate.vocabulary import VocabularyShards

KEEP = 4  # shard modules kept per session


def table_arrays(path: Path, section: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray | None]:
    """The shared token-embedding table (memory-mapped) and its block scales, from ``token_embedding``."""
    n, d = (int(v) for v in section["shape"])
    if section["precision"] == "int8":
        block = int(section["block"])
        if d % block or path.stat().st_size != n * d + 4 * n * (d // block):
            raise BundleError(f"{path.name} does not hold a {n} x {d} int8 table with its scales; re-export the bundle")
        return (np.memmap(path, dtype=np.uint8, mode="r", shape=(n, d)),
                np.memmap(path, dtype=np.float32, mode="r", offset=n * d, shape=(n, d // block)))
    if path.stat().st_size != 4 * n * d:
        raise BundleError(f"{path.name} does not hold a {n} x {d} fp32 table; re-export the bundle")
    return np.memmap(path, dtype=np.float32, mode="r", shape=(n, d)), None


def shard_initializers(table: np.ndarray, scales: np.ndarray | None, rows: np.ndarray) -> dict[str, np.ndarray]:
    """The shard's rows in the layout the template's projection reads (see edgegate.export.token_embedding)."""
    picked = np.ascontiguousarray(table[rows])
    if scales is None:
        return {"table": picked}
    n, d = picked.shape
    block = d // scales.shape[1]
    return {"table": picked.reshape(n, d // block, block), "scales": np.ascontiguousarray(scales[rows]).reshape(-1)}


class ShardLogits(Module):
    """A shard's logits graph whose output is scattered back to the full vocabulary."""

    def __init__(self, inner: Module, rows: np.ndarray, n_vocab: int, keep_alive: Any = None):
        self.inner, self.rows, self.n_vocab = inner, rows, n_vocab
        self.name, self.input_names, self.output_names = inner.name, inner.input_names, inner.output_names
        self._keep_alive = keep_alive  # the initializers' memory must outlive the session

    def run(self, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        (shard,) = self.inner.run(feed)
        out = np.full((shard.shape[0], self.n_vocab), -np.inf, dtype=shard.dtype)
        out[:, self.rows] = shard
        return [out]


class VocabLogits:
    """The shard logits modules of one loaded bundle (thread-safe, built on first use)."""

    def __init__(self, bundle_path: Path, section: Mapping[str, Any], vocabulary: Mapping[str, Any],
                 shards: VocabularyShards, backend: Backend, n_vocab: int):
        self.path = bundle_path
        self.templates = dict(section.get("shard_templates") or {})
        self.shards = shards
        self.backend = backend
        self.n_vocab = n_vocab
        self.table, self.scales = table_arrays(bundle_path / section["file"], section)
        self.keys = tuple(k for k in vocabulary.get("default_on", ()) if k in self.templates and k in shards.shards)
        self._cache: OrderedDict[str, ShardLogits] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def of(cls, bundle: Any, backend: Backend, tokenizer: Any) -> VocabLogits | None:
        """The bundle's shard logits, or None when it has no shards or the backend cannot load them."""
        vocab, section = bundle.manifest.get("vocabulary"), bundle.manifest.get("token_embedding")
        if not vocab or not section or not hasattr(backend, "load_with_initializers"):
            return None
        files = bundle.manifest.get("files", {})
        refs = [vocab.get("file"), section.get("file")] + [t.get("file") for t in
                                                           (section.get("shard_templates") or {}).values()]
        unlisted = [r for r in refs if r not in files]
        if unlisted:  # listed files are the ones the reader keeps inside the bundle and verifies
            raise BundleError(f"manifest.json: vocabulary files {unlisted} are not listed in files; "
                              "re-export the bundle")
        shards = VocabularyShards.load(bundle.path / vocab["file"], tokenizer, bundle.limits.n_vocab)
        return cls(bundle.path, section, vocab, shards, backend, bundle.limits.n_vocab)

    def module(self, key: str) -> ShardLogits:
        with self._lock:
            mod = self._cache.get(key)
            if mod is not None:
                self._cache.move_to_end(key)
                return mod
        rows = self.shards.shards[key]
        template = self.templates[key]
        if int(template["rows"]) != len(rows):
            raise BundleError(f"logits template for shard {key!r} has {template['rows']} rows, the shard "
                              f"{len(rows)}; re-export the bundle")
        inits = shard_initializers(self.table, self.scales, rows)
        inner = self.backend.load_with_initializers(self.path / template["file"], f"logits.{key}", inits)
        mod = ShardLogits(inner, rows.astype(np.int64), self.n_vocab, inits)
        with self._lock:
            self._cache[key] = mod
            while len(self._cache) > KEEP:
                self._cache.popitem(last=False)
        return mod


__all__ = ["VocabLogits", "ShardLogits", "table_arrays", "shard_initializers"]
