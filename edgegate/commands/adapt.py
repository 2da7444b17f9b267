"""``edgegate adapt``: knowledge-preserving edge adaptation (dynamic encoder context, droppable modules)."""

from __future__ import annotations

import argparse
import json

HELP = """Adapt a Whisper checkpoint to run on its real audio length and to tolerate skipped modules.

The unmodified model is the teacher: dense, full 30-s window (or its own dynamic context with
--teacher-audio-ctx auto), teacher-forced on its own greedy tokens. Its decoder states are computed
once per utterance and cached on disk (fp16). The student sees the real frames plus a random
margin of --margin encoder positions, augmented audio, and on part of the utterances random
module drops (--drop-scope, --drop-max, --p-dense); it learns to reproduce the outputs of every
decoder block (relative L2, + --kl-weight x KL of the logits).
Learning rates are small on purpose (order 1e-6 .. 1e-5): change the behaviour, keep the knowledge.

The result is DIR/adaptation.safetensors: int8 differences to the base weights (~1 byte per
trained parameter) with the base's fingerprint, and DIR/adapt.json with the encoder-context rule.

Runs on N processes with: torchrun --nproc_per_node N -m edgegate.commands.adapt ...
(one utterance per process per step; a process whose utterance the teacher could not finish
contributes nothing to that step).

examples:
  edgegate adapt --manifest data/synth/manifest.jsonl --out runs/edge --steps 4000
  edgegate adapt --manifest a.jsonl --manifest b.jsonl --out runs/edge --steps 8000 --stop-after 2000
  edgegate adapt --manifest a.jsonl --out runs/edge --steps 8000 --resume
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("adapt", help="edge adaptation: dynamic encoder context and droppable modules, by "
                       "distillation from the unmodified model", description=HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", action="append", required=True, metavar="JSONL",
                   help="corpus manifest (audio, lang, task); repeatable. Transcripts are not needed")
    p.add_argument("--model", default="whisper-base", help="registered model name or checkpoint path")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (checkpoint, log, result)")
    p.add_argument("--teacher-cache", default=None, metavar="DIR",
                   help="where the teacher's targets are cached (default: the user cache dir, per model)")
    p.add_argument("--steps", type=int, default=4000, help="steps (one utterance per process each)")
    p.add_argument("--repeat", type=int, default=1, metavar="N",
                   help="use each utterance for N consecutive steps, with fresh augmentation, margin and drops "
                        "(the teacher costs ~2 student steps: N=2 gives more updates per CPU-hour)")
    p.add_argument("--lr", type=float, default=1e-5, help="peak learning rate (warm-up, cosine decay)")
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--margin", default="16,64", metavar="LO,HI",
                   help="encoder positions added to the real frames, uniform in [LO, HI] (default 16,64)")
    p.add_argument("--drop-scope", choices=("none", "encoder", "decoder", "both"), default="decoder",
                   help="modules that may be dropped at random (default decoder)")
    p.add_argument("--drop-only", default="", metavar="NAME[,NAME...]",
                   help="drop at random only these modules (gate names such as encoder.1.mlp, within "
                        "--drop-scope); default: every module in the scope")
    p.add_argument("--drop-max", type=float, default=0.5,
                   help="per-utterance drop probability is drawn from U(DROP_MIN, DROP_MAX) (default 0.5)")
    p.add_argument("--drop-min", type=float, default=0.0,
                   help="lower end of that range (default 0); with --masks-from, of the budgets: e.g. 0.2 "
                        "trains on the plans of the budgets that will be served")
    p.add_argument("--p-full", type=float, default=0.0,
                   help="share of utterances the student sees on Whisper's full 30-s window, which keeps the "
                        "full-context path from drifting (default 0; ~0.15 costs ~1.5x per step)")
    p.add_argument("--teacher-max-wer", type=float, default=None, metavar="X",
                   help="learn only from utterances whose teacher output has WER <= X against the manifest's "
                        "text (translate: the English reference); on robotic TTS the teacher often hallucinates, "
                        "and its hidden states then say nothing about the audio (e.g. 0.5; default: all)")
    p.add_argument("--retry-rejected", type=int, default=3, metavar="N",
                   help="a step whose utterance the teacher filter rejects tries up to N other utterances instead "
                        "of idling (default 3; 0: the step is skipped, as before round 2 session 13)")
    p.add_argument("--teacher-translate-overlap", type=float, default=None, metavar="F",
                   help="judge translate utterances instead by the word overlap (bag-of-words F1, 0..1) of the "
                        "teacher's English with the reference, at least F: a right translation rarely has a low "
                        "WER, a hallucinated one ('Thank you for watching!') has no overlap (e.g. 0.3)")
    p.add_argument("--teacher-audio-ctx", choices=("full", "auto"), default="full",
                   help="what the teacher's encoder sees: Whisper's full 30-s window (default), or auto: the "
                        "model's own context rule (an edge model's real length + margin). auto suits --train "
                        "decoder on whisper-base-edge: the targets are the dense model as deployed")
    p.add_argument("--init-from", default=None, metavar="DIR",
                   help="second phase: start the student from this earlier edgegate adapt run on the same --model "
                        "(the teacher stays the unmodified model; the result is one delta to it)")
    p.add_argument("--masks-from", default=None, metavar="GATES",
                   help="drop what this gate set (a train-gates directory or a shipped name) drops: non-dense "
                        "utterances run with its plan at a budget ~ U(--drop-min, --drop-max) instead of random drops")
    p.add_argument("--p-dense", type=float, default=0.4,
                   help="share of utterances that run with no drops (default 0.4)")
    p.add_argument("--train", choices=("blocks", "encoder", "decoder"), default="blocks",
                   help="what learns: every block, stem and norm (default), the encoder or the decoder only; the token "
                        "embedding (also the output layer) always stays frozen")
    p.add_argument("--kl-weight", type=float, default=0.0, help="add KL to the teacher's logits")
    p.add_argument("--max-tokens", type=int, default=96, help="teacher tokens per utterance (default 96)")
    p.add_argument("--no-augment", action="store_true", help="train on the clean audio")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=200, metavar="STEPS")
    p.add_argument("--log-every", type=int, default=10, metavar="STEPS")
    p.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint")
    p.add_argument("--stop-after", type=int, default=None, metavar="STEP",
                   help="stop with a checkpoint after this step (continue later with --resume)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads per process (default 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace):
    from edgegate.adapt import AdaptConfig, AdaptError

    try:
        lo, hi = (int(v) for v in args.margin.split(","))
    except ValueError:
        raise AdaptError(f"bad --margin {args.margin!r}: pass LO,HI encoder positions such as 16,64") from None
    return AdaptConfig(
        manifests=list(args.manifest), out=args.out, model=args.model, teacher_cache=args.teacher_cache,
        steps=args.steps, repeat=args.repeat, lr=args.lr, warmup=args.warmup, margin=(lo, hi),
        drop_scope=args.drop_scope, drop_max=args.drop_max, drop_min=args.drop_min, p_dense=args.p_dense,
        drop_only=tuple(n for n in args.drop_only.split(",") if n),
        p_full=args.p_full, train=args.train, kl_weight=args.kl_weight,
        teacher_max_wer=args.teacher_max_wer, teacher_translate_overlap=args.teacher_translate_overlap,
        retry_rejected=args.retry_rejected,
        teacher_context=args.teacher_audio_ctx,
        init_from=args.init_from, masks_from=args.masks_from,
        max_tokens=args.max_tokens, augment=not args.no_augment, seed=args.seed,
        checkpoint_every=args.checkpoint_every, log_every=args.log_every, resume=args.resume,
        stop_after=args.stop_after, threads=args.threads, progress=not args.no_progress,
    )


def run(args: argparse.Namespace) -> int:
    from edgegate.adapt import adapt

    cfg = config_from_args(args)
    cfg.validate()  # fail on bad settings before any model is loaded
    summary = adapt(cfg)
    print(json.dumps({"out": cfg.out, **summary}, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point, for torchrun: ``torchrun --nproc_per_node 2 -m edgegate.commands.adapt ...``."""
    import sys

    from edgegate.cli import main as cli_main

    return cli_main(["adapt", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
