"""`config.pbtxt` parameters of function_calling_agent, parsed once and strictly into a frozen config."""

from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Optional

from .loop import AgentLimits


class ConfigError(ValueError):
    """A parameter in config.pbtxt is missing, unknown, unfilled or out of range. Loading the model fails."""


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    tokenizer_dir: str
    tool_modules: tuple[str, ...]
    limits: AgentLimits
    tensorrt_llm_model_name: str = "tensorrt_llm"
    tool_workers: int = 32
    max_abandoned_tool_threads: int = 64
    # Optional engine inputs, when not read from the engine's config.pbtxt (comma list; empty = read the file).
    engine_inputs: Optional[tuple[str, ...]] = None
    engine_stop_timeout_seconds: float = 5.0
    cancel_poll_seconds: float = 0.2
    bls_threads: int = 128
    log_tool_payloads: bool = False
    max_input_chars: int = 200_000




def _parse_int(name: str, text: str, minimum: int, maximum: int = 2**31 - 1) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise ConfigError(f"parameter {name!r} must be an integer, got {text!r}") from None
    if not minimum <= value <= maximum:
        raise ConfigError(f"parameter {name!r} must be between {minimum} and {maximum}, got {value}")
    return value


def _parse_float(name: str, text: str, minimum: float, maximum: float = 1e9) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ConfigError(f"parameter {name!r} must be a number, got {text!r}") from None
    if not math.isfinite(value) or not minimum < value <= maximum:
        raise ConfigError(f"parameter {name!r} must be > {minimum:g} and <= {maximum:g}, got {text!r}")
    return value


def _parse_bool(name: str, text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise ConfigError(f"parameter {name!r} must be true or false, got {text!r}")


def _names(name: str, text: str, pattern: str) -> tuple[str, ...]:
    items = tuple(part.strip() for part in text.split(",") if part.strip())
    for item in items:
        if not re.fullmatch(pattern, item):
            raise ConfigError(f"parameter {name!r}: {item!r} is not a valid name")
    return items


_KNOWN = {
    "tokenizer_dir", "tensorrt_llm_model_name", "tool_modules", "max_iterations", "max_repair_turns",
    "tool_timeout_seconds", "request_timeout_seconds", "max_context_tokens", "max_tool_result_chars",
    "tool_workers", "max_abandoned_tool_threads", "engine_inputs", "engine_stop_timeout_seconds",
    "cancel_poll_seconds", "bls_threads", "log_tool_payloads", "final_turn_reserve_seconds", "max_input_chars",
    "engine_idle_timeout_seconds",
}
_REQUIRED = {"tokenizer_dir", "tool_modules", "max_context_tokens"}


def parse_parameters(parameters: dict[str, str], check_paths: bool = True) -> AgentConfig:
    """`parameters` maps names to the string values of config.pbtxt's `parameters` (already unwrapped)."""
    unknown = sorted(set(parameters) - _KNOWN)
    if unknown:
        raise ConfigError(f"unknown parameters {unknown}; known parameters are {sorted(_KNOWN)}")
    for name, value in parameters.items():
        if not isinstance(value, str):
            raise ConfigError(f"parameter {name!r} must be a string value")
        if "${" in value:
            raise ConfigError(f"parameter {name!r} is an unfilled template variable ({value!r}): "
                              "fill it with deploy/configure_repository.py or edit config.pbtxt")
    missing = sorted(_REQUIRED - set(parameters))
    if missing:
        raise ConfigError(f"missing required parameters {missing}")
    p = parameters

    tokenizer_dir = p["tokenizer_dir"].strip()
    if not tokenizer_dir:
        raise ConfigError("parameter 'tokenizer_dir' is empty: set it to a Hugging Face tokenizer directory")
    if check_paths and not os.path.isdir(tokenizer_dir):
        raise ConfigError(f"parameter 'tokenizer_dir': {tokenizer_dir!r} is not a directory")

    request_timeout = _parse_float("request_timeout_seconds", p.get("request_timeout_seconds", "120"), 0, 86400)
    limits = AgentLimits(
        max_iterations=_parse_int("max_iterations", p.get("max_iterations", "5"), 0, 100),
        max_repair_turns=_parse_int("max_repair_turns", p.get("max_repair_turns", "2"), 0, 100),
        tool_timeout_s=_parse_float("tool_timeout_seconds", p.get("tool_timeout_seconds", "10"), 0, 3600),
        request_timeout_s=request_timeout,
        max_context_tokens=_parse_int("max_context_tokens", p["max_context_tokens"], 16, 10_000_000),
        max_tool_result_chars=_parse_int("max_tool_result_chars", p.get("max_tool_result_chars", "4000"), 256),
        final_turn_reserve_s=_parse_float(
            "final_turn_reserve_seconds", p.get("final_turn_reserve_seconds", "10"), 0, 3600),
        engine_idle_timeout_s=_parse_float(
            "engine_idle_timeout_seconds", p.get("engine_idle_timeout_seconds", "60"), 0, 86400),
    )
    engine_inputs = None
    if p.get("engine_inputs", "").strip():
        engine_inputs = _names("engine_inputs", p["engine_inputs"], r"[A-Za-z_][A-Za-z0-9_]*")
    model_name = p.get("tensorrt_llm_model_name", "tensorrt_llm").strip()
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", model_name):
        raise ConfigError(f"parameter 'tensorrt_llm_model_name': {model_name!r} is not a valid model name")
    return AgentConfig(
        tokenizer_dir=tokenizer_dir,
        tool_modules=_names("tool_modules", p["tool_modules"], r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*"),
        limits=limits,
        tensorrt_llm_model_name=model_name,
        tool_workers=_parse_int("tool_workers", p.get("tool_workers", "32"), 1, 4096),
        max_abandoned_tool_threads=_parse_int(
            "max_abandoned_tool_threads", p.get("max_abandoned_tool_threads", "64"), 0, 4096),
        engine_inputs=engine_inputs,
        engine_stop_timeout_seconds=_parse_float(
            "engine_stop_timeout_seconds", p.get("engine_stop_timeout_seconds", "5"), 0, 600),
        cancel_poll_seconds=_parse_float("cancel_poll_seconds", p.get("cancel_poll_seconds", "0.2"), 0, 10),
        bls_threads=_parse_int("bls_threads", p.get("bls_threads", "128"), 1, 4096),
        log_tool_payloads=_parse_bool("log_tool_payloads", p.get("log_tool_payloads", "false")),
        max_input_chars=_parse_int("max_input_chars", p.get("max_input_chars", "200000"), 1),
    )


def declared_tensor_names(config_text: str, section: str = "input") -> tuple[str, ...]:
    """Input (or output) names declared in a `config.pbtxt`, read without needing Triton's protobufs."""
    match = re.search(r"(?m)^\s*" + section + r"\s*\[", config_text)
    if not match:
        raise ConfigError(f"the engine's config.pbtxt declares no {section}s")
    depth, pos = 0, match.end() - 1
    for pos in range(match.end() - 1, len(config_text)):
        char = config_text[pos]
        depth += char == "["
        depth -= char == "]"
        if depth == 0:
            break
    block = config_text[match.end(): pos]
    block = re.sub(r"(?m)#.*$", "", block)
    # Only top-level `name:` fields of each input (reshape etc. have no names).
    return tuple(re.findall(r'\bname\s*:\s*"([^"]+)"', block))
