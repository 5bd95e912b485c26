"""Client side of the function_calling_agent reliability tests: inputs of any dtype or shape, one gRPC stream per
request with exact FINAL accounting, the HTTP generate endpoint, and /metrics samples.

    outcome = stream_request(server.grpc_url, make_inputs({"text_input": "hi", "max_tokens": 64, "stream": True}))
    outcome.finals == 1 and outcome.final["finish_reason"] == "stop"
    samples = scrape(server.metrics_url); value(samples, "fca_requests_total", outcome="stop")
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import re
import signal
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import numpy as np
import requests
from tritonclient.utils import np_to_triton_dtype

from function_calling_agent.adapter.contract import CLIENT_INPUTS

MODEL = "function_calling_agent"

# The agent's declared inputs and their Triton datatypes, from the client contract.
DATATYPES = {name: np_to_triton_dtype(np.dtype(spec.numpy_type)) for name, spec in CLIENT_INPUTS.items()}
_NUMPY = {"BYTES": np.object_, "INT32": np.int32, "INT64": np.int64, "FP32": np.float32, "FP64": np.float64,
          "BOOL": np.bool_, "UINT64": np.uint64, "UINT8": np.uint8}


@dataclasses.dataclass(frozen=True)
class Raw:
    """An input sent exactly as given: any datatype and shape, e.g. Raw([[1, 2]], "INT32") or Raw([[1.0]], "FP32")."""

    value: Any
    datatype: str


def _array(value: Any, datatype: str) -> np.ndarray:
    if datatype == "BYTES":
        def encode(v):
            return v.encode("utf-8") if isinstance(v, str) else v
        array = np.array(value, dtype=object)
        return np.vectorize(encode, otypes=[object])(array) if array.size else array
    return np.array(value, dtype=_NUMPY[datatype])


def make_inputs(values: Mapping[str, Any]) -> list:
    """gRPC InferInputs; a plain value becomes shape [1, 1], a list [1, n], in the input's declared datatype."""
    import tritonclient.grpc as grpcclient

    inputs = []
    for name, value in values.items():
        if isinstance(value, Raw):
            array = _array(value.value, value.datatype)
            datatype = value.datatype
        else:
            datatype = DATATYPES[name]
            array = _array([list(value)] if isinstance(value, (list, tuple)) else [[value]], datatype)
        tensor = grpcclient.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


@dataclasses.dataclass
class StreamOutcome:
    deltas: list[str] = dataclasses.field(default_factory=list)
    reasoning_deltas: list[str] = dataclasses.field(default_factory=list)
    final: Optional[dict] = None  # outputs of the response that carried finish_reason
    error: Optional[str] = None
    finals: int = 0  # responses flagged final, plus error responses (an error ends the request)
    responses: int = 0
    elapsed: float = 0.0
    first_delta_s: Optional[float] = None
    cancelled: bool = False
    timed_out: bool = False

    @property
    def text(self) -> str:
        if self.final is not None and self.final.get("text_output"):
            return self.final["text_output"]
        return "".join(self.deltas)

    @property
    def finish_reason(self) -> Optional[str]:
        return None if self.final is None else self.final.get("finish_reason")

    @property
    def trace(self) -> Optional[dict]:
        return None if self.final is None else self.final.get("tool_trace")


def _strings(result, name: str) -> Optional[list[str]]:
    array = result.as_numpy(name)
    if array is None:
        return None
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in array.reshape(-1)]


def read_response(result, outcome: StreamOutcome, started: float, error=None) -> None:
    """Adds one gRPC stream callback's (result, error) to `outcome`; an error ends the request."""
    outcome.responses += 1
    if error is not None:
        outcome.finals += 1
        outcome.error = str(error)
        return
    response = result.get_response()
    is_final = response.parameters["triton_final_response"].bool_param if "triton_final_response" in \
        response.parameters else False
    texts = _strings(result, "text_output")
    reason = _strings(result, "finish_reason")
    reasoning = _strings(result, "reasoning_output")
    if reason is not None:
        final = {"finish_reason": reason[0], "text_output": "".join(texts or [])}
        for name in ("usage", "tool_trace", "tool_calls"):
            values = _strings(result, name)
            if values is not None:
                final[name] = json.loads(values[0])
        if reasoning is not None:
            final["reasoning_output"] = "".join(reasoning)
        outcome.final = final
    elif reasoning:
        outcome.reasoning_deltas.extend(reasoning)
    if reason is None and texts:
        if outcome.first_delta_s is None:
            outcome.first_delta_s = time.monotonic() - started
        outcome.deltas.extend(texts)
    if is_final:
        outcome.finals += 1


def stream_request(grpc_url: str, inputs: list, *, model: str = MODEL, timeout: float = 60.0,
                   cancel_when: Optional[Callable[[StreamOutcome, float], bool]] = None,
                   grace: float = 0.0, request_id: str = "") -> StreamOutcome:
    """Sends one request on its own gRPC stream and collects its responses until the FINAL (or an error).

    `cancel_when(outcome, elapsed)` is polled every 10 ms; when it returns True the stream is cancelled
    (`stop_stream(cancel_requests=True)`). `grace` keeps listening after the FINAL to catch responses sent after it.
    """
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(grpc_url)
    events: queue.Queue = queue.Queue()
    outcome = StreamOutcome()
    started = time.monotonic()
    try:
        client.start_stream(callback=lambda result, error: events.put((result, error)))
        client.async_stream_infer(model, inputs, request_id=request_id, enable_empty_final_response=True)
        end = started + timeout
        grace_end = None
        while True:
            now = time.monotonic()
            limit = grace_end if grace_end is not None else end
            if now >= limit:
                outcome.timed_out = grace_end is None
                break
            if cancel_when is not None and outcome.finals == 0 and cancel_when(outcome, now - started):
                client.stop_stream(cancel_requests=True)
                outcome.cancelled = True
                break
            try:
                result, error = events.get(timeout=min(0.01, limit - now))
            except queue.Empty:
                continue
            read_response(result, outcome, started, error)
            if outcome.finals and grace_end is None:
                if grace <= 0:
                    break
                grace_end = time.monotonic() + grace
    finally:
        outcome.elapsed = time.monotonic() - started
        try:
            if not outcome.cancelled:
                client.stop_stream()
            client.close()
        except Exception:  # a stream broken by the test must not hide the outcome
            pass
    return outcome


def http_generate(http_url: str, body: Mapping[str, Any], *, model: str = MODEL, timeout: float = 60.0):
    """POST /generate; returns (status code, parsed JSON body or {"error": raw text})."""
    response = requests.post(f"http://{http_url}/v2/models/{model}/generate", json=dict(body), timeout=timeout)
    try:
        return response.status_code, response.json()
    except ValueError:
        return response.status_code, {"error": response.text}


def is_ready(http_url: str) -> bool:
    try:
        return requests.get(f"http://{http_url}/v2/health/ready", timeout=5).status_code == 200
    except requests.RequestException:
        return False


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def scrape_text(metrics_url: str) -> str:
    return requests.get(f"http://{metrics_url}/metrics", timeout=10).text


def parse_metrics(text: str) -> list[tuple[str, dict, float]]:
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match:
            name, labels, number = match.groups()
            samples.append((name, dict(_LABEL.findall(labels or "")), float(number)))
    return samples


def scrape(metrics_url: str) -> list[tuple[str, dict, float]]:
    return parse_metrics(scrape_text(metrics_url))


# Gauges that are 0 on a server with no request in flight (the agent's and the scripted engine's), and the
# prefixes of the metric families our models count in (Triton's own CPU and memory gauges always move).
IDLE_GAUGES = ("fca_active_requests", "scripted_engine_inflight")
OUR_METRICS = ("fca_", "scripted_engine_", "tensorrt_llm_cpu_")


def settled(metrics_url: str, timeout: float = 30.0, gauges=IDLE_GAUGES) -> list[tuple[str, dict, float]]:
    """Samples of a quiescent server: every gauge in `gauges` is 0 and two scrapes 0.2 s apart are equal.

    Counter deltas are only meaningful between two settled reads: a request an earlier test sent, or one whose final
    response the client already has, may still be being counted. Raises AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    previous = None
    while True:
        samples = scrape(metrics_url)
        ours = [sample for sample in samples if sample[0].startswith(OUR_METRICS)]
        idle = all(value(samples, gauge) == 0 for gauge in gauges)
        if idle and ours == previous:
            return samples
        previous = ours if idle else None
        if time.monotonic() > deadline:
            raise AssertionError(f"the server did not settle within {timeout:g} s: "
                                 + ", ".join(f"{g}={value(samples, g):g}" for g in gauges))
        time.sleep(0.2)


def value(samples, name: str, **labels) -> float:
    """Sum of the samples called `name` whose labels include `labels` (0 when there are none)."""
    return sum(v for n, l, v in samples if n == name and all(l.get(k) == str(x) for k, x in labels.items()))


def fca_lines(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if line.startswith("fca_"))


def process_tree(pid: int) -> list[int]:
    """The server and its descendants (the Python backend stubs)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def stop_with_stubs(running) -> None:
    """Stops a RunningServer, then kills its Python backend stubs that outlive it.

    A stub whose non-daemon thread is stuck in a BLS read never exits (see the mid-stream engine failure bug) and would
    otherwise stay behind as an orphan after the server is gone.
    """
    stubs = process_tree(running.pid)[1:] if running.server.is_alive() else []
    running.stop()
    for pid in stubs:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def dump_stacks(pid: int, directory) -> list[str]:
    """Writes `py-spy dump --native` of the server's Python backend stubs into `directory`; returns the files.

    For post-mortems of a stalled server: which stub thread holds the GIL, and which waits in Triton's C++.
    """
    import shutil
    import subprocess
    import sys

    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        return []
    written = []
    for stub in process_tree(pid)[1:]:
        try:
            dump = subprocess.run([spy, "dump", "--native", "--pid", str(stub)], capture_output=True, text=True,
                                  timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            continue
        path = Path(directory) / f"stub-{stub}-stacks.txt"
        path.write_text(dump.stdout + dump.stderr, encoding="utf-8")
        written.append(str(path))
    return written
