#!/usr/bin/env bash
# Sourced by engine_build/build_engine.sh and deploy/start_triton_{gpu,cpu}.sh: the one place that names the folders a
# model's checkpoint and engine live in, from HF_MODEL and the build settings, so HF_MODEL alone picks a model.
#   checkpoint_dir_for MODEL_ID                       /checkpoints/<model name>
#   engine_dir_for MODEL_ID DTYPE TP BS SEQ IN        /engines/<model name>/<dtype>-tp<TP>-bs<BS>-seq<SEQ>-in<IN>
#   resolve_model_paths                               sets CHECKPOINT_DIR and ENGINE_DIR where they are empty, from
#                                                     HF_MODEL, TRTLLM_DTYPE, TP_SIZE, MAX_BATCH_SIZE, MAX_SEQ_LEN and
#                                                     MAX_INPUT_LEN with build_engine.sh's defaults
# The model name is the last part of the id (NousResearch/Hermes-2-Pro-Llama-3-8B -> Hermes-2-Pro-Llama-3-8B).
# Run directly, it prints the two folders for the current environment: HF_MODEL=org/model deploy/model_paths.sh

DEFAULT_GPU_MODEL="NousResearch/Hermes-2-Pro-Llama-3-8B"

model_name_of() {
    local id="${1%/}"
    printf '%s' "${id##*/}"
}

checkpoint_dir_for() {
    printf '/checkpoints/%s' "$(model_name_of "$1")"
}

engine_dir_for() {
    printf '/engines/%s/%s-tp%s-bs%s-seq%s-in%s' "$(model_name_of "$1")" "$2" "$3" "$4" "$5" "$6"
}

resolve_model_paths() {
    local model="${HF_MODEL:-$DEFAULT_GPU_MODEL}"
    local seq="${MAX_SEQ_LEN:-8192}"
    CHECKPOINT_DIR="${CHECKPOINT_DIR:-$(checkpoint_dir_for "$model")}"
    ENGINE_DIR="${ENGINE_DIR:-$(engine_dir_for "$model" "${TRTLLM_DTYPE:-bfloat16}" "${TP_SIZE:-1}" \
        "${MAX_BATCH_SIZE:-64}" "$seq" "${MAX_INPUT_LEN:-$((seq - 1024))}")}"
    export CHECKPOINT_DIR ENGINE_DIR
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    set -euo pipefail
    resolve_model_paths
    printf 'CHECKPOINT_DIR=%s\nENGINE_DIR=%s\n' "$CHECKPOINT_DIR" "$ENGINE_DIR"
fi
