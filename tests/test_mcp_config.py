"""The mcp_servers file: parsed strictly at load; every bad entry fails with a message naming the file, the server and
the field; header values only from the environment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from function_calling_agent.adapter.parameters import ConfigError, parse_parameters
from function_calling_agent.tools.mcp import McpConfigError, load_mcp_servers

GOOD_YAML = """
servers:
  - label: github
    transport: streamable-http
    url: https://mcp.example.com/mcp
    headers:
      Authorization: {env: GITHUB_TOKEN, prefix: "Bearer "}
    allowed_tools: [search_repositories, get_file_contents]
    tool_prefix: gh_
    timeout_seconds: 20
    tool_timeouts: {search_repositories: 40}
  - label: files
    transport: stdio
    command: npx
    args: ["-y", "@modelcontextprotocol/server-filesystem", "/data"]
    env: {LOG_LEVEL: warn, API_KEY: {env: FILES_KEY}}
    allowed_tools: "*"
    required: false
"""
ENV = {"GITHUB_TOKEN": "s3cret", "FILES_KEY": "k"}


def write(tmp_path: Path, text: str, name: str = "servers.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def servers_json(tmp_path: Path, *servers: dict) -> Path:
    return write(tmp_path, json.dumps({"servers": list(servers)}), "servers.json")


def stdio(**fields) -> dict:
    return {"label": "local", "transport": "stdio", "command": "python", "allowed_tools": ["a"], **fields}


def http(**fields) -> dict:
    return {"label": "remote", "transport": "streamable-http", "url": "http://127.0.0.1:9/mcp",
            "allowed_tools": ["a"], **fields}


def error_of(path: Path, environ=None) -> str:
    with pytest.raises(McpConfigError) as caught:
        load_mcp_servers(path, ENV if environ is None else environ)
    return str(caught.value)


def test_a_good_yaml_file_resolves_headers_and_env_from_the_environment(tmp_path):
    github, files = load_mcp_servers(write(tmp_path, GOOD_YAML), ENV)
    assert github.label == "github" and github.transport == "streamable-http"
    assert github.headers == {"Authorization": "Bearer s3cret"}
    assert github.offered_name("search_repositories") == "gh_search_repositories"
    assert github.tool_timeout("search_repositories") == 40 and github.tool_timeout("get_file_contents") == 20
    assert github.allows("get_file_contents") and not github.allows("delete_repository")
    assert github.entry.required is True  # required unless the operator says otherwise
    assert files.env == {"LOG_LEVEL": "warn", "API_KEY": "k"}
    assert files.allows("anything") and files.entry.required is False
    assert files.tool_timeout("x") is None  # the agent's tool_timeout_seconds then
    # Secrets stay out of reprs (and so out of logs).
    assert "s3cret" not in repr(github) and "s3cret" not in github.describe()


def test_the_same_file_in_json_gives_the_same_servers(tmp_path):
    import yaml

    as_json = write(tmp_path, json.dumps(yaml.safe_load(GOOD_YAML)), "servers.json")
    assert load_mcp_servers(as_json, ENV) == load_mcp_servers(write(tmp_path, GOOD_YAML), ENV)


@pytest.mark.parametrize("entry, expected", [
    (stdio(allowed_tools=None), "server #1 ('local'): allowed_tools"),
    ({k: v for k, v in stdio().items() if k != "allowed_tools"}, "server #1 ('local'): allowed_tools: Field required"),
    (stdio(allowed_tools="all"), 'must be a list of tool names or "*"'),
    (stdio(allowed_tools=[]), "is empty"),
    (stdio(allowed_tools=["a", "a"]), "lists a tool twice"),
    (stdio(comand="python"), "server #1 ('local'): comand: unknown key"),
    (stdio(transport="sse"), "transport must be 'stdio' or 'streamable-http'"),
    ({k: v for k, v in stdio().items() if k != "transport"}, "transport is missing"),
    (stdio(label="has space"), "label: Value error, 'has space' must be 1-64 letters"),
    (stdio(timeout_seconds=0), "timeout_seconds: Value error, must be a number of seconds > 0"),
    (stdio(tool_timeouts={"b": 5}), "tool_timeouts names tools that are not in allowed_tools: ['b']"),
    (stdio(tool_timeouts={"a": -1}), "tool 'a': must be a number of seconds"),
    (stdio(tool_prefix="gh."), "tool_prefix"),
    (stdio(env={"BAD-NAME": "x"}), "is not an environment variable name"),
    (stdio(command=""), "command"),
    (http(url="ftp://x/mcp"), "must be an http:// or https:// URL"),
    (http(url="https://user:pw@x/mcp"), "must not carry credentials"),
    (http(headers={"Authorization": "Bearer literal-token"}), "literal header values are not accepted"),
    (http(headers={"Authorization": {"env": "T", "value": "x"}}), "headers.Authorization.value: unknown key"),
    (http(headers={"Bad Header": {"env": "T"}}), "is not an HTTP header name"),
])
def test_a_bad_entry_fails_with_a_message_naming_it(tmp_path, entry, expected):
    message = error_of(servers_json(tmp_path, entry))
    assert "mcp_servers file" in message and "servers.json" in message
    assert expected in message


def test_the_second_entry_is_named_by_position_and_label(tmp_path):
    message = error_of(servers_json(tmp_path, stdio(), http(label="remote", allowed_tools="some")))
    assert "server #2 ('remote'): allowed_tools" in message


def test_labels_must_be_unique(tmp_path):
    assert "the label 'local' is used by two servers" in error_of(servers_json(tmp_path, stdio(), stdio()))


def test_an_unset_environment_variable_fails_naming_server_header_and_variable(tmp_path):
    path = servers_json(tmp_path, http(headers={"Authorization": {"env": "MISSING_TOKEN", "prefix": "Bearer "}}))
    message = error_of(path, environ={})
    assert "server 'remote'" in message and "header 'Authorization'" in message and "'MISSING_TOKEN'" in message
    message = error_of(servers_json(tmp_path, stdio(env={"KEY": {"env": "NOPE"}})), environ={})
    assert "server 'local'" in message and "env 'KEY'" in message and "'NOPE'" in message


@pytest.mark.parametrize("text, expected", [
    ("servers:\n  - label: a\n    label: b\n", "not valid YAML: the key 'label' appears twice"),
    ("servers: [\n", "not valid YAML"),
    ("servers: []\nextra: 1\n", "extra: unknown key"),
    ("- label: a\n", "the document must be a mapping with a 'servers' list, got list"),
    ("", "got an empty document"),
    ("servers: {a: 1}\n", "servers: Input should be a valid list"),
])
def test_a_bad_yaml_document_fails(tmp_path, text, expected):
    assert expected in error_of(write(tmp_path, text))


def test_duplicate_json_keys_fail(tmp_path):
    path = write(tmp_path, '{"servers": [], "servers": []}', "servers.json")
    assert "the key 'servers' appears twice" in error_of(path)


def test_unknown_extensions_and_missing_files_fail(tmp_path):
    assert "name it *.yaml, *.yml or *.json" in error_of(write(tmp_path, "servers: []", "servers.toml"))
    assert "cannot read it" in error_of(tmp_path / "absent.yaml")


def test_the_mcp_servers_parameter_is_optional_and_must_name_a_file(tmp_path):
    base = {"tokenizer_dir": str(tmp_path), "max_context_tokens": "4096"}
    assert parse_parameters(base).mcp_servers is None
    assert parse_parameters({**base, "mcp_servers": ""}).mcp_servers is None
    path = write(tmp_path, GOOD_YAML)
    assert parse_parameters({**base, "mcp_servers": str(path)}).mcp_servers == str(path)
    with pytest.raises(ConfigError, match="parameter 'mcp_servers': .* is not a file"):
        parse_parameters({**base, "mcp_servers": str(tmp_path / "nope.yaml")})


def test_the_configure_step_fills_mcp_servers_empty_by_default_and_as_set(tmp_path):
    """The start scripts pass MCP_SERVERS_FILE as `--set mcp_servers=...`; without it the parameter is empty."""
    from deploy.configure_repository import main
    from function_calling_agent.model_config import read_model_config

    def filled(*extra: str) -> dict:
        output = tmp_path / f"repo{len(extra)}"
        assert main(["--profile", "cpu", "--output", str(output), "--set", f"tokenizer_dir={tmp_path}",
                     "--set", f"model_dir={tmp_path}", *extra]) == 0
        config = read_model_config(output / "function_calling_agent" / "config.pbtxt")
        return {k: v.string_value for k, v in config.parameters.items()}

    assert parse_parameters(filled(), check_paths=False).mcp_servers is None
    path = write(tmp_path, GOOD_YAML)
    assert parse_parameters(filled("--set", f"mcp_servers={path}")).mcp_servers == str(path)
