"""The llama.cpp engine's `config.pbtxt` parameters, parsed once and strictly."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping

from ..cpu_engine.config import (
    ConfigError,
    ModelParameters,
    choice_parameter,
    flag_parameters,
    integer_parameters,
    required_parameter,
)

KV_CACHE_TYPES = ("f16", "f32", "q8_0")
_INTEGERS = (
    ("kv_cache_tokens", 1),
    ("max_sequences", 1),
    ("max_seq_len", 0),
    ("prefill_chunk_tokens", 1),
    ("threads", 0),
    ("kv_cache_block_size", 1),
)
_BOOLEANS = ("enable_kv_cache_reuse", "exclude_input_in_output")


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class LlamaCppConfig(ModelParameters):
    gguf_path: str  # the model, a .gguf file
    tokenizer_dir: str  # the agent's Hugging Face tokenizer: its ids must mean the same tokens in the GGUF
    kv_cache_tokens: int = 16384  # KV cells shared by running requests and cached prefixes
    max_sequences: int = 4  # requests decoded together; also how many finished prefixes stay cached
    max_seq_len: int = 0  # prompt + output limit per request; 0: min(model context, kv_cache_tokens)
    prefill_chunk_tokens: int = 512  # prompt tokens per step, so running requests keep decoding during a prefill
    threads: int = 0  # 0: the cores this process may use
    kv_cache_type: str = "f16"
    enable_kv_cache_reuse: bool = True
    kv_cache_block_size: int = 32  # tokens per block in the kv_cache_*_blocks outputs
    exclude_input_in_output: bool = False  # default when a request does not say
    stop_signal_dir: str = ""  # empty: a temp dir derived from the model repository path

    @property
    def thread_count(self) -> int:
        return self.threads or available_cores()

    @classmethod
    def _parse(cls, raw: Mapping[str, str]) -> "LlamaCppConfig":
        values: dict[str, Any] = {
            key: required_parameter(raw, key, what)
            for key, what in (("gguf_path", "the model's .gguf file"), ("tokenizer_dir", "its Hugging Face tokenizer"))
        }
        values.update(integer_parameters(raw, _INTEGERS))
        values.update(flag_parameters(raw, _BOOLEANS))
        values.update(choice_parameter(raw, "kv_cache_type", KV_CACHE_TYPES))
        values["stop_signal_dir"] = raw.get("stop_signal_dir", "").strip()
        config = cls(**values)
        if config.max_seq_len > config.kv_cache_tokens:
            raise ConfigError(f"parameter max_seq_len ({config.max_seq_len}) must not exceed kv_cache_tokens "
                              f"({config.kv_cache_tokens}): one request must fit in the KV cache")
        return config
