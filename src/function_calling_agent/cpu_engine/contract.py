"""The `tensorrt_llm` model contract: input tensors to a GenerationRequest, results to output tensors.

Arrays arrive as Triton hands them to a model with max_batch_size > 0: a leading batch dimension of 1
(`input_ids` [1, L], scalars [1] or [1, 1], word lists [1, 2, L]).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from .sampling import SamplingParams, parse_word_list
from .worker import GenerationRequest, GenerationStats

# Inputs this engine reads (all others in the stock TensorRT-LLM config are not accepted by our config.pbtxt).
INPUT_NAMES = (
    "input_ids",
    "input_lengths",
    "request_output_len",
    "end_id",
    "pad_id",
    "streaming",
    "exclude_input_in_output",
    "stop_words_list",
    "bad_words_list",
    "temperature",
    "runtime_top_k",
    "runtime_top_p",
    "seed",
    "random_seed",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "return_perf_metrics",
    "stop",
    "guided_decoding_guide_type",
    "guided_decoding_guide",
)


class InvalidInput(ValueError):
    """The client sent something it has to change."""


@dataclass(frozen=True)
class ContractRequest:
    generation: GenerationRequest | None  # None for a stop request
    stop: bool = False
    streaming: bool = False
    exclude_input_in_output: bool = False
    return_perf_metrics: bool = False


def _scalar(arrays: Mapping[str, np.ndarray], name: str):
    array = arrays.get(name)
    if array is None:
        return None
    array = np.asarray(array)
    if array.size != 1:
        raise InvalidInput(f"{name} must hold one value per request (batch 1), got shape {list(array.shape)}")
    return array.reshape(-1)[0].item()


def _text(arrays: Mapping[str, np.ndarray], name: str):
    array = arrays.get(name)
    if array is None:
        return None
    array = np.asarray(array)
    if array.size != 1:
        raise InvalidInput(f"{name} must hold one value per request (batch 1), got shape {list(array.shape)}")
    value = array.reshape(-1)[0]
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput(f"{name} is not UTF-8 text") from None
    return value if value is None else str(value)


def parse_request(arrays: Mapping[str, np.ndarray], default_exclude_input: bool = False) -> ContractRequest:
    if _scalar(arrays, "stop"):
        return ContractRequest(generation=None, stop=True)

    input_ids = arrays.get("input_ids")
    if input_ids is None:
        raise InvalidInput("input_ids is required")
    input_ids = np.asarray(input_ids)
    if input_ids.ndim == 2:
        if input_ids.shape[0] != 1:
            raise InvalidInput(f"this engine takes batch 1 per request, got input_ids shape {list(input_ids.shape)}")
        input_ids = input_ids[0]
    if input_ids.ndim != 1 or input_ids.size == 0:
        raise InvalidInput(f"input_ids must be [1, L] with L > 0, got shape {list(np.shape(arrays['input_ids']))}")
    input_length = _scalar(arrays, "input_lengths")
    if input_length is not None:
        if not 0 < input_length <= input_ids.size:
            raise InvalidInput(f"input_lengths {input_length} must be in [1, {input_ids.size}]")
        input_ids = input_ids[:input_length]

    max_new_tokens = _scalar(arrays, "request_output_len")
    if max_new_tokens is None:
        raise InvalidInput("request_output_len is required")
    if max_new_tokens < 0:
        raise InvalidInput(f"request_output_len must be >= 0, got {max_new_tokens}")

    seed = _scalar(arrays, "seed")
    if seed is None:
        seed = _scalar(arrays, "random_seed")
    sampling_values = {
        "temperature": _scalar(arrays, "temperature"),
        "top_k": _scalar(arrays, "runtime_top_k"),
        "top_p": _scalar(arrays, "runtime_top_p"),
        "seed": None if seed is None else int(seed) & 0xFFFFFFFFFFFFFFFF,
        "repetition_penalty": _scalar(arrays, "repetition_penalty"),
        "presence_penalty": _scalar(arrays, "presence_penalty"),
        "frequency_penalty": _scalar(arrays, "frequency_penalty"),
    }
    try:
        sampling = SamplingParams(**{k: v for k, v in sampling_values.items() if v is not None})
        stop_words = parse_word_list(arrays["stop_words_list"]) if "stop_words_list" in arrays else ()
        bad_words = parse_word_list(arrays["bad_words_list"]) if "bad_words_list" in arrays else ()
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None

    guide_type = _text(arrays, "guided_decoding_guide_type")
    guide = _text(arrays, "guided_decoding_guide")
    if guide_type is not None and guide is None and guide_type != "json":
        raise InvalidInput(f"guided_decoding_guide_type {guide_type!r} needs a guided_decoding_guide")
    end_id = _scalar(arrays, "end_id")
    exclude = _scalar(arrays, "exclude_input_in_output")
    generation = GenerationRequest(
        input_ids=tuple(int(t) for t in input_ids),
        max_new_tokens=int(max_new_tokens),
        sampling=sampling,
        end_id=None if end_id is None else int(end_id),
        stop_words=stop_words,
        bad_words=bad_words,
        guide=None if guide_type is None else (guide_type, guide or ""),
    )
    return ContractRequest(
        generation=generation,
        streaming=bool(_scalar(arrays, "streaming") or False),
        exclude_input_in_output=default_exclude_input if exclude is None else bool(exclude),
        return_perf_metrics=bool(_scalar(arrays, "return_perf_metrics") or False),
    )


def token_outputs(token_ids) -> dict[str, np.ndarray]:
    """`output_ids` [batch 1, beam 1, n] and `sequence_length` [1, 1]."""
    ids = np.asarray(token_ids, dtype=np.int32).reshape(1, 1, -1)
    return {"output_ids": ids, "sequence_length": np.array([[ids.shape[-1]]], dtype=np.int32)}


def final_outputs(stats: GenerationStats, block_size: int, return_perf_metrics: bool) -> dict[str, np.ndarray]:
    """Extra tensors of a request's last response: prefix reuse always, TensorRT-LLM's KV block counts on demand."""
    outputs = {"prefix_reused_tokens": np.array([[stats.reused_tokens]], dtype=np.int32)}
    if return_perf_metrics:
        total_tokens = stats.prompt_tokens + stats.generated_tokens
        total_blocks = -(-total_tokens // block_size)
        reused_blocks = stats.reused_tokens // block_size
        outputs["kv_cache_reused_blocks"] = np.array([[reused_blocks]], dtype=np.int32)
        outputs["kv_cache_alloc_new_blocks"] = np.array([[total_blocks - reused_blocks]], dtype=np.int32)
        outputs["kv_cache_alloc_total_blocks"] = np.array([[total_blocks]], dtype=np.int32)
    return outputs
