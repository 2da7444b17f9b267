"""``edgegate ablate``: how much each module matters, measured by skipping it alone (``edgegate.ablation``)."""

from __future__ import annotations

import argparse
import json

HELP = """Skip each gateable module alone and measure how much the distillation loss rises.

The dense model labels each utterance of the manifest with its greedy tokens (no transcripts
needed, as in train-gates); then, per utterance, every in-scope module is skipped on its own and
the teacher-forced loss on those tokens is compared with the dense one. Prints the modules from
least to most damage per unit of cost, writes --out (JSON). For an E-Branchformer (OWSM) it also
compares the attention and cgMLP branches, overall and per language/task. Works for Whisper and
OWSM checkpoints; on random weights (the test fixture) the numbers mean nothing.

examples:
  edgegate ablate --manifest data/dev.jsonl --model whisper-base --out ablation.json
  edgegate ablate --manifest data/dev.jsonl --model owsm_v3.1_ebf_base --audio-ctx none --out owsm_ablation.json
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ablate", help="per-module damage: skip each module alone", description=HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", required=True, help="JSONL manifest (audio, lang, task)")
    p.add_argument("--model", default="whisper-base", help="registered model name, checkpoint path or OWSM directory")
    p.add_argument("--out", default="ablation.json", help="JSON result (default ablation.json)")
    p.add_argument("--scope", choices=("encoder", "decoder", "both"), default="both")
    p.add_argument("--utts", type=int, default=16, metavar="N", help="utterances to ablate on (default 16)")
    p.add_argument("--max-tokens", type=int, default=96, help="teacher tokens per utterance")
    p.add_argument("--audio-ctx", default="32", metavar="MARGIN",
                   help="Whisper's trimmed context margin (default 32); 'none' = full windows (needed for OWSM)")
    p.add_argument("--keep-unfinished", action="store_true",
                   help="also use utterances the dense model did not finish within --max-tokens")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def branch_summary(names: list[str], damage: list[float], groups: dict[str, list[float]]) -> dict:
    """Mean damage of the encoder's attention and cgMLP branches, overall and per group (E-Branchformer only)."""
    idx = {k: [i for i, n in enumerate(names) if n.startswith("encoder.") and n.endswith(f".{k}")]
           for k in ("attn", "cgmlp")}
    if not idx["cgmlp"]:
        return {}

    def mean(values: list[float]) -> dict[str, float]:
        return {k: round(sum(values[i] for i in ix) / len(ix), 5) for k, ix in idx.items()}

    return {"overall": mean(damage), "per_group": {g: mean(v) for g, v in groups.items()}}


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from edgegate.ablation import module_damage
    from edgegate.student import build_student, item_loss
    from edgegate.train_config import TrainConfig
    from edgegate.train_data import check_entries, load_examples
    from edgegate.training import training_inputs

    ctx = None if str(args.audio_ctx).lower() in ("none", "full") else int(args.audio_ctx)
    cfg = TrainConfig(manifest=args.manifest, out=".", model=args.model, scope=args.scope, adapt="none",
                      audio_ctx=ctx, max_tokens=args.max_tokens, drop_unfinished=not args.keep_unfinished,
                      threads=args.threads, progress=not args.no_progress)
    cfg.validate()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer, entries, owsm = training_inputs(cfg)
    check_entries(entries, tokenizer, cfg.manifest)
    examples = load_examples(entries, model.eval(), tokenizer, cfg, None, progress=cfg.progress,
                             features=None if owsm is None else owsm.features)
    examples = [e for e in examples if e.finished or not cfg.drop_unfinished][: max(1, args.utts)]
    if not examples:
        from edgegate.training import TrainingError

        raise TrainingError(f"{args.manifest}: the dense model finished none of the utterances within "
                            f"{args.max_tokens} tokens; raise --max-tokens or pass --keep-unfinished")
    st = build_student(model, cfg)
    per_utt = [module_damage(lambda ex, g: float(item_loss(st, ex, g, None, 0.0)[0]), [ex], st.in_scope)
               for ex in examples]
    damage = np.mean(per_utt, axis=0)
    costs = torch.stack([e.costs for e in examples]).mean(0).numpy()
    share = costs / max(costs[st.in_scope].sum(), 1e-30)
    groups: dict[str, list] = {}
    for ex, d in zip(examples, per_utt, strict=True):
        groups.setdefault(f"{ex.lang}/{ex.task}", []).append(d)
    groups = {g: np.mean(v, axis=0).tolist() for g, v in groups.items()}
    names = st.names
    result = {"model": args.model, "utterances": len(examples), "scope": args.scope,
              "modules": {n: {"damage": round(float(d), 5), "cost_share": round(float(c), 5)}
                          for n, d, c, s in zip(names, damage, share, st.in_scope, strict=True) if s},
              "branches": branch_summary(names, damage.tolist(), groups)}
    order = sorted(result["modules"], key=lambda n: result["modules"][n]["damage"] / max(
        result["modules"][n]["cost_share"], 1e-12))
    for n in order:
        m = result["modules"][n]
        print(f"{n:28s} damage {m['damage']:.5f}  cost {100 * m['cost_share']:5.1f}%")
    if result["branches"]:
        print("branches (mean damage): " + json.dumps(result["branches"]["overall"]))
    from pathlib import Path

    from edgegate.files import write_text_atomic

    write_text_atomic(Path(args.out), json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0
