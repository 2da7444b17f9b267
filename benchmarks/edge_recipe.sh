#!/usr/bin/env bash
# The whole edge-adaptation recipe for whisper-base-edge, in one script (issue 10):
# corpus -> teacher cache + adaptation -> evaluation -> gate sets on the adapted model -> gate evaluation.
#
#   bash benchmarks/edge_recipe.sh [WORK_DIR]          # default ~/.cache/edgegate/adapt (outside the work tree)
#   STOP_AFTER=2000 bash benchmarks/edge_recipe.sh     # time-sliced: stop the adaptation with a checkpoint
#                                                      # after that step; rerun the same command to resume
#
# Every stage is resumable: the corpus builder skips finished wavs, the teacher cache skips cached
# utterances, the adaptation resumes from WORK/runs/edge1/checkpoint. Stage wall times go to
# WORK/recipe_times.tsv. Measured on the 2-core dev box (1 thread per process, 2 processes, other jobs
# sharing the cores): corpus 73 s + 26 s (espeak, 9,450 utterances, 6.4 h of speech), held-out 15 s;
# adaptation ~2 steps per 7 s in the first epoch (teacher on the full 30-s window, then the student).
set -euo pipefail
WORK=${1:-$HOME/.cache/edgegate/adapt}
STEPS=${STEPS:-20000}
cd "$(dirname "$0")/.."
REPO=$PWD
mkdir -p "$WORK/corpus" "$WORK/runs"
C=$WORK/corpus
RUN=$WORK/runs/edge1
timed() { local name=$1; shift; local t0; t0=$(date +%s); "$@"; echo -e "$name\t$(( $(date +%s) - t0 ))" >> "$WORK/recipe_times.tsv"; }

# 0. corpus: espeak-ng en/de/es/fr/it x transcribe/translate, voices +f5/+m7 held out of training
timed corpus_train edgegate corpus synth --out "$C/espeak_train" --per-pair 800 --seed 21 --exclude-voices +f5,+m7 --workers 1 --quiet
timed corpus_train2 edgegate corpus synth --out "$C/espeak_train2" --per-pair 250 --seed 22 --exclude-voices +f5,+m7 --workers 1 --quiet
timed heldout edgegate corpus synth --out "$C/espeak_heldout" --per-pair 20 --seed 31 --voices +f5,+m7 --workers 1 --quiet
timed heldout2 edgegate corpus synth --out "$C/espeak_heldout2" --per-pair 10 --seed 32 --voices +f5,+m7 --workers 1 --quiet
OMP_NUM_THREADS=1 timed heldout_kokoro edgegate corpus synth --out "$C/kokoro_heldout" --per-pair 3 --seed 33 \
  --engine kokoro --voices jm_kumo --workers 1 --quiet

# 1. adaptation: dynamic context (real frames + U[16, 64] positions), LayerDrop over the decoder, 2 processes
RESUME=()
[[ -f "$RUN/checkpoint/state.json" ]] && RESUME=(--resume)
STOP=()
[[ -n "${STOP_AFTER:-}" ]] && STOP=(--stop-after "$STOP_AFTER")
OMP_NUM_THREADS=1 timed adapt torchrun --nproc_per_node 2 --master_port 29611 -m edgegate.commands.adapt \
  --manifest "$C/espeak_train/manifest.jsonl" --manifest "$C/espeak_train2/manifest.jsonl" --out "$RUN" \
  --steps "$STEPS" --repeat 2 --lr 1e-5 --warmup 100 --margin 16,64 --drop-scope decoder --drop-max 0.6 \
  --p-dense 0.4 --checkpoint-every 250 --log-every 20 --threads 1 --no-progress "${RESUME[@]}" "${STOP[@]}"

# 2. is dynamic context free? (original vs adapted, full vs dynamic context, real clips + held-out set)
HELD=(--heldout "$C/espeak_heldout/manifest.jsonl" --heldout "$C/espeak_heldout2/manifest.jsonl"
      --heldout "$C/kokoro_heldout/manifest.jsonl")
TRAIN=(--train-manifest "$C/espeak_train/manifest.jsonl" --train-manifest "$C/espeak_train2/manifest.jsonl")
timed eval_context python "$REPO/benchmarks/bench_edge_adaptation.py" --edge "$RUN" "${HELD[@]}" "${TRAIN[@]}"
