"""How often is the teacher right on an adaptation corpus? WER of its cached greedy outputs per (language, task).

``edgegate adapt`` teaches the student to reproduce the teacher's decoder states on the teacher's own
tokens. Where the teacher hallucinates (on robotic TTS Whisper base often says "Thank you for watching!"
whatever the audio), those states say nothing about the audio. This script reads the teacher cache that
the runs filled (``~/.cache/edgegate/teacher/<fingerprint>``; nothing is computed), decodes each cached
output and scores it against the manifest's text (for translate items, the English reference), and
prints the share of utterances each ``--teacher-max-wer`` threshold would keep. Writes
``benchmarks/results/teacher_quality.json``.

    python benchmarks/teacher_quality.py --manifest corpus/espeak_train/manifest.jsonl \\
        --manifest corpus/espeak_train2/manifest.jsonl
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import write_json_atomic  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "teacher_quality.json"
THRESHOLDS = (0.25, 0.5, 0.75, 1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--manifest", action="append", required=True, help="training manifest (repeatable)")
    parser.add_argument("--model", default="whisper-base", help="the teacher (its fingerprint names the cache)")
    parser.add_argument("--teacher-cache", type=Path, default=None, help="default: <user cache>/teacher/<fingerprint>")
    parser.add_argument("--max-tokens", type=int, default=96, help="as the runs were made with (default 96)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    from edgegate.adapt import teacher_wer
    from edgegate.data.manifest import read_manifest
    from edgegate.models.registry import cache_dir, resolve_model, tokenizer_path
    from edgegate.teacher import TeacherCache
    from edgegate.tokenizer import WhisperTokenizer

    path = resolve_model(args.model)
    tokenizer = WhisperTokenizer.from_file(tokenizer_path(path))
    root = args.teacher_cache
    if root is None:
        from edgegate.models.loaders import load_whisper
        from edgegate.weight_delta import model_fingerprint

        root = cache_dir() / "teacher" / model_fingerprint(load_whisper(path))
    cache = TeacherCache(root)
    scores: dict[str, list[float]] = defaultdict(list)
    unfinished: dict[str, int] = defaultdict(int)
    examples: dict[str, list[str]] = defaultdict(list)
    total = 0
    for manifest in args.manifest:
        for e in read_manifest(manifest):
            total += 1
            t = cache.get(cache.key(e.audio, e.lang, e.task, args.max_tokens))
            if t is None:
                continue
            key = f"{e.lang}/{e.task}"
            if not t.finished:
                unfinished[key] += 1
                continue
            scores[key].append(teacher_wer(t, e.text, tokenizer))
            if len(examples[key]) < 3:
                examples[key].append(f"{e.text!r} -> {tokenizer.decode([int(x) for x in t.tokens]).strip()!r}")
    rows = {}
    print(f"{'pair':18s} {'cached':>6s} {'loops':>5s} {'median WER':>10s} " +
          " ".join(f"<={t:<4g}" for t in THRESHOLDS))
    for key in sorted(scores):
        v = scores[key]
        n = len(v) + unfinished[key]
        kept = {str(t): round(sum(w <= t for w in v) / n, 3) for t in THRESHOLDS}
        rows[key] = {"cached": n, "unfinished": unfinished[key], "median_wer": round(statistics.median(v), 3),
                     "kept_share": kept, "examples": examples[key]}
        print(f"{key:18s} {n:6d} {unfinished[key]:5d} {statistics.median(v):10.2f} " +
              " ".join(f"{kept[str(t)]:6.2f}" for t in THRESHOLDS))
    cached = sum(r["cached"] for r in rows.values())
    print(f"{cached} of {total} manifest utterances have a cached teacher output ({root})")
    write_json_atomic(args.output, {"benchmark": "teacher_quality", "manifests": args.manifest, "cache": str(root),
                                    "utterances": total, "cached": cached, "pairs": rows})
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
