"""The CPU engine's `config.pbtxt` parameters, parsed once and strictly; the strict parsing is shared with the
llama.cpp engine's config (`ModelParameters` and the `*_parameter(s)` readers)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence, TypeVar

import torch

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ConfigError(ValueError):
    pass


_Config = TypeVar("_Config", bound="ModelParameters")


class ModelParameters:
    """Base of a frozen dataclass whose fields are one model's `config.pbtxt` parameters (all string_value).

    An unknown name or an unfilled `${...}` placeholder is refused before the subclass's `_parse` reads the values;
    every error is a ConfigError naming the parameter."""

    @classmethod
    def from_model_config(cls: type[_Config], model_config: Mapping[str, Any]) -> _Config:
        raw = {key: value.get("string_value", "") for key, value in model_config.get("parameters", {}).items()}
        return cls.from_parameters(raw)

    @classmethod
    def from_parameters(cls: type[_Config], raw: Mapping[str, str]) -> _Config:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"unknown parameters {unknown}; known: {sorted(known)}")
        for key, value in raw.items():
            if "${" in value:
                raise ConfigError(f"parameter {key} has an unfilled placeholder: {value!r}")
        return cls._parse(raw)

    @classmethod
    def _parse(cls: type[_Config], raw: Mapping[str, str]) -> _Config:
        raise NotImplementedError


def required_parameter(raw: Mapping[str, str], key: str, what: str) -> str:
    """The stripped value of `key`; `what` says in the error what the parameter names."""
    if not raw.get(key, "").strip():
        raise ConfigError(f"parameter {key} ({what}) is required")
    return raw[key].strip()


def integer_parameters(raw: Mapping[str, str], minimums: Iterable[tuple[str, int]]) -> dict[str, int]:
    """The integer parameters among (name, minimum) that are set; unset or blank ones keep their defaults."""
    values = {}
    for key, minimum in minimums:
        if raw.get(key, "").strip():
            try:
                number = int(raw[key])
            except ValueError:
                raise ConfigError(f"parameter {key} must be an integer, got {raw[key]!r}") from None
            if number < minimum:
                raise ConfigError(f"parameter {key} must be >= {minimum}, got {number}")
            values[key] = number
    return values


def flag_parameters(raw: Mapping[str, str], keys: Iterable[str]) -> dict[str, bool]:
    """The true/false (or 1/0) parameters among `keys` that are set."""
    values = {}
    for key in keys:
        if raw.get(key, "").strip():
            flag = raw[key].strip().lower()
            if flag not in ("true", "false", "1", "0"):
                raise ConfigError(f"parameter {key} must be true or false, got {flag!r}")
            values[key] = flag in ("true", "1")
    return values


def choice_parameter(raw: Mapping[str, str], key: str, choices: Sequence[str]) -> dict[str, str]:
    """{key: value} when `key` is set to one of `choices`, {} when it is not set."""
    if not raw.get(key, "").strip():
        return {}
    value = raw[key].strip()
    if value not in choices:
        raise ConfigError(f"parameter {key} must be one of {list(choices)}, got {value!r}")
    return {key: value}


@dataclass(frozen=True)
class EngineConfig(ModelParameters):
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
    def _parse(cls, raw: Mapping[str, str]) -> "EngineConfig":
        values: dict[str, Any] = {
            "model_dir": required_parameter(raw, "model_dir", "Hugging Face checkpoint directory"),
        }
        values.update(integer_parameters(raw, (
            ("kv_cache_block_size", 1),
            ("prefix_cache_max_tokens", 0),
            ("prefill_chunk_tokens", 1),
            ("torch_threads", 0),
            ("max_seq_len", 0),
        )))
        values.update(choice_parameter(raw, "torch_dtype", sorted(_DTYPES)))
        values.update(flag_parameters(raw, ("exclude_input_in_output",)))
        values["stop_signal_dir"] = raw.get("stop_signal_dir", "").strip()
        return cls(**values)
