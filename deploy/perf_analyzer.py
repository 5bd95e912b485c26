"""perf_analyzer from this venv's tritonclient 2.51 wheel, with the shared libraries it needs found for it.

    .venv/bin/python -m deploy.perf_analyzer -m function_calling_agent -u localhost:8001 -i grpc --streaming \\
        --input-data prompt.json --concurrency-range 1:4 --measurement-mode count_windows \\
        --measurement-request-count 20

The binary loads libcudart.so.12 even against a CPU server, and libb64.so.0d; both come from pip packages (and
Debian's libb64-0d when installed), so this puts their folders on LD_LIBRARY_PATH (deploy.triton_launcher's
`perf_analyzer_env`) and runs perf_analyzer in its place: every argument goes to it unchanged, and its exit code is
this command's. `--help` is perf_analyzer's own.
"""

from __future__ import annotations

import os
import sys
from typing import Sequence

from deploy.triton_launcher import TritonLaunchError, perf_analyzer_env, perf_analyzer_path


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    try:
        binary = perf_analyzer_path()
    except TritonLaunchError as exc:
        print(f"perf_analyzer: error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(binary, [str(binary), *arguments], perf_analyzer_env())
    return 127  # not reached: execve replaces this process


if __name__ == "__main__":
    sys.exit(main())
