"""Reading and filling Triton `config.pbtxt` files: the one implementation the configure command, the agent (to read
its engine's tensors), the test harness and the benchmarks share.

`${name}` placeholders outside `#` comments are template variables; `parse_model_config` checks a text against
Triton's own `ModelConfig` protobuf (from tritonclient).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class ModelConfigError(ValueError):
    """A config.pbtxt text is malformed, or cannot be filled; the message names the file and what to change."""


def split_comment(line: str) -> tuple[str, str]:
    """(code, comment) of one pbtxt line: a `#` outside a string literal starts a comment."""
    quote = None
    escaped = False
    for index, char in enumerate(line):
        if quote:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote:
                quote = None
        elif char in "\"'":
            quote = char
        elif char == "#":
            return line[:index], line[index:]
    return line, ""


def find_placeholders(text: str, source: Path | str = "<text>") -> frozenset[str]:
    """Names of the `${name}` placeholders outside comments; a malformed `${` is an error."""
    names = set()
    for number, line in enumerate(text.splitlines(), start=1):
        code, _ = split_comment(line)
        for start in (m.start() for m in re.finditer(r"\$\{", code)):
            match = _PLACEHOLDER.match(code, start)
            if match is None:
                raise ModelConfigError(f"{source}:{number}: malformed placeholder near {code[start:start + 40]!r}")
            names.add(match.group(1))
    return frozenset(names)


def fill_placeholders(text: str, values: Mapping[str, str]) -> str:
    """Replace every `${name}` outside comments; every name must be in `values`."""
    out = []
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\r\n")
        ending = line[len(body):]
        code, comment = split_comment(body)
        try:
            out.append(_PLACEHOLDER.sub(lambda m: values[m.group(1)], code) + comment + ending)
        except KeyError as exc:
            raise ModelConfigError(f"no value for ${{{exc.args[0]}}}") from None
    return "".join(out)


def parse_model_config(text: str, source: Path | str):
    """The text as a Triton `ModelConfig` message; a parse error names the file."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError as exc:
        raise ModelConfigError(f"parsing model configs needs tritonclient[grpc]: {exc}") from exc
    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise ModelConfigError(f"{source}: not a valid Triton model config: {exc}") from exc


def read_model_config(path: str | Path):
    """The config.pbtxt at `path` as a Triton `ModelConfig` message."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ModelConfigError(f"cannot read {path}: {exc}") from exc
    return parse_model_config(text, path)


def tensor_names(config, section: str = "input") -> tuple[str, ...]:
    """The input (or output) tensor names a `ModelConfig` declares, in order."""
    return tuple(tensor.name for tensor in getattr(config, section))


def set_parameter(text: str, key: str, value: str) -> str:
    """Sets (or adds) a string parameter in a config.pbtxt text."""
    if '"' in value or "\n" in value:
        raise ModelConfigError(f"parameter {key!r}: the value must be one line without double quotes")
    entry = f'parameters: {{ key: "{key}" value: {{ string_value: "{value}" }} }}'
    pattern = re.compile(r'parameters:\s*\{\s*key:\s*"' + re.escape(key) + r'"\s*value:\s*\{[^}]*\}\s*\}')
    if pattern.search(text):
        return pattern.sub(lambda _: entry, text)
    return text.rstrip("\n") + "\n" + entry + "\n"
