"""The test MCP servers (tests/models/mcp_servers/demo_mcp_server.py): an HTTP one the test runs, stdio entries the
agent spawns itself, and the mcp_servers files that point at them.

    with HttpMcpServer(state_dir, label="remote") as http:
        write_servers_file(path, [stdio_entry("local", state_dir), http_entry("remote", http.url)])
        http.kill(); http.start()      # same socket, same URL: the port is never released
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import requests

DEMO_SERVER = Path(__file__).resolve().parents[1] / "models" / "mcp_servers" / "demo_mcp_server.py"
DEMO_TOOLS = ["create_order", "timed_echo", "fail", "read_web_page", "picture", "whoami", "add_tool"]


def wait_for(condition, timeout: float, what: str, interval: float = 0.02):
    """Polls `condition()` until it returns a true value (returned) or `timeout` seconds pass (AssertionError)."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


class HttpMcpServer:
    """The demo server over streamable HTTP on a loopback socket bound to port 0 and kept open by this object."""

    def __init__(self, state_dir: Path, label: str = "remote", env: Optional[dict] = None):
        self.state_dir = Path(state_dir)
        self.label = label
        self.env = env or {}
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(64)
        self.port = self._socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.process: Optional[subprocess.Popen] = None

    def start(self, timeout: float = 30.0) -> "HttpMcpServer":
        fd = self._socket.fileno()
        env = {**os.environ, "DEMO_STATE_DIR": str(self.state_dir), "DEMO_LABEL": self.label, **self.env}
        self.process = subprocess.Popen([sys.executable, str(DEMO_SERVER), "http", "--fd", str(fd),
                                         "--label", self.label], pass_fds=[fd], env=env)

        def answers():
            if self.process.poll() is not None:
                raise AssertionError(f"the HTTP MCP server exited with {self.process.returncode}")
            try:
                # Any HTTP answer means uvicorn serves (a GET without a session is refused with 4xx).
                return requests.get(self.url, timeout=2).status_code > 0
            except requests.RequestException:
                return False

        wait_for(answers, timeout, "the HTTP MCP server to answer", interval=0.05)
        return self

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def close(self) -> None:
        self.kill()
        self._socket.close()

    def __enter__(self) -> "HttpMcpServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def stdio_entry(label: str, state_dir: Path, **fields) -> dict:
    return {"label": label, "transport": "stdio", "command": sys.executable, "args": [str(DEMO_SERVER), "stdio"],
            "env": {"DEMO_STATE_DIR": str(state_dir), "DEMO_LABEL": label},
            "allowed_tools": fields.pop("allowed_tools", DEMO_TOOLS), **fields}


def http_entry(label: str, url: str, **fields) -> dict:
    return {"label": label, "transport": "streamable-http", "url": url,
            "allowed_tools": fields.pop("allowed_tools", DEMO_TOOLS), **fields}


def write_servers_file(path: Path, servers: list[dict]) -> Path:
    path = Path(path)
    path.write_text(json.dumps({"servers": servers}, indent=1), encoding="utf-8")
    return path


def server_pid(state_dir: Path, label: str) -> int:
    return int((Path(state_dir) / f"pid-{label}").read_text())
