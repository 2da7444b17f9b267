#!/usr/bin/env bash
# Reproduce the shipped gate sets for whisper-base (edgegate/assets/whisper-base{,-decoder}) and the
# adaptation x scope matrix of docs/training.md (round 2).
#
#   bash benchmarks/train_shipped_predictor.sh [DATA_DIR] [RUN_DIR]
#
# Stages (times measured on the 2-core dev box, 1 thread per process, 2-3 processes at once):
# 0. corpora: espeak-ng en/de/es/fr/it x transcribe/translate, 30 per pair (seed 1) + held-out
#    (seed 2); Kokoro-82M 12 per pair (seed 3) + held-out 4 per pair (seed 4); LibriVox manifest
#    (~1 min espeak, ~13 min Kokoro). Training uses espeak + Kokoro (378 utterances).
# 1. scope both, encoder context = audio + 250 positions (32 made dense base loop on short clips),
#    ranking seeded by the per-module ablation pass, 8 utterances per step:
#    skip-adapters rank 32, 200 steps (~15 min); none, 150 steps (~12 min); lora rank 8, 200 steps (~25 min)
# 2. scope decoder, full 30-s context, encoder output cached: none 200 steps (~10 min), skip-adapters
#    rank 32 300 steps (~12 min), full fine-tuning (adapt-lr 3e-5, KL 1) 300 steps (~24 min)
# 3. ship both/skip-adapters as whisper-base and decoder/skip-adapters as whisper-base-decoder
#    (predictor + fp16 adapters + gates.json), then the matrix: every gate set at budgets 0, 0.25,
#    0.5, 0.7 on LibriVox and the Kokoro held-out set in one run (benchmarks/bench_gates_matrix.py, ~15 min)
# Set SKIP_EVAL=1 to stop after the copy.
set -euo pipefail
DATA=${1:-/work/gates_data}
RUN=${2:-/work/gates_runs}
cd "$(dirname "$0")/.."
TRAIN=(python -m edgegate.commands.train_gates)
COMMON=(--model whisper-base --batch-size 8 --lr 3e-3 --warmup 10 --alpha 8 --tau 2,0.3 --max-tokens 64 --seed 0
        --threads 1 --log-every 5 --checkpoint-every 25 --no-progress --target-range 0,0.7)

# 0. data
[[ -f "$DATA/train/manifest.jsonl" ]] || python benchmarks/train_corpus.py --out "$DATA"
[[ -f "$DATA/kokoro/manifest.jsonl" ]] || python benchmarks/train_kokoro_corpus.py --out "$DATA/kokoro" --n 12 --seed 3
[[ -f "$DATA/kokoro_heldout/manifest.jsonl" ]] || \
  python benchmarks/train_kokoro_corpus.py --out "$DATA/kokoro_heldout" --n 4 --seed 4
python - "$DATA" <<'PY'
import sys
from edgegate.data.manifest import read_manifest, write_manifest
d = sys.argv[1]
train = read_manifest(f"{d}/train/manifest.jsonl") + read_manifest(f"{d}/kokoro/manifest.jsonl")
write_manifest(f"{d}/mixed.jsonl", train)
seen = {e.extra.get("source_text") or e.text for e in train}
held = [e for e in read_manifest(f"{d}/kokoro_heldout/manifest.jsonl") if (e.extra.get("source_text") or e.text) not in seen]
write_manifest(f"{d}/kokoro_heldout/heldout_kokoro.jsonl", held)
PY

# 1. scope both (audio + 250 positions)
BOTH=(--manifest "$DATA/mixed.jsonl" --scope both --audio-ctx 250 --target-power 1.5 "${COMMON[@]}")
"${TRAIN[@]}" --out "$RUN/both_sa" --adapt skip-adapters --adapter-rank 32 --steps 200 "${BOTH[@]}"
"${TRAIN[@]}" --out "$RUN/both_none" --adapt none --steps 150 "${BOTH[@]}"
"${TRAIN[@]}" --out "$RUN/both_lora" --adapt lora --lora-rank 8 --adapt-lr 3e-4 --steps 200 --save-dtype float32 \
  "${BOTH[@]}"

# 2. scope decoder (full context)
DEC=(--manifest "$DATA/mixed.jsonl" --scope decoder --audio-ctx none "${COMMON[@]}")
"${TRAIN[@]}" --out "$RUN/dec_none" --adapt none --steps 200 "${DEC[@]}"
"${TRAIN[@]}" --out "$RUN/dec_sa" --adapt skip-adapters --adapter-rank 32 --steps 300 "${DEC[@]}"
"${TRAIN[@]}" --out "$RUN/dec_full" --adapt full --adapt-lr 3e-5 --kl-weight 1 --steps 300 --save-dtype float32 \
  "${DEC[@]}"

# 3. ship and evaluate
for pair in "both_sa:whisper-base" "dec_sa:whisper-base-decoder"; do
  src=${pair%%:*}; dst=edgegate/assets/${pair##*:}
  mkdir -p "$dst"
  cp "$RUN/$src/predictor.safetensors" "$RUN/$src/adapters.safetensors" "$RUN/$src/gates.json" "$dst/"
done
if [[ "${SKIP_EVAL:-0}" != "1" ]]; then
  python benchmarks/bench_gates_matrix.py --gates decoder/none="$RUN/dec_none" \
    --gates decoder/skip-adapters="$RUN/dec_sa" --gates decoder/full="$RUN/dec_full" \
    --gates both/none="$RUN/both_none" --gates both/skip-adapters="$RUN/both_sa" --gates both/lora="$RUN/both_lora" \
    --manifest librivox="$DATA/librivox.jsonl" --manifest kokoro_heldout="$DATA/kokoro_heldout/heldout_kokoro.jsonl" \
    --budgets 0,0.25,0.5,0.7 --threads 1 --jobs 2 --no-progress
fi
