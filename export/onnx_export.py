"""The ONNX target: one ONNX file per graph of the execution plan (cpu and jetson profiles).

The TorchScript exporter (``dynamo=False``) is used: ~0.1 s per module instead of 1-4 s with
dynamo, and these graphs need no control flow. Weight sharing: the token embedding is stored once
(:mod:`edgegate.export.token_embedding`): the graphs that share it are written by hand over one
external-data file, with one weightless logits template per vocabulary shard.
Everything else (inputs, manifest, atomic writing) is the export core's
(:func:`edgegate.export.core.export_bundle`).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from edgegate.export.bundle_writer import BundleWriter
from edgegate.export.graph_job import GraphJob, param_bytes
from edgegate.export.quantize import QUANTIZATION_NOTES, apply_precision
from edgegate.export.token_embedding import SHARE, write_shared
from edgegate.models.whisper_layout import EMBED, LOGITS
from edgegate.runtimes.schema import GraphSpec, Limits, TensorSpec

DEFAULT_OPSET = 17


def _dynamic_axes(specs: Sequence[TensorSpec]) -> dict[str, dict[int, str]]:
    return {t.name: {i: a for i, a in enumerate(t.shape) if isinstance(a, str)} for t in specs}


def export_graph(module: nn.Module, example: tuple[Tensor, ...], path: Path, inputs: Sequence[TensorSpec],
                 outputs: Sequence[TensorSpec], opset: int = DEFAULT_OPSET) -> None:
    """One TorchScript-path ONNX export with named inputs/outputs and dynamic axes, quietly."""
    module = module.eval()
    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, example, str(path), dynamo=False, opset_version=opset, do_constant_folding=True,
            input_names=[t.name for t in inputs], output_names=[t.name for t in outputs],
            dynamic_axes={**_dynamic_axes(inputs), **_dynamic_axes(outputs)},
        )


class OnnxTarget:
    """One ONNX file per graph; module graphs asked for int8 / fp16 are quantised in place after export."""

    format = "onnx"

    def __init__(self, opset: int = DEFAULT_OPSET):
        self.opset = opset
        self.precisions: dict[str, str] = {}  # graph name -> the precision its file has
        self.shards: dict[str, Any] | None = None  # vocabulary shards to write logits templates for (the core's)
        self.token_embedding: dict[str, Any] | None = None

    def steps(self, graphs: Sequence[GraphJob]) -> int:
        return len(graphs)

    def write(self, graphs: Sequence[GraphJob], writer: BundleWriter, tick: Callable[[str], None],
              limits: Limits) -> dict[str, GraphSpec]:
        out = {}
        shared = [g for g in graphs if g.shares == SHARE]
        if shared:
            by_name = {g.name: g for g in shared}
            specs, self.token_embedding = write_shared(by_name[EMBED], by_name[LOGITS], by_name[LOGITS].precision,
                                                       writer, self.shards, self.opset)
            out.update(specs)
            for g in shared:
                self.precisions[g.name] = self.token_embedding["precision"]
                tick(g.name)
        for g in graphs:
            if g.shares == SHARE:
                continue
            file = f"{g.name}.onnx"
            export_graph(g.module, g.example, writer.path_for(file), g.inputs, g.outputs, self.opset)
            self.precisions[g.name] = apply_precision(writer.path_for(file), g.precision)
            writer.add(file)
            out[g.name] = GraphSpec(g.name, g.stage, file, None, g.inputs, g.outputs, param_bytes(g.module))
            tick(g.name)
        return out

    def sections(self) -> dict[str, Any]:
        used = sorted(set(self.precisions.values()) - {"fp32"})
        out: dict[str, Any] = {"quantization": {p: QUANTIZATION_NOTES[p] for p in used}} if used else {}
        if self.token_embedding is not None:
            out["token_embedding"] = self.token_embedding
        return out

    def provenance(self) -> dict[str, Any]:
        import onnx

        return {"onnx_opset": self.opset, "onnx": onnx.__version__,
                "exporter": "torch.onnx.export (TorchScript, dynamo=False)",
                "notes": ["token embedding stored once, read by decoder.embed and decoder.logits as external data"]}


__all__ = ["OnnxTarget", "export_graph", "DEFAULT_OPSET"]
