#!/usr/bin/env python3
"""Ask function_calling_agent a question from the command line; the agent runs the tool calls on the server.

    python client/client.py --streaming --output-len 1000 --prompt "Give me Rivian (RIVN) news and stock price"
    python client/client.py -p "What is NVDA trading at?" --save-trace history.json
    python client/client.py --tools get_current_stock_price --messages history.json -p "And NVDA?"

Compatible with the seed tutorial's client flags (-u, -p, -S, -o, --temperature, --model-name, -v). The answer goes
to stdout (token by token with --streaming); with -v the tool trace, finish_reason and usage follow on stderr.
--messages continues a conversation (a JSON file or JSON text: a list of OpenAI-style messages, or an object with
"messages", such as the tool_trace that --save-trace writes); with --prompt too, the prompt is added as the last
user message.
--tools narrows the server's tools for this request (comma-separated names). Input names and types come from the
agent's client contract (`function_calling_agent.adapter.contract`).
gRPC (default, localhost:8001) uses tritonclient's streaming API, as decoupled models require; HTTP (localhost:8000)
uses Triton's `generate` / `generate_stream` endpoints, since tritonclient's HTTP client has no generate call.

Exit codes: 0 answered; 1 the server answered with an error ("error: <message>"); 2 Triton cannot be reached (or
a usage error, from argparse); 130 interrupted with Ctrl-C (the request is cancelled on the server first).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import queue
import signal
import sys
import uuid
from pathlib import Path
from typing import Callable, Optional, Sequence, TextIO

from function_calling_agent.adapter.contract import CLIENT_INPUTS

EXIT_OK = 0
EXIT_SERVER_ERROR = 1
EXIT_UNREACHABLE = 2
EXIT_INTERRUPTED = 130

DEFAULT_MODEL = "function_calling_agent"
DEFAULT_URLS = {"grpc": "localhost:8001", "http": "localhost:8000"}
CONNECT_TIMEOUT_S = 5.0


class ClientError(Exception):
    """Ends the command with one line on stderr and `exit_code`."""

    exit_code = EXIT_SERVER_ERROR


class ServerError(ClientError):
    exit_code = EXIT_SERVER_ERROR


class Unreachable(ClientError):
    exit_code = EXIT_UNREACHABLE


@dataclasses.dataclass
class Answer:
    text: str = ""
    finish_reason: Optional[str] = None
    usage: Optional[dict] = None
    trace: Optional[dict] = None


OnText = Callable[[str], None]


def _json_or_raw(value: Optional[str]):
    if not value:
        return None
    try:
        return json.loads(value)
    except ValueError:
        return value


def load_messages(value: str) -> list:
    """--messages: "-" (stdin), a file, or JSON text; a list of messages or an object holding "messages".

    Raises ValueError with a one-line reason. The server validates the messages themselves."""
    if value == "-":
        text, source = sys.stdin.read(), "stdin"
    elif os.path.isfile(value):
        with open(value, encoding="utf-8") as f:
            text, source = f.read(), value
    else:
        text, source = value, None
    try:
        loaded = json.loads(text)
    except ValueError as exc:
        where = f"{source} is not valid JSON" if source else "not a file, and not valid JSON"
        raise ValueError(f"--messages: {where} ({exc})") from None
    if isinstance(loaded, dict) and isinstance(loaded.get("messages"), list):
        loaded = loaded["messages"]
    if not isinstance(loaded, list):
        raise ValueError('--messages must hold a JSON list like [{"role": "user", "content": "..."}] '
                         'or an object with "messages"')
    return loaded


def request_fields(args: argparse.Namespace) -> dict:
    """The agent's inputs for this invocation, by name (JSON-compatible values; list inputs as lists).

    Raises ValueError for a --messages value that cannot be read."""
    fields: dict = {"max_tokens": args.output_len, "stream": bool(args.streaming)}
    if args.messages is not None:
        messages = load_messages(args.messages)
        if args.prompt is not None:
            messages = messages + [{"role": "user", "content": args.prompt}]
        # The HTTP generate endpoints cannot take a JSON array of objects for a STRING input: send JSON text.
        fields["messages"] = json.dumps(messages, ensure_ascii=False)
    else:
        fields["text_input"] = args.prompt
    if args.tools is not None:
        fields["tools"] = [name.strip() for name in args.tools.split(",") if name.strip()]
    if args.temperature is not None:
        fields["temperature"] = args.temperature
    if args.verbose or args.save_trace:
        fields["return_trace"] = True
    return fields


# ---------------------------------------------------------------------------------------------------------------- gRPC
def _grpc_inputs(fields: dict):
    import numpy as np
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import np_to_triton_dtype

    inputs = []
    for name, value in fields.items():
        spec = CLIENT_INPUTS[name]
        row = list(value) if isinstance(value, (list, tuple)) else [value]  # shape [1, N] or [1, 1]
        if spec.numpy_type is np.object_:
            array = np.array([[v.encode("utf-8") for v in row]], dtype=np.object_).reshape(1, len(row))
        else:
            array = np.array([row], dtype=spec.numpy_type)
        tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def _grpc_message(error) -> str:
    message = error.message() if hasattr(error, "message") and callable(error.message) else str(error)
    return (message or str(error)).strip()


def _grpc_unreachable(error) -> bool:
    status = (error.status() or "") if hasattr(error, "status") and callable(error.status) else ""
    text = _grpc_message(error).lower()
    return "unavailable" in status.lower() and ("connect" in text or "socket" in text or "unavailable" in text)


def _first_string(result, name: str) -> Optional[str]:
    array = result.as_numpy(name)
    if array is None or array.size == 0:
        return None
    value = array.reshape(-1)[0]
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def run_grpc(url: str, model: str, fields: dict, on_text: OnText) -> Answer:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from function_calling_agent.grpc_channel import channel_args

    try:
        client = grpcclient.InferenceServerClient(url, channel_args=channel_args(url))
        client.is_server_live(client_timeout=CONNECT_TIMEOUT_S)
    except InferenceServerException as exc:
        raise Unreachable(f"cannot reach Triton at {url}: {_grpc_message(exc)}") from None
    except Exception as exc:  # malformed URL and the like
        raise Unreachable(f"cannot reach Triton at {url}: {exc}") from None

    responses: queue.Queue = queue.Queue()
    answer = Answer()
    streaming = fields["stream"]
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    try:
        client.async_stream_infer(model, _grpc_inputs(fields), request_id=f"cli-{uuid.uuid4().hex[:12]}",
                                  enable_empty_final_response=True)
        while True:
            try:
                result, error = responses.get(timeout=0.1)  # a timeout keeps Ctrl-C responsive
            except queue.Empty:
                continue
            if error is not None:
                if _grpc_unreachable(error):
                    raise Unreachable(f"cannot reach Triton at {url}: {_grpc_message(error)}")
                raise ServerError(_grpc_message(error))
            response = result.get_response()
            if response.outputs:
                text = _first_string(result, "text_output") or ""
                if text:
                    answer.text += text
                    if streaming:
                        on_text(text)
                names = {o.name for o in response.outputs}
                if "finish_reason" in names:
                    answer.finish_reason = _first_string(result, "finish_reason")
                if "usage" in names:
                    answer.usage = _json_or_raw(_first_string(result, "usage"))
                if "tool_trace" in names:
                    answer.trace = _json_or_raw(_first_string(result, "tool_trace"))
            final = response.parameters.get("triton_final_response")
            if final is not None and final.bool_param:
                break
    except KeyboardInterrupt:
        # Cancels the in-flight request on the server (the agent sees is_cancelled() and stops its engine turn).
        try:
            client.stop_stream(cancel_requests=True)
        finally:
            raise
    client.stop_stream()
    client.close()
    if not streaming and answer.text:
        on_text(answer.text)
    return answer


# ---------------------------------------------------------------------------------------------------------------- HTTP
def _http_base(url: str) -> str:
    return url.rstrip("/") if "://" in url else f"http://{url.rstrip('/')}"


def _http_error(response) -> str:
    try:
        body = response.json()
        if isinstance(body, dict) and body.get("error"):
            return str(body["error"])
    except ValueError:
        pass
    return f"HTTP {response.status_code}: {response.text.strip()[:500]}"


def _absorb(answer: Answer, payload: dict, streaming: bool, on_text: OnText) -> None:
    if payload.get("error"):
        raise ServerError(str(payload["error"]))
    text = payload.get("text_output")
    if isinstance(text, list):
        text = "".join(str(t) for t in text)
    if text:
        answer.text += text
        if streaming:
            on_text(text)
    if payload.get("finish_reason") is not None:
        answer.finish_reason = payload["finish_reason"]
    if payload.get("usage") is not None:
        answer.usage = _json_or_raw(payload["usage"]) if isinstance(payload["usage"], str) else payload["usage"]
    if payload.get("tool_trace") is not None:
        trace = payload["tool_trace"]
        answer.trace = _json_or_raw(trace) if isinstance(trace, str) else trace


def run_http(url: str, model: str, fields: dict, on_text: OnText) -> Answer:
    import requests

    base = _http_base(url)
    streaming = fields["stream"]
    endpoint = f"{base}/v2/models/{model}/{'generate_stream' if streaming else 'generate'}"
    answer = Answer()
    try:
        response = requests.post(endpoint, json=fields, stream=streaming, timeout=(CONNECT_TIMEOUT_S, None))
    except requests.ConnectionError as exc:
        raise Unreachable(f"cannot reach Triton at {url}: {exc}") from None
    except requests.RequestException as exc:
        raise Unreachable(f"cannot reach Triton at {url}: {exc}") from None
    try:
        if response.status_code != 200:
            raise ServerError(_http_error(response))
        if not streaming:
            _absorb(answer, response.json(), False, on_text)
            if answer.text:
                on_text(answer.text)
            return answer
        for line in response.iter_lines(decode_unicode=False):
            if not line or not line.startswith(b"data:"):
                continue
            try:
                payload = json.loads(line[len(b"data:"):].decode("utf-8"))
            except ValueError:
                raise ServerError(f"unexpected event from the server: {line[:200]!r}") from None
            _absorb(answer, payload, True, on_text)
        return answer
    except requests.RequestException as exc:
        raise ServerError(f"the connection to Triton broke: {exc}") from None
    finally:
        # On Ctrl-C this closes the socket: Triton sees the disconnect and cancels the request.
        response.close()


# ---------------------------------------------------------------------------------------------------------------- CLI
def format_trace(answer: Answer) -> str:
    lines = ["", "--- tool trace ---"]
    trace = answer.trace if isinstance(answer.trace, dict) else None
    calls = trace.get("tool_calls", []) if trace else []
    if not calls:
        lines.append("(no tool calls)")
    for call in calls:
        arguments = json.dumps(call.get("arguments"), ensure_ascii=False)
        line = (f"turn {call.get('turn')}: {call.get('name')}({arguments}) -> {call.get('status')} "
                f"in {float(call.get('latency_ms') or 0):.1f} ms")
        if call.get("error"):
            line += f": {call['error']}"
        lines.append(line)
    if answer.trace is not None:
        lines.append(json.dumps(answer.trace, indent=2, ensure_ascii=False))
    lines.append(f"finish_reason: {answer.finish_reason}")
    lines.append(f"usage: {json.dumps(answer.usage, ensure_ascii=False)}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="client.py", description="Ask function_calling_agent on a Triton server; tools run server-side.")
    parser.add_argument("-u", "--url", default=None,
                        help="Triton address (default localhost:8001 for grpc, localhost:8000 for http)")
    parser.add_argument("-p", "--prompt", help="the user's question (needed unless --messages is given)")
    parser.add_argument("--messages", metavar="FILE_OR_JSON",
                        help='continue a conversation: a JSON file ("-" for stdin) or JSON text, a list of '
                             'OpenAI-style messages or an object with "messages" (e.g. a saved tool_trace); '
                             "--prompt is then added as the last user message")
    parser.add_argument("--tools", metavar="NAME,NAME",
                        help="only these of the server's tools for this request (comma-separated; \"\" for none)")
    parser.add_argument("-S", "--streaming", action="store_true", help="print the answer token by token")
    parser.add_argument("-o", "--output-len", type=int, default=100, help="max tokens per engine turn (default 100)")
    parser.add_argument("--temperature", type=float, default=None, help="sampling temperature (default: server's)")
    parser.add_argument("--model-name", default=DEFAULT_MODEL, help=f"model to ask (default {DEFAULT_MODEL})")
    parser.add_argument("-i", "--protocol", choices=("grpc", "http"), default="grpc", help="default grpc")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="after the answer, print the tool trace, finish_reason and usage to stderr")
    parser.add_argument("--save-trace", metavar="FILE",
                        help="write the request's tool_trace (JSON; its `messages` end with the answer) to FILE, "
                             "to continue the conversation later with --messages FILE")
    return parser


def main(argv: Optional[Sequence[str]] = None, stdout: TextIO = sys.stdout, stderr: TextIO = sys.stderr) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.prompt is None and args.messages is None:
        parser.error("give --prompt, --messages, or both")
    try:
        fields = request_fields(args)
    except ValueError as exc:
        parser.error(str(exc))
    # A shell that starts us in the background may have set SIGINT to "ignore"; Ctrl-C must still cancel.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    url = args.url or DEFAULT_URLS[args.protocol]
    wrote = [False]

    def on_text(text: str) -> None:
        stdout.write(text)
        stdout.flush()
        wrote[0] = True

    run = run_grpc if args.protocol == "grpc" else run_http
    try:
        answer = run(url, args.model_name, fields, on_text)
    except KeyboardInterrupt:
        if wrote[0]:
            stdout.write("\n")
            stdout.flush()
        print("interrupted: the request was cancelled", file=stderr)
        return EXIT_INTERRUPTED
    except ClientError as exc:
        if wrote[0]:
            stdout.write("\n")
            stdout.flush()
        print("error: " + " ".join(str(exc).splitlines()), file=stderr)
        return exc.exit_code
    stdout.write("\n")
    stdout.flush()
    if args.verbose:
        print(format_trace(answer), file=stderr)
    if args.save_trace:
        if not isinstance(answer.trace, dict):
            print(f"error: the server sent no tool_trace to save in {args.save_trace}", file=stderr)
            return EXIT_SERVER_ERROR
        Path(args.save_trace).write_text(json.dumps(answer.trace, indent=2, ensure_ascii=False) + "\n",
                                         encoding="utf-8")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
