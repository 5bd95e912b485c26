"""The agent's EngineClient over Triton's gRPC streaming API (`tritonclient.grpc.aio`), on the model's event loop.

Why not BLS: a stub that reads several decoupled BLS streams at once can deadlock inside python_backend (a thread
holding the GIL waits for the stub's iterator-map lock, the message thread holds that lock while it waits for an
iterator's mutex, that iterator's reader holds the mutex while it waits for the GIL; README "Known limitations").
Over gRPC the agent's stub never touches a BLS iterator: the engine's responses arrive as gRPC messages read by
asyncio on the stub's own event loop, with no reader threads.

One bidirectional stream per engine turn, to the engine model on `engine_url` (normally this server's own gRPC
endpoint; see `resolve_engine_url`):
  - the turn's request goes out first, with `triton_enable_empty_final_response` so the last response is marked;
  - an early end (stop word, deadline, client cancel) sends TensorRT-LLM's `stop` request on the same stream (same
    request id, `stop=true`), waits for both FINALs, then half-closes: the stream ends normally on both sides;
  - the agent never cancels an engine stream: cancelling busy gRPC streams crashes Triton 2.51's gRPC frontend. One
    reader task per stream owns the gRPC call, so a cancelled consumer never cancels the read (grpc.aio cancels the
    RPC when a pending read is cancelled, and when it collects an unfinished call).
Engine errors arrive as gRPC error messages, also after streamed responses, and become `EngineError`s.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
from typing import Iterable, Mapping, Optional, Sequence

from ..engine import EngineError, EngineRequest
from ..grpc_channel import channel_args
from .engine_tensors import check_required, engine_inputs, engine_output, requested_outputs, stop_inputs

SELF = "self"
_FINAL_PARAMETER = "triton_final_response"
_NUMPY_TO_TRITON = {"int32": "INT32", "uint64": "UINT64", "float32": "FP32", "bool": "BOOL", "int64": "INT64",
                    "object": "BYTES"}


class EngineUrlError(ValueError):
    """`engine_url` cannot be resolved or points nowhere the agent can reach; loading fails with this message."""


# ------------------------------------------------------------------------------------------------------------------
# Where the engine is: this server's own gRPC endpoint, read from its command line
# ------------------------------------------------------------------------------------------------------------------
def _option(argv: Sequence[str], name: str) -> Optional[str]:
    """The last value of `--name=value` or `--name value` in a tritonserver command line (getopt_long syntax)."""
    value = None
    for index, arg in enumerate(argv):
        if arg.startswith(f"--{name}="):
            value = arg.split("=", 1)[1]
        elif arg == f"--{name}" and index + 1 < len(argv):
            value = argv[index + 1]
    return value


def _false(value: Optional[str]) -> bool:
    return value is not None and value.strip().lower() in ("false", "0", "off", "no")


def _true(value: Optional[str]) -> bool:
    return value is not None and value.strip().lower() in ("true", "1", "on", "yes")


def server_grpc_endpoint(argv: Sequence[str]) -> str:
    """`host:port` of the gRPC endpoint a tritonserver with this command line serves; EngineUrlError when it serves
    none the agent can use. Defaults are tritonserver's: 0.0.0.0:8001."""
    if _false(_option(argv, "allow-grpc")):
        raise EngineUrlError("this tritonserver runs with --allow-grpc=false, so the engine cannot be reached over "
                             "gRPC: start it with gRPC enabled, or set engine_transport to bls")
    if _true(_option(argv, "grpc-use-ssl")) or _true(_option(argv, "grpc-use-ssl-mutual")):
        raise EngineUrlError("this tritonserver's gRPC endpoint uses SSL, which the agent's engine connection does "
                             "not speak: set engine_url to a plaintext gRPC endpoint, or engine_transport to bls")
    restricted = _option(argv, "grpc-restricted-protocol") or ""
    if "inference" in restricted.split(":", 1)[0].split(","):
        raise EngineUrlError("this tritonserver restricts the gRPC inference protocol (--grpc-restricted-protocol): "
                             "lift the restriction or set engine_transport to bls")
    port_text = _option(argv, "grpc-port") or "8001"
    try:
        port = int(port_text)
    except ValueError:
        raise EngineUrlError(f"cannot read this tritonserver's --grpc-port {port_text!r}") from None
    if not 0 < port < 65536:
        raise EngineUrlError(f"this tritonserver's --grpc-port is {port}: no gRPC endpoint to reach the engine on")
    host = (_option(argv, "grpc-address") or "0.0.0.0").strip("[]")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return f"{host}:{port}"  # a host name
    if address.is_unspecified:  # listening on every address: reach it on loopback
        return f"[::1]:{port}" if address.version == 6 else f"127.0.0.1:{port}"
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


def server_command_line(pid: Optional[int] = None, *, max_depth: int = 3) -> list[str]:
    """The command line of the tritonserver this process runs under (the Python backend stub's parent, or one
    further up when the stub is started through a shell). EngineUrlError when there is none."""
    pid = os.getppid() if pid is None else pid
    for _ in range(max_depth):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = [part.decode("utf-8", "replace") for part in f.read().split(b"\0") if part]
            with open(f"/proc/{pid}/stat", "rb") as f:
                parent = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
        if argv and os.path.basename(argv[0]) == "tritonserver":
            return argv
        pid = parent
    raise EngineUrlError("cannot find the tritonserver process this model runs in (looked for it above the stub in "
                         "/proc), so engine_url 'self' has no address: set engine_url to the engine's gRPC "
                         "host:port")


def parse_engine_url(text: str) -> str:
    """`self`, or a plaintext gRPC `host:port` (IPv6 in brackets). Raises ValueError with what to write."""
    text = text.strip()
    if text == SELF:
        return text
    for scheme in ("grpc://", "http://"):
        if text.startswith(scheme):
            text = text[len(scheme):]
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or "/" in text:
        raise ValueError(f"engine_url must be 'self' (this server's gRPC endpoint) or host:port, got {text!r}")
    if host.startswith("[") != host.endswith("]") or (":" in host and not host.startswith("[")):
        raise ValueError(f"engine_url: an IPv6 host goes in brackets, e.g. [::1]:8001, got {text!r}")
    return f"{host}:{int(port)}"


def _same_endpoint(url: str, own: str, argv: Sequence[str]) -> bool:
    host, _, port = url.rpartition(":")
    own_host, _, own_port = own.rpartition(":")
    if port != own_port:
        return False
    local = {"localhost", "127.0.0.1", "[::1]", "0.0.0.0", "[::]", own_host}
    bound = (_option(argv, "grpc-address") or "").strip()
    if bound:
        local.add(bound if ":" not in bound else f"[{bound.strip('[]')}]")
    return host in local


def resolve_engine_url(value: str, argv: Optional[Sequence[str]]) -> tuple[str, bool]:
    """(host:port to dial, whether it is this server's own endpoint). `argv` is this server's command line, or None
    when it could not be read (then `self` cannot be resolved).

    This server's own endpoint only opens once every model has loaded, so it cannot be dialled while the agent
    loads: its command line is checked instead (gRPC enabled, plaintext, inference not restricted). Any other
    endpoint is already up and is dialled during loading (see `check_reachable`).
    """
    if value == SELF:
        if argv is None:
            raise EngineUrlError("engine_url 'self' needs this server's command line, which could not be read: set "
                                 "engine_url to the engine's gRPC host:port")
        return server_grpc_endpoint(argv), True
    if argv is not None:
        try:
            own = server_grpc_endpoint(argv)
        except EngineUrlError:
            own = None
        if own is not None and _same_endpoint(value, own, argv):
            return own, True
        for name in ("http-port", "metrics-port"):
            port = _option(argv, name) or {"http-port": "8000", "metrics-port": "8002"}[name]
            if value.rpartition(":")[2] == port and _same_endpoint(value, f"x:{port}", argv):
                raise EngineUrlError(f"engine_url {value} is this server's {name.split('-')[0].upper()} port, not its "
                                     f"gRPC port ({own or 'disabled'}): use 'self' or the gRPC port")
    return value, False


def check_reachable(url: str, model_name: str, timeout_s: float = 10.0) -> None:
    """Dials another server's gRPC endpoint (blocking, for loading) and checks that the engine model is ready there."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(url, channel_args=channel_args(url))
    try:
        if not client.is_model_ready(model_name, client_timeout=timeout_s):
            raise EngineUrlError(f"engine_url {url}: the server answers but model {model_name!r} is not ready there")
    except InferenceServerException as exc:
        raise EngineUrlError(f"engine_url {url}: cannot reach the engine's gRPC endpoint ({exc.message()}); check "
                             f"the address and that the server there runs with gRPC enabled") from None
    finally:
        client.close()


# ------------------------------------------------------------------------------------------------------------------
# The client
# ------------------------------------------------------------------------------------------------------------------
class _Stream:
    """One engine turn's gRPC stream: what to write, what was read, and how many FINALs are still owed."""

    def __init__(self, request_id: str):
        self.request_id = request_id
        self.writes: asyncio.Queue = asyncio.Queue()  # request dicts; None half-closes the stream
        self.reads: asyncio.Queue = asyncio.Queue()  # (result, error) pairs; None once the stream is over
        self.finals_owed = 1
        self.stop_sent = False
        self.half_closed = False
        self.abandoned = False  # the turn has left: what still arrives is read and dropped
        self.call = None
        self.reader: Optional[asyncio.Task] = None

    async def requests(self):
        while True:
            item = await self.writes.get()
            if item is None:
                return
            yield item

    def half_close(self) -> None:
        if not self.half_closed:
            self.half_closed = True
            self.writes.put_nowait(None)


class GrpcEngineClient:
    """EngineClient for an engine model that speaks the `tensorrt_llm` tensor contract, reached over gRPC.

    Everything runs on the event loop that calls `generate` (the stub's loop): the `tritonclient.grpc.aio` client is
    made there on first use. `stop_timeout_s` bounds how long an abandoned stream may take to end after its stop.
    """

    def __init__(self, url: str, model_name: str, declared_inputs: Iterable[str],
                 declared_outputs: Iterable[str] = ("output_ids",), *, stop_timeout_s: float = 5.0,
                 tokens_per_block: Optional[int] = None, logger=None, connect_timeout_s: float = 10.0):
        self.url = url
        self.model_name = model_name
        self.declared = frozenset(declared_inputs)
        self.outputs = requested_outputs(declared_outputs)
        check_required(model_name, self.declared)
        self.supports_bad_words = "bad_words_list" in self.declared
        self.tokens_per_block = tokens_per_block
        self.stop_timeout_s = stop_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self._logger = logger
        self._client = None
        self._ready = False
        self._live: dict[str, _Stream] = {}
        self.closing: set[asyncio.Task] = set()  # streams ending after an early exit (stop sent, FINALs owed)
        self.slow_to_end = 0  # streams still open stop_timeout_s after an early exit
        if "stop" not in self.declared and logger is not None:
            logger.log_warn(f"engine model {model_name!r} takes no stop input: a turn that ends early (stop word, "
                            "deadline, client cancel) leaves the engine generating until max_tokens")

    # -- connection --------------------------------------------------------------------------------------------------
    async def _connected(self):
        if self._client is None:
            import tritonclient.grpc.aio as aioclient

            self._client = aioclient.InferenceServerClient(self.url, channel_args=channel_args(self.url))
        if not self._ready:
            from tritonclient.utils import InferenceServerException

            try:
                ready = await asyncio.wait_for(self._client.is_model_ready(self.model_name), self.connect_timeout_s)
            except (InferenceServerException, asyncio.TimeoutError, OSError) as exc:
                message = exc.message() if isinstance(exc, InferenceServerException) else type(exc).__name__
                raise EngineError(f"cannot reach the engine model {self.model_name!r} at engine_url {self.url} "
                                  f"({message}): check engine_url and that the server there runs with gRPC "
                                  "enabled") from None
            if not ready:
                raise EngineError(f"the engine model {self.model_name!r} is not ready at engine_url {self.url}")
            self._ready = True
        return self._client

    def _request(self, request_id: str, arrays: Mapping) -> dict:
        import tritonclient.grpc as grpcclient

        inputs = []
        for name, array in arrays.items():
            tensor = grpcclient.InferInput(name, list(array.shape), _NUMPY_TO_TRITON[array.dtype.name])
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        return {"model_name": self.model_name, "inputs": inputs, "request_id": request_id,
                "outputs": [grpcclient.InferRequestedOutput(name) for name in self.outputs],
                "parameters": {"triton_enable_empty_final_response": True}}

    # -- one turn ----------------------------------------------------------------------------------------------------
    async def generate(self, request: EngineRequest):
        if "streaming" not in self.declared:
            raise EngineError(f"engine model {self.model_name!r} does not declare a streaming input")
        client = await self._connected()
        stream = _Stream(request.request_id)
        stream.writes.put_nowait(self._request(request.request_id, engine_inputs(request, self.declared)))
        try:
            stream.call = client.stream_infer(stream.requests())
        except Exception as exc:
            raise EngineError(f"engine model {self.model_name!r} at {self.url} could not be called: {exc}") from exc
        stream.reader = asyncio.ensure_future(self._read(stream))
        self._live[request.request_id] = stream
        finished = False
        prompt_tokens = len(request.prompt_ids)
        try:
            while True:
                item = await stream.reads.get()
                if item is None:
                    finished = True
                    raise EngineError(f"engine model {self.model_name!r}: the stream ended before its final response")
                result, error = item
                if error is not None:
                    finished = True  # an error ends the request
                    raise EngineError(f"engine model {self.model_name!r} failed: {_message(error)}")
                final = _is_final(result)
                finished = final
                output = engine_output(result.as_numpy, tokens_per_block=self.tokens_per_block,
                                       prompt_tokens=prompt_tokens)
                if output is not None:
                    yield output
                if final:
                    return
        finally:
            self._live.pop(request.request_id, None)
            if not finished:
                self._end_early(stream)

    async def _read(self, stream: _Stream) -> None:
        """The stream's only reader: hands (result, error) pairs to the turn and half-closes once no FINAL is owed."""
        try:
            async for result, error in stream.call:
                if error is not None or _is_final(result):
                    stream.finals_owed -= 1
                    if stream.finals_owed <= 0:
                        stream.half_close()
                if not stream.abandoned:
                    stream.reads.put_nowait((result, error))
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # the connection broke, or the stream was cancelled
            from tritonclient.utils import InferenceServerException

            stream.reads.put_nowait((None, exc if isinstance(exc, InferenceServerException) else _Failure(exc)))
        finally:
            stream.half_close()  # also ends the request iterator, so nothing waits on it
            stream.reads.put_nowait(None)

    def _end_early(self, stream: _Stream) -> None:
        """The turn left before its FINAL: stop the engine and let the stream end in the background."""
        stream.abandoned = True
        self._send_stop(stream)
        task = asyncio.ensure_future(self._wait_for_end(stream))
        self.closing.add(task)
        task.add_done_callback(self.closing.discard)

    def _send_stop(self, stream: _Stream) -> None:
        if stream.stop_sent or stream.half_closed or "stop" not in self.declared:
            return
        stream.stop_sent = True
        stream.finals_owed += 1
        stream.writes.put_nowait(self._request(stream.request_id, stop_inputs()))

    async def _wait_for_end(self, stream: _Stream) -> None:
        """Never cancels the stream: cancelling busy gRPC streams crashes Triton 2.51's gRPC frontend (SIGSEGV; seen
        here after under a hundred cancels of engine streams at full speed). The reader task keeps the call alive
        (grpc.aio cancels a call it collects) until the engine ends the request, as it does for a stop, or at
        max_tokens for an engine without a stop input."""
        done, _ = await asyncio.wait({stream.reader}, timeout=self.stop_timeout_s)
        if not done:
            self.slow_to_end += 1
            if self._logger is not None:
                why = "its stop request" if stream.stop_sent else "the turn ended (the engine takes no stop input)"
                self._logger.log_warn(f"engine stream {stream.request_id} still open {self.stop_timeout_s:g} s after "
                                      f"{why}; it is left to end on its own")
            await stream.reader

    async def stop(self, request_id: str) -> None:
        """TensorRT-LLM's stop request, on the turn's own stream. A turn that has already ended needs none."""
        stream = self._live.get(request_id)
        if stream is not None:
            self._send_stop(stream)

    async def close(self) -> None:
        """Waits (bounded) for streams still ending, then closes the channel. For tests and benchmarks: in a model,
        the process's exit closes it (Triton calls finalize when the stub's event loop no longer runs)."""
        if self.closing:
            await asyncio.wait(set(self.closing), timeout=self.stop_timeout_s)
        if self._client is not None:
            await self._client.close()
            self._client = None


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc

    def __str__(self) -> str:
        details = getattr(self.exc, "details", None)
        text = details() if callable(details) else str(self.exc)
        return f"{type(self.exc).__name__}: {text}"


def _message(error) -> str:
    message = getattr(error, "message", None)
    return message() if callable(message) else str(error)


def _is_final(result) -> bool:
    parameters = result.get_response().parameters
    return _FINAL_PARAMETER in parameters and parameters[_FINAL_PARAMETER].bool_param
