"""`config.pbtxt` parameters of function_calling_agent, parsed once and strictly into a frozen `AgentConfig`.

`PARAMETERS` is the one source of every parameter's name, type, bounds and default (the limits' defaults come from
`AgentLimits`). An unknown key, an unfilled `${...}`, a missing required parameter or a bad value fails loading with
a message naming the parameter.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Any, Mapping, Optional

from ..limits import AgentLimits

DEFAULT_TOOL_MODULES = "function_calling_agent.tools.finance"
DEFAULT_ENGINE_MODEL = "tensorrt_llm"


class ConfigError(ValueError):
    """A parameter in config.pbtxt is missing, unknown, unfilled or out of range. Loading the model fails."""


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    tokenizer_dir: str
    tool_modules: tuple[str, ...]
    limits: AgentLimits
    # "" (the tokenizer's own template), "builtin" (the built-in Hermes-2-Pro tool template) or a .jinja file path.
    chat_template: str = ""
    # Directories searched first for the tool modules (colon-separated in config.pbtxt), e.g. a mounted tools folder.
    tool_path: tuple[str, ...] = ()
    tensorrt_llm_model_name: str = DEFAULT_ENGINE_MODEL
    tool_workers: int = 32
    max_abandoned_tool_threads: int = 64
    # Optional engine inputs, when not read from the engine's config.pbtxt (comma list; empty = read the file).
    engine_inputs: Optional[tuple[str, ...]] = None
    engine_stop_timeout_seconds: float = 5.0
    cancel_poll_seconds: float = 0.2
    bls_threads: int = 128
    log_tool_payloads: bool = False
    max_input_chars: int = 200_000
    # A YAML/JSON file of MCP servers whose allowed tools are offered too (docs/mcp.md); None: no MCP servers.
    mcp_servers: Optional[str] = None
    # How the agent reaches the engine model: "grpc" (this server's gRPC endpoint, adapter.grpc_engine) or "bls".
    engine_transport: str = "grpc"
    # grpc: "self" (the gRPC endpoint of the server the agent runs in, read from its command line) or host:port.
    engine_url: str = "self"
    # Client deltas go out every `stream_interval` answer tokens, or once the oldest held text is `stream_flush_ms`
    # old; the first delta of a request is never held. 1: every token. 16 by measurement (bench/relay.py
    # --sweep-intervals: 4 to 32 relay within noise of each other, each about 1.5x interval 1; 16 best or tied).
    stream_interval: int = 16
    stream_flush_ms: float = 50.0
    # TensorRT-LLM reports KV reuse in blocks; 0: read the tokens per block from the engine's build config.
    kv_cache_tokens_per_block: int = 0


_REQUIRED = object()
_LIMITS = AgentLimits()
_CONFIG_DEFAULTS = {f.name: f.default for f in dataclasses.fields(AgentConfig)}
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"


@dataclasses.dataclass(frozen=True)
class Parameter:
    """One config.pbtxt parameter: how to read it and where it goes (`limits.<field>` or an AgentConfig field)."""

    kind: str  # int | float | bool | text | names | modules | paths | model | template | file | transport | url
    target: str
    default: Any = _REQUIRED
    low: float = 0
    high: float = 2**31 - 1

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED


def _limit(kind: str, field: str, low: float, high: float) -> Parameter:
    return Parameter(kind, f"limits.{field}", getattr(_LIMITS, field), low, high)


def _config(kind: str, field: str, low: float = 0, high: float = 2**31 - 1) -> Parameter:
    return Parameter(kind, field, _CONFIG_DEFAULTS[field], low, high)


PARAMETERS: Mapping[str, Parameter] = {
    "tokenizer_dir": Parameter("text", "tokenizer_dir"),
    "tool_modules": Parameter("modules", "tool_modules", DEFAULT_TOOL_MODULES),
    "tool_path": _config("paths", "tool_path"),
    "chat_template": _config("template", "chat_template"),
    "tensorrt_llm_model_name": _config("model", "tensorrt_llm_model_name"),
    "max_iterations": _limit("int", "max_iterations", 0, 100),
    "max_repair_turns": _limit("int", "max_repair_turns", 0, 100),
    "tool_timeout_seconds": _limit("float", "tool_timeout_s", 0, 3600),
    "request_timeout_seconds": _limit("float", "request_timeout_s", 0, 86400),
    "final_turn_reserve_seconds": _limit("float", "final_turn_reserve_s", 0, 3600),
    "engine_idle_timeout_seconds": _limit("float", "engine_idle_timeout_s", 0, 86400),
    "max_context_tokens": Parameter("int", "limits.max_context_tokens", _REQUIRED, 16, 10_000_000),
    "max_tool_result_chars": _limit("int", "max_tool_result_chars", 256, 2**31 - 1),
    "tool_workers": _config("int", "tool_workers", 1, 4096),
    "max_abandoned_tool_threads": _config("int", "max_abandoned_tool_threads", 0, 4096),
    "engine_inputs": _config("names", "engine_inputs"),
    "engine_stop_timeout_seconds": _config("float", "engine_stop_timeout_seconds", 0, 600),
    "cancel_poll_seconds": _config("float", "cancel_poll_seconds", 0, 10),
    "bls_threads": _config("int", "bls_threads", 1, 4096),
    "log_tool_payloads": _config("bool", "log_tool_payloads"),
    "max_input_chars": _config("int", "max_input_chars", 1),
    "mcp_servers": _config("file", "mcp_servers"),
    "engine_transport": _config("transport", "engine_transport"),
    "engine_url": _config("url", "engine_url"),
    "stream_interval": _config("int", "stream_interval", 1, 4096),
    "stream_flush_ms": _config("float", "stream_flush_ms", 0, 60_000),
    "kv_cache_tokens_per_block": _config("int", "kv_cache_tokens_per_block", 0, 1 << 20),
}
ENGINE_TRANSPORTS = ("grpc", "bls")


def _parse(name: str, spec: Parameter, text: str) -> Any:
    text = text.strip()
    if spec.kind == "int":
        try:
            value = int(text)
        except ValueError:
            raise ConfigError(f"parameter {name!r} must be an integer, got {text!r}") from None
        if not spec.low <= value <= spec.high:
            raise ConfigError(f"parameter {name!r} must be between {spec.low} and {spec.high}, got {value}")
        return value
    if spec.kind == "float":
        try:
            value = float(text)
        except ValueError:
            raise ConfigError(f"parameter {name!r} must be a number, got {text!r}") from None
        if not math.isfinite(value) or not spec.low < value <= spec.high:
            raise ConfigError(f"parameter {name!r} must be > {spec.low:g} and <= {spec.high:g}, got {text!r}")
        return value
    if spec.kind == "bool":
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ConfigError(f"parameter {name!r} must be true or false, got {text!r}")
    if spec.kind in ("names", "modules"):
        pattern = _NAME if spec.kind == "names" else rf"{_NAME}(\.{_NAME})*"
        items = tuple(part.strip() for part in text.split(",") if part.strip())
        for item in items:
            if not re.fullmatch(pattern, item):
                raise ConfigError(f"parameter {name!r}: {item!r} is not a valid name")
        return items if items or spec.kind == "modules" else None
    if spec.kind == "template":
        if text and text != "builtin" and not text.endswith(".jinja"):
            raise ConfigError(f"parameter {name!r} must be empty (the tokenizer's template), 'builtin' or a path to a "
                              f".jinja file, got {text!r}")
        return text
    if spec.kind == "transport":
        if text not in ENGINE_TRANSPORTS:
            raise ConfigError(f"parameter {name!r} must be one of {', '.join(ENGINE_TRANSPORTS)}, got {text!r}")
        return text
    if spec.kind == "url":
        from .grpc_engine import parse_engine_url

        try:
            return parse_engine_url(text)
        except ValueError as exc:
            raise ConfigError(f"parameter {name!r}: {exc}") from None
    if spec.kind == "file":
        return text or None  # empty: not set
    if spec.kind == "paths":
        return tuple(part.strip() for part in text.split(":") if part.strip())
    if spec.kind == "model":
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+", text):
            raise ConfigError(f"parameter {name!r}: {text!r} is not a valid model name")
        return text
    if not text:
        raise ConfigError(f"parameter {name!r} is empty")
    return text


def parse_parameters(parameters: Mapping[str, str], check_paths: bool = True) -> AgentConfig:
    """`parameters` maps names to the string values of config.pbtxt's `parameters` (already unwrapped)."""
    unknown = sorted(set(parameters) - set(PARAMETERS))
    if unknown:
        raise ConfigError(f"unknown parameters {unknown}; known parameters are {sorted(PARAMETERS)}")
    for name, value in parameters.items():
        if not isinstance(value, str):
            raise ConfigError(f"parameter {name!r} must be a string value")
        if "${" in value:
            raise ConfigError(f"parameter {name!r} is an unfilled template variable ({value!r}): "
                              "fill it with deploy/configure_repository.py or edit config.pbtxt")
    missing = sorted(name for name, spec in PARAMETERS.items() if spec.required and name not in parameters)
    if missing:
        raise ConfigError(f"missing required parameters {missing}")

    limits: dict[str, Any] = {}
    fields: dict[str, Any] = {}
    for name, spec in PARAMETERS.items():
        value = _parse(name, spec, parameters[name]) if name in parameters else spec.default
        if spec.target.startswith("limits."):
            limits[spec.target[len("limits."):]] = value
        else:
            fields[spec.target] = value
    if check_paths:
        if not os.path.isdir(fields["tokenizer_dir"]):
            raise ConfigError(f"parameter 'tokenizer_dir': {fields['tokenizer_dir']!r} is not a directory")
        for folder in fields["tool_path"]:
            if not os.path.isdir(folder):
                raise ConfigError(f"parameter 'tool_path': {folder!r} is not a directory")
        template = fields["chat_template"]
        if template.endswith(".jinja") and not os.path.isfile(template):
            raise ConfigError(f"parameter 'chat_template': {template!r} is not a file")
        if fields["mcp_servers"] is not None and not os.path.isfile(fields["mcp_servers"]):
            raise ConfigError(f"parameter 'mcp_servers': {fields['mcp_servers']!r} is not a file")
    if isinstance(fields["tool_modules"], str):
        fields["tool_modules"] = _parse("tool_modules", PARAMETERS["tool_modules"], fields["tool_modules"])
    return AgentConfig(limits=AgentLimits(**limits), **fields)
