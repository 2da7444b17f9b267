"""Prototype (PyTorch only, not in the SDK): gated greedy decoding whose end of text is checked by the dense decoder.

At budget 0.5 about half the word errors of the gated edge decoder are words missing at the end: it emits
<|endoftext|> early. Here, when the gated decoder proposes <|endoftext|>, the dense decoder (all modules, its own
cross K/V of the same encoder output) replays the tokens it has not seen in one multi-token pass and, if its
own choice differs, that choice is taken. Transcribe items only (word errors per language).

    python benchmarks/end_check_prototype.py GATES MODEL MANIFEST --budgets 0.5 [--check]

Session 9 (docs/adaptation.md): m2 with its own ms set at 0.5, real clips 45 -> 31 word errors, natural-voice
transcribe items 618 -> 580.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from common import manifest_word_errors

from edgegate import transcriber
from edgegate.data.manifest import read_manifest
from edgegate.gated import load_gated
from edgegate.longform import ModelPorts

COUNTS = {"checks": 0, "overruled": 0}


class EndChecked:
    """A DecoderState: the gated state's logits, except where it proposes the end and the dense state disagrees."""

    def __init__(self, gated, make_dense, eot: int):
        self.gated, self.make_dense, self.eot = gated, make_dense, eot
        self.dense, self.unseen = None, []

    def step(self, tokens: np.ndarray) -> np.ndarray:
        logits = self.gated.step(tokens)
        if tokens.shape[0] != 1:  # sampling fallback with best_of: left gated
            return logits
        self.unseen.append(tokens)
        if int(np.argmax(logits[0])) != self.eot:
            return logits
        self.dense = self.dense or self.make_dense()
        dense = self.dense.step(np.concatenate(self.unseen, axis=1))
        self.unseen = []
        COUNTS["checks"] += 1
        if int(np.argmax(dense[0])) != self.eot:
            COUNTS["overruled"] += 1
            return dense
        return logits

    def reorder(self, index: np.ndarray) -> None:
        self.gated.reorder(index)
        if self.dense is not None:
            self.dense.reorder(index)


def end_checked_ports(wm: transcriber.WhisperModel, mask) -> ModelPorts:
    gates, dense = wm.mask_to_gates(mask), wm.mask_to_gates(None)

    def encode(mel: np.ndarray):
        with torch.inference_mode():
            xa = wm.model.embed_audio(torch.from_numpy(np.ascontiguousarray(mel)), gates)
            return wm.model.cross_kv(xa, gates), wm.model.cross_kv(xa, dense)

    def make_state(cross):
        return EndChecked(transcriber.TorchDecoderState(wm.model, cross[0], gates),
                          lambda: transcriber.TorchDecoderState(wm.model, cross[1], dense), wm.tokenizer.eot)

    dims = wm.model.dims
    return ModelPorts(encode, make_state, wm.tokenizer, dims.n_vocab, dims.n_text_ctx, None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("gates")
    p.add_argument("model")
    p.add_argument("manifest")
    p.add_argument("--budgets", default="0.5")
    p.add_argument("--check", action="store_true", help="check the end with the dense decoder")
    args = p.parse_args()
    torch.set_num_threads(1)
    wm = transcriber.WhisperModel(args.model, threads=1)
    if args.check:  # this model's gated requests only (GatedWhisper asks wm.ports for each plan)
        plain = wm.ports
        wm.ports = lambda mask=None: plain(mask) if mask is None or all(mask) else end_checked_ports(wm, mask)
    gw = load_gated(args.gates, model=wm)
    entries = [e for e in read_manifest(args.manifest) if e.task == "transcribe"]
    for b in (float(x) for x in args.budgets.split(",")):
        errors, words = manifest_word_errors(
            entries, lambda e, b=b: gw.transcribe_text(e.audio, language=e.lang, task=e.task, budget=b).text)
        print(json.dumps({"budget": b, "check": args.check, "errors": errors, "words": words, **COUNTS}), flush=True)


if __name__ == "__main__":
    main()
