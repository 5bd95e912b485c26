"""gRPC calls with arrival timestamps, for the latency benchmarks (wall clock `time.time()`, comparable with the
scripted engine's requests.jsonl)."""

from __future__ import annotations

import dataclasses
import json
import queue
import time
from typing import Optional

import numpy as np
import tritonclient.grpc as grpcclient

RESPONSE_TIMEOUT_S = 120.0


@dataclasses.dataclass
class StreamResult:
    t_start: float  # just before the stream was opened
    t_end: float  # arrival of the last response (the FINAL one)
    chunks: list[tuple[float, str]]  # (arrival time, text) of every non-empty text_output
    outputs: dict[str, str]  # the last response's other string outputs (finish_reason, usage, tool_trace)
    error: Optional[str] = None

    @property
    def text(self) -> str:
        return "".join(t for _, t in self.chunks)

    @property
    def t_first(self) -> Optional[float]:
        return self.chunks[0][0] if self.chunks else None


def tensor(name: str, value, triton_type: str):
    if triton_type == "BYTES":
        array = np.array([[value.encode("utf-8")]], dtype=np.object_)
    else:
        dtype = {"INT32": np.int32, "BOOL": np.bool_, "FP32": np.float32}[triton_type]
        array = np.array([[value]], dtype=dtype)
    t = grpcclient.InferInput(name, list(array.shape), triton_type)
    t.set_data_from_numpy(array)
    return t


def text_request(prompt: str, max_tokens: int, stream: bool = True, return_trace: bool = False) -> list:
    """Inputs of the text contract shared by `ensemble`, seed_text_model and function_calling_agent."""
    inputs = [tensor("text_input", prompt, "BYTES"), tensor("max_tokens", max_tokens, "INT32"),
              tensor("stream", stream, "BOOL")]
    if return_trace:
        inputs.append(tensor("return_trace", True, "BOOL"))
    return inputs


def _string(result, name: str) -> Optional[str]:
    array = result.as_numpy(name)
    if array is None or array.size == 0:
        return None
    value = array.reshape(-1)[0]
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def stream_request(client: grpcclient.InferenceServerClient, model: str, inputs: list,
                   timeout_s: float = RESPONSE_TIMEOUT_S) -> StreamResult:
    """One request on a fresh stream (as the seed tutorial's client and client/client.py do), timed per response."""
    responses: queue.Queue = queue.Queue()
    t_start = time.time()
    client.start_stream(callback=lambda result, error: responses.put((time.time(), result, error)))
    chunks: list[tuple[float, str]] = []
    outputs: dict[str, str] = {}
    error = None
    t_end = t_start
    try:
        client.async_stream_infer(model, inputs, enable_empty_final_response=True)
        deadline = time.monotonic() + timeout_s
        while True:
            arrived, result, err = responses.get(timeout=max(deadline - time.monotonic(), 0.001))
            t_end = arrived
            if err is not None:
                error = str(err)
                break
            response = result.get_response()
            for output in response.outputs:
                value = _string(result, output.name)
                if output.name == "text_output":
                    if value:
                        chunks.append((arrived, value))
                elif value is not None:
                    outputs[output.name] = value
            if response.parameters["triton_final_response"].bool_param:
                break
    finally:
        client.stop_stream()
    return StreamResult(t_start=t_start, t_end=t_end, chunks=chunks, outputs=outputs, error=error)


def agent_call(client, model: str, prompt: str, max_tokens: int) -> StreamResult:
    result = stream_request(client, model, text_request(prompt, max_tokens, stream=True, return_trace=True))
    if result.error:
        raise RuntimeError(f"{model}: {result.error}")
    return result


def usage_of(result: StreamResult) -> dict:
    return json.loads(result.outputs.get("usage") or "{}")


def trace_of(result: StreamResult) -> dict:
    return json.loads(result.outputs.get("tool_trace") or "{}")
