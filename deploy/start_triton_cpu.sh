#!/usr/bin/env bash
# The triton-cpu service of the cpu profile (docker-compose.yml), inside the image from deploy/Dockerfile.cpu:
# download the checkpoint once, fill the cpu repository (our agent + the CPU engine as `tensorrt_llm`), and run the
# CPU tritonserver from the nvidia-pytriton wheel in the foreground (deploy/triton_launcher.py).
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

"$here/download_checkpoint.sh" "$model" "$checkpoint_dir" "${HF_REVISION:-main}"

configure_args=(--profile cpu --output "$repository" --force)
[[ -n "${CONFIGURE_VALUES:-}" ]] && configure_args+=(--values "$CONFIGURE_VALUES")
[[ -n "${MCP_SERVERS_FILE:-}" ]] && configure_args+=(--set "mcp_servers=$MCP_SERVERS_FILE")
python -m deploy.configure_repository "${configure_args[@]}" \
    --set "tokenizer_dir=$checkpoint_dir" \
    --set "model_dir=$checkpoint_dir" \
    "${tool_args[@]}"

exec python -m deploy.triton_launcher --model-repository "$repository" --host 0.0.0.0 \
    --http-port "${HTTP_PORT:-8000}" --grpc-port "${GRPC_PORT:-8001}" --metrics-port "${METRICS_PORT:-8002}"
