#!/usr/bin/env bash
# Download a Hugging Face model repository into DIR once; later runs skip it.
# HF_TOKEN from the environment is honoured by the Hugging Face client (gated or private models).
#
# usage: deploy/download_checkpoint.sh MODEL_ID DIR [REVISION]
set -euo pipefail

model="${1:?usage: download_checkpoint.sh MODEL_ID DIR [REVISION]}"
dir="${2:?usage: download_checkpoint.sh MODEL_ID DIR [REVISION]}"
revision="${3:-main}"
marker="$dir/.download-complete"
want="model=$model revision=$revision"

log() { printf 'download_checkpoint: %s\n' "$*" >&2; }

if [[ -f "$marker" ]]; then
    have="$(cat "$marker")"
    if [[ "$have" == "$want" ]]; then
        log "already downloaded: $model ($revision) in $dir"
        exit 0
    fi
    # Refuse rather than mix two models' files in one directory.
    log "error: $dir holds '$have', not '$want': choose another directory (CHECKPOINT_DIR / --checkpoint-dir)"
    exit 1
fi

mkdir -p "$dir"
# Only what conversion and tokenization read: Meta's original/ consolidated weights and GGUF copies are skipped.
exclude=("original/*" "*.pth" "*.gguf")
log "downloading $model ($revision) into $dir"
if command -v hf >/dev/null; then
    hf download "$model" --revision "$revision" --local-dir "$dir" --exclude "${exclude[@]}"
elif command -v huggingface-cli >/dev/null; then
    huggingface-cli download "$model" --revision "$revision" --local-dir "$dir" --exclude "${exclude[@]}"
else
    log "error: neither 'hf' nor 'huggingface-cli' is installed (pip install huggingface_hub)"
    exit 1
fi
[[ -f "$dir/config.json" ]] || { log "error: $dir/config.json missing after download"; exit 1; }
printf '%s' "$want" > "$marker"
log "done: $dir"
