"""Throughput and latency under concurrency with perf_analyzer (the binary from the tritonclient 2.51 wheel).

One run per concurrency level (`--concurrency-range C:C`), gRPC streaming, `count_windows` measurement so a run is
bounded by a number of completed requests rather than by time. perf_analyzer's request latency for a decoupled
streaming model is from sending the request to its final response (the whole agent run here).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
import resource
import subprocess
import time
from pathlib import Path
from typing import Optional, Sequence

from deploy.triton_launcher import perf_analyzer_env, perf_analyzer_path


@dataclasses.dataclass
class PerfPoint:
    concurrency: int
    throughput: float  # completed requests per second
    response_throughput: float  # streamed responses per second (one per token for these models)
    p50_ms: float
    p90_ms: float
    p99_ms: float
    avg_ms: float
    seconds: float  # wall time of the perf_analyzer run
    error: Optional[str] = None
    stability: str = ""  # perf_analyzer's -s bound the measurement met
    cpu_cores: dict = dataclasses.field(default_factory=dict)  # process -> CPU cores used on average during the run


_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> Optional[float]:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS  # utime + stime
    except (OSError, IndexError, ValueError):
        return None


def server_cpu_seconds(server_pid: Optional[int]) -> dict[str, float]:
    """CPU seconds so far of tritonserver and of each Python backend stub it started, named by model."""
    if not server_pid:
        return {}
    out = {}
    own = _cpu_seconds(server_pid)
    if own is not None:
        out["tritonserver"] = own
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid != server_pid:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().decode("utf-8", "replace")
        except (OSError, ValueError, IndexError):
            continue
        match = re.search(r"/([^/\x00]+)/\d+/model\.py", cmdline)
        seconds = _cpu_seconds(int(entry))
        if match and seconds is not None:
            out[match.group(1)] = out.get(match.group(1), 0.0) + seconds
    return out


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def agent_input_data(path: Path, prompt: str, max_tokens: int) -> Path:
    path.write_text(json.dumps({"data": [{"text_input": [prompt], "max_tokens": [max_tokens], "stream": [True]}]}),
                    encoding="utf-8")
    return path


def engine_input_data(path: Path, input_ids: Sequence[int], max_tokens: int, end_id: int) -> Path:
    """Input data for the `tensorrt_llm` contract: one token-id prompt, streaming."""
    entry = {
        "input_ids": {"content": list(map(int, input_ids)), "shape": [len(input_ids)]},
        "input_lengths": [len(input_ids)],
        "request_output_len": [max_tokens],
        "end_id": [end_id],
        "streaming": [True],
        "exclude_input_in_output": [True],
    }
    path.write_text(json.dumps({"data": [entry]}), encoding="utf-8")
    return path


def _float(row: dict, key: str) -> float:
    try:
        return float(row.get(key) or 0)
    except ValueError:
        return 0.0


def parse_csv(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path}: no measurement rows")
    return rows[-1]


def run_point(url: str, model: str, input_data: Path, concurrency: int, request_count: int, out_dir: Path,
              timeout_s: float = 300.0, label: str = "", server_pid: Optional[int] = None) -> PerfPoint:
    """One perf_analyzer run at one concurrency. If it cannot stabilize (3 windows within 50 %, at most 4 windows)
    it is retried once with a looser bound (100 %, 8 windows); the point records that in `stability`."""
    point = _run_point(url, model, input_data, concurrency, request_count, out_dir, timeout_s, label, 50, 4, server_pid)
    if point.error and "stable" in point.error.lower():
        point = _run_point(url, model, input_data, concurrency, request_count, out_dir, timeout_s, label, 100, 8,
                           server_pid)
    return point


def _run_point(url, model, input_data, concurrency, request_count, out_dir, timeout_s, label, stability,
               max_trials, server_pid=None) -> PerfPoint:
    csv_path = out_dir / f"perf_{label or model}_c{concurrency}.csv"
    csv_path.unlink(missing_ok=True)
    cmd = [
        str(perf_analyzer_path()), "-m", model, "-i", "grpc", "-u", url, "--streaming",
        "--input-data", str(input_data),
        "--concurrency-range", f"{concurrency}:{concurrency}",
        "--measurement-mode", "count_windows", "--measurement-request-count", str(request_count),
        # Bounded run time on a shared 2-core machine: few windows, a loose stability bound.
        "-s", str(stability), "--max-trials", str(max_trials),
        "-f", str(csv_path), "--verbose-csv",
    ]
    cpu_before, children_before = server_cpu_seconds(server_pid), _children_cpu_seconds()
    started = time.monotonic()
    try:
        done = subprocess.run(cmd, env=perf_analyzer_env(), capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return PerfPoint(concurrency, 0, 0, 0, 0, 0, 0, time.monotonic() - started, error="timed out")
    seconds = time.monotonic() - started
    cpu_after = server_cpu_seconds(server_pid)
    cpu_cores = {name: round((cpu_after[name] - cpu_before.get(name, 0.0)) / seconds, 3) for name in cpu_after}
    cpu_cores["perf_analyzer"] = round((_children_cpu_seconds() - children_before) / seconds, 3)
    (out_dir / f"perf_{label or model}_c{concurrency}.log").write_text(done.stdout + done.stderr, encoding="utf-8")
    if done.returncode != 0 or not csv_path.exists():
        tail = (done.stdout + done.stderr).strip().splitlines()[-3:]
        return PerfPoint(concurrency, 0, 0, 0, 0, 0, 0, seconds, error=" | ".join(tail) or f"rc {done.returncode}")
    row = parse_csv(csv_path)
    return PerfPoint(
        concurrency=concurrency,
        throughput=_float(row, "Inferences/Second"),
        response_throughput=_float(row, "Response Throughput"),
        p50_ms=_float(row, "p50 latency") / 1000,
        p90_ms=_float(row, "p90 latency") / 1000,
        p99_ms=_float(row, "p99 latency") / 1000,
        avg_ms=_float(row, "Avg latency") / 1000,
        seconds=seconds,
        stability=f"{stability} %",
        cpu_cores=cpu_cores,
    )
