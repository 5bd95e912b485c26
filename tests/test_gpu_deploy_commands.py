"""The GPU deployment's commands run as written, with no GPU or container: the README's manual configure command and
the compose path's deploy/start_triton_gpu.sh, against TensorRT-LLM sources pre-seeded at the pinned tag (so
fetch_stock_models.sh finds them fetched) and a `tritonserver` stand-in that records its command line.

The recorded command line is then what the agent's `engine_url: self` reads: the gRPC endpoint it resolves to.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.configure_repository import STOCK_MODELS
from function_calling_agent.adapter.grpc_engine import resolve_engine_url
from function_calling_agent.model_config import find_placeholders, read_model_config

ROOT = Path(__file__).resolve().parent.parent
STOCK_FIXTURE = Path(__file__).parent / "fixtures" / "stock_inflight_batcher_llm"
MODELS = set(STOCK_MODELS) | {"function_calling_agent"}


def _pins() -> dict[str, str]:
    lines = (ROOT / "deploy" / "versions.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


@pytest.fixture
def sources(tmp_path: Path) -> Path:
    """A TensorRT-LLM sources folder as fetch_stock_models.sh leaves it (our fixture in the stock layout)."""
    pins = _pins()
    checkout = tmp_path / "trtllm-sources" / f"TensorRT-LLM-{pins['TRTLLM_GIT_TAG']}"
    shutil.copytree(STOCK_FIXTURE, checkout / "triton_backend" / "all_models" / "inflight_batcher_llm")
    paths = "triton_backend/all_models/inflight_batcher_llm triton_backend/scripts examples/models/core/llama"
    (checkout / ".fetched").write_text(f"repo={pins['TRTLLM_GIT_REPO']} tag={pins['TRTLLM_GIT_TAG']} paths={paths}")
    return tmp_path / "trtllm-sources"


def _bin(tmp_path: Path) -> Path:
    """`python`/`python3` are this interpreter; `tritonserver` records its arguments, one per line."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("python", "python3"):  # a wrapper, not a symlink: the venv is found from the path it runs at
        (bin_dir / name).write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
        (bin_dir / name).chmod(0o755)
    server = bin_dir / "tritonserver"
    server.write_text('#!/bin/sh\nfor arg in "$0" "$@"; do echo "$arg"; done > "$TRITONSERVER_ARGS"\n')
    server.chmod(0o755)
    return bin_dir


def _check_repository(repository: Path) -> None:
    assert {p.name for p in repository.iterdir()} == MODELS
    for model in MODELS:
        text = (repository / model / "config.pbtxt").read_text(encoding="utf-8")
        assert find_placeholders(text) == frozenset(), model
    agent = read_model_config(repository / "function_calling_agent" / "config.pbtxt")
    assert agent.parameters["engine_transport"].string_value == "grpc"
    assert agent.parameters["engine_url"].string_value == "self"


def test_readme_gpu_configure_command_runs_as_written(tmp_path, sources):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```bash\n(.*?)```", readme[readme.index("## Deploying"):], re.S).group(1)
    gpu = block[block.index("# gpu:"):]
    assert "fetch_stock_models.sh /trtllm-sources" in gpu and "--output /models" in gpu
    script = gpu.replace("/trtllm-sources", str(sources)).replace("/models", str(tmp_path / "models"))
    env = {"PATH": f"{_bin(tmp_path)}:/usr/bin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    _check_repository(tmp_path / "models")


def test_compose_gpu_start_configures_and_serves_grpc_where_the_agent_looks(tmp_path, sources):
    engine_dir = tmp_path / "engine"
    engine_dir.mkdir()
    (engine_dir / "config.json").write_text(json.dumps({"build_config": {"plugin_config": {"tokens_per_block": 32}}}))
    args_file = tmp_path / "tritonserver.args"
    env = {"PATH": f"{_bin(tmp_path)}:/usr/bin:/bin", "HOME": str(tmp_path), "CHECKPOINT_DIR": "/checkpoints/x",
           "ENGINE_DIR": str(engine_dir), "TRTLLM_SOURCES_DIR": str(sources),
           "MODEL_REPOSITORY_DIR": str(tmp_path / "models"), "GRPC_PORT": "9101",
           "TRITONSERVER_ARGS": str(args_file)}
    result = subprocess.run(["bash", str(ROOT / "deploy" / "start_triton_gpu.sh")], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    _check_repository(tmp_path / "models")
    argv = args_file.read_text().splitlines()
    assert os.path.basename(argv[0]) == "tritonserver"
    # The agent (engine_url self) dials the gRPC port the script gave tritonserver.
    assert resolve_engine_url("self", argv) == ("127.0.0.1:9101", True)
