#!/usr/bin/env bash
# The triton service of the gpu profile (docker-compose.yml), inside the image from deploy/Dockerfile:
# fetch the pinned stock models, fill the repository for this engine, and run tritonserver in the foreground.
#
# Environment: HF_MODEL (default NousResearch/Hermes-2-Pro-Llama-3-8B) and the build settings TRTLLM_DTYPE,
# TP_SIZE (1), MAX_BATCH_SIZE (64), MAX_SEQ_LEN (8192), MAX_INPUT_LEN (MAX_SEQ_LEN - 1024) name the checkpoint and
# engine folders the engine-build service wrote (deploy/model_paths.sh); CHECKPOINT_DIR / ENGINE_DIR override them.
# TOOL_MODULES (function_calling_agent.tools.finance) and TOOL_PATH (folders of your tool modules, e.g. the mounted
# /tools; docs/tools.md) set the tools. TRTLLM_SOURCES_DIR (/trtllm-sources), MODEL_REPOSITORY_DIR
# (/tmp/model_repository), CONFIGURE_VALUES (an optional values file for configure_repository),
# HTTP_PORT/GRPC_PORT/METRICS_PORT (8000/8001/8002), MCP_SERVERS_FILE (optional: the agent's mcp_servers file,
# docs/mcp.md).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$(dirname "$here")"
# shellcheck source=deploy/model_paths.sh
source "$here/model_paths.sh"
resolve_model_paths
tp_size="${TP_SIZE:-1}"
repository="${MODEL_REPOSITORY_DIR:-/tmp/model_repository}"

[[ -f "$ENGINE_DIR/config.json" ]] || {
    echo "start_triton_gpu: error: no engine in $ENGINE_DIR: run the engine-build service first (same HF_MODEL and build settings)" >&2
    exit 1
}
tool_args=(--set "tool_modules=${TOOL_MODULES:-function_calling_agent.tools.finance}")
if [[ -n "${TOOL_PATH:-}" ]]; then
    for dir in ${TOOL_PATH//:/ }; do
        [[ -d "$dir" ]] || { echo "start_triton_gpu: error: TOOL_PATH folder $dir does not exist (mount your tools folder there)" >&2; exit 1; }
    done
    tool_args+=(--set "tool_path=$TOOL_PATH")
fi

# Guided decoding (XGrammar) lets tool_choice "required" / a named function constrain a turn (README "OpenAI-compatible
# endpoint"). TensorRT-LLM's engine needs the tokenizer's XGrammar info for it; made here as TensorRT-LLM's
# examples/generate_xgrammar_tokenizer_info.py makes it. Best effort: without it those tool_choice settings get a 400
# that says so, and everything else serves. GUIDED_DECODING=off skips it.
guided_args=()
if [[ "${GUIDED_DECODING:-on}" != off ]]; then
    info="${XGRAMMAR_INFO_DIR:-/tmp/xgrammar}/xgrammar_tokenizer_info.json"
    mkdir -p "$(dirname "$info")"
    if python3 - "$CHECKPOINT_DIR" "$info" <<'PY'
import json
import sys

from transformers import AutoTokenizer
from tensorrt_llm.llmapi.tokenizer import _xgrammar_tokenizer_info

with open(sys.argv[2], "w", encoding="utf-8") as f:
    json.dump(_xgrammar_tokenizer_info(AutoTokenizer.from_pretrained(sys.argv[1])), f)
PY
    then
        guided_args=(--set guided_decoding_backend=xgrammar --set "xgrammar_tokenizer_info_path=$info")
    else
        echo "start_triton_gpu: warning: could not make the XGrammar tokenizer info; serving without guided decoding (tool_choice required/named will be refused)" >&2
    fi
fi

stock="$("$here/fetch_stock_models.sh" "${TRTLLM_SOURCES_DIR:-/trtllm-sources}" | tail -n 1)"
configure_args=(
    --profile gpu
    --stock-dir "$stock/triton_backend/all_models/inflight_batcher_llm"
    --output "$repository" --force
)
[[ -n "${CONFIGURE_VALUES:-}" ]] && configure_args+=(--values "$CONFIGURE_VALUES")
[[ -n "${MCP_SERVERS_FILE:-}" ]] && configure_args+=(--set "mcp_servers=$MCP_SERVERS_FILE")
python3 -m deploy.configure_repository "${configure_args[@]}" \
    --set "tokenizer_dir=$CHECKPOINT_DIR" \
    --set "engine_dir=$ENGINE_DIR" \
    --set "triton_max_batch_size=${MAX_BATCH_SIZE:-64}" \
    --set "max_context_tokens=${MAX_SEQ_LEN:-8192}" \
    "${tool_args[@]}" "${guided_args[@]}"

endpoints=(--http-port "${HTTP_PORT:-8000}" --grpc-port "${GRPC_PORT:-8001}" --metrics-port "${METRICS_PORT:-8002}")
if [[ "$tp_size" == 1 ]]; then
    exec tritonserver --model-repository="$repository" --backend-config=python,thread-pool-size=128 "${endpoints[@]}"
fi

# Tensor parallel: one tritonserver per rank under MPI (leader mode). Rank 0 serves every model and the endpoints;
# the other ranks load only the engine and join its MPI world.
command=(mpirun --allow-run-as-root)
for ((rank = 0; rank < tp_size; rank++)); do
    ((rank > 0)) && command+=(:)
    command+=(-n 1 tritonserver --model-repository="$repository" --disable-auto-complete-config
              "--backend-config=python,shm-region-prefix-name=prefix${rank}_")
    if ((rank == 0)); then
        command+=(--backend-config=python,thread-pool-size=128 "${endpoints[@]}")
    else
        command+=(--model-control-mode=explicit --load-model=tensorrt_llm
                  --allow-http=false --allow-grpc=false --allow-metrics=false)
    fi
done
exec "${command[@]}"
