"""Word-timestamp alignment on the runtime: the bundle's optional ``alignment`` graphs (torch-free).

A bundle exported by ``edgegate export`` (ONNX) holds one small graph per decoder layer:
``<module>.align`` reads the residual stream just
before that layer's cross-attention module runs, and the layer's cross K, and returns the
pre-softmax scores ``(batch, heads, tokens, frames)``. The normal decoder steps never run them:
only ``transcribe(word_timestamps=True)`` does, once per window, in a teacher-forced pass over the
window's text through the same step graphs (in chunks of the step-token bound, so backends with
bounded axes work too), with the logits graph applied to every position for the word
probabilities. Which heads are read follows the plan as on the PyTorch path: the published heads
of kept layers, else every head of the kept upper-half layers (else of every kept layer).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgegate.errors import BundleError
from edgegate.runtimes.backends.base import Backend, Module
from edgegate.runtimes.execution import GraphDecoderState, Runner, RunnerList
from edgegate.runtimes.schema import DEFAULT_MAX_BATCH, DEFAULT_MAX_STEP_TOKENS, LOGITS, GraphSpec, as_int, as_list

NO_ALIGNMENT = ("bundle {path} has no alignment graphs for word timestamps; re-export it with this edgegate "
                "(edgegate export ... --force), or drop word_timestamps")
NO_ALIGNMENT_PTE = ("bundle {path} is an ExecuTorch program, which has no alignment graphs for word timestamps yet; "
                    "use an ONNX bundle (edgegate export --target cpu) for word timestamps, or drop them")


def missing(bundle: Any) -> BundleError:
    """The one-line error for word timestamps on a bundle without alignment graphs."""
    text = NO_ALIGNMENT_PTE if bundle.module_format == "pte" else NO_ALIGNMENT
    return BundleError(text.format(path=bundle.path))


@dataclass(frozen=True)
class AlignGraph:
    layer: int
    before: str  # the module whose input is the residual stream this graph reads
    spec: GraphSpec


class Alignment:
    """The alignment graphs of one bundle, loaded on first use."""

    def __init__(self, path: Path, graphs: list[AlignGraph], heads: list[tuple[int, int]], n_layers: int,
                 n_heads: int, backend: Backend):
        self.path = path
        self.graphs = graphs
        self.heads = heads
        self.n_layers = n_layers
        self.n_heads = n_heads
        self.backend = backend
        self._modules: dict[str, Module] = {}
        self._lock = threading.Lock()

    @classmethod
    def of(cls, bundle: Any, backend: Backend) -> Alignment | None:
        """The bundle's alignment section, checked (None when it has none)."""
        section = bundle.manifest.get("alignment")
        if not section:
            return None
        files = bundle.manifest.get("files", {})
        dims = bundle.dims
        n_layers, n_heads = int(dims["n_text_layer"]), int(dims["n_text_head"])
        graphs = []
        for i, g in enumerate(as_list(section.get("graphs"), "alignment.graphs", 1024)):
            spec = GraphSpec.from_dict(g, f"alignment.graphs[{i}]", str(g.get("name")), "alignment")
            if spec.file not in files:  # listed files are the ones checked to stay inside the bundle
                raise BundleError(f"{bundle.path}/manifest.json: alignment graph {spec.name} uses {spec.file}, "
                                  "which has no SHA-256 entry; re-export the bundle")
            layer = as_int(g.get("layer"), f"alignment.graphs[{i}].layer", 0, n_layers - 1)
            graphs.append(AlignGraph(layer, str(g.get("before")), spec))
        heads = [(as_int(a, "alignment.heads", 0, n_layers - 1), as_int(b, "alignment.heads", 0, n_heads - 1))
                 for a, b in as_list(section.get("heads"), "alignment.heads", 4096)]
        return cls(bundle.path, graphs, heads, n_layers, n_heads, backend)

    def _module(self, g: AlignGraph) -> Module:
        with self._lock:
            if g.spec.name not in self._modules:
                self._modules[g.spec.name] = self.backend.load(self.path / g.spec.file, g.spec.name, g.spec.method)
            return self._modules[g.spec.name]

    def pairs(self, runners: RunnerList) -> list[tuple[AlignGraph, int]]:
        """(graph, head) pairs this runner list can read: heads of layers whose cross-attention runs."""
        ran = {r.name for r in runners.per_step}
        kept = [g for g in self.graphs if g.before in ran]
        by_layer = {g.layer: g for g in kept}
        pairs = [(by_layer[layer], h) for layer, h in self.heads if layer in by_layer]
        if not pairs:
            kept = sorted(kept, key=lambda g: g.layer)
            upper = [g for g in kept if g.layer >= self.n_layers // 2] or kept
            pairs = [(g, h) for g in upper for h in range(self.n_heads)]
        return pairs

    def aligner(self, runners: RunnerList, make_state: Callable[[Any], GraphDecoderState],
                max_step_tokens: int | None = None, max_batch: int | None = None
                ) -> Callable[[Any, np.ndarray], tuple[np.ndarray | None, np.ndarray | None]]:
        """``align(window values, tokens (1, T)) -> (logits (T, vocab), qk (heads, T, frames))`` for ModelPorts."""
        pairs = self.pairs(runners)
        graphs = {g.before: g for g, _ in pairs}
        logits_runner = next(r for r in runners.per_step if any(t.value == LOGITS for t in r.outputs))
        step = max_step_tokens or DEFAULT_MAX_STEP_TOKENS
        rows = max_batch or DEFAULT_MAX_BATCH

        def align(window: Any, tokens: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
            if not pairs:  # no cross-attention runs at all: nothing ties tokens to time
                return None, None
            state = make_state(window)
            scores: dict[str, list[np.ndarray]] = {name: [] for name in graphs}
            logits: list[np.ndarray] = []

            def tap(r: Runner, env: dict[str, np.ndarray]) -> None:
                g = graphs.get(r.name)
                if g is not None:
                    scores[r.name].append(self._module(g).run({t.name: env[t.value] for t in g.spec.inputs})[0])

            for a in range(0, tokens.shape[1], step):
                env = state.step_values(tokens[:, a: a + step], tap)
                logits.append(_every_position(logits_runner, env, rows))
            qk = {name: np.concatenate(parts, axis=2) for name, parts in scores.items()}
            return np.concatenate(logits), np.stack([qk[g.before][0, h] for g, h in pairs])

        return align


def _every_position(runner: Runner, env: dict[str, np.ndarray], rows: int) -> np.ndarray:
    """The last-position logits graph on every position of the step: positions become the batch."""
    seq = [t for t in runner.inputs if "tokens" in t.shape]
    n = env[seq[0].value].shape[1]
    out = []
    for a in range(0, n, rows):
        feed = dict(env)
        for t in seq:
            feed[t.value] = np.ascontiguousarray(env[t.value][0, a: a + rows, None])
        runner(feed)
        out.append(feed[LOGITS])
    return np.concatenate(out)


__all__ = ["Alignment", "AlignGraph", "NO_ALIGNMENT", "missing"]
