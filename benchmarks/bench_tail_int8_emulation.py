"""Is the context tail's int8 miss a mismatch between fp32 padding K/V and int8 frames? (docs/adaptation.md)

PyTorch emulation of an int8 bundle: dynamic int8 ``nn.Linear`` (weights per tensor, activations per call).
Three rows, alternated item by item on the held-out items of the chosen language/task groups:

- ``q/full``: int8, full 30-s context;
- ``q/dyn_fp32pad``: int8 at real length + margin, padding K/V computed by the fp32 model (what a bundle bakes in);
- ``q/dyn_int8pad``: the same, padding K/V computed by the int8 model itself.

    python benchmarks/bench_tail_int8_emulation.py --groups fr/transcribe,it/translate --heldout H.jsonl
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from bench_edge_adaptation import load_sets, run_items, score_set
from common import write_json_atomic

RESULTS = Path(__file__).resolve().parent / "results" / "edge_tail_int8_emulation.json"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--heldout", action="append", required=True, help="held-out manifest (repeatable)")
    ap.add_argument("--groups", default="fr/transcribe,it/translate", help="lang/task pairs to run")
    ap.add_argument("--model", default="whisper-base-edge")
    ap.add_argument("--margin", type=int, default=64)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    import torch
    from torch import nn

    from edgegate.transcriber import WhisperModel

    torch.set_num_threads(1)
    groups = set(args.groups.split(","))
    held = load_sets(argparse.Namespace(heldout=args.heldout, train_manifest=[], limit=None)).get("synth", [])
    items = [it for it in held if f"{it['lang']}/{it['task']}" in groups]
    if not items:
        raise SystemExit(f"no held-out items in groups {sorted(groups)}")
    fp32_pad = WhisperModel(args.model, threads=1)
    fp32_pad.model.padding_kv()  # computed before quantising: the bundle's constants
    torch.ao.quantization.quantize_dynamic(fp32_pad.model, {nn.Linear}, dtype=torch.qint8, inplace=True)
    int8_pad = WhisperModel(args.model, threads=1)
    torch.ao.quantization.quantize_dynamic(int8_pad.model, {nn.Linear}, dtype=torch.qint8, inplace=True)
    int8_pad.model.forget_padding_states()
    rows = {"q/full": (fp32_pad, None), "q/dyn_fp32pad": (fp32_pad, args.margin),
            "q/dyn_int8pad": (int8_pad, args.margin)}
    max_tokens = fp32_pad.model.dims.n_text_ctx // 2
    out = run_items(rows, items, max_tokens, "int8 emulation")
    report = {"model": args.model, "margin": args.margin, "groups": sorted(groups), "load_average": os.getloadavg(),
              "rows": {k: score_set(items, v) for k, v in out.items()}, "outputs": out}
    print("| row | word errors | loops | " + " | ".join(sorted(groups)) + " |")
    print("|---|---|---|" + "---|" * len(groups))
    for k, v in report["rows"].items():
        cells = [str(v["groups"][g].get("wer", v["groups"][g].get("bleu"))) for g in sorted(groups)]
        print(f"| {k} | {v['word_errors']} | {v['loops']} | " + " | ".join(cells) + " |")
    write_json_atomic(args.out, report)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
