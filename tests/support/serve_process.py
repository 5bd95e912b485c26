"""`python -m deploy.serve` / `./serve.sh` run as a user runs them, for the tests of the main command.

    run = ServeRun.module(tmp_path, ["--plumbing-check"], env={})    # python -m deploy.serve, free ports
    run.wait_for_line("serve: ready", timeout=240)
    ...
    assert run.stop() == 0   # SIGTERM; tritonserver must be gone too
    run.kill()               # in a finally: nothing left running
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Sequence

from deploy.triton_launcher import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]


def _children(pid: int) -> list[int]:
    pids = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            pids += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            pass
    return pids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


class ServeRun:
    """The serve command as a user runs it, from the repository root, on free ports: its output line by line (stdout
    and stderr together), its tritonserver child."""

    # serve says so in one line when a port it was given is taken; the test then starts it again on other ports.
    PORT_TAKEN = "is in use"
    ATTEMPTS = 5

    def __init__(self, command: Sequence[str], env: dict[str, str]):
        self._command, self._env = list(command), env
        self.attempts = 0
        self.servers: list[int] = []
        self._start()

    def _start(self) -> None:
        # Free now, but another process may take one before serve binds it: wait_for_line retries on new ports.
        self.ports = {"http": free_port(), "grpc": free_port(), "metrics": free_port(), "openai": free_port()}
        self.attempts += 1
        command = [*self._command,
                   *(item for name, port in self.ports.items() for item in (f"--{name}-port", str(port)))]
        self.process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True, env={**os.environ, "PYTHONUNBUFFERED": "1", **self._env})
        self.lines: queue.Queue = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._pump, args=(self.process, self.lines, self.output), daemon=True).start()

    @classmethod
    def module(cls, tmp_path: Path, args: Sequence[str], env: dict[str, str]) -> "ServeRun":
        """`python -m deploy.serve --state-dir TMP/state ARGS`."""
        return cls([sys.executable, "-m", "deploy.serve", "--state-dir", str(tmp_path / "state"), *args], env)

    @staticmethod
    def _pump(process, lines: queue.Queue, output: list):
        for line in process.stdout:
            output.append(line)
            lines.put(line)
        lines.put(None)

    @property
    def text(self) -> str:
        return "".join(self.output)

    def wait_for_line(self, prefix: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            if line is None and self.PORT_TAKEN in self.text and self.attempts < self.ATTEMPTS:
                self.process.wait(timeout=30)
                self._start()
                continue
            assert line is not None, f"serve exited before {prefix!r}:\n{self.text}"
            if line.startswith(prefix):
                if not self.servers:
                    self.servers = _children(self.process.pid)
                return line

    def stop(self) -> int:
        assert self.servers, "serve has no child process (tritonserver)"
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=30)
        assert not [pid for pid in self.servers if _alive(pid)], f"tritonserver still running: {self.servers}"
        return code

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for pid in self.servers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


