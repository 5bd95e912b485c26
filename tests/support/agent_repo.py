"""Put function_calling_agent into a test model repository, offering the test tool modules.

    make_agent_model(repo, tokenizer_dir, tool_modules="scripted_tools", parameters={"max_iterations": "3"})

The test tool modules under tests/models/tool_modules/ reach the model through its `tool_path` parameter, so tests
never touch the real network.
"""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path
from typing import Mapping, Optional

from deploy.configure_repository import make_agent_model as _make_agent_model
from function_calling_agent.tools import load_tool_modules

TEST_TOOL_MODULES = Path(__file__).resolve().parents[1] / "models" / "tool_modules"


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
    return _make_agent_model(repo_dir, tokenizer_dir, tool_modules=tool_modules, tool_path=[TEST_TOOL_MODULES],
                             parameters=parameters, max_context_tokens=max_context_tokens,
                             instance_count=instance_count, model_name=model_name)


def import_test_tool_module(name: str) -> types.ModuleType:
    """A test tool module imported in this process the way the model imports it (from its tool_path)."""
    load_tool_modules([name], [str(TEST_TOOL_MODULES)])
    return sys.modules[name]
