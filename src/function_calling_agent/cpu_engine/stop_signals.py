"""Stop requests that reach every instance of the model.

With `instance_group.count > 1` each instance is its own stub process, and Triton may hand the `stop` request for a
request id to a different instance than the one generating it. The receiving instance drops a marker file named
after the request id into a directory all instances share; the generating instance checks for it before every
step (a stat call, microseconds) and removes it when the request ends.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from typing import Callable

# A marker this much older than a request's start belongs to an earlier request with the same id.
STALE_MARKER_GRACE_S = 2.0
# Markers nobody consumed (a stop for a request that had already ended) are swept after this long.
MARKER_MAX_AGE_S = 60.0


def default_stop_signal_dir(scope: str) -> str:
    """A per-user directory under the system temp dir, keyed by `scope` (e.g. model repository + model name)."""
    digest = hashlib.sha256(scope.encode("utf-8")).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), f"tensorrt_llm_cpu-stop-{os.getuid()}-{digest}")


class StopSignalBoard:
    def __init__(self, directory: str) -> None:
        self.directory = directory
        os.makedirs(directory, mode=0o700, exist_ok=True)

    def _path(self, request_id: str) -> str:
        return os.path.join(self.directory, hashlib.sha256(request_id.encode("utf-8")).hexdigest())

    def post(self, request_id: str) -> None:
        """Ask whichever instance runs `request_id` to stop it."""
        os.makedirs(self.directory, mode=0o700, exist_ok=True)  # an instance unloading may have removed it
        self.sweep()
        path = self._path(request_id)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as marker:
            marker.write(request_id)
        os.replace(tmp, path)

    def watch(self, request_id: str, started_at: float | None = None) -> Callable[[], bool]:
        """A cheap `should_stop` check for a request that starts now; a stale marker for the same id is dropped."""
        path = self._path(request_id)
        started_at = time.time() if started_at is None else started_at
        try:
            if os.stat(path).st_mtime < started_at - STALE_MARKER_GRACE_S:
                os.unlink(path)
        except FileNotFoundError:
            pass
        return lambda: os.path.exists(path)

    def clear(self, request_id: str) -> None:
        try:
            os.unlink(self._path(request_id))
        except FileNotFoundError:
            pass

    def close(self) -> None:
        """Remove the directory if no marker is left in it (other instances recreate it when they need it)."""
        try:
            os.rmdir(self.directory)
        except OSError:
            pass

    def sweep(self, max_age_s: float = MARKER_MAX_AGE_S) -> None:
        cutoff = time.time() - max_age_s
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return
        for name in names:
            path = os.path.join(self.directory, name)
            try:
                if os.stat(path).st_mtime < cutoff:
                    os.unlink(path)
            except FileNotFoundError:
                pass
