"""``edgegate eval``: quality, skipped FLOPs and latency of a gated model over budgets."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = """Evaluate a gated model on manifests at several budgets.

Per (manifest, language, task) and budget: WER % (transcribe) or BLEU (translate; references
in English), the same against the dense output (budget 0), the skipped share of the gateable
and of all FLOPs (counted with the tokens really decoded), kept modules and latency. Writes
OUT/eval.json, OUT/eval.md (the table, also printed), OUT/keep_heatmap.png (how often each
module is kept per language and task) and OUT/quality.png (quality against budget).

examples:
  edgegate eval --manifest data/librivox.jsonl --manifest data/heldout.jsonl --out results/eval
  edgegate eval --gates runs/gates --manifest data/heldout.jsonl --budgets 0,0.25 --out results/mine
  edgegate eval --bundle bundles/cpu --manifest data/heldout.jsonl --out results/runtime
  edgegate eval --bundle bundles/cpu --manifest data/heldout.jsonl --dense-check loops,all,off --out results/check

A gated request is watched by the dense decoder as in edgegate transcribe (--dense-check loops: a window the
gated decoder loops on is decoded again densely, and a window of a trimmed encoder context that still fails is
decoded again on the full 30 s; all: the end of text is checked too; off: the plan alone; the counts go to
eval.json). Several modes run side by side, every utterance with each in turn: the first mode's
report goes to OUT, each other's to OUT/dense_check_MODE/.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a gated model across budgets (WER/BLEU, FLOPs, latency)",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", action="append", required=True, metavar="JSONL",
                   help="manifest with references (repeat for several sets; the set is named after the file)")
    p.add_argument("--gates", default="whisper-base",
                   help="gate set: a train-gates output directory or a shipped name (default whisper-base)")
    p.add_argument("--model", default=None, help="override the model recorded with the gates")
    p.add_argument("--bundle", default=None, help="evaluate an exported bundle with the torch-free runtime instead")
    p.add_argument("--budgets", default="0,0.1,0.25,0.5", help="comma-separated budgets in [0, 1)")
    p.add_argument("--scope", choices=("encoder", "decoder", "both"), default=None,
                   help="budget scope (default: the scope the gates were trained for)")
    p.add_argument("--audio-ctx", default="trained", metavar="MARGIN",
                   help="encoder context margin: 'trained' (as in gates.json, or the bundle's own rule "
                        "with --bundle; default), 'none' (full 30 s) or N")
    p.add_argument("--beam-size", type=int, default=1)
    p.add_argument("--limit", type=int, default=None, help="at most N utterances per manifest")
    p.add_argument("--max-tokens", type=int, default=None, metavar="N",
                   help="stop decoding a window after N tokens (default: the model's, 224 for Whisper). A "
                        "looping output runs to the limit: a lower one (e.g. 96 for clips under 10 s) makes "
                        "evals of broken budgets faster but counts fewer inserted words")
    p.add_argument("--dense-check", type=parse_modes, default=("loops",), metavar="MODE[,MODE...]",
                   help="how the dense decoder watches gated requests and trimmed contexts fall back to the full "
                        "window: loops (default), all, off; several comma-separated modes are evaluated side by "
                        "side")
    p.add_argument("--out", required=True, metavar="DIR", help="where eval.json and the plots go")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--verbose", action="store_true", help="print every hypothesis")
    p.set_defaults(func=run)


def parse_modes(text: str) -> tuple[str, ...]:
    """--dense-check: comma-separated modes, each once."""
    from edgegate.dense_check import MODES

    modes = tuple(m.strip() for m in text.split(",") if m.strip())
    if not modes or len(set(modes)) != len(modes) or not set(modes) <= set(MODES):
        raise argparse.ArgumentTypeError(f"bad --dense-check {text!r}: pass modes such as loops or loops,all,off")
    return modes


def parse_budgets(text: str) -> list[float]:
    from edgegate.budget import validate_budget

    parts = [p for p in text.split(",") if p.strip()]
    if not parts:
        from edgegate.errors import BudgetError

        raise BudgetError(f"bad --budgets {text!r}: pass comma-separated fractions such as 0,0.25,0.5")
    return [validate_budget(p) for p in parts]


def _set_names(paths: list[str]) -> list[str]:
    names = [Path(p).stem for p in paths]
    return [n if names.count(n) == 1 else f"{n}{i}" for i, n in enumerate(names)]


def run(args: argparse.Namespace) -> int:
    from edgegate.data.manifest import read_manifest
    from edgegate.evaluation import evaluate_variants, format_table, whisper_cost_fn, write_report

    budgets = parse_budgets(args.budgets)
    if args.max_tokens is not None and args.max_tokens < 1:
        from edgegate.errors import EdgegateError

        raise EdgegateError(f"--max-tokens must be >= 1: got {args.max_tokens}")
    sets = {}
    for name, path in zip(_set_names(args.manifest), args.manifest, strict=True):
        entries = read_manifest(path)
        sets[name] = entries[: args.limit] if args.limit else entries
    if args.bundle:
        transcribe_fn, names, cost_fn = _runtime(args)
    else:
        from edgegate.gated import load_gated

        _refuse_owsm(args)
        gw = load_gated(args.gates, model=args.model, threads=args.threads)
        if args.max_tokens:
            gw.wm.max_tokens = args.max_tokens
        ctx = _audio_ctx(args.audio_ctx, gw.audio_ctx)

        def transcribe_fn(audio, lang, task, budget, check):
            return gw.transcribe_windows(audio, language=lang, task=task, budget=budget, beam_size=args.beam_size,
                                         scope=args.scope, audio_ctx=ctx, dense_check=check)

        names = gw.gate_names
        cost_fn = whisper_cost_fn(gw.model.dims, ctx, gw.model.context_tail)
    log = (lambda s: print(s, file=sys.stderr)) if args.verbose else None
    checks = {("" if i == 0 else f"dense_check_{m}"): m for i, m in enumerate(args.dense_check)}
    variants = {v: (lambda a, lang, task, b, c=c: transcribe_fn(a, lang, task, b, c)) for v, c in checks.items()}
    reports = evaluate_variants(sets, variants, budgets, names, cost_fn, progress=not args.no_progress, log=log)
    for variant, report in reports.items():
        report["gates"] = args.bundle or args.gates
        report["max_tokens"] = args.max_tokens
        report["audio_ctx"] = runtime_audio_ctx(args.audio_ctx) if args.bundle else ctx
        report["dense_check"] = checks[variant]
        paths = write_report(report, Path(args.out) / variant)
        if variant:
            print(f"\n{variant}:")
        print(format_table(report))
        print("\n".join(f"wrote {p}" for p in paths.values()))
    return 0


def _refuse_owsm(args: argparse.Namespace) -> None:
    """OWSM gates are evaluated on their bundle (the PyTorch side has no gated OWSM wrapper yet)."""
    from edgegate.errors import EdgegateError
    from edgegate.gate_set import GATES_FILE, GateSpec, is_gate_set, resolve_gates_dir
    from edgegate.models.owsm_config import is_owsm_dir

    model = args.model
    if model is None and is_gate_set(args.gates):
        model = GateSpec.read(resolve_gates_dir(args.gates) / GATES_FILE).model
    if model is not None and is_owsm_dir(Path(model).expanduser()):
        raise EdgegateError(f"{model} is an OWSM checkpoint: evaluate its gates on a bundle: edgegate export "
                            f"--target cpu --model {model} --gates {args.gates} --out B, then edgegate eval --bundle B")


def _audio_ctx(text: str, trained: int | None) -> int | None:
    from edgegate.errors import EdgegateError

    if text == "trained":
        return trained
    if text.lower() in ("none", "full"):
        return None
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise EdgegateError(f"bad --audio-ctx {text!r}: use 'trained', 'none' or a margin >= 0")
    return value


def runtime_audio_ctx(text: str) -> int | str:
    """``--audio-ctx`` for a bundle: 'trained' is the bundle's own rule ("auto"), 'none' the full window."""
    if text == "trained":
        return "auto"
    ctx = _audio_ctx(text, None)
    return "full" if ctx is None else ctx


def _runtime(args: argparse.Namespace):
    """The torch-free runtime's Session on the bundle, its gate names and cost function."""
    from edgegate.runtimes.session import Session

    sess = Session.load(args.bundle, threads=args.threads)
    if args.max_tokens:
        sess.max_tokens = args.max_tokens
    ctx = runtime_audio_ctx(args.audio_ctx)

    def transcribe_fn(audio, lang, task, budget, check):
        return sess.transcribe_windows(audio, 16000, lang, task, budget=budget, audio_ctx=ctx, dense_check=check)

    from edgegate.evaluation import request_cost_fn

    # FLOPs from the bundle's own cost terms and context margin, counted as for the PyTorch model.
    gate_costs, always_on = sess.costs, sess.always_on_flops
    if sess.frontend is not None:  # OWSM runs full windows: its costs are at the window's encoder positions
        full = sess.limits.encoder_positions
        gate_costs = lambda _p, n, **k: sess.costs(full, n, **k)  # noqa: E731
        always_on = lambda _p, n: sess.always_on_flops(full, n)  # noqa: E731
    return transcribe_fn, list(sess.gate_names), request_cost_fn(gate_costs, always_on, sess.resolve_audio_ctx(ctx))


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point: ``python -m edgegate.commands.eval ...`` = ``edgegate eval ...``."""
    from edgegate.cli import main as cli_main

    return cli_main(["eval", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
