#!/usr/bin/env bash
# edgegate on a Jetson: build the TensorRT engines once, then serve the local microphone.
#
# TensorRT engines are specific to the GPU and the TensorRT version, so they are built on the
# device (`edgegate build-engines BUNDLE`) and cached. This script builds them when no cache
# exists yet (or when TensorRT was upgraded since), then replaces itself with
# `edgegate live --bundle BUNDLE ...`, which prints one JSON line per utterance to the journal.
# Run by edgegate-live.service; also fine by hand.
#
# Settings (environment, e.g. from /etc/default/edgegate-live):
#   EDGEGATE_BUNDLE        bundle directory (required)
#   EDGEGATE_ENGINE_CACHE  engine cache directory (default: $EDGEGATE_BUNDLE/engines)
#   EDGEGATE_LANGUAGE      language code (default: en; empty = detect per utterance)
#   EDGEGATE_BUDGET        budget in [0, 1) (default: the bundle's device profile)
#   EDGEGATE_DEVICE        input device index or name (default: the system default input)
#   EDGEGATE_BIN           the edgegate executable (default: edgegate on PATH)
#   EDGEGATE_PYTHON        the Python edgegate runs on, to read the TensorRT version (default: python3)
#   EDGEGATE_LIVE_ARGS     extra arguments for edgegate live (e.g. "--vad energy --min-silence 0.6")
set -euo pipefail

log() { echo "edgegate-first-boot: $*" >&2; }

BUNDLE="${EDGEGATE_BUNDLE:?set EDGEGATE_BUNDLE to the bundle directory (see /etc/default/edgegate-live)}"
CACHE="${EDGEGATE_ENGINE_CACHE:-$BUNDLE/engines}"
EDGEGATE="${EDGEGATE_BIN:-edgegate}"
LANGUAGE="${EDGEGATE_LANGUAGE-en}"
STAMP="$CACHE/.built-for"

if [ ! -f "$BUNDLE/manifest.json" ]; then
    log "no bundle at $BUNDLE (manifest.json missing); copy one there or fix EDGEGATE_BUNDLE"
    exit 1
fi
if ! command -v "$EDGEGATE" >/dev/null 2>&1; then
    log "$EDGEGATE not found; pip install 'edgegate[tensorrt,audio]' or set EDGEGATE_BIN"
    exit 1
fi

# What the engines were built for: TensorRT version + GPU name. A change means a rebuild.
trt_version="$("${EDGEGATE_PYTHON:-python3}" -c 'import tensorrt; print(tensorrt.__version__)' 2>/dev/null || echo none)"
gpu="$(cat /proc/device-tree/model 2>/dev/null | tr -d '\0' || nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null || echo unknown)"
want="tensorrt=$trt_version gpu=$gpu"

have=""
if [ -f "$STAMP" ]; then have="$(cat "$STAMP")"; fi
if [ -d "$CACHE" ] && [ -n "$(ls -A "$CACHE" 2>/dev/null | grep -v '^\.built-for$' || true)" ] && [ "$have" = "$want" ]; then
    log "engine cache $CACHE is up to date ($want)"
else
    log "building TensorRT engines for $BUNDLE ($want); this takes a few minutes, once"
    mkdir -p "$CACHE"
    # One build at a time, even if the service restarts while a build runs.
    exec 9>"$CACHE/.lock"
    flock 9
    if EDGEGATE_ENGINE_CACHE="$CACHE" "$EDGEGATE" build-engines "$BUNDLE"; then
        echo "$want" > "$STAMP"
        log "engines built into $CACHE"
    else
        # Serve anyway: the runtime falls back to the profile's next backend (ONNX Runtime);
        # no stamp is written, so the next start tries the build again.
        log "building engines failed (exit $?); serving with the bundle's fallback backend"
    fi
    flock -u 9
fi

args=(live --bundle "$BUNDLE" --format jsonl)
if [ -n "$LANGUAGE" ]; then args+=(--language "$LANGUAGE"); fi
if [ -n "${EDGEGATE_BUDGET:-}" ]; then args+=(--budget "$EDGEGATE_BUDGET"); fi
if [ -n "${EDGEGATE_DEVICE:-}" ]; then args+=(--device "$EDGEGATE_DEVICE"); fi
# shellcheck disable=SC2206  # word splitting of the extra arguments is intended
if [ -n "${EDGEGATE_LIVE_ARGS:-}" ]; then args+=($EDGEGATE_LIVE_ARGS); fi

log "serving the microphone: $EDGEGATE ${args[*]}"
export EDGEGATE_ENGINE_CACHE="$CACHE"
exec "$EDGEGATE" "${args[@]}"
