"""Start the real tritonserver 2.51 bundled in the nvidia-pytriton wheel, with Python models run in this venv.

The Python backend stub embeds libpython and finds its prefix by searching PATH for `python3`, so the server gets
this interpreter's `bin/` first on PATH and its LIBDIR on LD_LIBRARY_PATH (PYTHONPATH is ignored by the stub).
The wheel ships one stub per Python version beside the backend; we assemble a backends dir holding the stub that
matches the running interpreter.

CLI: python -m deploy.triton_launcher --model-repository DIR [--http-port 8000 ...]   (foreground)
     python -m deploy.triton_launcher --prepare                                       (backends dir + version)
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterable, Sequence

REPO_ROOT = Path(__file__).resolve().parent.parent
TRITON_STATE_DIR = REPO_ROOT / ".triton"
BACKENDS_DIR = TRITON_STATE_DIR / "backends"

DEFAULT_BACKEND_CONFIG = ("python,thread-pool-size=128",)
DEFAULT_EXIT_TIMEOUT_S = 5
_STUB_NAME = "triton_python_backend_stub"


# The server is local: never send its requests through HTTP_PROXY (urllib would, unless NO_PROXY names the host).
_LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class TritonLaunchError(RuntimeError):
    """The server could not be found, prepared, or brought to ready."""


class PortInUse(TritonLaunchError):
    """A port the server was asked to listen on is taken; `service` is HTTP, GRPC or Metrics."""

    def __init__(self, service: str, address: str, log_tail: str):
        self.service, self.address = service, address
        super().__init__(f"the {service} port {address} is already in use:\n{log_tail}")


_PORT_IN_USE = re.compile(r"failed to start (HTTP|GRPC|Metrics) service: .*?Socket '([^']+)' already in use")


def pytriton_server_dir() -> Path:
    """The `tritonserver` directory inside the installed nvidia-pytriton wheel."""
    try:
        import pytriton
    except ImportError as exc:
        raise TritonLaunchError(f"nvidia-pytriton is not installed in {sys.prefix}: {exc}") from exc
    server_dir = Path(pytriton.__file__).resolve().parent / "tritonserver"
    if not (server_dir / "bin" / "tritonserver").is_file():
        raise TritonLaunchError(f"no tritonserver binary under {server_dir}")
    return server_dir


def tritonserver_binary() -> Path:
    return pytriton_server_dir() / "bin" / "tritonserver"


def _python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def _link(source: Path, target: Path) -> None:
    if target.is_symlink() and os.readlink(target) == str(source):
        return
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    tmp.symlink_to(source)
    os.replace(tmp, target)


def prepare_backends_dir(backends_dir: Path | str = BACKENDS_DIR) -> Path:
    """Assemble `<backends_dir>/python` (backend library, utils, stub for this Python). Idempotent, process-safe.

    Symlinks, not copies: the stub's RPATH is `$ORIGIN/../../../../nvidia_pytriton.libs`, and for an executable
    $ORIGIN is its resolved path, so a linked stub still finds the wheel's bundled libraries (a copy does not).
    """
    backends_dir = Path(backends_dir)
    server_dir = pytriton_server_dir()
    source_backend = server_dir / "backends" / "python"
    stub = server_dir / "python_backend_stubs" / _python_version() / _STUB_NAME
    if not stub.is_file():
        raise TritonLaunchError(f"the pytriton wheel has no backend stub for Python {_python_version()} ({stub})")
    python_dir = backends_dir / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    with open(backends_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for source in sorted(source_backend.iterdir()):
            if source.is_file():
                _link(source, python_dir / source.name)
        _link(stub, python_dir / _STUB_NAME)
    return backends_dir


def server_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for tritonserver: this venv's bin/ first on PATH, libpython's LIBDIR on LD_LIBRARY_PATH."""
    env = dict(os.environ if base is None else base)
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([venv_bin] + [p for p in env.get("PATH", "").split(os.pathsep) if p and p != venv_bin])
    libdir = sysconfig.get_config_var("LIBDIR")
    ld_paths = [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    if libdir and libdir not in ld_paths:
        ld_paths.insert(0, libdir)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(ld_paths)
    env.pop("PYTHONHOME", None)
    return env


def _site_packages() -> Path:
    return Path(sysconfig.get_paths()["purelib"])


def perf_analyzer_path() -> Path:
    """The perf_analyzer binary shipped by the tritonclient 2.51 wheel in this venv."""
    candidate = Path(sys.executable).parent / "perf_analyzer"
    if candidate.is_file():
        return candidate
    found = shutil.which("perf_analyzer")
    if found:
        return Path(found)
    raise TritonLaunchError("perf_analyzer not found: install tritonclient[all]==2.51.0 in this venv")


def _has_system_libb64() -> bool:
    import ctypes

    try:
        ctypes.CDLL("libb64.so.0d")
        return True
    except OSError:
        return False


def perf_analyzer_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for perf_analyzer: libcudart.so.12 from nvidia-cuda-runtime-cu12 and a libb64.so.0d.

    Debian's libb64-0d is preferred (setup_env.sh installs it); without it we fall back to a symlink to the copy
    bundled in nvidia_pytriton.libs.
    """
    env = dict(os.environ if base is None else base)
    paths = []
    cudart_dir = _site_packages() / "nvidia" / "cuda_runtime" / "lib"
    if (cudart_dir / "libcudart.so.12").exists():
        paths.append(str(cudart_dir))
    if not _has_system_libb64():
        bundled = sorted((_site_packages() / "nvidia_pytriton.libs").glob("libb64-*.so.0d"))
        if bundled:
            lib_dir = TRITON_STATE_DIR / "lib"
            lib_dir.mkdir(parents=True, exist_ok=True)
            link = lib_dir / "libb64.so.0d"
            _link(bundled[0], link)
            paths.append(str(lib_dir))
    paths += [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(paths)
    return env


def _listening_socket_inodes(port: int) -> set[str]:
    """Inodes of the TCP sockets listening on `port` (from /proc/net; empty where there is none)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(fields[9])
    return inodes


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class TritonServer:
    """One tritonserver process. Use as a context manager, or start()/wait_ready()/stop()."""

    def __init__(
        self,
        model_repository: str | os.PathLike | Sequence[str | os.PathLike],
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        model_control_mode: str | None = None,
        load_models: Iterable[str] = (),
        backend_config: Iterable[str] = DEFAULT_BACKEND_CONFIG,
        extra_args: Iterable[str] = (),
        log_path: str | os.PathLike | None = None,
        log_verbose: int = 0,
        host: str = "127.0.0.1",
        exit_timeout_s: int = DEFAULT_EXIT_TIMEOUT_S,
        env: dict[str, str] | None = None,
    ) -> None:
        if isinstance(model_repository, (str, os.PathLike)):
            model_repository = [model_repository]
        self.model_repositories = [Path(p).resolve() for p in model_repository]
        self.host = host
        # Ports left to us are picked free now and picked again if another process takes one before the server
        # binds it (see launch()).
        self._auto_ports = {name for name, port in (("http", http_port), ("grpc", grpc_port),
                                                     ("metrics", metrics_port)) if not port}
        self.http_port = http_port or free_port(host)
        self.grpc_port = grpc_port or free_port(host)
        self.metrics_port = metrics_port or free_port(host)
        self.model_control_mode = model_control_mode
        self.load_models = list(load_models)
        self.backend_config = list(backend_config)
        self.extra_args = list(extra_args)
        self.log_verbose = log_verbose
        self.exit_timeout_s = exit_timeout_s
        self._env = env
        self._own_log_dir: str | None = None
        if log_path is None:
            self._own_log_dir = tempfile.mkdtemp(prefix="tritonserver-log-")
            log_path = os.path.join(self._own_log_dir, "server.log")
        self.log_path = Path(log_path)
        self._log_offset = 0
        self.process: subprocess.Popen | None = None

    @property
    def urls(self) -> dict[str, str]:
        return {
            "http": f"{self.host}:{self.http_port}",
            "grpc": f"{self.host}:{self.grpc_port}",
            "metrics": f"{self.host}:{self.metrics_port}",
        }

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def command(self) -> list[str]:
        backends_dir = prepare_backends_dir()
        cmd = [str(tritonserver_binary())]
        cmd += [f"--model-repository={p}" for p in self.model_repositories]
        cmd += [
            f"--backend-directory={backends_dir}",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            "--disable-auto-complete-config",
            f"--exit-timeout-secs={self.exit_timeout_s}",
            f"--log-verbose={self.log_verbose}",
        ]
        if self.model_control_mode:
            cmd.append(f"--model-control-mode={self.model_control_mode}")
        cmd += [f"--load-model={m}" for m in self.load_models]
        cmd += [f"--backend-config={c}" for c in self.backend_config]
        cmd += self.extra_args
        return cmd

    def start(self) -> "TritonServer":
        if self.process is not None:
            raise TritonLaunchError("server already started")
        cmd = self.command()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=server_env(self._env)
            )
        return self

    def is_alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_ready(self, timeout: float = 60.0) -> "TritonServer":
        """Wait until every endpoint serves: HTTP /v2/health/ready, the gRPC port and the metrics port (Triton
        starts its metrics service last, tens of milliseconds after HTTP). Raises `PortInUse` when a port is taken,
        `TritonLaunchError` with the log tail if the process exits or time runs out."""
        if self.process is None:
            raise TritonLaunchError("server not started")
        deadline = time.monotonic() + timeout
        while True:
            code = self.process.poll()
            if code is not None:
                taken = _PORT_IN_USE.search(self.log_text()[self._log_offset:])
                if taken:
                    raise PortInUse(taken.group(1), taken.group(2), self.log_tail())
                raise TritonLaunchError(f"tritonserver exited with code {code} before ready:\n{self.log_tail()}")
            if self._endpoints_ready() and self._listens_itself():
                return self
            if time.monotonic() > deadline:
                raise TritonLaunchError(f"tritonserver not ready after {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.1)

    def _endpoints_ready(self) -> bool:
        try:
            with _LOCAL.open(f"http://{self.urls['http']}/v2/health/ready", timeout=2) as response:
                if response.status != 200:
                    return False
            with socket.create_connection((self.host, self.grpc_port), timeout=2):
                pass
            with _LOCAL.open(f"http://{self.urls['metrics']}/metrics", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, OSError):
            return False

    def _listens_itself(self) -> bool:
        """Whether this process holds the listening sockets: a port picked free may have been taken by another
        server meanwhile, whose endpoints would answer for ours until ours fails to bind it and exits."""
        try:
            sockets = {os.readlink(f"/proc/{self.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{self.pid}/fd")}
        except OSError:  # no /proc (not Linux), or the process just exited: poll() tells which next round
            return not Path("/proc/self/fd").is_dir()
        return all(sockets & {f"socket:[{inode}]" for inode in _listening_socket_inodes(port)}
                   for port in (self.http_port, self.grpc_port, self.metrics_port))

    def launch(self, timeout: float = 60.0, attempts: int = 5) -> "TritonServer":
        """start() and wait_ready(); when a port we picked was taken meanwhile, pick new ones and start again."""
        for attempt in range(attempts):
            self.start()
            try:
                return self.wait_ready(timeout)
            except PortInUse:
                self.stop()
                self.process = None
                if not self._auto_ports or attempt == attempts - 1:
                    raise
                for name in self._auto_ports:
                    setattr(self, f"{name}_port", free_port(self.host))
            except BaseException:
                self.stop()
                raise
        raise AssertionError("unreachable")

    def server_metadata(self) -> dict:
        with _LOCAL.open(f"http://{self.urls['http']}/v2", timeout=5) as response:
            return json.loads(response.read())

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, wait on the PID, SIGKILL after `timeout`. Returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def __enter__(self) -> "TritonServer":
        return self.launch()

    def __exit__(self, *exc_info) -> None:
        self.stop()


def tritonserver_version() -> str:
    """Start a server on an empty repository just long enough to read its version from /v2."""
    with tempfile.TemporaryDirectory(prefix="triton-empty-repo-") as repo:
        with TritonServer(repo, model_control_mode="explicit") as server:
            return server.server_metadata().get("version", "unknown")


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m deploy.triton_launcher", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-repository", action="append", help="model repository (repeatable)")
    parser.add_argument("--prepare", action="store_true", help="prepare the backends dir, print the version, exit")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--model-control-mode", default=None)
    parser.add_argument("--load-model", action="append", default=[])
    parser.add_argument("--backend-config", action="append", default=None, help="default: python,thread-pool-size=128")
    parser.add_argument("--log-verbose", type=int, default=0)
    parser.add_argument("--exit-timeout-secs", type=int, default=DEFAULT_EXIT_TIMEOUT_S)
    args, extra = parser.parse_known_args(argv)
    args.extra_args = extra
    if not args.prepare and not args.model_repository:
        parser.error("--model-repository is required (or --prepare)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.prepare:
        backends = prepare_backends_dir()
        print(f"backends dir: {backends} (Python {_python_version()} stub)")
        print(f"tritonserver {tritonserver_version()} ({tritonserver_binary()})")
        return 0
    server = TritonServer(
        args.model_repository,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        model_control_mode=args.model_control_mode,
        load_models=args.load_model,
        backend_config=args.backend_config if args.backend_config is not None else DEFAULT_BACKEND_CONFIG,
        extra_args=args.extra_args,
        log_verbose=args.log_verbose,
        host=args.host,
        exit_timeout_s=args.exit_timeout_secs,
    )
    # Foreground: the server's output goes to our stdout/stderr, and signals are forwarded to it.
    process = subprocess.Popen(server.command(), env=server_env(), stdin=subprocess.DEVNULL)

    def forward(signum, _frame):
        if process.poll() is None:
            process.send_signal(signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    return process.wait()


if __name__ == "__main__":
    sys.exit(main())
