"""The ``edgegate`` command line: one subcommand per module under ``edgegate.commands``.

Each command module exposes ``register(subparsers)`` and sets ``func`` on its parser; heavy
imports (torch, onnx) happen inside the command functions so that ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from edgegate import __version__
from edgegate.errors import EdgegateError

# Order is the order shown in --help.
COMMAND_MODULES = [
    "transcribe",
    "live",
    "export",
    "inspect",
    "profile",
    "build_engines",
    "profiles",
    "report",
    "corpus",
    "train_gates",
    "adapt",
    "eval",
    "ablate",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgegate",
        description="Context-aware dynamic pruning for speech foundation models on edge devices: "
        "a gate predictor picks, per utterance, which Whisper modules run under a device budget.",
    )
    parser.add_argument("--version", action="version", version=f"edgegate {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"edgegate.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except EdgegateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
