"""The CPU engine's `config.pbtxt` parameters, parsed once and strictly."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class EngineConfig:
    model_dir: str
    kv_cache_block_size: int = 32
    prefix_cache_max_tokens: int = 16384
    prefill_chunk_tokens: int = 512
    torch_threads: int = 0  # 0: torch's default
    max_seq_len: int = 0  # 0: the model's max_position_embeddings
    torch_dtype: str = "float32"
    exclude_input_in_output: bool = False  # default when a request does not say
    stop_signal_dir: str = ""  # empty: a temp dir derived from the model repository path

    @property
    def dtype(self) -> torch.dtype:
        return _DTYPES[self.torch_dtype]

    @classmethod
    def from_model_config(cls, model_config: Mapping[str, Any]) -> "EngineConfig":
        raw = {key: value.get("string_value", "") for key, value in model_config.get("parameters", {}).items()}
        return cls.from_parameters(raw)

    @classmethod
    def from_parameters(cls, raw: Mapping[str, str]) -> "EngineConfig":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"unknown parameters {unknown}; known: {sorted(known)}")
        for key, value in raw.items():
            if "${" in value:
                raise ConfigError(f"parameter {key} has an unfilled placeholder: {value!r}")
        values: dict[str, Any] = {}
        if not raw.get("model_dir", "").strip():
            raise ConfigError("parameter model_dir (Hugging Face checkpoint directory) is required")
        values["model_dir"] = raw["model_dir"].strip()
        for key, minimum in (
            ("kv_cache_block_size", 1),
            ("prefix_cache_max_tokens", 0),
            ("prefill_chunk_tokens", 1),
            ("torch_threads", 0),
            ("max_seq_len", 0),
        ):
            if key in raw and raw[key].strip() != "":
                try:
                    number = int(raw[key])
                except ValueError:
                    raise ConfigError(f"parameter {key} must be an integer, got {raw[key]!r}") from None
                if number < minimum:
                    raise ConfigError(f"parameter {key} must be >= {minimum}, got {number}")
                values[key] = number
        if raw.get("torch_dtype", "").strip():
            dtype = raw["torch_dtype"].strip()
            if dtype not in _DTYPES:
                raise ConfigError(f"parameter torch_dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
            values["torch_dtype"] = dtype
        if raw.get("exclude_input_in_output", "").strip():
            flag = raw["exclude_input_in_output"].strip().lower()
            if flag not in ("true", "false", "1", "0"):
                raise ConfigError(f"parameter exclude_input_in_output must be true or false, got {flag!r}")
            values["exclude_input_in_output"] = flag in ("true", "1")
        values["stop_signal_dir"] = raw.get("stop_signal_dir", "").strip()
        return cls(**values)
