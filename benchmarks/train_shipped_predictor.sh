#!/usr/bin/env bash
# Reproduce the shipped gate sets for whisper-base (edgegate/assets/whisper-base{,-decoder}).
#
#   bash benchmarks/train_shipped_predictor.sh [DATA_DIR] [RUN_DIR]
#
# Stages (times measured on the 2-core dev box, shared with other jobs; see docs/training.md):
# 0. corpora: espeak-ng en/de/es/fr/it x transcribe/translate, 30 per pair (seed 1) + held-out
#    (seed 2); Kokoro-82M 12 per pair (seed 3) + held-out 4 per pair (seed 4); LibriVox manifest
#    (~1 min espeak, ~13 min Kokoro)
# 1. scope both, skip adapters rank 32, encoder context = audio + 32 positions, 500 steps x 8
#    utterances on the espeak corpus, 2 processes x 1 thread (gloo DDP)            (~26 min)
# 2. continue (--resume) to step 750 on espeak + Kokoro with targets skewed to low budgets
#    (--target-power 2)                                                           (~14 min)
# 3. scope decoder (encoder output cached once per utterance), 300 steps, 1 process  (~6 min)
# 4. copy predictor + fp16 adapters + gates.json into edgegate/assets, evaluate at budgets
#    0, 0.1, 0.25, 0.5 on LibriVox, the Kokoro and the espeak held-out sets
# Set SKIP_EVAL=1 to stop after stage 4's copy.
set -euo pipefail
DATA=${1:-/work/gates_data}
RUN=${2:-/work/gates_runs}
cd "$(dirname "$0")/.."
TRAIN=(python -m edgegate.commands.train_gates)
DDP=(torchrun --nproc_per_node 2 -m edgegate.commands.train_gates)
COMMON=(--model whisper-base --adapt skip-adapters --adapter-rank 32 --audio-ctx 32 --batch-size 8 --lr 3e-3
        --warmup 10 --alpha 8 --tau 2,0.3 --max-tokens 64 --seed 0 --threads 1 --log-every 5 --no-progress)

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

# 1 + 2. scope both
"${DDP[@]}" --manifest "$DATA/train/manifest.jsonl" --out "$RUN/both" --scope both --steps 500 \
  --target-range 0,0.5 --checkpoint-every 20 "${COMMON[@]}"
"${DDP[@]}" --manifest "$DATA/mixed.jsonl" --out "$RUN/both" --scope both --steps 750 --resume \
  --target-range 0,0.5 --target-power 2 --checkpoint-every 25 "${COMMON[@]}"

# 3. scope decoder
"${TRAIN[@]}" --manifest "$DATA/train/manifest.jsonl" --out "$RUN/decoder" --scope decoder --steps 300 \
  --target-range 0,0.6 --checkpoint-every 25 "${COMMON[@]}"

# 4. ship and evaluate
for pair in "both:whisper-base" "decoder:whisper-base-decoder"; do
  src=${pair%%:*}; dst=edgegate/assets/${pair##*:}
  mkdir -p "$dst"
  cp "$RUN/$src/predictor.safetensors" "$RUN/$src/adapters.safetensors" "$RUN/$src/gates.json" "$dst/"
done
if [[ "${SKIP_EVAL:-0}" != "1" ]]; then
  for g in both decoder; do
    python -m edgegate.commands.eval --gates "$RUN/$g" --budgets 0,0.1,0.25,0.5 --threads 1 --no-progress \
      --manifest "$DATA/librivox.jsonl" --manifest "$DATA/kokoro_heldout/heldout_kokoro.jsonl" \
      --manifest "$DATA/heldout/heldout.jsonl" --out "benchmarks/results/gates_eval_$g"
  done
fi
