"""Probe: word errors on a manifest with fixed masks (PyTorch, the plan alone: no dense check).

``--probe decoder-kinds`` asks whether a decoder could reach half its measured time without its
cross-attentions, by dropping every MLP and/or every self-attention instead (together 42 % of the decoder's ms
on the int8 runtime). ``--probe encoder-singles`` skips one encoder module at a time (does an encoder
LayerDrop run make the encoder's modules droppable?).

    python benchmarks/mask_probe.py MODEL MANIFEST [--probe encoder-singles]
    python benchmarks/mask_probe.py MODEL MANIFEST --skip encoder.1.mlp,encoder.2.mlp   # skipped together

Session 10, encoder-singles: docs/adaptation.md (round 2 session 10).
Session 9 (real clips, 92 words): LayerDrop at step 1,000 dense 14, no MLP 93, no self-attention 92, neither 91;
phase m2 dense 14, no MLP 86, no self-attention 92, neither 105.
"""

from __future__ import annotations

import argparse
import json

import torch
from common import manifest_word_errors

from edgegate.data.manifest import read_manifest
from edgegate.transcriber import WhisperModel

KINDS = {"dense": (), "no_mlp": ("mlp",), "no_self": ("self_attn",), "no_self_no_mlp": ("self_attn", "mlp")}


def probes(names: list[str], which: str) -> dict[str, list[bool]]:
    """label -> keep mask over ``names``."""
    if which == "decoder-kinds":
        return {label: [not (n.startswith("decoder.") and n.rsplit(".", 1)[-1] in kinds) for n in names]
                for label, kinds in KINDS.items()}
    return {"dense": [True] * len(names),
            **{f"no_{n}": [m != n for m in names] for n in names if n.startswith("encoder.")}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="registered name or an edgegate adapt directory")
    p.add_argument("manifest")
    p.add_argument("--probe", choices=("decoder-kinds", "encoder-singles"), default="decoder-kinds")
    p.add_argument("--skip", action="append", default=[], metavar="NAME[,NAME...]",
                   help="probe this set of modules skipped together instead (repeatable)")
    p.add_argument("--part", default="1/1", metavar="K/N", help="run only the K-th of N equal parts of the masks "
                   "(one process per core)")
    args = p.parse_args()
    k, n = (int(x) for x in args.part.split("/"))
    torch.set_num_threads(1)
    wm = WhisperModel(args.model, threads=1)
    entries = read_manifest(args.manifest)
    names = wm.model.gate_names
    masks = ({"no_" + "+".join(sorted(x.split(","))): [n not in x.split(",") for n in names] for x in args.skip}
             if args.skip else probes(names, args.probe))
    for i, (label, mask) in enumerate(masks.items()):
        if i % n != k - 1:
            continue
        errors, words = manifest_word_errors(
            entries, lambda e, m=mask: wm.transcribe_text(e.audio, language=e.lang, task=e.task, mask=m,
                                                          dense_check="off").text)
        print(json.dumps({"probe": label, "skipped": mask.count(False), "errors": errors, "words": words}),
              flush=True)


if __name__ == "__main__":
    main()
