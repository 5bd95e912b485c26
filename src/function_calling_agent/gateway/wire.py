"""OpenAI chat-completions requests to the agent's inputs, and the agent's events to OpenAI objects (the `openai`
package's types).

Every request field is mapped, ignored on purpose, or refused with a 400 that names it: nothing is dropped silently.
Extensions (documented in the README):
  request   `return_tool_trace` (bool), `max_iterations` (int), `server_tools` (list of server tool names to
            offer), `top_k`, `repetition_penalty`, `chat_template_kwargs: {"enable_thinking": bool}` (vLLM's names)
  response  `tool_trace` (with `return_tool_trace`): every tool call the server ran, the engine turns and the
            conversation in OpenAI form; on the last chunk when streaming. `reasoning_content` on the message
            (deltas when streaming), the field vLLM and SGLang clients read.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from typing import Any, Optional

from openai.types import CompletionUsage
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessage
from openai.types.chat.chat_completion import Choice
from openai.types.chat.chat_completion_chunk import Choice as ChunkChoice
from openai.types.chat.chat_completion_chunk import ChoiceDelta, ChoiceDeltaToolCall
from openai.types.chat.chat_completion_message_function_tool_call import ChatCompletionMessageFunctionToolCall
from openai.types.completion_usage import CompletionTokensDetails, PromptTokensDetails

from .agent_stream import Final


class BadRequest(ValueError):
    """A request the client must change: answered 400 with `param` naming the field."""

    def __init__(self, message: str, param: Optional[str] = None):
        super().__init__(message)
        self.message = message
        self.param = param


# Request fields -> agent input, for those mapped one to one (after the checks below).
_SAMPLING = {"temperature": "temperature", "top_p": "top_p", "presence_penalty": "presence_penalty",
             "frequency_penalty": "frequency_penalty", "seed": "random_seed", "top_k": "top_k",
             "repetition_penalty": "repetition_penalty"}
# Accepted and without effect here, on purpose.
_IGNORED = {"user", "metadata", "service_tier", "prompt_cache_key", "safety_identifier"}
_REFUSED = {
    "logprobs": "logprobs are not returned by this server: remove logprobs",
    "top_logprobs": "logprobs are not returned by this server: remove top_logprobs",
    "logit_bias": "logit_bias is not supported: remove it",
    "response_format": "response_format (structured output) is not supported for the agent's answer: remove it, "
                       "or use tools with tool_choice",
    "reasoning_effort": "reasoning_effort is not supported: use chat_template_kwargs.enable_thinking where the "
                        "model has a thinking switch",
    "functions": "functions (deprecated) are not supported: send tools",
    "function_call": "function_call (deprecated) is not supported: send tool_choice",
    "audio": "audio output is not supported", "modalities": "only text output is supported",
    "prediction": "predicted outputs are not supported", "web_search_options": "web search is not supported",
    "store": "stored completions are not supported", "verbosity": "verbosity is not supported",
}
# Values of refused fields that mean "off", accepted as such.
_OFF_VALUES = {"logprobs": (False, None), "top_logprobs": (None, 0), "logit_bias": (None, {}),
               "response_format": (None, {"type": "text"}), "store": (False, None), "modalities": (None, ["text"])}
_KNOWN = ({"model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens", "stop", "n",
           "tools", "tool_choice", "parallel_tool_calls", "return_tool_trace", "max_iterations", "server_tools",
           "chat_template_kwargs"} | set(_SAMPLING) | _IGNORED | set(_REFUSED))
_ROLES = {"system", "developer", "user", "assistant", "tool"}


@dataclasses.dataclass(frozen=True)
class ChatRequest:
    model: str
    stream: bool
    include_usage: bool
    return_tool_trace: bool
    inputs: dict  # agent input name -> Python value


def _expect(body: dict, name: str, kind, what: str):
    value = body.get(name)
    if value is not None and (not isinstance(value, kind) or (kind in (int, float) and isinstance(value, bool))):
        raise BadRequest(f"{name} must be {what}", name)
    return value


def parse_chat_request(body: Any, *, default_max_tokens: int) -> ChatRequest:
    """Checks an OpenAI chat-completions body and maps it to agent inputs; raises BadRequest."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    unknown = sorted(set(body) - _KNOWN)
    if unknown:
        raise BadRequest(f"unrecognized request argument(s): {', '.join(unknown)}", unknown[0])
    for name, message in _REFUSED.items():
        if name in body and body[name] not in _OFF_VALUES.get(name, (None,)):
            raise BadRequest(message, name)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("model is required: one of the ids /v1/models lists", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list", "messages")
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in _ROLES:
            raise BadRequest(f"messages[{i}].role must be one of {sorted(_ROLES)}", f"messages[{i}].role")
    # OpenAI's newer `developer` role is the system prompt of models that have one.
    messages = [{**m, "role": "system"} if m["role"] == "developer" else m for m in messages]

    n = _expect(body, "n", int, "an integer")
    if n not in (None, 1):
        raise BadRequest("n must be 1: the agent produces one answer per request", "n")
    stream = _expect(body, "stream", bool, "true or false") or False
    options = _expect(body, "stream_options", dict, "an object") or {}
    if options and not stream:
        raise BadRequest("stream_options is only allowed with stream: true", "stream_options")
    max_tokens = _expect(body, "max_completion_tokens", int, "an integer")
    if max_tokens is None:
        max_tokens = _expect(body, "max_tokens", int, "an integer")
    inputs: dict[str, Any] = {"messages": json.dumps(messages, ensure_ascii=False),
                              "max_tokens": default_max_tokens if max_tokens is None else max_tokens,
                              "stream": stream, "return_reasoning": True}
    for name, target in _SAMPLING.items():
        value = body.get(name)
        if value is None:
            continue
        kind = (int,) if name in ("seed", "top_k") else (int, float)
        if isinstance(value, bool) or not isinstance(value, kind):
            raise BadRequest(f"{name} must be a number", name)
        if name == "seed" and value < 0:
            raise BadRequest("seed must be >= 0", name)
        inputs[target] = value
    stop = body.get("stop")
    if stop is not None:
        words = [stop] if isinstance(stop, str) else stop
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise BadRequest("stop must be a string or a list of strings", "stop")
        if words:
            inputs["stop_words"] = words
    tools = _expect(body, "tools", list, "a list of tools")
    if tools:
        inputs["client_tools"] = json.dumps(tools, ensure_ascii=False)
    choice = body.get("tool_choice")
    if choice is not None:
        if not isinstance(choice, (str, dict)):
            raise BadRequest('tool_choice must be "auto", "none", "required" or {"type": "function", ...}',
                             "tool_choice")
        inputs["tool_choice"] = choice if isinstance(choice, str) else json.dumps(choice, ensure_ascii=False)
    parallel = _expect(body, "parallel_tool_calls", bool, "true or false")
    if parallel is not None:
        inputs["parallel_tool_calls"] = parallel
    iterations = _expect(body, "max_iterations", int, "an integer")
    if iterations is not None:
        inputs["max_iterations"] = iterations
    server_tools = _expect(body, "server_tools", list, "a list of server tool names")
    if server_tools is not None:
        inputs["tools"] = json.dumps(server_tools)
    kwargs = _expect(body, "chat_template_kwargs", dict, "an object") or {}
    if set(kwargs) - {"enable_thinking"}:
        raise BadRequest("chat_template_kwargs takes only enable_thinking", "chat_template_kwargs")
    if "enable_thinking" in kwargs:
        if not isinstance(kwargs["enable_thinking"], bool):
            raise BadRequest("chat_template_kwargs.enable_thinking must be true or false", "chat_template_kwargs")
        inputs["enable_thinking"] = kwargs["enable_thinking"]
    trace = _expect(body, "return_tool_trace", bool, "true or false") or False
    inputs["return_trace"] = trace
    return ChatRequest(model=model, stream=stream, include_usage=bool(options.get("include_usage")),
                       return_tool_trace=trace, inputs=inputs)


# Agent finish reasons the OpenAI schema does not have: a limit ended the run (the trace's `detail` says which).
_FINISH = {"stop": "stop", "length": "length", "tool_calls": "tool_calls", "incomplete": "length"}


def finish_reason(agent_reason: str) -> str:
    return _FINISH.get(agent_reason, "stop")


def usage(agent_usage: dict) -> CompletionUsage:
    prompt, completion = agent_usage.get("prompt_tokens", 0), agent_usage.get("completion_tokens", 0)
    return CompletionUsage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=agent_usage.get("reused_prompt_tokens", 0)),
        completion_tokens_details=CompletionTokensDetails(reasoning_tokens=agent_usage.get("reasoning_tokens", 0)))


def new_completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def completion(completion_id: str, model: str, final: Final, *, text: str, reasoning: str,
               return_tool_trace: bool) -> dict:
    tool_calls = [ChatCompletionMessageFunctionToolCall.model_validate(c) for c in final.tool_calls] or None
    message = ChatCompletionMessage(role="assistant", content=text if text or not tool_calls else None,
                                    tool_calls=tool_calls, **({"reasoning_content": reasoning} if reasoning else {}))
    body = ChatCompletion(id=completion_id, object="chat.completion", created=int(time.time()), model=model,
                          choices=[Choice(index=0, message=message, finish_reason=finish_reason(final.finish_reason),
                                          logprobs=None)],
                          usage=usage(final.usage))
    out = body.model_dump(mode="json", exclude_unset=True)
    if return_tool_trace:
        out["tool_trace"] = final.tool_trace
    return out


class ChunkWriter:
    """The SSE `data:` lines of one streamed completion."""

    def __init__(self, completion_id: str, model: str):
        self.id = completion_id
        self.model = model
        self.created = int(time.time())

    def _chunk(self, delta: ChoiceDelta, finish: Optional[str] = None, **extra) -> bytes:
        chunk = ChatCompletionChunk(id=self.id, object="chat.completion.chunk", created=self.created,
                                    model=self.model, choices=[ChunkChoice(index=0, delta=delta,
                                                                           finish_reason=finish)])
        out = chunk.model_dump(mode="json", exclude_unset=True)
        out["choices"][0].setdefault("finish_reason", None)
        out.update(extra)
        return sse(out)

    def role(self) -> bytes:
        return self._chunk(ChoiceDelta(role="assistant", content=""))

    def content(self, text: str) -> bytes:
        return self._chunk(ChoiceDelta(content=text))

    def reasoning(self, text: str) -> bytes:
        return self._chunk(ChoiceDelta(reasoning_content=text))

    def end(self, final: Final, *, include_usage: bool, return_tool_trace: bool) -> bytes:
        out = b""
        if final.tool_calls:
            calls = [ChoiceDeltaToolCall(index=i, id=c["id"], type="function", function=c["function"])
                     for i, c in enumerate(final.tool_calls)]
            out += self._chunk(ChoiceDelta(tool_calls=calls))
        extra = {"tool_trace": final.tool_trace} if return_tool_trace else {}
        out += self._chunk(ChoiceDelta(), finish_reason(final.finish_reason), **extra)
        if include_usage:
            chunk = ChatCompletionChunk(id=self.id, object="chat.completion.chunk", created=self.created,
                                        model=self.model, choices=[], usage=usage(final.usage))
            out += sse(chunk.model_dump(mode="json", exclude_unset=True))
        return out + DONE


def sse(value: dict) -> bytes:
    return b"data: " + json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n\n"


DONE = b"data: [DONE]\n\n"


def error_body(message: str, kind: str, *, param: Optional[str] = None, code: Optional[str] = None) -> dict:
    """OpenAI's error object."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
