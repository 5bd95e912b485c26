#!/usr/bin/env bash
# The triton-cpu service of the cpu profile (docker-compose.yml), inside the image from deploy/Dockerfile.cpu:
# fetch the model once, fill the cpu repository (our agent + a CPU engine as `tensorrt_llm`), and run the CPU
# tritonserver from the nvidia-pytriton wheel in the foreground (deploy/triton_launcher.py).
#
# Engines, as ./serve.sh: CPU_ENGINE=llamacpp (default) serves a 4-bit GGUF on llama.cpp: the model's official GGUF
# build and its tokenizer (cached in GGUF_CACHE_DIR, /checkpoints/gguf), or a local checkpoint in CHECKPOINT_DIR converted once
# (GGUF_QUANT, default Q4_K_M), or GGUF_FILE with its TOKENIZER_DIR; CPU_ENGINE=torch serves the checkpoint in
# CHECKPOINT_DIR on transformers/torch (float32).
#
# Environment: HF_MODEL (default Qwen/Qwen2.5-1.5B-Instruct, as ./serve.sh), HF_REVISION (main), CHECKPOINT_DIR
# (/checkpoints/<model name>, deploy/model_paths.sh), TOOL_MODULES (function_calling_agent.tools.finance) and
# TOOL_PATH (folders of your tool modules, e.g. the mounted /tools; docs/tools.md), MODEL_REPOSITORY_DIR
# (/tmp/model_repository), CONFIGURE_VALUES (optional values file), HTTP_PORT/GRPC_PORT/METRICS_PORT
# (8000/8001/8002). HF_TOKEN is honoured for gated models. MCP_SERVERS_FILE (optional): the agent's mcp_servers
# file (docs/mcp.md).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$(dirname "$here")"
# shellcheck source=deploy/model_paths.sh
source "$here/model_paths.sh"

model="${HF_MODEL:-Qwen/Qwen2.5-1.5B-Instruct}"
checkpoint_dir="${CHECKPOINT_DIR:-$(checkpoint_dir_for "$model")}"
repository="${MODEL_REPOSITORY_DIR:-/tmp/model_repository}"
tool_args=(--set "tool_modules=${TOOL_MODULES:-function_calling_agent.tools.finance}")
if [[ -n "${TOOL_PATH:-}" ]]; then
    for dir in ${TOOL_PATH//:/ }; do
        [[ -d "$dir" ]] || { echo "start_triton_cpu: error: TOOL_PATH folder $dir does not exist (mount your tools folder there)" >&2; exit 1; }
    done
    tool_args+=(--set "tool_path=$TOOL_PATH")
fi

case "${CPU_ENGINE:-llamacpp}" in
    llamacpp)
        if [[ -n "${GGUF_FILE:-}" ]]; then
            resolve_args=("$GGUF_FILE" --tokenizer "${TOKENIZER_DIR:?GGUF_FILE needs TOKENIZER_DIR, the tokenizer of its model}")
        elif [[ -n "${CHECKPOINT_DIR:-}" ]]; then
            "$here/download_checkpoint.sh" "$model" "$checkpoint_dir" "${HF_REVISION:-main}"
            resolve_args=("$checkpoint_dir")
        else
            resolve_args=("$model")  # the official GGUF build and the model's tokenizer, from the hub once
        fi
        resolved="$(python -m function_calling_agent.llamacpp_engine.resolve "${resolve_args[@]}" \
            --cache-dir "${GGUF_CACHE_DIR:-/checkpoints/gguf}" --quant "${GGUF_QUANT:-Q4_K_M}")"
        field() { python -c 'import json, sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$resolved" "$1"; }
        model_args=(--set engine=llamacpp --set "gguf_path=$(field gguf_path)" --set "tokenizer_dir=$(field tokenizer_dir)")
        ;;
    torch)
        "$here/download_checkpoint.sh" "$model" "$checkpoint_dir" "${HF_REVISION:-main}"
        model_args=(--set "tokenizer_dir=$checkpoint_dir" --set "model_dir=$checkpoint_dir")
        ;;
    *)
        echo "start_triton_cpu: error: CPU_ENGINE must be llamacpp or torch, got ${CPU_ENGINE}" >&2
        exit 1
        ;;
esac

configure_args=(--profile cpu --output "$repository" --force)
[[ -n "${CONFIGURE_VALUES:-}" ]] && configure_args+=(--values "$CONFIGURE_VALUES")
[[ -n "${MCP_SERVERS_FILE:-}" ]] && configure_args+=(--set "mcp_servers=$MCP_SERVERS_FILE")
python -m deploy.configure_repository "${configure_args[@]}" "${model_args[@]}" "${tool_args[@]}"

exec python -m deploy.triton_launcher --model-repository "$repository" --host 0.0.0.0 \
    --http-port "${HTTP_PORT:-8000}" --grpc-port "${GRPC_PORT:-8001}" --metrics-port "${METRICS_PORT:-8002}"
