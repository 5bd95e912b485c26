"""`python -m deploy.perf_analyzer` (the README's perf_analyzer command) against a real server, with no
LD_LIBRARY_PATH set up by hand: the wrapper finds libcudart.so.12 and libb64 itself."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.triton_launcher import perf_analyzer_path
from function_calling_agent.scripted_engine.repository import make_scripted_engine
from tests.support.agent_repo import make_agent_model

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parent.parent


def bare_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}


def test_the_bare_binary_needs_the_wrapper():
    # Why the wrapper exists: the wheel's binary cannot start without the CUDA runtime on the library path.
    bare = subprocess.run([str(perf_analyzer_path()), "--version"], env=bare_env(), capture_output=True, text=True,
                          timeout=60)
    assert bare.returncode != 0 and "libcudart.so.12" in bare.stderr, (bare.returncode, bare.stderr)
    wrapped = subprocess.run([sys.executable, "-m", "deploy.perf_analyzer", "--version"], cwd=REPO_ROOT,
                             env=bare_env(), capture_output=True, text=True, timeout=60)
    assert wrapped.returncode == 0, wrapped.stderr
    assert "Perf Analyzer Version 2.51" in wrapped.stdout + wrapped.stderr


def test_wrapper_measures_the_agent_over_grpc_streaming(triton_server_factory, tmp_path, hermes_tokenizer_dir):
    repo = tmp_path / "repo"
    repo.mkdir()
    make_scripted_engine(repo, {"default_turns": ["Hello from the scripted engine."]}, hermes_tokenizer_dir)
    make_agent_model(repo, hermes_tokenizer_dir, tool_modules="scripted_tools")
    server = triton_server_factory(repo)
    data = tmp_path / "prompt.json"
    data.write_text(json.dumps({"data": [{"text_input": ["Hi"], "max_tokens": [16], "stream": [True]}]}))
    report = tmp_path / "perf.csv"
    # The README's command, with this server's port and a short count-based measurement.
    done = subprocess.run(
        [sys.executable, "-m", "deploy.perf_analyzer", "-m", "function_calling_agent", "-u", server.grpc_url,
         "-i", "grpc", "--streaming", "--input-data", str(data), "--concurrency-range", "2:2",
         "--measurement-mode", "count_windows", "--measurement-request-count", "10", "-s", "100",
         "--max-trials", "6", "-f", str(report)],
        cwd=REPO_ROOT, env=bare_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = list(csv.DictReader(report.open()))
    assert len(rows) == 1 and rows[0]["Concurrency"] == "2", rows
    assert float(rows[0]["Inferences/Second"]) > 0, rows
