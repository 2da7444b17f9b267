"""``edgegate build-engines BUNDLE``: build the TensorRT engines of a bundle on this GPU (torch-free)."""

from __future__ import annotations

import argparse
import sys

HELP = """Build one TensorRT engine per ONNX subgraph of a bundle, on this device, and cache them.

Engines are specific to the GPU, its compute capability and the TensorRT version, so they are
built where they run (a Jetson: minutes, once) and cached beside the bundle in
BUNDLE/engines/<gpu>-sm<cc>-trt<version>/ (or under --cache / $EDGEGATE_ENGINE_CACHE). Each
engine has the shape ranges of the manifest's dynamic axes; a session on the tensorrt
backend reuses them (and builds missing ones itself when this was not run). Needs an NVIDIA GPU,
pip install tensorrt cuda-python.

examples:
  edgegate build-engines bundles/whisper-base-jetson-orin-nano
  edgegate build-engines bundles/base-jetson --fp32 --force
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("build-engines", help="build and cache TensorRT engines for a bundle", description=HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", metavar="BUNDLE", help="bundle directory written by edgegate export (ONNX modules)")
    prec = p.add_mutually_exclusive_group()
    prec.add_argument("--fp16", dest="precision", action="store_const", const="fp16",
                      help="half-precision engines (default when the bundle's profile says fp16)")
    prec.add_argument("--fp32", dest="precision", action="store_const", const="fp32", help="full-precision engines")
    p.add_argument("--force", action="store_true", help="rebuild engines that are already cached")
    p.add_argument("--cache", default=None, metavar="DIR",
                   help="engine cache root (default: BUNDLE/engines; or $EDGEGATE_ENGINE_CACHE)")
    p.add_argument("--max-batch", type=int, default=None, help="largest beam width the engines accept (default 8)")
    p.add_argument("--max-step-tokens", type=int, default=None,
                   help="largest number of tokens in one decoder call (default 32)")
    p.add_argument("--workspace-mb", type=int, default=None, help="TensorRT builder workspace (default 1024)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run, precision=None)


def run(args: argparse.Namespace) -> int:
    from edgegate.runtimes.backends.tensorrt import TensorRTBackend
    from edgegate.runtimes.bundle import Bundle

    bundle = Bundle.open(args.bundle)  # verifies every file's SHA-256 before anything is built
    fmt = bundle.module_format
    if fmt != "onnx":
        from edgegate.errors import BundleError

        raise BundleError(f"{bundle.path} holds {fmt} modules; TensorRT engines are built from ONNX bundles "
                          "(edgegate export --target jetson)")
    options = {k: v for k, v in (("engine_cache", args.cache), ("max_batch", args.max_batch),
                                 ("max_step_tokens", args.max_step_tokens), ("workspace_mb", args.workspace_mb))
               if v is not None}
    precision = args.precision or bundle.profile.get("precision", "fp16")
    backend = TensorRTBackend(precision=precision, device="gpu", options=options)
    records = backend.build_engines(bundle, force=args.force, progress=not args.no_progress,
                                    log=lambda msg: print(msg, file=sys.stderr))
    built = [r for r in records if r["status"] == "built"]
    print(f"{backend.cache_dir(bundle.path)}  ({len(built)} built in {sum(r['seconds'] for r in built):.0f} s, "
          f"{len(records) - len(built)} reused; {backend.describe()})")
    return 0
