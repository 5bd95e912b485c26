#!/usr/bin/env bash
# Build the TensorRT-LLM engine the GPU deployment serves, inside the pinned NGC container (deploy/versions.env):
#   1. download the Hugging Face checkpoint (Hermes-2-Pro-Llama-3-8B unless --model says otherwise),
#   2. convert it with the pinned release's examples/models/core/llama/convert_checkpoint.py,
#   3. trtllm-build it with limits sized for an agent: 8k context, paged context FMHA (KV-cache reuse and chunked
#      context), in-flight batching.
# Each step records the parameters it ran with in a marker file and is skipped when they match, so re-running the
# engine-build service is cheap. Any Llama-family model that speaks the Hermes (ChatML + <tool_call>) format works.
#
# Flags (environment variable in brackets, flag wins):
#   --model ID            [HF_MODEL]        default NousResearch/Hermes-2-Pro-Llama-3-8B
#   --revision REV        [HF_REVISION]     default main
#   --dtype T             [TRTLLM_DTYPE]    bfloat16 | float16, default bfloat16
#   --tp-size N           [TP_SIZE]         tensor parallel GPUs, default 1
#   --max-batch-size N    [MAX_BATCH_SIZE]  default 64
#   --max-seq-len N       [MAX_SEQ_LEN]     prompt + output tokens, default 8192 (Llama-3 context)
#   --max-input-len N     [MAX_INPUT_LEN]   default max-seq-len - 1024
#   --max-num-tokens N    [MAX_NUM_TOKENS]  tokens per engine iteration, default 8192
#   --checkpoint-dir DIR  [CHECKPOINT_DIR]  default /checkpoints/<model name>       (deploy/model_paths.sh)
#   --output DIR          [ENGINE_DIR]      default /engines/<model name>/<dtype>-tp<N>-bs<B>-seq<S>-in<I>
#   --work-dir DIR        [ENGINE_WORK_DIR] converted checkpoints, default /engines/.work
#   --sources-dir DIR     [TRTLLM_SOURCES_DIR] TensorRT-LLM sources cache, default /trtllm-sources
# HF_TOKEN is passed to the Hugging Face client for gated models.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
# shellcheck source=deploy/versions.env
source "$root/deploy/versions.env"
# shellcheck source=deploy/model_paths.sh
source "$root/deploy/model_paths.sh"

model="${HF_MODEL:-$DEFAULT_GPU_MODEL}"
revision="${HF_REVISION:-main}"
dtype="${TRTLLM_DTYPE:-bfloat16}"
tp_size="${TP_SIZE:-1}"
max_batch_size="${MAX_BATCH_SIZE:-64}"
max_seq_len="${MAX_SEQ_LEN:-8192}"
max_input_len="${MAX_INPUT_LEN:-}"
max_num_tokens="${MAX_NUM_TOKENS:-8192}"
checkpoint_dir="${CHECKPOINT_DIR:-}"
engine_dir="${ENGINE_DIR:-}"
work_dir="${ENGINE_WORK_DIR:-/engines/.work}"
sources_dir="${TRTLLM_SOURCES_DIR:-/trtllm-sources}"

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'; }
die() { printf 'build_engine: error: %s\n' "$*" >&2; exit 1; }
log() { printf 'build_engine: %s\n' "$*" >&2; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --model) model="$2"; shift 2 ;;
        --revision) revision="$2"; shift 2 ;;
        --dtype) dtype="$2"; shift 2 ;;
        --tp-size) tp_size="$2"; shift 2 ;;
        --max-batch-size) max_batch_size="$2"; shift 2 ;;
        --max-seq-len) max_seq_len="$2"; shift 2 ;;
        --max-input-len) max_input_len="$2"; shift 2 ;;
        --max-num-tokens) max_num_tokens="$2"; shift 2 ;;
        --checkpoint-dir) checkpoint_dir="$2"; shift 2 ;;
        --output) engine_dir="$2"; shift 2 ;;
        --work-dir) work_dir="$2"; shift 2 ;;
        --sources-dir) sources_dir="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done

case "$dtype" in bfloat16|float16) ;; *) die "--dtype must be bfloat16 or float16, not '$dtype'" ;; esac
for pair in "tp-size=$tp_size" "max-batch-size=$max_batch_size" "max-seq-len=$max_seq_len" \
            "max-num-tokens=$max_num_tokens"; do
    [[ "${pair#*=}" =~ ^[1-9][0-9]*$ ]] || die "--${pair%%=*} must be a positive integer, not '${pair#*=}'"
done
max_input_len="${max_input_len:-$((max_seq_len - 1024))}"
[[ "$max_input_len" =~ ^[1-9][0-9]*$ ]] || die "--max-input-len must be a positive integer, not '$max_input_len'"
((max_input_len < max_seq_len)) || die "--max-input-len ($max_input_len) must be below --max-seq-len ($max_seq_len)"

name="$(model_name_of "$model")"
checkpoint_dir="${checkpoint_dir:-$(checkpoint_dir_for "$model")}"
engine_dir="${engine_dir:-$(engine_dir_for "$model" "$dtype" "$tp_size" "$max_batch_size" "$max_seq_len" "$max_input_len")}"
converted_dir="$work_dir/$name-$dtype-tp$tp_size"
marker_name=".build-step"

# step_done DIR PARAMS: the step that writes DIR already ran with PARAMS.
step_done() { [[ -f "$1/$marker_name" && "$(cat "$1/$marker_name")" == "$2" ]]; }
mark_done() { printf '%s' "$2" > "$1/$marker_name.tmp" && mv "$1/$marker_name.tmp" "$1/$marker_name"; }

# 1. Checkpoint.
"$root/deploy/download_checkpoint.sh" "$model" "$checkpoint_dir" "$revision"

# 2. Conversion to a TensorRT-LLM checkpoint.
convert_params="trtllm=$TRTLLM_VERSION model=$model revision=$revision dtype=$dtype tp_size=$tp_size"
if step_done "$converted_dir" "$convert_params"; then
    log "conversion already done: $converted_dir"
else
    sources="$("$root/deploy/fetch_stock_models.sh" "$sources_dir" | tail -n 1)"
    convert="$sources/examples/models/core/llama/convert_checkpoint.py"
    [[ -f "$convert" ]] || die "$convert not found in the TensorRT-LLM $TRTLLM_GIT_TAG sources"
    rm -rf "$converted_dir"
    mkdir -p "$converted_dir"
    log "converting $checkpoint_dir -> $converted_dir ($dtype, tp $tp_size)"
    python3 "$convert" --model_dir "$checkpoint_dir" --output_dir "$converted_dir" \
        --dtype "$dtype" --tp_size "$tp_size" --workers "$tp_size"
    mark_done "$converted_dir" "$convert_params"
fi

# 3. Engine. Paged context FMHA is what lets the runtime reuse the KV cache of a shared prompt prefix
# (enable_kv_cache_reuse) and chunk long prompts (enable_chunked_context).
build_args=(
    --checkpoint_dir "$converted_dir"
    --output_dir "$engine_dir"
    --max_batch_size "$max_batch_size"
    --max_input_len "$max_input_len"
    --max_seq_len "$max_seq_len"
    --max_num_tokens "$max_num_tokens"
    --kv_cache_type paged
    --remove_input_padding enable
    --context_fmha enable
    --use_paged_context_fmha enable
    --gpt_attention_plugin auto
    --gemm_plugin auto
    --workers "$tp_size"
)
build_params="$convert_params ${build_args[*]:2}"
if step_done "$engine_dir" "$build_params" && [[ -f "$engine_dir/config.json" ]]; then
    log "engine already built: $engine_dir"
else
    rm -rf "$engine_dir"
    mkdir -p "$engine_dir"
    log "trtllm-build -> $engine_dir"
    trtllm-build "${build_args[@]}"
    [[ -f "$engine_dir/config.json" ]] || die "trtllm-build wrote no config.json to $engine_dir"
    mark_done "$engine_dir" "$build_params"
fi

log "engine: $engine_dir"
log "tokenizer: $checkpoint_dir"
