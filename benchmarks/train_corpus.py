"""Build the data for the shipped gate predictor: a synthetic training corpus, a held-out
synthetic set (other seed, texts disjoint from training) and a LibriVox manifest (real speech).

    python benchmarks/train_corpus.py --out data/gates    # ~1-2 min with espeak-ng on 2 cores
"""

from __future__ import annotations

import argparse
import glob
import os
from pathlib import Path

from edgegate.data.manifest import ManifestEntry, read_manifest, write_manifest
from edgegate.data.synth import build_corpus

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")


def librivox_manifest(path: Path) -> Path | None:
    tfile = LIBRIVOX / "transcription"
    if not tfile.exists():
        print("pocketsphinx-testdata not installed: no LibriVox manifest (apt-get install pocketsphinx-testdata)")
        return None
    refs = {}
    for line in tfile.read_text().splitlines():
        text, _, utt = line.rpartition("(")
        refs[utt.strip(") ")] = text.replace("<s>", "").replace("</s>", "").strip()
    entries = [ManifestEntry(p, "en", "transcribe", refs[Path(p).stem])
               for p in sorted(glob.glob(str(LIBRIVOX / "*.wav")))]
    return write_manifest(path, entries)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="data/gates")
    ap.add_argument("--n-train", type=int, default=30, help="utterances per (language, task) for training")
    ap.add_argument("--n-heldout", type=int, default=6, help="utterances per (language, task) held out")
    ap.add_argument("--languages", default="en,de,es,fr,it")
    args = ap.parse_args()
    out = Path(args.out)
    train = build_corpus(out / "train", args.languages, ("transcribe", "translate"), args.n_train, seed=1,
                         engines=("espeak",), workers=2)
    held = build_corpus(out / "heldout", args.languages, ("transcribe", "translate"), args.n_heldout, seed=2,
                        engines=("espeak",), workers=2)
    seen = {e.extra.get("source_text") or e.text for e in read_manifest(train)}
    kept = [e for e in read_manifest(held) if (e.extra.get("source_text") or e.text) not in seen]
    held_clean = write_manifest(out / "heldout" / "heldout.jsonl", kept)
    print(f"train: {train} ({len(read_manifest(train))} utterances)")
    print(f"held out: {held_clean} ({len(kept)} utterances, texts disjoint from training)")
    lv = librivox_manifest(out / "librivox.jsonl")
    if lv:
        print(f"librivox: {lv}")
    print(os.path.abspath(out))


if __name__ == "__main__":
    main()
