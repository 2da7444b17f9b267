"""``edgegate train-gates``: train a gate predictor (and its adaptation) by distillation."""

from __future__ import annotations

import argparse
import json

HELP = """Train the context-aware gate predictor for a Whisper or OWSM model.

The dense model is the teacher: its greedy tokens on the manifest's audio are the labels, so
the manifest needs no transcripts. Each step samples a sparsity target per utterance from
--target-range, feeds it to the predictor with the utterance's context (log-mel statistics,
language, task), samples hard Gumbel-Softmax gates and trains on
distillation loss + alpha * (|s_hat - s| + (s_hat - s)^2).

--adapt decides what else learns to cover for skipped modules:
  none           the predictor only (base model frozen)
  skip-adapters  small low-rank bypasses that run only in place of a skipped module; the base
                 stays bit-identical, so budget 0 is exactly the dense model (default)
  lora           low-rank deltas on the gated modules (gate-aware fine-tuning; changes the dense path)
  full           fine-tune the gated modules' weights (changes the dense path)

Runs on N processes with: torchrun --nproc_per_node N -m edgegate train-gates ...
(the global --batch-size is split across the processes; results match a single process).

examples:
  edgegate train-gates --manifest data/train.jsonl --out runs/gates --steps 400
  edgegate train-gates --manifest data/train.jsonl --out runs/dec --scope decoder --adapt none
  edgegate train-gates --manifest data/train.jsonl --out runs/gates --steps 800 --resume
  edgegate train-gates --manifest data/train.jsonl --model owsm_v3.1_ebf_base --audio-ctx none --out runs/owsm

OWSM (a checkpoint directory as downloaded): --audio-ctx none (OWSM always runs full windows),
--adapt skip-adapters (FFNs and decoder modules only, not the attention/cgMLP branches) or none.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-gates", help="train a gate predictor by distillation from the dense model",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", required=True, help="JSONL manifest (audio, lang, task[, text])")
    p.add_argument("--model", default="whisper-base",
                   help="registered model name, checkpoint path or OWSM checkpoint directory")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (checkpoints, predictor, log)")
    p.add_argument("--scope", choices=("encoder", "decoder", "both"), default="both",
                   help="which modules are gated (default both)")
    p.add_argument("--cost-table", default=None, metavar="BUNDLE",
                   help="plan with the measured milliseconds of this profiled bundle (edgegate profile BUNDLE) "
                        "instead of FLOPs: for gates served with cost_unit ms budgets")
    p.add_argument("--adapt", choices=("none", "skip-adapters", "lora", "full"), default="skip-adapters")
    p.add_argument("--adapter-rank", type=int, default=32, help="skip-adapter rank (default 32)")
    p.add_argument("--lora-rank", type=int, default=8, help="LoRA rank (default 8)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=8, help="utterances per step, over all processes")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (warm-up, then cosine decay)")
    p.add_argument("--adapt-lr", type=float, default=None, metavar="LR",
                   help="peak learning rate of the adapted weights (default: --lr); use ~3e-5 for lora/full")
    p.add_argument("--warmup", type=int, default=10, help="warm-up steps")
    p.add_argument("--target-range", default="0,0.8", metavar="LO,HI",
                   help="sparsity targets are drawn uniformly from [LO, HI] (fractions of in-scope FLOPs)")
    p.add_argument("--target-power", type=float, default=1.0, metavar="P",
                   help="draw targets as LO + (HI - LO) * u**P: P > 1 spends more steps on low budgets")
    p.add_argument("--alpha", type=float, default=4.0, help="sparsity loss weight")
    p.add_argument("--tau", default="2,0.3", metavar="START,END",
                   help="Gumbel temperature, annealed exponentially (2,0.3 lands closer on targets than 5,0.5)")
    p.add_argument("--kl-weight", type=float, default=0.0, help="add KL to the dense logits (costs a dense pass)")
    p.add_argument("--audio-ctx", default="32", metavar="MARGIN",
                   help="trim the encoder context to the audio plus MARGIN positions, as at inference "
                        "(default 32; 'none' = Whisper's full 30 s, ~10x more encoder work)")
    p.add_argument("--max-tokens", type=int, default=96, help="teacher tokens per utterance")
    p.add_argument("--keep-unfinished", action="store_true",
                   help="also train on utterances the dense model did not finish within --max-tokens")
    p.add_argument("--hidden", type=int, default=128, help="predictor hidden width")
    p.add_argument("--init-ranking", choices=("ablation", "flat"), default="ablation",
                   help="start the predictor from measured per-module damage (skip each module alone on a few "
                        "utterances; default) or from a flat ranking")
    p.add_argument("--ablation-utts", type=int, default=16, metavar="N",
                   help="utterances for the ablation pass (default 16; costs 1 + modules forward passes each)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=50, metavar="STEPS")
    p.add_argument("--log-every", type=int, default=10, metavar="STEPS")
    p.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint")
    p.add_argument("--stop-after", type=int, default=None, metavar="STEP",
                   help="stop with a checkpoint after this step (continue later with --resume)")
    p.add_argument("--save-dtype", choices=("float16", "float32"), default="float16",
                   help="dtype of the saved adaptation weights (predictor is always float32)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads per process (1 is fastest on a busy machine: 2 threads that wait for "
                        "each other on shared cores ran 5-8x slower here)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace):
    from edgegate.training import TrainConfig, TrainingError, parse_range

    try:
        tau = [float(t) for t in args.tau.split(",")]
        if len(tau) != 2:
            raise ValueError
    except ValueError:
        raise TrainingError(f"bad --tau {args.tau!r}: pass START,END such as 5,0.5") from None
    ctx = None if str(args.audio_ctx).lower() in ("none", "full", "") else args.audio_ctx
    try:
        ctx = None if ctx is None else int(ctx)
    except ValueError:
        raise TrainingError(f"bad --audio-ctx {args.audio_ctx!r}: pass a margin in encoder positions "
                            "(e.g. 32) or 'none'") from None
    return TrainConfig(
        manifest=args.manifest, out=args.out, model=args.model, scope=args.scope, adapt=args.adapt,
        adapter_rank=args.adapter_rank, lora_rank=args.lora_rank, steps=args.steps, batch_size=args.batch_size,
        lr=args.lr, adapt_lr=args.adapt_lr, warmup=args.warmup, target_range=parse_range(args.target_range),
        target_power=args.target_power, alpha=args.alpha,
        tau_start=tau[0], tau_end=tau[1], kl_weight=args.kl_weight, audio_ctx=ctx, max_tokens=args.max_tokens,
        drop_unfinished=not args.keep_unfinished, cost_table=args.cost_table,
        hidden=args.hidden, init_ranking=args.init_ranking, ablation_utts=args.ablation_utts, seed=args.seed,
        checkpoint_every=args.checkpoint_every, log_every=args.log_every,
        resume=args.resume, stop_after=args.stop_after, save_dtype=args.save_dtype, threads=args.threads,
        progress=not args.no_progress,
    )


def run(args: argparse.Namespace) -> int:
    from edgegate.training import train

    cfg = config_from_args(args)
    cfg.validate()  # fail on bad settings before any model is loaded
    summary = train(cfg)
    if summary.get("calibration") is not None or summary.get("stopped"):
        print(json.dumps({"out": cfg.out, **summary}, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point, for torchrun: ``torchrun --nproc_per_node 2 -m edgegate.commands.train_gates ...``."""
    import sys

    from edgegate.cli import main as cli_main

    return cli_main(["train-gates", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
