"""Pytest-side handle on real tritonserver processes started through deploy.triton_launcher."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

from deploy.triton_launcher import TritonServer

READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0


@dataclass
class RunningServer:
    server: TritonServer
    _clients: list = field(default_factory=list)

    @property
    def http_url(self) -> str:
        return self.server.urls["http"]

    @property
    def grpc_url(self) -> str:
        return self.server.urls["grpc"]

    @property
    def metrics_url(self) -> str:
        return self.server.urls["metrics"]

    @property
    def pid(self) -> int:
        return self.server.pid

    def grpc_client(self, **kwargs):
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(self.grpc_url, **kwargs)
        self._clients.append(client)
        return client

    def http_client(self, **kwargs):
        import tritonclient.http as httpclient

        client = httpclient.InferenceServerClient(self.http_url, **kwargs)
        self._clients.append(client)
        return client

    def log_text(self) -> str:
        return self.server.log_text()

    def log_tail(self, lines: int = 80) -> str:
        return self.server.log_tail(lines)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        for client in self._clients:
            try:
                if hasattr(client, "stop_stream"):
                    client.stop_stream()
                client.close()
            except Exception:  # a client left broken by the test must not mask the server shutdown
                pass
        self._clients.clear()
        return self.server.stop(timeout)


class TritonServerFactory:
    """Starts servers on free loopback ports and stops every one of them at teardown."""

    def __init__(self, log_dir: str | os.PathLike) -> None:
        self.log_dir = os.fspath(log_dir)
        self.servers: list[RunningServer] = []

    def __call__(self, model_repository, ready_timeout: float = READY_TIMEOUT_S, **options) -> RunningServer:
        options.setdefault("log_path", os.path.join(self.log_dir, f"server-{len(self.servers)}.log"))
        server = TritonServer(model_repository, **options)
        running = RunningServer(server)
        self.servers.append(running)
        server.launch(ready_timeout)
        return running

    def stop_all(self) -> None:
        # Kept in the list so a failure report made at teardown still shows their logs; stop() is idempotent.
        for running in reversed(self.servers):
            running.stop()

    def log_report(self, lines: int = 80) -> str:
        parts = []
        for index, running in enumerate(self.servers):
            parts.append(
                f"--- tritonserver #{index} pid={running.pid} http={running.http_url} "
                f"log={running.server.log_path} (last {lines} lines) ---\n{running.log_tail(lines)}"
            )
        return "\n".join(parts)


StartServer = Callable[..., RunningServer]
