"""The `mcp_servers` file: which MCP servers the agent connects to and which of their tools it may offer.

YAML or JSON (by extension: .yaml/.yml or .json), parsed strictly once at load. Shape:

    servers:
      - label: github                      # names the server in metrics, traces and logs: [A-Za-z0-9_-]
        transport: streamable-http
        url: https://api.githubcopilot.com/mcp/
        headers:                           # values only from the agent's environment, never literal
          Authorization: {env: GITHUB_TOKEN, prefix: "Bearer "}
        allowed_tools: [search_repositories, get_file_contents]   # required: a list, or "*" for all it lists
        tool_prefix: gh_                   # optional: offered names become gh_<name> (resolves name clashes)
        timeout_seconds: 20                # optional: each tool's timeout (default: tool_timeout_seconds)
        tool_timeouts: {search_repositories: 40}   # optional: per tool, overrides timeout_seconds
        required: true                     # default true: loading fails if it cannot be reached;
                                           # false: retried in the background, its tools offered once it is up
      - label: files
        transport: stdio
        command: npx
        args: ["-y", "@modelcontextprotocol/server-filesystem", "/data"]
        env: {LOG_LEVEL: warn, API_KEY: {env: FILES_API_KEY}}    # literal or from the agent's environment
        allowed_tools: [read_text_file, list_directory]

Unknown keys, a duplicate key or label, a literal header value, an unset environment variable or a bad value fail
loading with `McpConfigError`, whose message names the file, the server and the field.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import pydantic
from pydantic import BaseModel, ConfigDict, Field

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
LABEL = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")  # an HTTP token (RFC 9110)
ALL_TOOLS = "*"


class McpConfigError(ValueError):
    """The mcp_servers file cannot be used; the message names the file, the server and what to change."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FromEnv(_Strict):
    """A value read from the agent's environment at load: `prefix` + the variable's value."""

    env: str
    prefix: str = ""

    @pydantic.field_validator("env")
    @classmethod
    def _env_name(cls, name: str) -> str:
        if not ENV_NAME.match(name):
            raise ValueError(f"{name!r} is not an environment variable name")
        return name


def _positive_seconds(value: Optional[float]) -> Optional[float]:
    if value is not None and not (math.isfinite(value) and 0 < value <= 86400):
        raise ValueError(f"must be a number of seconds > 0 and <= 86400, got {value!r}")
    return value


class _Server(_Strict):
    label: str
    allowed_tools: Union[Literal["*"], list[str]]
    tool_prefix: str = ""
    timeout_seconds: Optional[float] = None
    tool_timeouts: dict[str, float] = Field(default_factory=dict)
    required: bool = True
    connect_timeout_seconds: float = 30.0
    # Idle connections are probed this often so that a dead server is reconnected before the next call needs it.
    health_check_seconds: float = 10.0

    @pydantic.field_validator("label")
    @classmethod
    def _label(cls, label: str) -> str:
        if not LABEL.match(label):
            raise ValueError(f"{label!r} must be 1-64 letters, digits, '_' or '-'")
        return label

    @pydantic.field_validator("allowed_tools", mode="before")
    @classmethod
    def _allowed(cls, value: Any) -> Any:
        if isinstance(value, str) and value != ALL_TOOLS:
            raise ValueError(f'must be a list of tool names or "*" (every tool the server lists), got {value!r}')
        if isinstance(value, list):
            if not value:
                raise ValueError('is empty: list the tools to offer, or "*" for every tool the server lists')
            if len(set(map(str, value))) != len(value):
                raise ValueError("lists a tool twice")
        return value

    @pydantic.field_validator("tool_prefix")
    @classmethod
    def _prefix(cls, prefix: str) -> str:
        if prefix and not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", prefix):
            raise ValueError(f"{prefix!r} must be up to 32 letters, digits, '_' or '-'")
        return prefix

    @pydantic.field_validator("timeout_seconds")
    @classmethod
    def _timeout(cls, value: Optional[float]) -> Optional[float]:
        return _positive_seconds(value)

    @pydantic.field_validator("connect_timeout_seconds")
    @classmethod
    def _connect_timeout(cls, value: float) -> float:
        return _positive_seconds(value)

    @pydantic.field_validator("health_check_seconds")
    @classmethod
    def _health_check(cls, value: float) -> float:
        if value != 0:
            _positive_seconds(value)
        return value

    @pydantic.field_validator("tool_timeouts")
    @classmethod
    def _tool_timeouts(cls, value: dict[str, float]) -> dict[str, float]:
        for name, seconds in value.items():
            try:
                _positive_seconds(seconds)
            except ValueError as exc:
                raise ValueError(f"tool {name!r}: {exc}") from None
        return value

    @pydantic.model_validator(mode="after")
    def _timeouts_name_allowed_tools(self):
        if self.allowed_tools != ALL_TOOLS:
            stray = sorted(set(self.tool_timeouts) - set(self.allowed_tools))
            if stray:
                raise ValueError(f"tool_timeouts names tools that are not in allowed_tools: {stray}")
        return self


class StdioServer(_Server):
    transport: Literal["stdio"]
    command: str = Field(min_length=1)
    args: list[str] = Field(default_factory=list)
    env: dict[str, Union[str, FromEnv]] = Field(default_factory=dict)
    cwd: Optional[str] = None

    @pydantic.field_validator("env")
    @classmethod
    def _env_names(cls, env: dict) -> dict:
        for name in env:
            if not ENV_NAME.match(name):
                raise ValueError(f"{name!r} is not an environment variable name")
        return env


class HttpServer(_Server):
    transport: Literal["streamable-http"]
    url: str
    headers: dict[str, FromEnv] = Field(default_factory=dict)

    @pydantic.field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        if not re.match(r"https?://[^/\s]+", url):
            raise ValueError(f"{url!r} must be an http:// or https:// URL")
        if re.match(r"https?://[^/]*@", url):
            raise ValueError("must not carry credentials: put them in a header read from the environment")
        return url

    @pydantic.field_validator("headers", mode="before")
    @classmethod
    def _headers(cls, headers: Any) -> Any:
        if isinstance(headers, dict):
            for name, value in headers.items():
                if not isinstance(name, str) or not HEADER_NAME.match(name):
                    raise ValueError(f"{name!r} is not an HTTP header name")
                if not isinstance(value, dict):
                    raise ValueError(
                        f"header {name!r}: literal header values are not accepted, so that no secret is kept in this "
                        f'file; read it from the environment: {{"env": "VARIABLE", "prefix": "Bearer "}}')
        return headers


ServerEntry = Annotated[Union[StdioServer, HttpServer], Field(discriminator="transport")]


class McpServersFile(_Strict):
    servers: list[ServerEntry]


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """One server, its environment-sourced values resolved. `headers` and `env` hold secrets: never log them."""

    entry: Union[StdioServer, HttpServer]
    env: dict[str, str] = dataclasses.field(default_factory=dict, repr=False)
    headers: dict[str, str] = dataclasses.field(default_factory=dict, repr=False)

    @property
    def label(self) -> str:
        return self.entry.label

    @property
    def transport(self) -> str:
        return self.entry.transport

    def offered_name(self, tool: str) -> str:
        return self.entry.tool_prefix + tool

    def tool_timeout(self, tool: str) -> Optional[float]:
        return self.entry.tool_timeouts.get(tool, self.entry.timeout_seconds)

    def allows(self, tool: str) -> bool:
        return self.entry.allowed_tools == ALL_TOOLS or tool in self.entry.allowed_tools

    def describe(self) -> str:
        """Where it is, without secrets: the command line or the URL."""
        if isinstance(self.entry, StdioServer):
            return " ".join([self.entry.command, *self.entry.args])
        return self.entry.url


def load_mcp_servers(path: str | os.PathLike, environ: Optional[dict] = None) -> tuple[ServerConfig, ...]:
    """Reads and checks the file, resolves `{env: ...}` values from `environ` (default os.environ)."""
    path = Path(path)
    where = f"mcp_servers file {str(path)!r}"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise McpConfigError(f"{where}: cannot read it: {exc.strerror or exc}") from None
    data = _parse_document(text, path, where)
    if not isinstance(data, dict):
        raise McpConfigError(f"{where}: the document must be a mapping with a 'servers' list, got "
                             f"{type(data).__name__ if data is not None else 'an empty document'}")
    try:
        document = McpServersFile.model_validate(data)
    except pydantic.ValidationError as exc:
        raise McpConfigError(f"{where}: {_describe_errors(exc, data)}") from None
    labels: set[str] = set()
    resolved = []
    environ = os.environ if environ is None else environ
    for entry in document.servers:
        if entry.label in labels:
            raise McpConfigError(f"{where}: the label {entry.label!r} is used by two servers; labels must be unique")
        labels.add(entry.label)
        resolved.append(_resolve(entry, environ, f"{where}: server {entry.label!r}"))
    return tuple(resolved)


def _resolve(entry, environ, where: str) -> ServerConfig:
    def read(value: FromEnv, field: str) -> str:
        if value.env not in environ:
            raise McpConfigError(f"{where}: {field} reads the environment variable {value.env!r}, which is not set "
                                 "in the agent's environment")
        return value.prefix + environ[value.env]

    if isinstance(entry, StdioServer):
        env = {name: value if isinstance(value, str) else read(value, f"env {name!r}")
               for name, value in entry.env.items()}
        return ServerConfig(entry, env=env)
    headers = {name: read(value, f"header {name!r}") for name, value in entry.headers.items()}
    return ServerConfig(entry, headers=headers)


def _parse_document(text: str, path: Path, where: str) -> Any:
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            return json.loads(text, object_pairs_hook=_unique_pairs)
        except (ValueError, _DuplicateKey) as exc:
            raise McpConfigError(f"{where}: not valid JSON: {exc}") from None
    if suffix in (".yaml", ".yml"):
        import yaml

        try:
            return yaml.load(text, Loader=_strict_yaml_loader())  # noqa: S506 (a SafeLoader subclass)
        except (yaml.YAMLError, _DuplicateKey) as exc:
            raise McpConfigError(f"{where}: not valid YAML: {exc}") from None
    raise McpConfigError(f"{where}: name it *.yaml, *.yml or *.json so its format is known")


class _DuplicateKey(ValueError):
    pass


def _unique_pairs(pairs):
    result = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(f"the key {key!r} appears twice in one object")
        result[key] = value
    return result


@functools.lru_cache(maxsize=1)
def _strict_yaml_loader():
    import yaml

    class StrictLoader(yaml.SafeLoader):
        """SafeLoader that refuses duplicate keys (PyYAML keeps the last one silently)."""

    def construct_mapping(loader, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            if key in seen:
                raise _DuplicateKey(f"the key {key!r} appears twice in one mapping ({key_node.start_mark})")
            seen.add(key)
        return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)

    StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    return StrictLoader


def _describe_errors(exc: pydantic.ValidationError, data: Any) -> str:
    problems = []
    for error in exc.errors()[:6]:
        loc = list(error.get("loc", ()))
        place = ""
        if len(loc) >= 2 and loc[0] == "servers" and isinstance(loc[1], int):
            index = loc[1]
            label = None
            try:
                label = data["servers"][index].get("label")
            except (TypeError, KeyError, IndexError, AttributeError):
                pass
            place = f"server #{index + 1}" + (f" ({label!r})" if isinstance(label, str) else "")
            # Drop the index and the discriminator tag pydantic inserts ('stdio' / 'streamable-http').
            loc = loc[2:]
            if loc and loc[0] in ("stdio", "streamable-http"):
                loc = loc[1:]
        field = ".".join(str(part) for part in loc)
        message = error.get("msg", "")
        if error.get("type") == "extra_forbidden":
            message = "unknown key (check its spelling)"
        elif error.get("type") == "union_tag_invalid":
            message = "transport must be 'stdio' or 'streamable-http'"
        elif error.get("type") == "union_tag_not_found":
            message = "transport is missing: 'stdio' or 'streamable-http'"
        text = ": ".join(part for part in (place, field, message) if part)
        problems.append(text)
    return "; ".join(problems)
