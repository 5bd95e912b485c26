"""Triton adapter of function_calling_agent: tensors in, the agent loop, streamed final-answer text out.

The loop itself lives in the `function_calling_agent` package (no Triton imports); this file only converts at the
boundary, picks the engine transport (gRPC to this server's own endpoint by default, or BLS), coalesces streamed
deltas, and guarantees exactly one FINAL response per request on every path.
"""

import asyncio
import concurrent.futures
import json
import os
import time
import uuid

import numpy as np
import triton_python_backend_utils as pb_utils
from transformers import AutoTokenizer

from function_calling_agent.adapter.bls_engine import BlsEngineClient
from function_calling_agent.adapter.coalescing import DeltaCoalescer
from function_calling_agent.adapter.contract import (
    CLIENT_INPUTS,
    ENGINE_UNAVAILABLE,
    GUIDED_DECODING_INPUTS,
    INTERNAL_ERROR,
    REQUEST_CANCELLED,
    InvalidRequest,
    check_declared,
    decode_list_tools,
    decode_request,
)
from function_calling_agent.adapter.engine_tensors import REQUIRED_INPUTS as REQUIRED_ENGINE_INPUTS
from function_calling_agent.adapter.engine_tensors import engine_tokens_per_block
from function_calling_agent.adapter.grpc_engine import (
    EngineUrlError,
    GrpcEngineClient,
    check_reachable,
    resolve_engine_url,
    server_command_line,
)
from function_calling_agent.adapter.metrics import AgentMetrics
from function_calling_agent.adapter.parameters import AgentConfig, ConfigError, parse_parameters
from function_calling_agent.chat_format import ChatTemplateError, load_chat_format
from function_calling_agent.continuation import PendingTurns
from function_calling_agent.engine import EngineError
from function_calling_agent.model_config import ModelConfigError, read_model_config, tensor_names
from function_calling_agent.run import AgentRequest, AgentRun, ContextBudgetError
from function_calling_agent.tool_choice import ToolChoiceError
from function_calling_agent.tools import ToolNotOfferedError, load_tool_modules
from function_calling_agent.tools.client import ToolOfferError
from function_calling_agent.tools.execution import ToolExecutor

_FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


def _strings(name, values):
    return pb_utils.Tensor(name, np.array([[v.encode("utf-8") for v in values]], dtype=np.object_))


class TritonPythonModel:
    def initialize(self, args):
        model_config = json.loads(args["model_config"])
        self.logger = pb_utils.Logger
        if not pb_utils.using_decoupled_model_transaction_policy(model_config):
            raise pb_utils.TritonModelException(
                "function_calling_agent must be decoupled: set model_transaction_policy { decoupled: true }")
        raw = {k: v.get("string_value", "") for k, v in model_config.get("parameters", {}).items()}
        try:
            check_declared(model_config)
            self.config: AgentConfig = parse_parameters(raw)
        except (ConfigError, ValueError) as exc:
            raise pb_utils.TritonModelException(f"function_calling_agent config.pbtxt: {exc}") from None
        self.name = model_config.get("name", "function_calling_agent")

        tokenizer = AutoTokenizer.from_pretrained(self.config.tokenizer_dir)
        try:
            self.chat = load_chat_format(tokenizer, self.config.tokenizer_dir, self.config.chat_template)
        except ChatTemplateError as exc:
            raise pb_utils.TritonModelException(f"function_calling_agent: {exc}") from None
        self.tools = load_tool_modules(self.config.tool_modules, self.config.tool_path)
        self.executor = ToolExecutor(self.config.tool_workers, self.config.max_abandoned_tool_threads)

        inputs, outputs, engine_config = self._engine_tensors(args)
        self.engine = self._engine_client(inputs, outputs, self._tokens_per_block(outputs, engine_config))
        self.metrics = AgentMetrics(pb_utils, self.name)
        # Turns that ended in client tool calls, for their continuations (function_calling_agent.continuation).
        self.pending_turns = PendingTurns()
        self.mcp = self._start_mcp() if self.config.mcp_servers else None
        self._executor_set = False
        reasoning = self.chat.reasoning
        self.logger.log_info(
            f"function_calling_agent ready: engine={self.config.tensorrt_llm_model_name} "
            f"transport={self._transport_info} stream_interval={self.config.stream_interval} "
            f"tools={list(self._offered_tools().names())} template={self.chat.template_info} "
            f"reasoning=(think_tokens={reasoning.has_think_tokens} opens_in_prompt={reasoning.starts_in_reasoning(None)} "
            f"enable_thinking_switch={reasoning.switch}) end_ids={sorted(self.chat.stop_ids)} "
            f"limits={self.config.limits}")

    def _start_mcp(self):
        """Connects to the MCP servers of the `mcp_servers` file (docs/mcp.md); a required one that is down, a bad
        entry or a name clash fails loading."""
        from function_calling_agent.tools.mcp import McpConfigError, McpLoadError, McpToolbox, load_mcp_servers

        try:
            servers = load_mcp_servers(self.config.mcp_servers)
            self.metrics.mcp_servers([server.label for server in servers])
            toolbox = McpToolbox(servers, module_tools=self.tools, logger=self.logger,
                                 on_server_state=self.metrics.mcp_server_state)
            toolbox.start()
        except (McpConfigError, McpLoadError) as exc:
            raise pb_utils.TritonModelException(f"function_calling_agent mcp_servers: {exc}") from None
        return toolbox

    def _offered_tools(self):
        """Module tools, plus the MCP tools of the servers that are up (an optional server's appear once it is)."""
        return self.mcp.registry() if self.mcp is not None else self.tools

    def _engine_client(self, inputs, outputs, tokens_per_block):
        name = self.config.tensorrt_llm_model_name
        if self.config.engine_transport == "bls":
            self._transport_info = "bls"
            return BlsEngineClient(pb_utils, name, inputs, outputs,
                                   stop_timeout_s=self.config.engine_stop_timeout_seconds,
                                   read_threads=self.config.bls_threads, logger=self.logger,
                                   tokens_per_block=tokens_per_block)
        # This server's gRPC endpoint opens only after every model has loaded: its command line says whether it will
        # (and where); another server's endpoint is dialled now.
        try:
            try:
                argv = server_command_line()
            except EngineUrlError:
                if self.config.engine_url == "self":
                    raise
                argv = None
            url, own = resolve_engine_url(self.config.engine_url, argv)
            if not own:
                check_reachable(url, name)
        except EngineUrlError as exc:
            raise pb_utils.TritonModelException(f"function_calling_agent engine_transport grpc: {exc}") from None
        self._transport_info = f"grpc {url}{' (this server)' if own else ''}"
        return GrpcEngineClient(url, name, inputs, outputs, stop_timeout_s=self.config.engine_stop_timeout_seconds,
                                tokens_per_block=tokens_per_block, logger=self.logger)

    def _tokens_per_block(self, outputs, engine_config):
        """Tokens per KV-cache block, needed only when the engine reports reuse in TensorRT-LLM's blocks."""
        parameters = {} if engine_config is None else {k: v.string_value for k, v in engine_config.parameters.items()}
        try:
            return engine_tokens_per_block(outputs, parameters, self.config.kv_cache_tokens_per_block)
        except ValueError as exc:
            raise pb_utils.TritonModelException(f"function_calling_agent: {exc}") from None

    def _engine_tensors(self, args):
        """The engine's declared inputs/outputs (from the `engine_inputs` parameter, else its config.pbtxt), and its
        parsed config when it is readable."""
        repository = os.path.dirname(os.path.abspath(args["model_repository"].rstrip("/")))
        path = os.path.join(repository, self.config.tensorrt_llm_model_name, "config.pbtxt")
        config = None
        if os.path.isfile(path):
            try:
                config = read_model_config(path)
            except ModelConfigError as exc:
                raise pb_utils.TritonModelException(f"function_calling_agent: the engine's config: {exc}") from None
        if self.config.engine_inputs is not None:
            outputs = tensor_names(config, "output") if config is not None else ("output_ids",)
            return REQUIRED_ENGINE_INPUTS + self.config.engine_inputs, outputs, config
        if config is None:
            raise pb_utils.TritonModelException(
                f"cannot read the engine's config at {path}; set the engine_inputs parameter to the engine's "
                "optional input names instead")
        inputs = tensor_names(config, "input")
        if ("guided_decoding_backend" in config.parameters
                and not config.parameters["guided_decoding_backend"].string_value.strip()):
            # TensorRT-LLM declares the guide inputs but honours them only with a guided_decoding_backend.
            inputs = tuple(name for name in inputs if name not in GUIDED_DECODING_INPUTS)
            self.logger.log_info("function_calling_agent: the engine has no guided_decoding_backend; tool_choice "
                                 "required and named functions are refused")
        return inputs, tensor_names(config, "output"), config

    async def execute(self, requests):
        if not self._executor_set:
            # BLS async_exec and response relays run on the default executor; 6 threads on 2 cores is far too few.
            asyncio.get_running_loop().set_default_executor(
                concurrent.futures.ThreadPoolExecutor(self.config.bls_threads, thread_name_prefix="fca-bls"))
            self._executor_set = True
        await asyncio.gather(*(self._handle(request) for request in requests))
        return None

    async def _handle(self, request):
        sender = request.get_response_sender()
        # Send only the outputs the client asked for: Triton <= 24.11 prunes the others inside send() without
        # holding the GIL, which corrupts the stub's heap under load (python_backend #390).
        requested = frozenset(request.requested_output_names())

        def respond(tensors, flags=0):
            tensors = [t for t in tensors if t.name() in requested]
            sender.send(pb_utils.InferenceResponse(output_tensors=tensors), flags=flags)
        outcome, iterations, calls, empty = "error", None, (), False
        final_sent = False

        def send_error(message, code):
            nonlocal final_sent
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code)), flags=_FINAL)
            final_sent = True

        try:
            self.metrics.request_started()
            inputs = {name: _as_numpy(request, name) for name in CLIENT_INPUTS}
            listing = decode_list_tools(inputs, max_input_chars=self.config.max_input_chars)
            if listing is not None:
                offered = self.tools.narrow(listing.tools) if listing.tools is not None else self.tools
                schemas = [spec.openai_schema() for spec in offered.values()]
                respond([_strings("tool_schemas", [json.dumps(schemas, ensure_ascii=False)])], flags=_FINAL)
                final_sent, outcome = True, "list_tools"
                return
            client = decode_request(inputs, max_tokens_limit=self.config.limits.max_context_tokens - 1,
                                    max_input_chars=self.config.max_input_chars, engine_inputs=self.engine.declared)
            if client.enable_thinking is not None and not self.chat.reasoning.switch:
                raise InvalidRequest("enable_thinking: this model's chat template has no thinking switch "
                                     f"({self.chat.template_info.source}); remove enable_thinking")
            offered = self._offered_tools()
            tools = offered.narrow(client.tools) if client.tools is not None else offered
            run_id = f"fca-{uuid.uuid4().hex[:20]}"
            started = time.monotonic()
            first_token = [None]
            deltas = DeltaCoalescer(lambda name, text: respond([_strings(name, [text])]), self.config.stream_interval,
                                    self.config.stream_flush_ms / 1000,
                                    on_error=lambda exc: self.logger.log_error(f"streaming a delta: {exc}"))

            async def on_text(delta):
                if first_token[0] is None:
                    first_token[0] = time.monotonic() - started
                    self.metrics.first_token(first_token[0])
                if client.stream:
                    deltas.push("text_output", delta)

            async def on_reasoning(delta):
                if client.stream and client.return_reasoning:
                    deltas.push("reasoning_output", delta)

            run = AgentRun(
                engine=self.engine, chat=self.chat, tools=tools, executor=self.executor,
                limits=self.config.limits, on_text=on_text, on_reasoning=on_reasoning,
                request=AgentRequest(request_id=run_id, messages=client.messages, max_tokens=client.max_tokens,
                                     sampling=client.sampling, stop_words=client.stop_words,
                                     max_iterations=client.max_iterations, enable_thinking=client.enable_thinking,
                                     client_tools=client.client_tools, tool_choice=client.tool_choice,
                                     parallel_tool_calls=client.parallel_tool_calls),
                pending_turns=self.pending_turns,
            )
            try:
                result = await self._run_until_cancelled(run, request)
            except BaseException:
                deltas.close(flush=False)  # an error FINAL follows, and nothing may come after a FINAL
                raise
            deltas.close(flush=result is not None)
            if result is None:
                outcome, calls = "cancelled", run.calls
                send_error(REQUEST_CANCELLED, pb_utils.TritonError.CANCELLED)
                return
            outcome, iterations, calls = result.finish_reason, result.usage["iterations"], result.calls
            empty = result.empty_answer
            usage = {**result.usage, "detail": result.detail} if result.detail else result.usage
            tensors = [
                _strings("text_output", ["" if client.stream else result.text]),
                _strings("finish_reason", [result.finish_reason]),
                _strings("usage", [json.dumps(usage)]),
                _strings("tool_calls", [json.dumps(list(result.tool_calls), ensure_ascii=False)]),
            ]
            if client.return_trace:
                tensors.append(_strings("tool_trace", [json.dumps(result.trace(), ensure_ascii=False)]))
            if client.return_reasoning:
                tensors.append(_strings("reasoning_output", ["" if client.stream else result.reasoning]))
            respond(tensors, flags=_FINAL)
            final_sent = True
            self._log_calls(run_id, request, result)
        except (InvalidRequest, ContextBudgetError, ToolNotOfferedError, ToolOfferError, ToolChoiceError) as exc:
            outcome = "invalid"
            send_error(str(exc), pb_utils.TritonError.INVALID_ARG)
        except EngineError as exc:
            self.logger.log_error(f"engine failure: {exc}")
            send_error(f"{ENGINE_UNAVAILABLE}: {exc}", pb_utils.TritonError.UNAVAILABLE)
        except Exception as exc:  # a bug: the client still gets its one FINAL response
            self.logger.log_error(f"function_calling_agent internal error: {type(exc).__name__}: {exc}")
            if not final_sent:
                send_error(f"{INTERNAL_ERROR}: {type(exc).__name__}", pb_utils.TritonError.INTERNAL)
        finally:
            if not final_sent:
                try:
                    sender.send(flags=_FINAL)
                except Exception:
                    pass
            try:
                self.metrics.request_finished(outcome, iterations, calls, empty)
                self.metrics.abandoned_threads(self.executor.abandoned)
            except Exception as exc:
                self.logger.log_error(f"function_calling_agent metrics: {exc}")

    async def _run_until_cancelled(self, run, request):
        """Runs the loop while polling for client cancellation; returns None if the client cancelled."""
        task = asyncio.ensure_future(run.run())
        poll = self.config.cancel_poll_seconds
        while True:
            done, _ = await asyncio.wait({task}, timeout=poll)
            if done:
                return task.result()
            if request.is_cancelled():
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    return None
                return None

    def _log_calls(self, run_id, request, result):
        for call in result.calls:
            arguments = json.dumps(call.arguments)[:2000] if self.config.log_tool_payloads else "<redacted>"
            self.logger.log_verbose(
                f"{run_id} ({request.request_id()}): tool {call.name}{f' (MCP {call.server})' if call.server else ''} "
                f"{call.status} {call.latency_ms:.1f} ms "
                f"arguments={arguments}")

    def finalize(self):
        # The gRPC client is left to the process's exit: Triton calls finalize while the stub's event loop no longer
        # runs callbacks, so the client cannot be closed on its loop (trying stalls the unload).
        if self.mcp is not None:
            self.mcp.close()
        self.logger.log_info("function_calling_agent finalized")


def _as_numpy(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()
