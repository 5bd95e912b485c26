#!/usr/bin/env bash
# Fetch, at the TensorRT-LLM tag pinned in deploy/versions.env, the parts of that repository a GPU deployment uses:
#   triton_backend/all_models/inflight_batcher_llm  the stock preprocessing/tensorrt_llm/postprocessing/ensemble/BLS
#   triton_backend/scripts                          launch_triton_server.py, for reference
#   examples/models/core/llama                      convert_checkpoint.py
# The NGC trtllm image has copies under /app (Triton's r25.10 QA uses /app/all_models and /app/tools); fetching at
# the pinned tag instead keeps the templates and the converter of exactly that release, whatever the image's layout.
# A sparse, shallow clone into DEST/TensorRT-LLM-<tag>; skipped when already there. Never committed: these are
# fetched inside the pinned container so they always match the backend it runs.
#
# usage: deploy/fetch_stock_models.sh [DEST]      (default: $TRTLLM_SOURCES_DIR, else /trtllm-sources)
# Prints the clone's directory on the last line of stdout; progress goes to stderr.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=deploy/versions.env
source "$here/versions.env"

dest_root="${1:-${TRTLLM_SOURCES_DIR:-/trtllm-sources}}"
checkout="$dest_root/TensorRT-LLM-$TRTLLM_GIT_TAG"
stock_rel="triton_backend/all_models/inflight_batcher_llm"
paths=("$stock_rel" "triton_backend/scripts" "examples/models/core/llama")
stock_models=(preprocessing tensorrt_llm postprocessing ensemble tensorrt_llm_bls)
marker="$checkout/.fetched"
want="repo=$TRTLLM_GIT_REPO tag=$TRTLLM_GIT_TAG paths=${paths[*]}"

log() { printf 'fetch_stock_models: %s\n' "$*" >&2; }

verify() {
    local model
    for model in "${stock_models[@]}"; do
        if [[ ! -f "$checkout/$stock_rel/$model/config.pbtxt" ]]; then
            log "error: $checkout/$stock_rel/$model/config.pbtxt is missing"
            return 1
        fi
    done
}

if [[ -f "$marker" && "$(cat "$marker")" == "$want" ]] && verify; then
    log "already fetched: $checkout"
else
    command -v git >/dev/null || { log "error: git is required"; exit 1; }
    mkdir -p "$dest_root"
    tmp="$(mktemp -d "$dest_root/.fetch.XXXXXX")"
    trap 'rm -rf "$tmp"' EXIT
    log "sparse clone of $TRTLLM_GIT_REPO at $TRTLLM_GIT_TAG"
    export GIT_LFS_SKIP_SMUDGE=1
    git clone --quiet --depth 1 --branch "$TRTLLM_GIT_TAG" --filter=blob:none --no-checkout \
        "$TRTLLM_GIT_REPO" "$tmp/src"
    git -C "$tmp/src" sparse-checkout init --cone
    git -C "$tmp/src" sparse-checkout set "${paths[@]}"
    git -C "$tmp/src" checkout --quiet "$TRTLLM_GIT_TAG"
    printf '%s' "$want" > "$tmp/src/.fetched"
    rm -rf "$checkout"
    mv "$tmp/src" "$checkout"
    verify
    log "fetched into $checkout"
fi

echo "$checkout"
