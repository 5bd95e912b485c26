"""The OpenAI-compatible HTTP API (FastAPI): `/v1/models`, `/v1/chat/completions` (SSE streaming and not), `/health`.

Each chat completion is one request to function_calling_agent on its own gRPC stream. The HTTP status is decided by
the agent's first event (its input checks come before any output), so a bad request is a 400, not an error inside a
200 stream. A client that disconnects cancels the gRPC call, and so the agent run and its engine turn.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import time
from typing import Optional

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from openai.types import Model

from ..grpc_channel import channel_args
from .agent_stream import AgentError, Final, ReasoningDelta, TextDelta, agent_events, agent_inputs
from .wire import BadRequest, ChunkWriter, completion, error_body, new_completion_id, parse_chat_request

# How often a request that has sent nothing yet looks for a client that went away.
DISCONNECT_POLL_S = 0.1
_STATUS = {"invalid": 400, "unavailable": 503, "internal": 500, "cancelled": 499}
_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
          499: "invalid_request_error", 500: "server_error", 503: "server_error"}


@dataclasses.dataclass(frozen=True)
class GatewaySettings:
    triton_url: str = "localhost:8001"  # function_calling_agent's Triton gRPC endpoint
    model: str = "function_calling_agent"  # the Triton model
    served_model_name: Optional[str] = None  # the id clients send as `model`; default: the Triton model's name
    api_key: Optional[str] = None  # required as `Authorization: Bearer <key>` on every request when set
    default_max_tokens: int = 1024  # per engine turn, when the request gives neither max_tokens field

    @property
    def model_id(self) -> str:
        return self.served_model_name or self.model


def error_response(status: int, message: str, *, param: Optional[str] = None, code: Optional[str] = None):
    return JSONResponse(error_body(message, _TYPES.get(status, "server_error"), param=param, code=code),
                        status_code=status)


def create_app(settings: GatewaySettings) -> FastAPI:
    import tritonclient.grpc.aio as grpcclient

    state = {}

    async def lifespan(app):
        state["client"] = grpcclient.InferenceServerClient(settings.triton_url,
                                                           channel_args=channel_args(settings.triton_url))
        try:
            yield
        finally:
            await state["client"].close()

    app = FastAPI(title="function_calling_agent OpenAI-compatible API", lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url=None)
    created = int(time.time())

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        # A gateway bug still answers with an OpenAI error object.
        return error_response(500, f"internal error in the gateway: {type(exc).__name__}")

    @app.middleware("http")
    async def require_key(request: Request, call_next):
        if settings.api_key and request.url.path.startswith("/v1/"):
            header = request.headers.get("authorization", "")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(),
                                                                     settings.api_key.encode()):
                return error_response(401, "a valid API key is required: send Authorization: Bearer <key>",
                                      code="invalid_api_key")
        return await call_next(request)

    def model_card() -> dict:
        return Model(id=settings.model_id, object="model", created=created,
                     owned_by="function_calling_agent").model_dump(mode="json")

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str):
        if model_id != settings.model_id:
            return error_response(404, f"the model {model_id!r} does not exist; this server has "
                                       f"{settings.model_id!r}", param="model", code="model_not_found")
        return model_card()

    @app.get("/health")
    async def health():
        try:
            ready = await state["client"].is_model_ready(settings.model)
        except Exception:  # Triton unreachable
            ready = False
        return Response(status_code=200 if ready else 503)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        try:
            body = json.loads(await request.body())
        except ValueError:
            return error_response(400, "the request body is not valid JSON")
        try:
            chat = parse_chat_request(body, default_max_tokens=settings.default_max_tokens)
        except BadRequest as exc:
            return error_response(400, exc.message, param=exc.param)
        if chat.model != settings.model_id:
            return error_response(404, f"the model {chat.model!r} does not exist; this server has "
                                       f"{settings.model_id!r}", param="model", code="model_not_found")
        completion_id = new_completion_id()
        events = agent_events(state["client"], settings.model, agent_inputs(chat.inputs),
                              request_id=completion_id)
        try:
            first = await _next_event(events, request)
        except AgentError as exc:
            await events.aclose()
            return error_response(_STATUS.get(exc.kind, 500), exc.message)
        if first is None:  # the client left before anything was sent
            await events.aclose()
            return Response(status_code=499)
        if chat.stream:
            return StreamingResponse(_stream(events, first, completion_id, chat, settings.model_id, request),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        return await _collect(events, first, completion_id, chat, settings.model_id, request)

    return app


async def _next_event(events, request: Request):
    """The agent's next event, or None when the HTTP client disconnects first: the pending read is then cancelled,
    which cancels the agent's request."""
    task = asyncio.ensure_future(events.__anext__())
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                return None
    finally:
        if not task.done():
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, AgentError, StopAsyncIteration):
                pass


async def _watch_disconnect(request: Request, consumer: asyncio.Task) -> None:
    """Cancels `consumer` (the task streaming the response) once the client has gone: a stream waiting for the agent
    (a tool call, a long prefill) would otherwise notice only at its next write."""
    while not await request.is_disconnected():
        await asyncio.sleep(DISCONNECT_POLL_S)
    consumer.cancel()


async def _stream(events, first, completion_id: str, chat, model_id: str, request: Request):
    writer = ChunkWriter(completion_id, model_id)
    watcher = asyncio.ensure_future(_watch_disconnect(request, asyncio.current_task()))
    try:
        yield writer.role()
        event = first
        while True:
            if isinstance(event, TextDelta):
                yield writer.content(event.text)
            elif isinstance(event, ReasoningDelta):
                yield writer.reasoning(event.text)
            else:
                yield writer.end(event, include_usage=chat.include_usage, return_tool_trace=chat.return_tool_trace)
                return
            try:
                event = await events.__anext__()
            except AgentError as exc:
                # The status is already sent: the error goes in the stream, as OpenAI's API sends it.
                kind = "server_error" if exc.kind in ("unavailable", "internal") else "invalid_request_error"
                yield b"data: " + json.dumps(error_body(exc.message, kind)).encode("utf-8") + b"\n\n"
                return
    finally:
        watcher.cancel()
        await events.aclose()  # cancels the agent's request when the client disconnected mid-stream


async def _collect(events, first, completion_id: str, chat, model_id: str, request: Request):
    texts, reasoning = [], []
    event = first
    try:
        while not isinstance(event, Final):
            (texts if isinstance(event, TextDelta) else reasoning).append(event.text)
            event = await _next_event(events, request)
            if event is None:
                return Response(status_code=499)
    except AgentError as exc:
        return error_response(_STATUS.get(exc.kind, 500), exc.message)
    finally:
        await events.aclose()
    return JSONResponse(completion(completion_id, model_id, event, text=event.text or "".join(texts),
                                   reasoning=event.reasoning or "".join(reasoning),
                                   return_tool_trace=chat.return_tool_trace))
