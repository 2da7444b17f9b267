"""``edgegate export``: write a deployable bundle (per-module ONNX subgraphs + manifest) for a device."""

from __future__ import annotations

import argparse

HELP = """Export a (gated) Whisper or OWSM model as a bundle for a device target.

The bundle is a directory: manifest.json (schema, dims, modules in execution order with their
SHA-256 and FLOPs, profile, budget, provenance), one ONNX subgraph per gateable module (each
computes its whole residual step, so a skipped module is simply not run), the always-on parts,
the tokenizer and, with --gates, the gate predictor. Without --gates the bundle runs dense
unless the caller passes an explicit mask. The directory appears atomically; an existing one is
only replaced with --force.

examples:
  edgegate export --target cpu --out bundles/base-cpu                  # int8 modules (the cpu default)
  edgegate export --target cpu --precision fp32 --audio-ctx full --out bundles/base-cpu-fp32
  edgegate export --target jetson --gates predictor.safetensors --budget 0.5
  edgegate export --target my-board.toml --model /models/whisper-small-ct2
  edgegate export --target cpu --model owsm_v3.1_ebf_base --out bundles/owsm-base-cpu   # an OWSM directory
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a bundle for a device target", description=HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", required=True,
                   help="device profile: cpu, android, jetson (= jetson-orin-nano), jetson-agx-orin, a user "
                        "profile name, or a .toml/.json profile file (edgegate profiles lists them)")
    p.add_argument("--model", default="whisper-base",
                   help="registered model name or checkpoint path (CTranslate2 dir, transformers dir, OpenAI .pt, "
                        "or an OWSM checkpoint directory as downloaded)")
    p.add_argument("--gates", default=None, metavar="PATH",
                   help="gate set to ship: the --out directory of edgegate train-gates (predictor + adapters), "
                        "a shipped gate set name, or a bare predictor .safetensors")
    p.add_argument("--budget", type=float, default=None,
                   help="default sparsity budget in [0, 1) (default: the profile's); needs --gates")
    p.add_argument("--scope", choices=("encoder", "decoder", "both"), default=None,
                   help="which modules the budget may skip (default: the profile's)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="bundle directory (default: bundles/<model>-<target>)")
    p.add_argument("--force", action="store_true", help="replace an existing bundle at --out")
    p.add_argument("--precision", choices=("fp32", "int8", "fp16"), default=None,
                   help="module graphs' precision (default: the profile's: cpu and android int8, jetson fp16); "
                        "the gate predictor and skip adapters stay fp32")
    p.add_argument("--audio-ctx", default="auto", metavar="full|auto|N",
                   help="the bundle's encoder context: full (30 s), auto (the gate set's or the model's own rule, "
                        "else full) or N (the audio plus N encoder positions of margin)")
    p.add_argument("--full-vocab", action="store_true",
                   help="no vocabulary shards: every request decodes over the full vocabulary (default: shards for "
                        "en, de, es, it and translate; Session.load(full_vocab=True) also turns them off)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the profile's, >= 17)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgegate.export.core import export_bundle

    path = export_bundle(out=args.out, target=args.target, model=args.model, gates=args.gates, budget=args.budget,
                         scope=args.scope, force=args.force, progress=not args.no_progress, opset=args.opset,
                         precision=args.precision, audio_ctx=args.audio_ctx, full_vocab=args.full_vocab)
    print(path)
    return 0
