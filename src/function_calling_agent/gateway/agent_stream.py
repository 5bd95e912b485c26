"""One request to function_calling_agent on its own gRPC stream (tritonclient.grpc.aio), as typed events.

    async for event in agent_events(client, "function_calling_agent", inputs, request_id="..."):
        ...  # TextDelta, ReasoningDelta, then one Final

Leaving the loop early (the HTTP client went away) cancels the gRPC call: Triton marks the request cancelled, the
agent stops its loop and its running engine turn.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any, AsyncIterator, Optional, Union

import grpc
import numpy as np

from ..adapter.contract import CLIENT_INPUTS, error_kind

OUTPUTS = ("text_output", "reasoning_output", "finish_reason", "usage", "tool_trace", "tool_calls")


class AgentError(Exception):
    """The agent refused or failed the request. `kind`: invalid, unavailable, cancelled, internal."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.message = message
        self.kind = kind


@dataclasses.dataclass(frozen=True)
class TextDelta:
    text: str


@dataclasses.dataclass(frozen=True)
class ReasoningDelta:
    text: str


@dataclasses.dataclass(frozen=True)
class Final:
    finish_reason: str
    text: str  # the whole answer when not streaming ("" when streaming: the deltas carried it)
    reasoning: str
    usage: dict
    tool_calls: list
    tool_trace: Optional[dict]


AgentEvent = Union[TextDelta, ReasoningDelta, Final]


def agent_inputs(values: dict[str, Any]) -> list:
    """gRPC InferInputs from Python values, typed by the client contract (every input [1, 1]; a list, such as
    stop_words, [1, n])."""
    import tritonclient.grpc as grpcclient

    inputs = []
    for name, value in values.items():
        spec = CLIENT_INPUTS[name]
        if spec.numpy_type is np.object_:
            values = value if isinstance(value, list) else [value]
            array = np.array([[v.encode("utf-8") for v in values]], dtype=np.object_)
            datatype = "BYTES"
        else:
            array = np.array([[value]], dtype=spec.numpy_type)
            datatype = spec.data_type.replace("TYPE_", "")
        tensor = grpcclient.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def _strings(result, name: str) -> Optional[str]:
    array = result.as_numpy(name)
    if array is None:
        return None
    return "".join(v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in array.reshape(-1))


async def agent_events(client, model_name: str, inputs: list, *, request_id: str = "",
                       outputs: tuple[str, ...] = OUTPUTS) -> AsyncIterator[AgentEvent]:
    """Sends one request on a new stream and yields its events until the Final; raises AgentError."""
    import tritonclient.grpc as grpcclient

    done = asyncio.Event()

    async def requests():
        yield {"model_name": model_name, "inputs": inputs, "request_id": request_id,
               "outputs": [grpcclient.InferRequestedOutput(name) for name in outputs]}
        await done.wait()  # the stream stays open for writing until the last response is in

    stream = client.stream_infer(requests())
    finished = False
    try:
        while True:
            try:
                result, error = await stream.__anext__()
            except StopAsyncIteration:
                raise AgentError("the agent's stream ended without a final response", "unavailable") from None
            except grpc.RpcError as exc:  # the server is down or going away
                raise AgentError(f"function_calling_agent is unreachable: {exc.code().name}: {exc.details()}",
                                 "unavailable") from None
            if error is not None:
                finished = True
                message = error.message() or str(error)
                raise AgentError(message, _triton_error_kind(message))
            reason = _strings(result, "finish_reason")
            if reason is None:
                reasoning = _strings(result, "reasoning_output")
                if reasoning:
                    yield ReasoningDelta(reasoning)
                text = _strings(result, "text_output")
                if text:
                    yield TextDelta(text)
                continue
            finished = True
            trace = _strings(result, "tool_trace")
            yield Final(finish_reason=reason, text=_strings(result, "text_output") or "",
                        reasoning=_strings(result, "reasoning_output") or "",
                        usage=json.loads(_strings(result, "usage") or "{}"),
                        tool_calls=json.loads(_strings(result, "tool_calls") or "[]"),
                        tool_trace=json.loads(trace) if trace else None)
            return
    finally:
        done.set()
        if not finished:
            stream.cancel()  # the client left, or a read failed: Triton cancels the request


def _triton_error_kind(message: str) -> str:
    # Errors Triton itself raises before the model runs (the model is not loaded) are the server's, not the client's.
    if message.startswith("Request for unknown model") or "is not ready" in message:
        return "unavailable"
    return error_kind(message)
