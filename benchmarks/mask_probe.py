"""Probe: word errors on a manifest with whole kinds of decoder modules skipped (PyTorch, fixed masks).

Asks whether a decoder could reach half its measured time without its cross-attentions, by dropping every
MLP and/or every self-attention instead (together 42 % of the decoder's ms on the int8 runtime).

    python benchmarks/mask_probe.py MODEL MANIFEST

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

PROBES = {"dense": (), "no_mlp": ("mlp",), "no_self": ("self_attn",), "no_self_no_mlp": ("self_attn", "mlp")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="registered name or an edgegate adapt directory")
    p.add_argument("manifest")
    args = p.parse_args()
    torch.set_num_threads(1)
    wm = WhisperModel(args.model, threads=1)
    entries = read_manifest(args.manifest)
    for label, kinds in PROBES.items():
        mask = [not (n.startswith("decoder.") and n.rsplit(".", 1)[-1] in kinds) for n in wm.model.gate_names]
        errors, words = manifest_word_errors(
            entries, lambda e, m=mask: wm.transcribe_text(e.audio, language=e.lang, task=e.task, mask=m).text)
        print(json.dumps({"probe": label, "skipped": mask.count(False), "errors": errors, "words": words}),
              flush=True)


if __name__ == "__main__":
    main()
