"""The README's main command as a user meets it: `./serve.sh --help` before any set-up, and every start-up problem
ending in one line that says what to change, with tritonserver's full log left in the state dir.

Real listeners hold the ports, a real tritonserver fails to load a missing tool module, the hub check runs through
huggingface_hub against unreachable, failing and proxied endpoints on loopback. The offline demo (the tiny model and
its tool round) is in test_cpu_profile.py.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import shutil
import socket
import socketserver
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from deploy import serve
from deploy.triton_launcher import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = {"default_turns": ["Hello."]}


@pytest.fixture
def script(tmp_path) -> Path:
    path = tmp_path / "script.json"
    path.write_text(json.dumps(SCRIPT))
    return path


def ports() -> list[str]:
    return ["--http-port", str(free_port()), "--grpc-port", str(free_port()), "--metrics-port", str(free_port()),
            "--openai-port", str(free_port())]


def run_serve(tmp_path, *args: str, env: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "deploy.serve", "--state-dir", str(tmp_path / "state"), "--no-demo", *args]
    return subprocess.run(command, cwd=REPO_ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one line a failed start prints on stderr."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("serve: error: "), lines
    assert "Traceback" not in result.stdout + result.stderr
    return lines[0]


@pytest.fixture
def dead_port() -> int:
    """A loopback port nothing listens on (connections are refused)."""
    return free_port()


def test_help_prints_before_the_setup_with_the_standard_library_only():
    through_script = subprocess.run(["bash", "serve.sh", "--help"], cwd=REPO_ROOT, capture_output=True, text=True,
                                    timeout=60)
    assert through_script.returncode == 0, through_script.stderr
    assert "[setup_env]" not in through_script.stdout + through_script.stderr
    # -S: no site-packages at all, so any third-party import at the top of deploy/serve.py would fail here.
    bare = subprocess.run([sys.executable, "-S", "-m", "deploy.serve", "--help"], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=60)
    assert bare.returncode == 0, bare.stderr
    for text in (through_script.stdout, bare.stdout):
        assert text.startswith("usage: ./serve.sh")
        for action in serve.build_parser()._actions:
            for option in action.option_strings:
                assert option in text, option


def test_every_flag_has_help():
    for action in serve.build_parser()._actions:
        assert action.help and action.help != argparse.SUPPRESS, action.option_strings


@pytest.mark.parametrize("flag", ["--http-port", "--grpc-port", "--metrics-port", "--openai-port"])
def test_a_port_in_use_is_one_line_naming_the_flag(tmp_path, script, flag):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        taken = listener.getsockname()[1]
        arguments = ports()
        arguments[arguments.index(flag) + 1] = str(taken)
        line = error_line(run_serve(tmp_path, "--engine", "scripted", "--script", str(script), *arguments))
    assert f"port {taken} on 127.0.0.1 is in use" in line and f"pass {flag} with a free port" in line, line


@pytest.mark.integration
def test_a_port_taken_while_starting_is_reported_from_tritonserver(tmp_path, script, monkeypatch, capsys):
    # The check before the build passes, then another process takes the port: tritonserver's own failure is the one
    # line. (The check is skipped here to open that window deterministically.)
    monkeypatch.setattr(serve, "check_ports", lambda host, ports: None)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        taken = listener.getsockname()[1]
        arguments = ports()
        arguments[arguments.index("--grpc-port") + 1] = str(taken)
        code = serve.main(["--state-dir", str(tmp_path / "state"), "--no-demo", "--engine", "scripted",
                           "--script", str(script), *arguments])
    assert code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert f"port 127.0.0.1:{taken} (GRPC) is in use" in lines[0] and "pass --grpc-port" in lines[0], lines
    assert "already in use" in (tmp_path / "state" / "tritonserver.log").read_text()


@pytest.mark.integration
def test_a_missing_tool_module_is_one_line_naming_it_and_the_search_path(tmp_path, script):
    tools = tmp_path / "my_tools"
    tools.mkdir()
    result = run_serve(tmp_path, "--engine", "scripted", "--script", str(script), "--tool-path", str(tools),
                       "--tool-modules", "function_calling_agent.tools.finance,my_weather_tools", *ports())
    line = error_line(result)
    assert "model function_calling_agent failed to load" in line, line
    assert f"tool module 'my_weather_tools' not found in the tool_path ['{tools}']" in line, line
    assert "--tool-path DIR" in line, line
    log = tmp_path / "state" / "tritonserver.log"
    assert f"(full log: {log})" in line, line
    assert "my_weather_tools" in log.read_text() and "initialize" in log.read_text()  # the full stack stays there
    assert "starting tritonserver" in result.stdout


def test_a_missing_tool_path_folder_is_one_line(tmp_path, script):
    line = error_line(run_serve(tmp_path, "--engine", "scripted", "--script", str(script), "--tool-path",
                                str(tmp_path / "nope"), *ports()))
    assert f"--tool-path {tmp_path / 'nope'}: no such directory" in line


def test_a_bad_script_is_one_line_naming_the_field(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"scenarios": [{"name": "x", "match": "y"}], "default_turns": ["Hi."]}))
    line = error_line(run_serve(tmp_path, "--engine", "scripted", "--script", str(bad), *ports()))
    assert f"--script {bad}" in line and "scenarios[0].turns" in line, line
    assert "--engine scripted needs --script FILE" in error_line(run_serve(tmp_path, "--engine", "scripted", *ports()))


def test_model_paths_that_are_not_checkpoints_are_one_line(tmp_path, dead_port):
    offline = {"HF_ENDPOINT": f"http://127.0.0.1:{dead_port}"}
    no_config = tmp_path / "empty-checkpoint"
    no_config.mkdir()
    a_file = tmp_path / "model.safetensors"
    a_file.write_bytes(b"")
    cases = {
        str(tmp_path / "missing" / "ckpt"): "no such directory (and not a Hugging Face model id like org/name)",
        "./missing-checkpoint": "no such directory",
        str(no_config): "has no config.json: point it at a Hugging Face checkpoint directory",
        str(a_file): "is a file: point it at a Hugging Face checkpoint directory",
        # Could be a relative path or a model id: the line says it is neither here nor downloadable, and why.
        "checkpoints/qwen": f"is not a local directory, and the Hugging Face hub (http://127.0.0.1:{dead_port}) "
                            "cannot serve it (ConnectError",
    }
    for model, expected in cases.items():
        line = error_line(run_serve(tmp_path, "--model", model, *ports(), env=offline, timeout=60))
        assert line.startswith(f"serve: error: --model {model}") and expected in line, line
    assert "check the network and HTTPS_PROXY / NO_PROXY" in line


class _FailingHub(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"error": "the hub is down for maintenance"}')

    def log_message(self, *args):
        pass


class _RecordingProxy(socketserver.StreamRequestHandler):
    """A proxy that refuses every CONNECT and records what it was asked."""

    seen: list[str] = []

    def handle(self):
        self.seen.append(self.rfile.readline().decode("latin-1").strip())
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass
        self.wfile.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


def _serving(server):
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_a_hub_answering_an_error_is_one_line(tmp_path):
    with _serving(http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FailingHub)) as hub:
        endpoint = f"http://127.0.0.1:{hub.server_address[1]}"
        line = error_line(run_serve(tmp_path, "--model", "org/some-model", *ports(), env={"HF_ENDPOINT": endpoint},
                                    timeout=120))
        hub.shutdown()
    assert f"the Hugging Face hub ({endpoint}) cannot serve it (HTTP 503" in line, line
    assert "try again later, or pass a local checkpoint directory" in line


def test_the_hub_check_goes_through_https_proxy_unless_no_proxy(tmp_path):
    _RecordingProxy.seen = []
    with _serving(socketserver.ThreadingTCPServer(("127.0.0.1", 0), _RecordingProxy)) as proxy:
        env = {"HTTPS_PROXY": f"http://127.0.0.1:{proxy.server_address[1]}", "HF_ENDPOINT": "https://huggingface.co"}
        line = error_line(run_serve(tmp_path, "--model", "org/some-model", *ports(), env=env, timeout=120))
        assert "cannot serve it (ProxyError: 403 Forbidden)" in line, line
        assert _RecordingProxy.seen and all(s.startswith("CONNECT huggingface.co:443 ") for s in _RecordingProxy.seen)
        _RecordingProxy.seen = []
        # NO_PROXY names the hub: it is asked directly (and may or may not answer from here), never through the proxy.
        run_serve(tmp_path, "--model", "org/some-model", *ports(), env={**env, "NO_PROXY": "huggingface.co"},
                  timeout=120)
        assert _RecordingProxy.seen == []
        proxy.shutdown()


def test_a_failed_download_is_one_line_with_the_details_kept(tmp_path):
    with _serving(http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FailingHub)) as hub:
        endpoint = f"http://127.0.0.1:{hub.server_address[1]}"
        result = subprocess.run(
            [sys.executable, "-c", "import sys; from pathlib import Path; from deploy import serve\n"
             "try:\n    serve.download('org/some-model', Path(sys.argv[1]) / 'ckpt', Path(sys.argv[1]))\n"
             "except serve.ServeError as exc:\n    print(exc)\n", str(tmp_path)],
            cwd=REPO_ROOT, env={**os.environ, "HF_ENDPOINT": endpoint}, capture_output=True, text=True, timeout=120)
        hub.shutdown()
    lines = [line for line in result.stdout.splitlines() if not line.startswith("serve: downloading")]
    assert len(lines) == 1, result.stdout + result.stderr
    assert lines[0].startswith(f"downloading org/some-model from {endpoint} failed: HfHubHTTPError: Server error "
                               "'503 Service Unavailable'"), lines
    assert f"(details in {tmp_path / 'download.log'}; run again to resume)" in lines[0], lines
    assert "Traceback" in (tmp_path / "download.log").read_text()


def test_offline_without_the_finance_tools_says_how_to_try_other_tools(tmp_path, dead_port):
    tools = tmp_path / "tools"
    shutil.copytree(REPO_ROOT / "examples" / "custom_tools", tools)
    line = error_line(run_serve(tmp_path, "--tool-path", str(tools), "--tool-modules", "my_weather_tools", *ports(),
                                env={"HF_ENDPOINT": f"http://127.0.0.1:{dead_port}"}, timeout=120))
    assert "no checkpoint can be had" in line and "the offline demo model needs the finance tools" in line, line
    assert "--engine scripted --script FILE (docs/tools.md)" in line, line


@pytest.mark.integration
def test_serve_starts_the_openai_endpoint_and_prints_how_to_use_it(tmp_path, script):
    from openai import OpenAI

    from tests.support.serve_process import ServeRun

    run = ServeRun.module(tmp_path, ["--engine", "scripted", "--script", str(script), "--no-demo"], {})
    try:
        run.wait_for_line("serve: serving until Ctrl-C", 240)
        base_url = f"http://127.0.0.1:{run.ports['openai']}/v1"
        assert f"serve: OpenAI-compatible endpoint {base_url}" in run.text
        assert f"curl -N {base_url}/chat/completions" in run.text and f"OpenAI(base_url='{base_url}'" in run.text
        # The printed openai example runs as printed, from the repository root: its interpreter has the package.
        example = next(line for line in run.text.splitlines() if "-c \"from openai import OpenAI" in line)
        assert example.startswith(".venv/bin/python -c ") or example.startswith("/"), example
        done = subprocess.run(example, shell=True, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and done.stdout.strip(), (example, done.stderr)
        client = OpenAI(base_url=base_url, api_key="none")
        reply = client.chat.completions.create(model="function_calling_agent",
                                               messages=[{"role": "user", "content": "hello"}])
        assert reply.choices[0].finish_reason == "stop" and reply.choices[0].message.content
        assert run.stop() == 0, run.text
        with pytest.raises(OSError):  # the gateway stopped with serve
            socket.create_connection(("127.0.0.1", run.ports["openai"]), timeout=2).close()
    finally:
        run.kill()
