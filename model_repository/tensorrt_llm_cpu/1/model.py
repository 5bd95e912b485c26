"""Triton adapter for the CPU engine: speaks the `tensorrt_llm` contract over function_calling_agent.cpu_engine.GenerationEngine.

Decoupled and asynchronous: each request is served by its own coroutine on the stub's event loop, fed token
updates by the engine's generation thread. Every request gets exactly one FINAL, on every path.
"""

from __future__ import annotations

import asyncio
import json
import os

import triton_python_backend_utils as pb_utils

from function_calling_agent.cpu_engine import (
    ConfigError,
    EngineConfig,
    FinishReason,
    GenerationEngine,
    InvalidInput,
    StopSignalBoard,
    default_stop_signal_dir,
    final_outputs,
    parse_request,
    token_outputs,
)
from function_calling_agent.cpu_engine.contract import INPUT_NAMES

# How often a request with no new token checks whether its client went away.
CANCEL_POLL_S = 0.05
FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class _ResponseChannel:
    """One request's response sender that sends FINAL exactly once."""

    def __init__(self, request) -> None:
        self._sender = request.get_response_sender()
        # Only what the caller asked for: Triton <= 24.11 prunes the others inside send() without holding the GIL,
        # freeing their numpy arrays unsafely and corrupting the stub's heap under load (python_backend #390).
        self._requested = frozenset(request.requested_output_names())
        self.closed = False

    def send(self, outputs: dict, final: bool = False) -> None:
        tensors = [pb_utils.Tensor(name, array) for name, array in outputs.items() if name in self._requested]
        if final:
            self.closed = True
        self._sender.send(pb_utils.InferenceResponse(output_tensors=tensors), flags=FINAL if final else 0)

    def fail(self, message: str, code) -> None:
        self.closed = True
        self._sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code)), flags=FINAL)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._sender.send(flags=FINAL)


def _guide_compiler(model_dir: str):
    """Guided decoding (tool_choice required / a named function) on the checkpoint's own tokenizer."""
    from transformers import AutoConfig, AutoTokenizer

    from function_calling_agent.cpu_engine.guided import GuideCompiler

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except Exception as exc:  # a checkpoint without tokenizer files: guided requests are refused, nothing else
        pb_utils.Logger.log_warn(f"tensorrt_llm_cpu: no tokenizer in {model_dir} ({exc}); guided decoding is off")
        return None
    text_config = AutoConfig.from_pretrained(model_dir).get_text_config()
    return GuideCompiler(tokenizer, max(int(text_config.vocab_size), len(tokenizer)))


class TritonPythonModel:
    def initialize(self, args):
        model_config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(model_config):
            raise pb_utils.TritonModelException(
                "tensorrt_llm_cpu streams tokens: set model_transaction_policy { decoupled: true }"
            )
        try:
            self._config = EngineConfig.from_model_config(model_config)
        except ConfigError as exc:
            raise pb_utils.TritonModelException(f"tensorrt_llm_cpu config.pbtxt: {exc}") from None
        config = self._config
        model_dir = config.model_dir
        if not os.path.isabs(model_dir):
            model_dir = os.path.join(args["model_repository"], model_dir)
        if not os.path.isdir(model_dir):
            raise pb_utils.TritonModelException(f"tensorrt_llm_cpu: model_dir {model_dir} is not a directory")
        if config.torch_threads > 0:
            import torch

            torch.set_num_threads(config.torch_threads)
        self._engine = GenerationEngine.from_pretrained(
            model_dir,
            guides=_guide_compiler(model_dir),
            dtype=config.dtype,
            max_seq_len=config.max_seq_len or None,
            prefix_cache_max_tokens=config.prefix_cache_max_tokens,
            prefill_chunk_tokens=config.prefill_chunk_tokens,
            torch_threads=config.torch_threads,
        )
        self._stop_board = StopSignalBoard(
            config.stop_signal_dir or default_stop_signal_dir(os.path.abspath(args["model_repository"]))
        )
        self._running: dict[str, set] = {}
        self._create_metrics(args["model_name"], args["model_version"], args.get("model_instance_name", ""))
        pb_utils.Logger.log_info(
            f"tensorrt_llm_cpu: loaded {model_dir} ({config.torch_dtype}, max_seq_len {self._engine.max_seq_len}, "
            f"prefix cache {config.prefix_cache_max_tokens} tokens, "
            f"reuse {'on' if self._engine.prefix_reuse_supported else 'unsupported by this model'}, "
            f"stop signals in {self._stop_board.directory})"
        )

    def _create_metrics(self, model_name: str, model_version: str, instance: str) -> None:
        # Each instance is its own process with its own counters.
        labels = {"model": model_name, "version": model_version, "instance": instance}
        prompt_family = pb_utils.MetricFamily(
            name="tensorrt_llm_cpu_prompt_tokens_total",
            description="Prompt tokens by where their KV came from (reused from the prefix cache or prefilled)",
            kind=pb_utils.MetricFamily.COUNTER,
        )
        generated_family = pb_utils.MetricFamily(
            name="tensorrt_llm_cpu_generated_tokens_total",
            description="Tokens generated by the CPU engine",
            kind=pb_utils.MetricFamily.COUNTER,
        )
        # The families must outlive their metrics.
        self._metric_families = (prompt_family, generated_family)
        self._metric_reused = prompt_family.Metric(labels={**labels, "source": "reused"})
        self._metric_prefilled = prompt_family.Metric(labels={**labels, "source": "prefilled"})
        self._metric_generated = generated_family.Metric(labels=labels)

    async def execute(self, requests):
        await asyncio.gather(*(self._serve(request) for request in requests))
        return None

    async def _serve(self, request) -> None:
        channel = _ResponseChannel(request)
        try:
            arrays = {}
            for name in INPUT_NAMES:
                tensor = pb_utils.get_input_tensor_by_name(request, name)
                if tensor is not None:
                    arrays[name] = tensor.as_numpy()
            parsed = parse_request(arrays, self._config.exclude_input_in_output)
            if parsed.stop:
                self._stop(request.request_id())
                channel.close()
            else:
                await self._generate(request, parsed, channel)
        except InvalidInput as exc:
            channel.fail(str(exc), pb_utils.TritonError.INVALID_ARG)
        except Exception as exc:  # anything else is ours: report it on this request, keep the model up
            pb_utils.Logger.log_error(f"tensorrt_llm_cpu: request {request.request_id()!r} failed: {exc!r}")
            if not channel.closed:
                channel.fail(f"CPU engine failure: {exc}", pb_utils.TritonError.INTERNAL)
        finally:
            try:
                channel.close()
            except Exception:
                pass

    def _stop(self, request_id: str) -> None:
        if not request_id:
            raise InvalidInput("a stop request must carry the request id of the generation to stop")
        handles = self._running.get(request_id)
        if handles:
            for handle in handles:
                handle.stop()
        else:
            # Not running here: another instance (process) may be generating it.
            self._stop_board.post(request_id)
            pb_utils.Logger.log_info(f"tensorrt_llm_cpu: stop for request {request_id!r} posted to the other instances")

    async def _generate(self, request, parsed, channel: _ResponseChannel) -> None:
        loop = asyncio.get_running_loop()
        updates: asyncio.Queue = asyncio.Queue()
        request_id = request.request_id()
        generation = parsed.generation
        should_stop = self._stop_board.watch(request_id) if request_id else None
        try:
            handle = self._engine.submit(
                generation, lambda update: loop.call_soon_threadsafe(updates.put_nowait, update), should_stop
            )
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
        if request_id:
            self._running.setdefault(request_id, set()).add(handle)
        generated: list[int] = []
        finished = False
        getter = None
        try:
            while True:
                # One pending get() across polls: a timed-out wait_for could drop an update.
                if getter is None:
                    getter = asyncio.ensure_future(updates.get())
                done, _ = await asyncio.wait((getter,), timeout=CANCEL_POLL_S)
                update = None
                if done:
                    update, getter = getter.result(), None
                if handle.requested_finish is not FinishReason.CANCELLED and request.is_cancelled():
                    handle.cancel()
                if update is None:
                    continue
                if update.error is not None:
                    finished = True
                    raise update.error
                if update.finish_reason is FinishReason.CANCELLED:
                    finished = True
                    self._record(update.stats)
                    channel.fail("request cancelled", pb_utils.TritonError.CANCELLED)
                    return
                if parsed.streaming:
                    if update.final:
                        finished = True
                        outputs = token_outputs(update.token_ids)
                        outputs.update(self._final_extras(update.stats, parsed.return_perf_metrics))
                        channel.send(outputs, final=True)
                        return
                    channel.send(token_outputs(update.token_ids))
                else:
                    generated.extend(update.token_ids)
                    if update.final:
                        finished = True
                        ids = generated if parsed.exclude_input_in_output else list(generation.input_ids) + generated
                        outputs = token_outputs(ids)
                        outputs.update(self._final_extras(update.stats, parsed.return_perf_metrics))
                        channel.send(outputs, final=True)
                        return
        finally:
            if getter is not None:
                getter.cancel()
            if not finished:
                handle.cancel()
            if request_id:
                handles = self._running.get(request_id)
                if handles is not None:
                    handles.discard(handle)
                    if not handles:
                        del self._running[request_id]
                        self._stop_board.clear(request_id)

    def _record(self, stats) -> None:
        self._metric_reused.increment(stats.reused_tokens)
        self._metric_prefilled.increment(stats.prefilled_tokens)
        self._metric_generated.increment(stats.generated_tokens)

    def _final_extras(self, stats, return_perf_metrics: bool) -> dict:
        self._record(stats)
        return final_outputs(stats, self._config.kv_cache_block_size, return_perf_metrics)

    def finalize(self):
        self._engine.close()
        self._stop_board.close()
