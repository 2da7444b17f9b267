"""``edgegate profiles``: list the device profiles ``edgegate export --target`` accepts."""

from __future__ import annotations

import argparse
import json

HELP = """List device profiles: the built-in targets and user profiles (TOML/JSON files in
$EDGEGATE_PROFILES or the user config directory's edgegate/profiles/).

A profile sets the backend order, precision, threads and the default budget and scope. A budget
only applies to bundles exported with --gates; without a predictor a bundle runs dense.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profiles", help="list device profiles (export targets)", description=HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def format_table(profiles: dict) -> str:
    from edgegate.export.profiles import ALIASES

    rows = [("name", "backends", "format", "precision", "threads", "budget", "scope", "source")]
    for name, p in profiles.items():
        rows.append((name, ",".join(p.backends), p.format, p.precision, str(p.threads), f"{p.budget:g}", p.scope,
                     p.source))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    aliases = ", ".join(f"{a} -> {t}" for a, t in sorted(ALIASES.items()))
    return "\n".join(lines) + f"\n\naliases: {aliases}"


def run(args: argparse.Namespace) -> int:
    from edgegate.export.profiles import all_profiles

    profiles = all_profiles()
    if args.json:
        print(json.dumps({n: p.to_dict() for n, p in profiles.items()}, indent=1))
    else:
        print(format_table(profiles))
    return 0
