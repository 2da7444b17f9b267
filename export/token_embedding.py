"""One copy of the token embedding for the embedding and logits graphs, and the vocabulary-shard templates.

Whisper ties its output projection to its token embedding (n_vocab x d; 106 MB fp32 for base).
Exported as two traced graphs it is stored twice; here the table is written ONCE, as a file of
its own, and both graphs read it as external data (ONNX Runtime maps the file and shares the
pages, docs/speed.md section 2):

- ``int8``: ``token_embedding.q8``, the table quantised symmetrically in blocks of
  :data:`BLOCK` along d (uint8 with zero point 128, then the fp32 scales). ``decoder.embed``
  reads it with ``GatherBlockQuantized`` as ``[n_vocab, d]``; ``decoder.logits`` with 8-bit
  ``MatMulNBits`` as ``[n_vocab, d / BLOCK, BLOCK]``: the same bytes, the same scales.
- ``fp32`` (and ``fp16`` bundles, whose TensorRT engines cast it): ``token_embedding.f32``;
  ``Gather`` and ``Gemm(transB=1)`` over the same ``[n_vocab, d]`` table (a ``Transpose`` of an
  initializer would be constant-folded into a second copy).

Vocabulary shards (:mod:`edgegate.vocabulary`): per shard a weightless *template* of the logits
graph with ``N`` = the shard's size and placeholder weights; the runtime gathers the shard's rows
from the shared table once and hands them to the template with ``SessionOptions.add_initializer``,
so a shard's logits are the full graph's rows bit for bit, and nothing is stored twice.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgegate.export.bundle_writer import BundleWriter
from edgegate.export.graph_job import GraphJob, param_bytes
from edgegate.runtimes.schema import GraphSpec

BLOCK = 32
TABLE_FILES = {"int8": "token_embedding.q8", "fp32": "token_embedding.f32"}
SHARE = "token_embedding"  # GraphJob.shares of the embedding and logits graphs


def quantized_table(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric 8-bit blocks of :data:`BLOCK` along d as uint8 (zero point 128) and fp32 scales [n, d/BLOCK]."""
    n, d = weight.shape
    blocks = weight.reshape(n, d // BLOCK, BLOCK).astype(np.float32)
    scale = np.maximum(np.abs(blocks).max(-1), 1e-12) / 127.0
    q = (np.clip(np.round(blocks / scale[..., None]), -127, 127) + 128).astype(np.uint8)
    return q.reshape(n, d), scale.astype(np.float32)


def table_kind(precision: str, d: int) -> str:
    """``int8`` for int8 bundles (when d is a multiple of the block), else ``fp32``."""
    return "int8" if precision == "int8" and d % BLOCK == 0 else "fp32"


def _external(init: Any, location: str, offset: int, length: int) -> None:
    from onnx import TensorProto

    init.ClearField("raw_data")
    init.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        init.external_data.add(key=key, value=value)


def _model(nodes: list, name: str, inputs: list, outputs: list, inits: list, opset: int) -> Any:
    from onnx import helper

    ops = [helper.make_opsetid("", opset), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(helper.make_graph(nodes, name, inputs, outputs, inits), opset_imports=ops, ir_version=8)


def _table_inits(kind: str, table: np.ndarray, scales: np.ndarray | None, rows: int, for_logits: bool) -> list:
    """The table (and scales) initializers in the layout the embedding or logits op reads."""
    from onnx import numpy_helper

    n, d = table.shape
    if kind == "fp32":
        return [numpy_helper.from_array(table[:rows], "table")]
    t = table[:rows].reshape(rows, d // BLOCK, BLOCK) if for_logits else table[:rows]
    s = scales[:rows].reshape(-1) if for_logits else scales[:rows]
    return [numpy_helper.from_array(t, "table"), numpy_helper.from_array(s, "scales")]


def logits_model(kind: str, table: np.ndarray, scales: np.ndarray | None, ln: Any, n_rows: int, opset: int,
                 placeholder: bool = False) -> Any:
    """LayerNorm of the last position, then the projection onto ``n_rows`` rows of the table."""
    from onnx import TensorProto, helper, numpy_helper

    d = table.shape[1]
    inits = _table_inits(kind, table, scales, 1 if placeholder else n_rows, for_logits=True)
    inits += [numpy_helper.from_array(ln.weight.detach().numpy().astype(np.float32), "ln_weight"),
              numpy_helper.from_array(ln.bias.detach().numpy().astype(np.float32), "ln_bias"),
              numpy_helper.from_array(np.array(-1, np.int64), "last")]
    nodes = [helper.make_node("Gather", ["x", "last"], ["x_last"], axis=1),
             helper.make_node("LayerNormalization", ["x_last", "ln_weight", "ln_bias"], ["h"], axis=-1,
                              epsilon=float(ln.eps))]
    if kind == "int8":
        nodes.append(helper.make_node("MatMulNBits", ["h", "table", "scales"], ["logits"], domain="com.microsoft",
                                      K=d, N=n_rows, bits=8, block_size=BLOCK, accuracy_level=4))
    else:
        nodes.append(helper.make_node("Gemm", ["h", "table"], ["logits"], transB=1))
    return _model(nodes, "logits", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "tokens", d])],
                  [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", n_rows])], inits, opset)


def embed_model(kind: str, table: np.ndarray, scales: np.ndarray | None, positional: np.ndarray, opset: int) -> Any:
    from onnx import TensorProto, helper, numpy_helper

    d = table.shape[1]
    inits = _table_inits(kind, table, scales, table.shape[0], for_logits=False)
    inits.append(numpy_helper.from_array(positional.astype(np.float32), "positional_embedding"))
    if kind == "int8":
        tok = helper.make_node("GatherBlockQuantized", ["table", "tokens", "scales"], ["tok"], domain="com.microsoft",
                               gather_axis=0, quantize_axis=1, block_size=BLOCK, bits=8)
    else:
        tok = helper.make_node("Gather", ["table", "tokens"], ["tok"], axis=0)
    nodes = [tok, helper.make_node("Gather", ["positional_embedding", "positions"], ["pos"], axis=0),
             helper.make_node("Add", ["tok", "pos"], ["x"])]
    ins = [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["batch", "tokens"]),
           helper.make_tensor_value_info("positions", TensorProto.INT64, ["tokens"])]
    return _model(nodes, "embed", ins, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "tokens", d])],
                  inits, opset)


def write_shared(embed: GraphJob, logits: GraphJob, precision: str, writer: BundleWriter,
                 shards: dict[str, np.ndarray] | None, opset: int) -> tuple[dict[str, GraphSpec], dict[str, Any]]:
    """Write the table file, ``decoder.embed``/``decoder.logits`` over it and one template per shard.

    Returns the two graphs' specs and the manifest's ``token_embedding`` section (file, layout,
    users, precision, templates).
    """
    import onnx

    weight = embed.module.token_embedding.weight.detach().numpy().astype(np.float32)
    n, d = weight.shape
    kind = table_kind(precision, d)
    table, scales = (quantized_table(weight) if kind == "int8" else (weight, None))
    file = TABLE_FILES[kind]
    payload = table.tobytes() + (b"" if scales is None else scales.tobytes())
    with open(writer.path_for(file), "wb") as f:
        f.write(payload)
    writer.add(file)
    spans = {"table": (0, table.nbytes)}
    if scales is not None:
        spans["scales"] = (table.nbytes, scales.nbytes)
    positional = embed.module.positional_embedding.detach().numpy()
    models = {embed.name: embed_model(kind, table, scales, positional, opset),
              logits.name: logits_model(kind, table, scales, logits.module.ln, n, opset)}
    specs = {}
    for job in (embed, logits):
        model = models[job.name]
        for init in model.graph.initializer:
            if init.name in spans:
                _external(init, file, *spans[init.name])
        rel = f"{job.name}.onnx"
        onnx.save(model, str(writer.path_for(rel)))
        writer.add(rel)
        specs[job.name] = GraphSpec(job.name, job.stage, rel, None, job.inputs, job.outputs,
                                    param_bytes(job.module) - 4 * weight.size)
    templates = {}
    for key, rows in sorted((shards or {}).items()):
        rel = f"{logits.name}.shard-{key}.onnx"
        onnx.save(logits_model(kind, table, scales, logits.module.ln, len(rows), opset, placeholder=True),
                  str(writer.path_for(rel)))
        writer.add(rel)
        templates[key] = {"file": rel, "rows": int(len(rows))}
    section = {"file": file, "precision": kind, "shape": [n, d], "users": [embed.name, logits.name],
               "layout": ("uint8 [n_vocab, d] (zero point 128, symmetric blocks of 32 along d) then fp32 scales "
                          "[n_vocab, d/32]" if kind == "int8" else "fp32 [n_vocab, d]"),
               "block": BLOCK if kind == "int8" else None, "bytes": len(payload), "shard_templates": templates}
    return specs, section


__all__ = ["write_shared", "quantized_table", "table_kind", "embed_model", "logits_model", "BLOCK",
           "TABLE_FILES", "SHARE"]
