"""The gateway as a child process: started on a port (a free one, retried, when port is 0), ready once `/health` says
the agent model is ready, stopped with SIGTERM. Used by deploy/serve.py, the tests and the benchmark.

    with GatewayProcess(triton_url="localhost:8001", port=9000) as gateway:
        print(gateway.base_url)   # http://127.0.0.1:9000/v1
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from typing import Mapping, Optional

from . import API_KEY_ENV, command_line


# The gateway is this process's own child: its health check never goes through HTTP(S)_PROXY.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class GatewayProcess:
    def __init__(self, *, triton_url: str, port: int = 0, host: str = "127.0.0.1",
                 model: str = "function_calling_agent", served_model_name: Optional[str] = None,
                 api_key: Optional[str] = None, log_path: Optional[str] = None,
                 env: Optional[Mapping[str, str]] = None):
        self.triton_url = triton_url
        self.requested_port = port
        self.host = host
        self.model = model
        self.served_model_name = served_model_name
        self.api_key = api_key
        self.log_path = log_path
        self.env = dict(os.environ if env is None else env)
        self.port: Optional[int] = None
        self.process: Optional[subprocess.Popen] = None

    @property
    def base_url(self) -> str:
        """The OpenAI base URL (ends with /v1)."""
        return f"http://{'127.0.0.1' if self.host in ('0.0.0.0', '::') else self.host}:{self.port}/v1"

    def start(self, timeout: float = 120.0) -> "GatewayProcess":
        """Starts it and waits until it answers `/health` with 200; raises RuntimeError with its output otherwise."""
        attempts = 3 if self.requested_port == 0 else 1
        for attempt in range(attempts):
            self.port = self.requested_port or _free_port(self.host)
            env = dict(self.env)
            env.pop(API_KEY_ENV, None)
            if self.api_key:
                env[API_KEY_ENV] = self.api_key
            log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
            try:
                self.process = subprocess.Popen(
                    command_line(self.port, triton_url=self.triton_url, host=self.host, model=self.model,
                                 served_model_name=self.served_model_name),
                    stdout=log, stderr=subprocess.STDOUT, env=env)
            finally:
                if log is not subprocess.DEVNULL:
                    log.close()
            if self._wait_healthy(timeout):
                return self
            exited = self.process.poll() is not None
            self.stop()
            if not exited or attempt == attempts - 1:
                break  # a port taken between picking and binding exits at once: only that is retried
        raise RuntimeError(f"the gateway did not become healthy on port {self.port} within {timeout:g} s"
                           + (f"; see {self.log_path}" if self.log_path else ""))

    def _wait_healthy(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        url = f"http://{'127.0.0.1' if self.host in ('0.0.0.0', '::') else self.host}:{self.port}/health"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                with _DIRECT.open(url, timeout=2) as response:
                    if response.status == 200:
                        return True
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        return False

    def stop(self, timeout: float = 10.0) -> Optional[int]:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def __enter__(self) -> "GatewayProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
