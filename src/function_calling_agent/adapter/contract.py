"""The client contract of function_calling_agent: its tensor names and types (the one source), and the decoding of a
request's tensors into a typed `ClientRequest`.

Every problem a client can fix raises `InvalidRequest` with a message that says what to change; the adapter answers
it with Triton's INVALID_ARG. `model_repository/function_calling_agent/config.pbtxt` declares the same tensors (the
model checks that at load, see `check_declared`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from ..engine import SamplingParams
from ..tool_choice import NONE, ToolChoice, ToolChoiceError
from ..tools.client import ClientToolSpec, ToolOfferError, client_tool_specs


class InvalidRequest(ValueError):
    pass


# Client input name -> the tensorrt_llm input that carries it (TRT-LLM 1.x renamed random_seed to seed).
SAMPLING_ENGINE_INPUTS = {
    "temperature": ("temperature",),
    "top_k": ("runtime_top_k",),
    "top_p": ("runtime_top_p",),
    "random_seed": ("random_seed", "seed"),
    "repetition_penalty": ("repetition_penalty",),
    "presence_penalty": ("presence_penalty",),
    "frequency_penalty": ("frequency_penalty",),
}
# The tensorrt_llm inputs that carry a guide (tool_choice required / a named function), and the one that bans words
# (tool_choice none).
GUIDED_DECODING_INPUTS = ("guided_decoding_guide_type", "guided_decoding_guide")
BAD_WORDS_INPUT = "bad_words_list"


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One tensor of the contract: Triton data type, numpy type, what it carries, and its dims per request (batch
    first, so [1] is sent as [1, 1]). The list inputs are [-1] so that Triton's HTTP generate endpoints take a JSON
    array of strings for them (one element per string, [1, N]); a [1] input would turn N strings into a batch of N."""

    data_type: str
    numpy_type: Any
    doc: str
    dims: tuple[int, ...] = (1,)


# Client input name -> spec. Only text_input/messages and max_tokens are needed; every other input is optional.
CLIENT_INPUTS: Mapping[str, TensorSpec] = {
    "text_input": TensorSpec("TYPE_STRING", np.object_, "the prompt (or send messages)"),
    "max_tokens": TensorSpec("TYPE_INT32", np.int32, "required; bounds each engine turn"),
    "stream": TensorSpec("TYPE_BOOL", np.bool_, "true: answer deltas as they are generated; false: one response"),
    "temperature": TensorSpec("TYPE_FP32", np.float32, "sampling, every turn"),
    "top_k": TensorSpec("TYPE_INT32", np.int32, "sampling, every turn"),
    "top_p": TensorSpec("TYPE_FP32", np.float32, "sampling, every turn"),
    "random_seed": TensorSpec("TYPE_UINT64", np.uint64, "sampling, every turn"),
    "repetition_penalty": TensorSpec("TYPE_FP32", np.float32, "sampling, every turn"),
    "presence_penalty": TensorSpec("TYPE_FP32", np.float32, "sampling, every turn"),
    "frequency_penalty": TensorSpec("TYPE_FP32", np.float32, "sampling, every turn"),
    "stop_words": TensorSpec("TYPE_STRING", np.object_, "end the final answer (not tool turns)", (-1,)),
    "messages": TensorSpec("TYPE_STRING", np.object_, "OpenAI-style chat history, instead of text_input: the JSON "
                           "list as one string, or one message as JSON per element", (-1,)),
    "max_iterations": TensorSpec("TYPE_INT32", np.int32, "may lower the server's limit, never raise it"),
    "tools": TensorSpec("TYPE_STRING", np.object_, "tool names, one per element (or one JSON list as text): a "
                        "subset of what the server offers", (-1,)),
    "return_trace": TensorSpec("TYPE_BOOL", np.bool_, "add tool_trace to the final response"),
    "return_reasoning": TensorSpec("TYPE_BOOL", np.bool_,
                                   "send the model's reasoning as reasoning_output (deltas when streaming)"),
    "enable_thinking": TensorSpec("TYPE_BOOL", np.bool_,
                                  "the chat template's thinking switch (Qwen3 hybrid); absent: the model's default"),
    "client_tools": TensorSpec("TYPE_STRING", np.object_,
                               "JSON list of OpenAI function tools the client runs: offered next to the server's "
                               "tools; a call to one ends the run with finish_reason tool_calls"),
    "tool_choice": TensorSpec("TYPE_STRING", np.object_,
                              'auto (default), none, required, or {"type": "function", "function": {"name": ...}}'),
    "parallel_tool_calls": TensorSpec("TYPE_BOOL", np.bool_, "false: a turn ends at its first tool call"),
    "list_tools": TensorSpec("TYPE_BOOL", np.bool_,
                             "true: answer at once with tool_schemas (narrowed by tools); no prompt, no engine call"),
}
REQUIRED_INPUTS = ("max_tokens",)
CLIENT_OUTPUTS: Mapping[str, str] = {
    "text_output": "final-answer text (the deltas when streaming; the last response then carries \"\")",
    "finish_reason": "stop, length, incomplete or tool_calls (errors and cancellation arrive as Triton errors)",
    "usage": "JSON: token counts, engine turns, tool calls, iterations, repair turns, reused prompt tokens, detail",
    "tool_trace": "JSON: every call and the conversation in OpenAI form, to continue it through messages",
    "reasoning_output": "the model's reasoning (<think> blocks) when return_reasoning is true: deltas when streaming",
    "tool_calls": "JSON list of the client tool calls to run, in OpenAI form (finish_reason tool_calls); [] otherwise",
    "tool_schemas": "JSON: the OpenAI tool schemas the server offers (list_tools requests only)",
}


# How the agent's error messages start, by kind. Triton's gRPC stream and HTTP generate endpoint carry a model's
# error message without its code, so clients (the OpenAI gateway) tell the kinds apart by these prefixes; every other
# error message is the client's to fix (INVALID_ARG).
ENGINE_UNAVAILABLE = "the engine is unavailable"
REQUEST_CANCELLED = "request cancelled by the client"
INTERNAL_ERROR = "internal error"


def error_kind(message: str) -> str:
    """`unavailable`, `cancelled`, `internal` or `invalid` for an error message of function_calling_agent."""
    for prefix, kind in ((ENGINE_UNAVAILABLE, "unavailable"), (REQUEST_CANCELLED, "cancelled"),
                         (INTERNAL_ERROR, "internal")):
        if message.startswith(prefix):
            return kind
    return "invalid"


def check_declared(model_config: Mapping[str, Any]) -> None:
    """Raises ValueError when a model config (Triton's JSON form) does not declare exactly the contract's tensors."""
    declared = {t["name"]: t.get("data_type") for t in model_config.get("input", [])}
    dims = {t["name"]: tuple(int(d) for d in t.get("dims", ())) for t in model_config.get("input", [])}
    problems = []
    for name, spec in CLIENT_INPUTS.items():
        if declared.get(name) != spec.data_type:
            problems.append(f"input {name!r} must be {spec.data_type}, got {declared.get(name, 'nothing')}")
        elif dims[name] != spec.dims:
            problems.append(f"input {name!r} must have dims {list(spec.dims)}, got {list(dims[name])}")
    problems += [f"input {name!r} is not part of the contract" for name in declared if name not in CLIENT_INPUTS]
    outputs = {t["name"] for t in model_config.get("output", [])}
    if outputs != set(CLIENT_OUTPUTS):
        problems.append(f"outputs must be {sorted(CLIENT_OUTPUTS)}, got {sorted(outputs)}")
    if problems:
        raise ValueError("config.pbtxt does not match the client contract: " + "; ".join(problems))


_ROLES = {"system", "user", "assistant", "tool"}
_TOOL_NAME = re.compile(r"[A-Za-z0-9_\-]{1,64}")
MAX_MESSAGES = 256
MAX_STOP_WORDS = 16


@dataclasses.dataclass(frozen=True)
class ClientRequest:
    messages: tuple[dict, ...]
    max_tokens: int
    stream: bool
    sampling: SamplingParams
    stop_words: tuple[str, ...]
    max_iterations: Optional[int]
    tools: Optional[tuple[str, ...]]
    return_trace: bool
    return_reasoning: bool = False
    enable_thinking: Optional[bool] = None
    client_tools: tuple[ClientToolSpec, ...] = ()
    tool_choice: ToolChoice = ToolChoice()
    parallel_tool_calls: bool = True


def decode_request(inputs: Mapping[str, Optional[np.ndarray]], *, max_tokens_limit: int,
                   max_input_chars: int, engine_inputs: Sequence[str]) -> ClientRequest:
    """`inputs` maps input names to arrays as Triton delivers them (batch dimension first), None when absent."""
    arrays = {k: v for k, v in inputs.items() if v is not None}
    for name, array in arrays.items():
        _check_array(name, array)

    text = _string(arrays, "text_input", max_input_chars)
    messages_texts = _texts(arrays, "messages", max_input_chars)
    if (text is None) == (messages_texts is None):
        raise InvalidRequest("send exactly one of text_input (a prompt) or messages (a JSON chat history)")
    if text is not None:
        if not text.strip():
            raise InvalidRequest("text_input is empty: send the user's prompt")
        messages: tuple[dict, ...] = ({"role": "user", "content": text},)
    else:
        messages = _messages(messages_texts)

    max_tokens = _scalar(arrays, "max_tokens")
    if max_tokens is None:
        raise InvalidRequest("max_tokens is required: the most tokens to generate per engine turn")
    max_tokens = int(max_tokens)
    if not 1 <= max_tokens <= max_tokens_limit:
        raise InvalidRequest(f"max_tokens must be between 1 and {max_tokens_limit}, got {max_tokens}")

    sampling = _sampling(arrays)
    declared = set(engine_inputs)
    for client_name, value in sampling.given().items():
        if not declared.intersection(SAMPLING_ENGINE_INPUTS[client_name]):
            raise InvalidRequest(f"{client_name} is not supported by the engine model (it declares no "
                                 f"{'/'.join(SAMPLING_ENGINE_INPUTS[client_name])} input): remove {client_name}")

    stop_words = tuple(w for w in _strings(arrays, "stop_words") if w)
    if len(stop_words) > MAX_STOP_WORDS:
        raise InvalidRequest(f"at most {MAX_STOP_WORDS} stop_words are allowed, got {len(stop_words)}")
    if any(len(w) > 256 for w in stop_words):
        raise InvalidRequest("each stop word must be at most 256 characters")

    max_iterations = _scalar(arrays, "max_iterations")
    if max_iterations is not None:
        max_iterations = int(max_iterations)
        if max_iterations < 0:
            raise InvalidRequest(f"max_iterations must be >= 0, got {max_iterations}")

    tools = _tool_names(arrays, max_input_chars)

    client_tools: tuple[ClientToolSpec, ...] = ()
    client_tools_json = _string(arrays, "client_tools", max_input_chars)
    if client_tools_json is not None:
        try:
            client_tools = client_tool_specs(_load_json(client_tools_json, "client_tools"))
        except ToolOfferError as exc:
            raise InvalidRequest(str(exc)) from None
    tool_choice = ToolChoice()
    tool_choice_text = _string(arrays, "tool_choice", 4096)
    if tool_choice_text is not None:
        try:
            tool_choice = ToolChoice.parse(tool_choice_text)
        except ToolChoiceError as exc:
            raise InvalidRequest(str(exc)) from None
    _check_engine_honours(tool_choice, declared)
    parallel_tool_calls = _scalar(arrays, "parallel_tool_calls")

    stream = _scalar(arrays, "stream")
    return_trace = _scalar(arrays, "return_trace")
    return_reasoning = _scalar(arrays, "return_reasoning")
    enable_thinking = _scalar(arrays, "enable_thinking")
    return ClientRequest(
        messages=messages, max_tokens=max_tokens, stream=bool(stream) if stream is not None else False,
        sampling=sampling, stop_words=stop_words, max_iterations=max_iterations, tools=tools,
        return_trace=bool(return_trace) if return_trace is not None else False,
        return_reasoning=bool(return_reasoning) if return_reasoning is not None else False,
        enable_thinking=None if enable_thinking is None else bool(enable_thinking),
        client_tools=client_tools, tool_choice=tool_choice,
        parallel_tool_calls=True if parallel_tool_calls is None else bool(parallel_tool_calls),
    )


def _check_engine_honours(tool_choice: ToolChoice, declared: set) -> None:
    """A tool_choice the engine model cannot honour is refused, never silently ignored."""
    if tool_choice.mode == NONE and BAD_WORDS_INPUT not in declared:
        raise InvalidRequest(f"tool_choice 'none' is not supported by the engine model: it bans the tool-call tag "
                             f"through the {BAD_WORDS_INPUT} input, which the engine does not declare; use 'auto'")
    missing = [name for name in GUIDED_DECODING_INPUTS if name not in declared]
    if tool_choice.constrains and missing:
        raise InvalidRequest(
            f"tool_choice {tool_choice.describe()} is not supported by the engine model: it needs guided decoding "
            f"(the {' and '.join(GUIDED_DECODING_INPUTS)} inputs with a guided_decoding_backend), which the engine "
            f"does not offer; use tool_choice 'auto' or 'none'")


@dataclasses.dataclass(frozen=True)
class ToolListRequest:
    tools: Optional[tuple[str, ...]]  # list only these (None: every tool the server offers)


def decode_list_tools(inputs: Mapping[str, Optional[np.ndarray]], *, max_input_chars: int) -> Optional[ToolListRequest]:
    """The request as a tool listing (`list_tools` true), or None when it is an agent request."""
    arrays = {k: v for k, v in inputs.items() if v is not None}
    if "list_tools" not in arrays:
        return None
    _check_array("list_tools", arrays["list_tools"])
    if not _scalar(arrays, "list_tools"):
        return None
    for name in ("text_input", "messages"):
        if name in arrays:
            raise InvalidRequest(f"list_tools is answered on its own: send it without {name}")
    if "tools" in arrays:
        _check_array("tools", arrays["tools"])
    return ToolListRequest(_tool_names(arrays, max_input_chars))


def _tool_names(arrays, max_input_chars: int) -> Optional[tuple[str, ...]]:
    texts = _texts(arrays, "tools", max_input_chars)
    return _tools(texts) if texts is not None else None


def _check_array(name: str, array: np.ndarray) -> None:
    spec = CLIENT_INPUTS.get(name)
    if spec is None:
        return
    expected = spec.numpy_type
    if array.dtype.type is not expected and not (expected is np.object_ and array.dtype.kind in "SUO"):
        raise InvalidRequest(f"{name} must be {np.dtype(expected).name if expected is not np.object_ else 'BYTES'}, "
                             f"got {array.dtype}")
    if array.ndim == 0 or array.shape[0] != 1:
        raise InvalidRequest(f"{name}: send one request per call (batch size 1), got shape {list(array.shape)}")
    if spec.dims == (1,) and array.size != 1:
        raise InvalidRequest(f"{name} must hold exactly one value, got shape {list(array.shape)}")


def _as_text(name: str, value: Any, limit: int) -> str:
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidRequest(f"{name} is not valid UTF-8 text") from None
    value = str(value)
    if len(value) > limit:
        raise InvalidRequest(f"{name} is {len(value)} characters; the limit is {limit}: shorten it")
    if "\x00" in value:
        raise InvalidRequest(f"{name} contains NUL characters")
    return value


def _string(arrays, name: str, limit: int) -> Optional[str]:
    if name not in arrays:
        return None
    return _as_text(name, arrays[name].reshape(-1)[0], limit)


def _strings(arrays, name: str) -> list[str]:
    if name not in arrays:
        return []
    return [_as_text(name, v, 4096) for v in arrays[name].reshape(-1)]


def _texts(arrays, name: str, limit: int) -> Optional[list[str]]:
    """The strings of a list input (None when absent); `limit` bounds their total length."""
    if name not in arrays:
        return None
    values = arrays[name].reshape(-1)
    if values.size > MAX_MESSAGES:
        raise InvalidRequest(f"{name} holds {values.size} elements; the limit is {MAX_MESSAGES}")
    texts = [_as_text(name, v, limit) for v in values]
    total = sum(map(len, texts))
    if total > limit:
        raise InvalidRequest(f"{name} is {total} characters; the limit is {limit}: shorten it")
    return texts


def _scalar(arrays, name: str):
    if name not in arrays:
        return None
    return arrays[name].reshape(-1)[0].item()


def _sampling(arrays) -> SamplingParams:
    def number(name, low, high, low_open=False):
        value = _scalar(arrays, name)
        if value is None:
            return None
        if not math.isfinite(value) or value < low or value > high or (low_open and value == low):
            bound = f"({low:g}, {high:g}]" if low_open else f"[{low:g}, {high:g}]"
            raise InvalidRequest(f"{name} must be in {bound}, got {value}")
        return float(value)

    top_k = _scalar(arrays, "top_k")
    if top_k is not None and not 0 <= top_k <= 1_000_000:
        raise InvalidRequest(f"top_k must be >= 0 (0 disables it), got {top_k}")
    return SamplingParams(
        temperature=number("temperature", 0.0, 100.0),
        top_k=int(top_k) if top_k is not None else None,
        top_p=number("top_p", 0.0, 1.0, low_open=True),
        random_seed=_scalar(arrays, "random_seed"),
        repetition_penalty=number("repetition_penalty", 0.0, 100.0, low_open=True),
        presence_penalty=number("presence_penalty", -100.0, 100.0),
        frequency_penalty=number("frequency_penalty", -100.0, 100.0),
    )


_MESSAGES_FORMS = ('messages must be a non-empty JSON list like [{"role": "user", "content": "..."}], sent as one '
                   'string; or one message as JSON text per element')


def _messages(texts: list[str]) -> tuple[dict, ...]:
    """Each element holds the JSON text of a list of messages (or of {"messages": [...]}) or of one message; in
    order, they make the conversation. One element with the whole list is the common form."""
    value: list = []
    for i, text in enumerate(texts):
        item = _load_json(text, "messages" if len(texts) == 1 else f"messages (element {i})")
        if isinstance(item, dict) and "role" not in item and isinstance(item.get("messages"), list):
            item = item["messages"]
        if isinstance(item, dict):
            value.append(item)
        elif isinstance(item, list):
            value.extend(item)
        else:
            raise InvalidRequest(_MESSAGES_FORMS)
    if not value:
        raise InvalidRequest(_MESSAGES_FORMS)
    if len(value) > MAX_MESSAGES:
        raise InvalidRequest(f"messages holds {len(value)} entries; the limit is {MAX_MESSAGES}")
    out = []
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise InvalidRequest(f"{where} must be an object with role and content")
        role = message.get("role")
        if not isinstance(role, str) or role not in _ROLES:
            raise InvalidRequest(f"{where}.role must be one of {sorted(_ROLES)}, got {role!r}")
        content = _content(message.get("content"), where)
        clean: dict = {"role": role, "content": content}
        if role == "assistant" and message.get("tool_calls"):
            clean["tool_calls"] = _tool_calls(message["tool_calls"], where)
        elif role != "assistant" and message.get("tool_calls"):
            raise InvalidRequest(f"{where}: only assistant messages may carry tool_calls")
        if role == "tool":
            name = message.get("name")
            if name is not None:
                if not isinstance(name, str) or not _TOOL_NAME.fullmatch(name):
                    raise InvalidRequest(f"{where}.name must be a tool name (letters, digits, _ or -)")
                clean["name"] = name
            call_id = message.get("tool_call_id")
            if call_id is not None:
                if not isinstance(call_id, str) or len(call_id) > 128:
                    raise InvalidRequest(f"{where}.tool_call_id must be a string of at most 128 characters")
                clean["tool_call_id"] = call_id
        if role in ("user", "system") and not content.strip():
            raise InvalidRequest(f"{where}.content is empty")
        if role == "system" and i != 0:
            raise InvalidRequest(f"{where}: a system message is only allowed first")
        out.append(clean)
    if out[-1]["role"] not in ("user", "tool"):
        raise InvalidRequest("the last message must be from the user (or a tool result) for the agent to answer")
    return tuple(out)


_TOOLS_FORMS = ('send tool names one per element (on /generate a JSON array: ["get_current_stock_price"]) or one '
                'JSON list as text')


def _tools(texts: list[str]) -> tuple[str, ...]:
    names: list = texts
    if len(texts) == 1 and texts[0].lstrip().startswith("["):
        names = _load_json(texts[0], "tools")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise InvalidRequest(f"tools must be a list of tool names: {_TOOLS_FORMS}")
    for name in names:
        # The rule ToolSpec applies to names, so anything else cannot name a tool (e.g. "a,b" or a JSON object).
        if not name.replace("_", "a").replace("-", "a").isalnum():
            raise InvalidRequest(f"tools: {name[:80]!r} is not a tool name; {_TOOLS_FORMS}")
    return tuple(dict.fromkeys(names))


def _load_json(text: str, name: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"{name} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except (ValueError, RecursionError):  # integers past Python's digit limit, nesting past the recursion limit
        raise InvalidRequest(f"{name} is too deeply nested or holds a number too large to read") from None


def _content(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts: only text is supported
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise InvalidRequest(f"{where}.content parts must be {{\"type\": \"text\", \"text\": ...}}")
            texts.append(part["text"])
        return "".join(texts)
    raise InvalidRequest(f"{where}.content must be a string")


def _tool_calls(calls: Any, where: str) -> list:
    if not isinstance(calls, list):
        raise InvalidRequest(f"{where}.tool_calls must be a list")
    out = []
    for j, call in enumerate(calls):
        fn = call.get("function", call) if isinstance(call, dict) else None
        if not isinstance(fn, dict):
            raise InvalidRequest(f"{where}.tool_calls[{j}] must be an object with a function")
        name = fn.get("name")
        if not isinstance(name, str) or not _TOOL_NAME.fullmatch(name):
            raise InvalidRequest(f"{where}.tool_calls[{j}].function.name must be a tool name")
        arguments = fn.get("arguments", {})
        if isinstance(arguments, str):
            arguments = _load_json(arguments, f"{where}.tool_calls[{j}].function.arguments") if arguments.strip() else {}
        if not isinstance(arguments, dict):
            raise InvalidRequest(f"{where}.tool_calls[{j}].function.arguments must be a JSON object")
        call_id = call.get("id") if isinstance(call.get("id"), str) else f"call_{j}"
        out.append({"id": call_id[:128], "type": "function",
                    "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)}})
    return out
