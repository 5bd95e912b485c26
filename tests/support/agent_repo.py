"""Put function_calling_agent (from model_repository/) into a test model repository.

    make_agent_model(repo, tokenizer_dir, tool_modules="scripted_tools", parameters={"max_iterations": "3"})

Test tool modules under tests/models/tool_modules/ are copied beside the agent's model.py, where the model imports
them from (the model folder is on its sys.path), so tests never touch the real network.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Mapping, Optional

REPO_ROOT = Path(__file__).resolve().parents[2]
AGENT_SOURCE = REPO_ROOT / "model_repository" / "function_calling_agent"
TEST_TOOL_MODULES = REPO_ROOT / "tests" / "models" / "tool_modules"
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z0-9_]+)\}")


def set_parameter(config_text: str, key: str, value: str) -> str:
    """Sets (or adds) a string parameter in a config.pbtxt text."""
    entry = f'parameters: {{ key: "{key}" value: {{ string_value: "{value}" }} }}'
    pattern = re.compile(r'parameters:\s*\{\s*key:\s*"' + re.escape(key) + r'"\s*value:\s*\{[^}]*\}\s*\}')
    if pattern.search(config_text):
        return pattern.sub(lambda _: entry, config_text)
    return config_text.rstrip("\n") + "\n" + entry + "\n"


def make_agent_model(
    repo_dir: str | os.PathLike,
    tokenizer_dir: str | os.PathLike,
    *,
    tool_modules: str = "scripted_tools",
    parameters: Optional[Mapping[str, str]] = None,
    max_context_tokens: int = 4096,
    instance_count: int = 1,
    model_name: str = "function_calling_agent",
) -> Path:
    target = Path(repo_dir) / model_name
    shutil.copytree(AGENT_SOURCE, target, ignore=shutil.ignore_patterns("__pycache__"))
    for module in TEST_TOOL_MODULES.glob("*.py"):
        shutil.copy(module, target / "1" / module.name)
    values = {
        "triton_max_batch_size": "64",
        "agent_instance_count": str(instance_count),
        "tokenizer_dir": str(Path(tokenizer_dir).resolve()),
        "tool_modules": tool_modules,
        "max_context_tokens": str(max_context_tokens),
        "request_timeout_seconds": "120",
        "engine_idle_timeout_seconds": "60",
    }
    config_path = target / "config.pbtxt"
    text = _PLACEHOLDER.sub(lambda m: values[m.group(1)], config_path.read_text(encoding="utf-8"))
    for key, value in (parameters or {}).items():
        text = set_parameter(text, key, value)
    config_path.write_text(text, encoding="utf-8")
    return target
