"""engine_build/build_engine.sh runs download -> convert -> trtllm-build once and skips what is already done.

The container's tools (hf, python3 running convert_checkpoint.py, trtllm-build) are replaced by recording stubs on
PATH, and the TensorRT-LLM sources cache is pre-seeded, so no network, GPU or container is needed."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "engine_build" / "build_engine.sh"
STOCK_FIXTURE = Path(__file__).parent / "fixtures" / "stock_inflight_batcher_llm"

# Each stub appends its command line to $CALLS and writes the file its real counterpart would.
STUBS = {
    "hf": 'echo "hf $*" >> "$CALLS"; while [ $# -gt 0 ]; do [ "$1" = --local-dir ] && d="$2"; shift; done\n'
          'echo "{}" > "$d/config.json"\n',
    "python3": 'echo "python3 $*" >> "$CALLS"\n',
    "trtllm-build": 'echo "trtllm-build $*" >> "$CALLS"; while [ $# -gt 0 ]; do [ "$1" = --output_dir ] && d="$2"; '
                    'shift; done\necho "{}" > "$d/config.json"\n',
}


def read_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "deploy" / "versions.env").read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            pins[key] = value
    return pins


@pytest.fixture
def sandbox(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in STUBS.items():
        stub = bin_dir / name
        stub.write_text("#!/bin/sh\n" + body)
        stub.chmod(0o755)
    pins = read_pins()
    checkout = tmp_path / "sources" / f"TensorRT-LLM-{pins['TRTLLM_GIT_TAG']}"
    shutil.copytree(STOCK_FIXTURE, checkout / "triton_backend" / "all_models" / "inflight_batcher_llm")
    convert = checkout / "examples" / "models" / "core" / "llama" / "convert_checkpoint.py"
    convert.parent.mkdir(parents=True)
    convert.touch()
    paths = "triton_backend/all_models/inflight_batcher_llm triton_backend/scripts examples/models/core/llama"
    (checkout / ".fetched").write_text(f"repo={pins['TRTLLM_GIT_REPO']} tag={pins['TRTLLM_GIT_TAG']} paths={paths}")
    return tmp_path


def build(sandbox: Path, *args: str) -> list[str]:
    calls = sandbox / "calls"
    calls.write_text("")
    env = {"PATH": f"{sandbox / 'bin'}:/usr/bin:/bin", "CALLS": str(calls), "HOME": str(sandbox)}
    result = subprocess.run(
        ["bash", str(BUILD), "--checkpoint-dir", str(sandbox / "ckpt"), "--work-dir", str(sandbox / "work"),
         "--output", str(sandbox / "engine"), "--sources-dir", str(sandbox / "sources"), *args],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return calls.read_text().splitlines()


def test_first_run_downloads_converts_and_builds_with_agent_limits(sandbox):
    calls = build(sandbox)
    assert [call.split()[0] for call in calls] == ["hf", "python3", "trtllm-build"]
    assert calls[0].startswith("hf download NousResearch/Hermes-2-Pro-Llama-3-8B --revision main")
    assert "examples/models/core/llama/convert_checkpoint.py" in calls[1]
    assert "--dtype bfloat16 --tp_size 1" in calls[1]
    flags = calls[2].split()
    for flag, value in [("--max_input_len", "7168"), ("--max_seq_len", "8192"), ("--max_batch_size", "64"),
                        ("--use_paged_context_fmha", "enable"), ("--kv_cache_type", "paged"),
                        ("--remove_input_padding", "enable"), ("--gpt_attention_plugin", "auto")]:
        assert flags[flags.index(flag) + 1] == value, flag
    assert (sandbox / "engine" / "config.json").is_file()


def test_second_run_skips_every_step(sandbox):
    build(sandbox)
    assert build(sandbox) == []


def test_changed_limits_rebuild_only_the_engine(sandbox):
    build(sandbox)
    calls = build(sandbox, "--max-batch-size", "8")
    assert [call.split()[0] for call in calls] == ["trtllm-build"]
    assert "--max_batch_size 8" in calls[0]


def test_changed_dtype_reconverts(sandbox):
    build(sandbox)
    calls = build(sandbox, "--dtype", "float16")
    assert [call.split()[0] for call in calls] == ["python3", "trtllm-build"]


def test_a_checkpoint_dir_holding_another_model_is_refused(sandbox):
    build(sandbox)
    env = {"PATH": f"{sandbox / 'bin'}:/usr/bin:/bin", "CALLS": str(sandbox / "calls"), "HOME": str(sandbox)}
    result = subprocess.run(
        ["bash", str(BUILD), "--model", "org/other-model", "--checkpoint-dir", str(sandbox / "ckpt"),
         "--sources-dir", str(sandbox / "sources"), "--work-dir", str(sandbox / "work")],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert result.returncode != 0
    assert "holds 'model=NousResearch/Hermes-2-Pro-Llama-3-8B" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--dtype", "fp8"], "--dtype must be bfloat16 or float16"),
    (["--max-input-len", "9000"], "must be below --max-seq-len"),
    (["--tp-size", "0"], "--tp-size must be a positive integer"),
    (["--bogus"], "unknown argument"),
])
def test_bad_flags_are_rejected(sandbox, args, message):
    result = subprocess.run(["bash", str(BUILD), *args], capture_output=True, text=True, timeout=30,
                            env={"PATH": "/usr/bin:/bin"})
    assert result.returncode != 0 and message in result.stderr


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "deploy").glob("*.sh")) + ["build_engine.sh"])
def test_shell_scripts_parse_and_are_executable(script):
    path = ROOT / "deploy" / script if (ROOT / "deploy" / script).exists() else ROOT / "engine_build" / script
    assert os.access(path, os.X_OK), f"{path} is not executable"
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
