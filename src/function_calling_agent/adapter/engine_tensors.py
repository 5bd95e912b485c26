"""The `tensorrt_llm` tensor contract as the agent speaks it: one `EngineRequest` to input arrays, and response
arrays back to an `EngineOutput`. Every engine transport (BLS and gRPC, `bls_engine` and `grpc_engine`) uses these
functions, so the tensor names, types and shapes live in one place.

Inputs (TensorRT-LLM's `tensorrt_llm` model; with `max_batch_size > 0` every input has a leading batch dim of 1):
  input_ids INT32 [1, L], input_lengths INT32 [1, 1], request_output_len INT32 [1, 1] (required);
  end_id, pad_id INT32 [1, 1]; streaming, exclude_input_in_output, return_perf_metrics BOOL [1, 1];
  sampling (temperature, runtime_top_k, runtime_top_p, random_seed|seed, penalties) [1, 1];
  bad_words_list, stop_words_list INT32 [1, 2, W] (ids, then cumulative end offsets padded with -1);
  guided_decoding_guide_type, guided_decoding_guide STRING [1, 1] (TRT-LLM >= 0.19 with a guided_decoding_backend;
  types json, json_schema, regex, ebnf_grammar).
Only inputs the engine declares are sent (an engine's config.pbtxt says which optional inputs it takes).

Outputs read: output_ids INT32 [1, 1, new] (streaming: only the new ids); prompt reuse from `prefix_reused_tokens`
INT32 [1, 1] (the CPU engine's, in tokens) or else TensorRT-LLM's `kv_cache_reused_blocks` INT32 [1, 1] (with
`return_perf_metrics`; in KV-cache blocks, converted with the engine's tokens per block, see `reused_tokens`).
"""

from __future__ import annotations

import json
import os
from typing import Callable, Iterable, Mapping, Optional

import numpy as np

from ..engine import EngineOutput, EngineRequest
from .contract import GUIDED_DECODING_INPUTS, SAMPLING_ENGINE_INPUTS

REQUIRED_INPUTS = ("input_ids", "input_lengths", "request_output_len")
# Outputs the agent reads, when the engine declares them: the ids, and how many prompt tokens it reused (in tokens,
# or in TensorRT-LLM's KV-cache blocks).
OUTPUTS = ("output_ids", "prefix_reused_tokens", "kv_cache_reused_blocks")
_SAMPLING_DTYPES = {"top_k": np.int32, "random_seed": np.uint64}


def words_tensor(words: Iterable[Iterable[int]]) -> np.ndarray:
    """TRT-LLM word-list format [1, 2, L]: concatenated ids, then cumulative end offsets padded with -1."""
    flat: list[int] = []
    offsets: list[int] = []
    for word in words:
        flat.extend(word)
        offsets.append(len(flat))
    width = max(len(flat), 1)
    array = np.full((1, 2, width), -1, dtype=np.int32)
    array[0, 0, :] = 0
    array[0, 0, : len(flat)] = flat
    array[0, 1, : len(offsets)] = offsets
    return array


def engine_inputs(request: EngineRequest, declared: frozenset) -> dict[str, np.ndarray]:
    """The input arrays for one engine turn, by tensor name, limited to what the engine declares."""
    ids = np.asarray(request.prompt_ids, dtype=np.int32).reshape(1, -1)
    arrays = {
        "input_ids": ids,
        "input_lengths": np.array([[ids.shape[1]]], dtype=np.int32),
        "request_output_len": np.array([[request.max_tokens]], dtype=np.int32),
    }
    optional = {
        "end_id": np.array([[request.end_id]], dtype=np.int32),
        "pad_id": np.array([[request.pad_id]], dtype=np.int32),
        "streaming": np.array([[True]], dtype=np.bool_),
        "exclude_input_in_output": np.array([[True]], dtype=np.bool_),
        "return_perf_metrics": np.array([[True]], dtype=np.bool_),
    }
    arrays.update({name: value for name, value in optional.items() if name in declared})
    for client_name, value in request.sampling.given().items():
        engine_name = next(n for n in SAMPLING_ENGINE_INPUTS[client_name] if n in declared)
        arrays[engine_name] = np.array([[value]], dtype=_SAMPLING_DTYPES.get(client_name, np.float32))
    if request.bad_words and "bad_words_list" in declared:
        arrays["bad_words_list"] = words_tensor(request.bad_words)
    if request.stop_words and "stop_words_list" in declared:
        arrays["stop_words_list"] = words_tensor(request.stop_words)
    if request.guided is not None:
        # The client contract refuses a constrained request for an engine without these inputs (contract.py).
        type_name, guide_name = GUIDED_DECODING_INPUTS
        arrays[type_name] = np.array([[request.guided.guide_type.encode("utf-8")]], dtype=np.object_)
        arrays[guide_name] = np.array([[request.guided.guide.encode("utf-8")]], dtype=np.object_)
    return arrays


def stop_inputs() -> dict[str, np.ndarray]:
    """TRT-LLM's stop request: sent with the running request's id, dummy inputs and `stop=true`."""
    return {
        "input_ids": np.array([[0]], dtype=np.int32),
        "input_lengths": np.array([[1]], dtype=np.int32),
        "request_output_len": np.array([[0]], dtype=np.int32),
        "stop": np.array([[True]], dtype=np.bool_),
    }


def engine_output(get: Callable[[str], Optional[np.ndarray]], *, tokens_per_block: Optional[int] = None,
                  prompt_tokens: Optional[int] = None) -> Optional[EngineOutput]:
    """One streamed response as an EngineOutput; `get(name)` returns an output's array or None. None for a response
    that carries neither ids nor reuse (a trailing empty FINAL).

    Reuse comes from `prefix_reused_tokens` when present, else from `kv_cache_reused_blocks` times `tokens_per_block`
    (when known), capped at `prompt_tokens - 1` (see `reused_tokens`).
    """
    ids = get("output_ids")
    reused = get("prefix_reused_tokens")
    if reused is not None:
        reused_count: Optional[int] = int(reused.reshape(-1)[0])
    else:
        blocks = get("kv_cache_reused_blocks") if tokens_per_block else None
        reused_count = None if blocks is None else reused_tokens(int(blocks.reshape(-1)[0]), tokens_per_block,
                                                                 prompt_tokens)
    if ids is None:
        return None if reused_count is None else EngineOutput((), reused_count)
    # Streaming responses hold only the new ids: [batch, beam, new] with one beam.
    flat = ids[0, 0] if ids.ndim == 3 else ids.reshape(-1)
    return EngineOutput(tuple(flat.tolist()), reused_count)


def reused_tokens(blocks: int, tokens_per_block: int, prompt_tokens: Optional[int] = None) -> int:
    """Prompt tokens served from TensorRT-LLM's KV cache, from its `kv_cache_reused_blocks`.

    TensorRT-LLM counts whole blocks of `tokens_per_block` tokens (a block matched only in part, with partial reuse,
    counts as one), and always computes the prompt's last token itself, so the count is capped at `prompt_tokens - 1`.
    """
    tokens = max(blocks, 0) * tokens_per_block
    return tokens if prompt_tokens is None else min(tokens, max(prompt_tokens - 1, 0))


def engine_tokens_per_block(declared_outputs: Iterable[str], engine_parameters: Mapping[str, str],
                            configured: int = 0) -> Optional[int]:
    """Tokens per KV-cache block for converting `kv_cache_reused_blocks`; None when the engine reports reuse in tokens
    (`prefix_reused_tokens`) or not at all.

    `configured` (the agent's `kv_cache_tokens_per_block`, 0 = not set) wins; otherwise the engine's build config is
    read from the directory in the engine model's `gpt_model_path` parameter (`engine_parameters`: its config.pbtxt
    parameters). Raises ValueError saying what to set when it cannot be learned.
    """
    outputs = set(declared_outputs)
    if "kv_cache_reused_blocks" not in outputs or "prefix_reused_tokens" in outputs:
        return None
    if configured:
        return configured
    path = os.path.join(engine_parameters.get("gpt_model_path", ""), "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            tokens = tokens_per_block_of(json.load(f))
    except (OSError, ValueError) as exc:
        raise ValueError(f"the engine reports KV-cache reuse in blocks (kv_cache_reused_blocks) and its build config "
                         f"{path!r} cannot be read ({exc}): set kv_cache_tokens_per_block") from None
    if tokens is None:
        raise ValueError(f"{path} has no build_config.plugin_config.tokens_per_block: set kv_cache_tokens_per_block")
    return tokens


def tokens_per_block_of(engine_config: Mapping) -> Optional[int]:
    """Tokens per KV-cache block from a TensorRT-LLM engine's `config.json` (as `trtllm-build` writes it:
    `build_config.plugin_config.tokens_per_block`); None when absent."""
    try:
        value = engine_config["build_config"]["plugin_config"]["tokens_per_block"]
    except (KeyError, TypeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def requested_outputs(declared_outputs: Iterable[str]) -> list[str]:
    declared = set(declared_outputs) | {"output_ids"}
    return [name for name in OUTPUTS if name in declared]


def check_required(model_name: str, declared: Mapping | frozenset) -> None:
    missing = set(REQUIRED_INPUTS) - set(declared)
    if missing:
        raise ValueError(f"engine model {model_name!r} lacks required inputs {sorted(missing)}")
