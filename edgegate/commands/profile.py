"""``edgegate profile BUNDLE``: time every module on this device and store the latency table as ``costs.ms``."""

from __future__ import annotations

import argparse

HELP = """Measure how many milliseconds each gateable module costs on this device and write the table
into the bundle's manifest (costs.ms, costs.ms_always_on, costs.ms_per_step, costs.ms_meta), so
that budgets with cost_unit "ms" plan with time instead of FLOPs.

Run it on the target device, with the backend and thread count the app will use. Per gate it
times the work skipping that gate removes from one utterance: encoder modules at --frames
encoder positions; decoder modules per step times --tokens (cross-attention includes its K/V
projection). Medians of --repeats passes after a warm-up. Only manifest.json changes (atomically),
so every file hash stays valid. Torch-free.

examples:
  edgegate profile bundles/base-cpu
  edgegate profile bundles/base-cpu --threads 1 --repeats 9
  edgegate profile bundles/base-cpu --dry-run        # print the table, write nothing
"""


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profile", help="measure per-module ms on this device (for ms budgets)", description=HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", metavar="BUNDLE", help="bundle directory written by edgegate export")
    p.add_argument("--frames", type=_int, default=None, metavar="N",
                   help="encoder positions per utterance (default: a full 30-s window, 1500 for Whisper, "
                        "749 for OWSM, which always runs full windows)")
    p.add_argument("--tokens", type=_int, default=32, metavar="T", help="decoder steps per utterance (default 32)")
    p.add_argument("--repeats", type=_int, default=5, metavar="R", help="timed passes; medians (default 5)")
    p.add_argument("--backend", default="auto", metavar="B",
                   help="auto (the bundle profile's order) or a backend name (onnxruntime, executorch, tensorrt)")
    p.add_argument("--threads", type=_int, default=None, metavar="N", help="threads (default: the bundle profile's)")
    p.add_argument("--dry-run", action="store_true", help="print the table without writing the manifest")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgegate.errors import EdgegateError
    from edgegate.runtimes.bundle import Bundle
    from edgegate.runtimes.latency import format_latency_table, measure_latency, write_latency_table
    from edgegate.runtimes.session import Session

    if args.threads is not None and args.threads < 1:
        raise EdgegateError(f"--threads must be >= 1: got {args.threads}")
    session = Session.load(args.bundle, backend=args.backend, threads=args.threads)
    described = session.backend.describe()
    try:
        frames = session.limits.encoder_positions if args.frames is None else args.frames
        table = measure_latency(session, n_frames=frames, n_tokens=args.tokens, repeats=args.repeats,
                                progress=not args.no_progress)
    finally:
        session.backend.close()
    print(f"# {session.bundle.path}: {described}")
    terms = {**session.bundle.gate_terms, **session.bundle.always_on_terms}
    print(format_latency_table(table, terms, session.gate_names))
    if args.dry_run:
        print("dry run: manifest not changed")
        return 0
    path = write_latency_table(session.bundle.path, table)
    Bundle.open(session.bundle.path)  # the written bundle must still load and verify
    print(f"wrote costs.ms to {path}")
    return 0
