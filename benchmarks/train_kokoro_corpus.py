"""A small natural-sounding corpus (Kokoro-82M via espeak-ng IPA) to mix with the espeak one.

    python benchmarks/train_kokoro_corpus.py --out /work/gates_data/kokoro --n 12
"""

from __future__ import annotations

import argparse

from edgegate.data.manifest import read_manifest
from edgegate.data.synth import build_corpus


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, default=12, help="utterances per (language, task)")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    m = build_corpus(args.out, "en,de,es,fr,it", ("transcribe", "translate"), args.n, seed=args.seed,
                     engines=("kokoro",), workers=args.workers, progress=False)
    print(m, len(read_manifest(m)))


if __name__ == "__main__":
    main()
