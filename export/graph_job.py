"""What a model family hands the export core: its modules as graph jobs (torch side, no target).

A :class:`GraphJob` is one graph to write (a torch module, example inputs for tracing, its
signature with value bindings); a :class:`ModuleJob` is one module of the execution plan (name,
kind, stage, gates, cost) with its graph and, when it has one, its skip adapter's graph. The
targets (ONNX, ExecuTorch) turn graph jobs into files or methods; the core turns module jobs
into the manifest's :class:`edgegate.runtimes.schema.ModuleSpec` entries.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from edgegate.runtimes.schema import TensorSpec

# Cost table reference point of the manifest: a padded 30-s window and a typical short utterance.
COST_FRAMES = 1500
COST_TOKENS = 32


@dataclass
class GraphJob:
    name: str
    stage: str  # a schema stage, or "predictor"
    module: nn.Module
    example: tuple[Tensor, ...]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    precision: str = "fp32"  # asked of the target; module graphs get the export's, adapters and predictor stay fp32
    shares: str | None = None  # a weight stored once for the graphs that name it ("token_embedding")


@dataclass
class ModuleJob:
    name: str
    kind: str
    stage: str
    layer: int | None
    gates: tuple[str, ...]
    flops: float
    graph: GraphJob
    adapter: GraphJob | None = None
    skip: str = "identity"

    @property
    def gate(self) -> str | None:
        return self.gates[0] if len(self.gates) == 1 else None


def param_bytes(module: nn.Module) -> int:
    """fp32 bytes of a graph's distinct parameters and buffers."""
    seen, total = set(), 0
    for t in list(module.parameters()) + list(module.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * 4
    return total
