"""Scripted `tensorrt_llm` engine: replays the completions of a JSON script token by token over the TRT-LLM contract.

A decoupled async model: every request runs in its own asyncio task, so one instance serves many at once. The
script rules live in function_calling_agent.scripted_engine.script; this file converts tensors, sleeps, streams and records what happened.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import time
from typing import Any, Optional

import numpy as np
import triton_python_backend_utils as pb_utils
from transformers import AutoTokenizer

from function_calling_agent.scripted_engine.script import (
    ScriptError,
    ScriptFile,
    TurnPlan,
    guide_violation,
    schedule_tokens,
)

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
# How often a hanging or sleeping request looks for a stop or a client cancel.
POLL_S = 0.02
REQUEST_LOG = "requests.jsonl"

# Optional inputs recorded verbatim in the request log, so tests can see what the caller sent.
RECORDED_INPUTS = (
    "end_id",
    "pad_id",
    "exclude_input_in_output",
    "temperature",
    "runtime_top_k",
    "runtime_top_p",
    "random_seed",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "stop_words_list",
    "bad_words_list",
    "return_perf_metrics",
    "guided_decoding_guide_type",
    "guided_decoding_guide",
)
END_REASONS = ("completed", "stopped", "cancelled", "failed", "length")


class BadRequest(ValueError):
    """The caller sent tensors the engine cannot use."""


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    script_path: str
    tokenizer_dir: str
    token_latency_ms: float
    prefill_latency_ms_per_token: float
    state_dir: str

    @classmethod
    def from_model_config(cls, model_config: dict) -> "EngineConfig":
        params = {k: v.get("string_value", "") for k, v in model_config.get("parameters", {}).items()}
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in params]
        unfilled = [k for k, v in params.items() if re.search(r"\$\{[^}]*\}", v)]
        if missing or unfilled:
            raise ValueError(f"scripted_engine config: missing parameters {missing}, unfilled placeholders {unfilled}")

        def non_negative(name: str) -> float:
            try:
                value = float(params[name])
            except ValueError:
                raise ValueError(f"scripted_engine config: {name} must be a number, got {params[name]!r}") from None
            if not value >= 0:
                raise ValueError(f"scripted_engine config: {name} must be >= 0, got {value}")
            return value

        for name in ("script_path", "tokenizer_dir", "state_dir"):
            if not params[name]:
                raise ValueError(f"scripted_engine config: {name} must not be empty")
        return cls(
            script_path=params["script_path"],
            tokenizer_dir=params["tokenizer_dir"],
            token_latency_ms=non_negative("token_latency_ms"),
            prefill_latency_ms_per_token=non_negative("prefill_latency_ms_per_token"),
            state_dir=params["state_dir"],
        )


@dataclasses.dataclass(frozen=True)
class EngineRequest:
    request_id: str
    input_ids: list[int]
    max_tokens: int
    end_id: Optional[int]
    streaming: bool
    exclude_input: bool
    stop: bool
    recorded: dict[str, Any]


def _optional(request, name: str) -> Optional[np.ndarray]:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def _scalar(request, name: str, default=None):
    array = _optional(request, name)
    if array is None:
        return default
    if array.size != 1:
        raise BadRequest(f"{name} must hold one value per request (batch size 1), got shape {list(array.shape)}")
    return array.reshape(-1)[0].item()


def read_request(request) -> EngineRequest:
    """Tensors -> typed request; raises BadRequest. Only batch size 1 is supported, like the agent sends."""
    stop = bool(_scalar(request, "stop", False))
    input_ids = _optional(request, "input_ids")
    if input_ids is None:
        raise BadRequest("input_ids is required")
    if input_ids.ndim != 2 or input_ids.shape[0] != 1:
        raise BadRequest(f"input_ids must be [1, L] (batch size 1), got shape {list(input_ids.shape)}")
    length = _scalar(request, "input_lengths")
    max_tokens = _scalar(request, "request_output_len")
    if length is None or max_tokens is None:
        raise BadRequest("input_lengths and request_output_len are required")
    if not stop and not 0 < length <= input_ids.shape[1]:
        raise BadRequest(f"input_lengths {length} must be in 1..{input_ids.shape[1]}")
    recorded = {}
    for name in RECORDED_INPUTS:
        array = _optional(request, name)
        if array is not None:
            value = array[0].tolist()  # drop the batch dim; word lists stay [2, L]
            if array.dtype == np.object_:
                value = [v.decode("utf-8") if isinstance(v, bytes) else v for v in value]
            recorded[name] = value[0] if isinstance(value, list) and len(value) == 1 else value
    recorded["request_output_len"] = max_tokens
    return EngineRequest(
        request_id=request.request_id(),
        input_ids=input_ids[0, : max(length, 0)].tolist(),
        max_tokens=int(max_tokens),
        end_id=_scalar(request, "end_id"),
        streaming=bool(_scalar(request, "streaming", False)),
        exclude_input=bool(_scalar(request, "exclude_input_in_output", False)),
        stop=stop,
        recorded=recorded,
    )


def ids_response(ids: list[int], requested: frozenset) -> "pb_utils.InferenceResponse":
    outputs = {
        "output_ids": np.asarray(ids, dtype=np.int32).reshape(1, 1, -1),
        "sequence_length": np.array([[len(ids)]], dtype=np.int32),
        "prefix_reused_tokens": np.zeros((1, 1), dtype=np.int32),
    }
    # Only what the caller asked for: Triton <= 24.11 prunes the others inside send() without holding the GIL,
    # which corrupts the stub's heap under load (python_backend #390).
    return pb_utils.InferenceResponse(
        output_tensors=[pb_utils.Tensor(name, array) for name, array in outputs.items() if name in requested])


class Responder:
    """Sends responses for one request and guarantees exactly one FINAL."""

    def __init__(self, request):
        self._sender = request.get_response_sender()
        self.requested = frozenset(request.requested_output_names())
        self.final_sent = False

    def send(self, response=None, final: bool = False) -> None:
        if self.final_sent:
            raise RuntimeError("response after FINAL")
        self.final_sent = final
        self._sender.send(response, flags=FINAL if final else 0)

    def error(self, message: str, code) -> None:
        self.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code)), final=True)


class Generation:
    """A running request that a `stop` request may end."""

    def __init__(self):
        self.stop_requested = False


class EngineMetrics:
    def __init__(self):
        gauge, counter = pb_utils.MetricFamily.GAUGE, pb_utils.MetricFamily.COUNTER
        self._families = [
            pb_utils.MetricFamily("scripted_engine_inflight", "Requests generating now", gauge),
            pb_utils.MetricFamily("scripted_engine_max_inflight", "Most requests generating at once", gauge),
            pb_utils.MetricFamily("scripted_engine_requests_total", "Finished requests by end reason", counter),
            pb_utils.MetricFamily("scripted_engine_stop_requests_total", "Stop requests received", counter),
        ]
        inflight, max_inflight, requests, stops = self._families
        self.inflight = inflight.Metric(labels={})
        self.max_inflight = max_inflight.Metric(labels={})
        self.requests = {end: requests.Metric(labels={"end": end}) for end in END_REASONS}
        self.stops = stops.Metric(labels={})

    def started(self) -> None:
        self.inflight.increment(1)
        now = self.inflight.value()
        if now > self.max_inflight.value():
            self.max_inflight.set(now)

    def ended(self, end: str) -> None:
        self.inflight.increment(-1)
        self.requests[end].increment(1)


class TritonPythonModel:
    def initialize(self, args):
        self.logger = pb_utils.Logger
        model_config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(model_config):
            raise ValueError("scripted_engine must be decoupled (model_transaction_policy { decoupled: true })")
        self.config = EngineConfig.from_model_config(model_config)
        self.script = ScriptFile(self.config.script_path)
        self.tokenizer = AutoTokenizer.from_pretrained(self.config.tokenizer_dir)
        os.makedirs(self.config.state_dir, exist_ok=True)
        self.log_path = os.path.join(self.config.state_dir, REQUEST_LOG)
        self.instance = args["model_instance_name"]
        self.metrics = EngineMetrics()
        self.generations: dict[str, list[Generation]] = {}
        self.tasks: set[asyncio.Task] = set()
        self.logger.log_info(f"scripted_engine {self.instance}: script {self.config.script_path}")

    async def execute(self, requests):
        for request in requests:
            task = asyncio.get_running_loop().create_task(self.serve(request))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    def finalize(self):
        for generations in self.generations.values():
            for generation in generations:
                generation.stop_requested = True

    def record(self, entry: dict) -> None:
        entry = {"ts": time.time(), "instance": self.instance, **entry}
        with open(self.log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")

    async def serve(self, request) -> None:
        responder = Responder(request)
        try:
            req = read_request(request)
        except BadRequest as e:
            responder.error(f"scripted_engine: {e}", pb_utils.TritonError.INVALID_ARG)
            return
        except Exception as e:  # a converter bug must still end the request
            responder.error(f"scripted_engine: {e}", pb_utils.TritonError.INTERNAL)
            return
        if req.stop:
            self.stop(req, responder)
            return

        generation = Generation()
        self.generations.setdefault(req.request_id, []).append(generation)
        self.metrics.started()
        entry = {"request_id": req.request_id, "prompt_len": len(req.input_ids), "streaming": req.streaming,
                 "inputs": req.recorded}
        end, sent = "failed", 0
        try:
            prompt = self.tokenizer.decode(req.input_ids, skip_special_tokens=False)
            plan = self.script.get().plan(prompt)
            # The prompt's end shows the generation prompt the engine was given (e.g. an opened think block).
            entry.update(turn=plan.turn, scenario=plan.scenario, prompt_tail=prompt[-80:])
            if plan.record_prompt_ids:
                entry["input_ids"] = req.input_ids
            self.record({"event": "start", **entry})
            end, sent = await self.generate(request, req, plan, generation, responder)
        except ScriptError as e:
            self.record({"event": "start", **entry})
            responder.error(f"scripted_engine: {e}", pb_utils.TritonError.INTERNAL)
        except Exception as e:
            self.logger.log_error(f"scripted_engine {req.request_id!r}: {type(e).__name__}: {e}")
            if not responder.final_sent:
                try:
                    responder.error(f"scripted_engine: {type(e).__name__}: {e}", pb_utils.TritonError.INTERNAL)
                except Exception as send_error:  # the sender itself is broken (client gone): nothing left to tell
                    self.logger.log_warn(f"scripted_engine {req.request_id!r}: final not sent: {send_error}")
        finally:
            peers = self.generations.get(req.request_id, [])
            if generation in peers:
                peers.remove(generation)
            if not peers:
                self.generations.pop(req.request_id, None)
            try:
                self.record({"event": "end", **entry, "end": end, "tokens_sent": sent})
            finally:  # the gauge drops last: a reader that sees nothing in flight finds every end in the log
                self.metrics.ended(end)

    def stop(self, req: EngineRequest, responder: Responder) -> None:
        targets = self.generations.get(req.request_id, []) if req.request_id else []
        for generation in targets:
            generation.stop_requested = True
        self.metrics.stops.increment(1)
        self.record({"event": "stop", "request_id": req.request_id, "stopped": len(targets)})
        responder.send(final=True)

    async def pause(self, seconds: float, request, generation: Generation) -> Optional[str]:
        """Sleeps without blocking the loop; returns "stopped" or "cancelled" if that came first."""
        deadline = time.monotonic() + seconds
        while True:
            if generation.stop_requested:
                return "stopped"
            if request.is_cancelled():
                return "cancelled"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            await asyncio.sleep(min(remaining, POLL_S))

    async def generate(self, request, req: EngineRequest, plan: TurnPlan, generation: Generation,
                       responder: Responder) -> tuple[str, int]:
        """Streams the plan; returns (end reason, tokens sent). Sends the FINAL on every path but exceptions."""
        failure = f"scripted failure: scenario {plan.scenario!r} turn {plan.turn}"
        if plan.fail_after_tokens == 0:
            responder.error(failure, pb_utils.TritonError.INTERNAL)
            return "failed", 0

        latency_ms = self.config.token_latency_ms if plan.token_latency_ms is None else plan.token_latency_ms
        end_id = self.tokenizer.eos_token_id if req.end_id is None else req.end_id
        text = plan.text
        guide_type = req.recorded.get("guided_decoding_guide_type")
        if guide_type is not None:
            # A guided turn says what the guide allows, or fails: a test sees the constraint reached the engine.
            text = plan.guided_text if plan.guided_text is not None else plan.text
            violation = guide_violation(guide_type, req.recorded.get("guided_decoding_guide", ""), text)
            if violation is not None:
                responder.error(f"scripted_engine: the scripted text breaks the guide: {violation}",
                                pb_utils.TritonError.INVALID_ARG)
                return "failed", 0
        ids, truncated = schedule_tokens(
            self.tokenizer.encode(text, add_special_tokens=False), end_id, plan.emit_end_id, req.max_tokens
        )
        count = len(ids) if plan.fail_after_tokens is None else min(plan.fail_after_tokens, len(ids))
        sent: list[int] = []

        interrupted = await self.pause(self.config.prefill_latency_ms_per_token * len(req.input_ids) / 1000,
                                       request, generation)
        while plan.hang and not interrupted:
            interrupted = await self.pause(POLL_S, request, generation)
        for i in range(count):
            if interrupted:
                break
            interrupted = await self.pause(latency_ms / 1000, request, generation)
            if interrupted:
                break
            sent.append(ids[i])
            if req.streaming:
                last = i == count - 1 and plan.fail_after_tokens is None
                responder.send(ids_response([ids[i]], responder.requested), final=last)

        if interrupted == "cancelled":
            responder.error("scripted_engine: request cancelled", pb_utils.TritonError.CANCELLED)
            return "cancelled", len(sent)
        if interrupted is None and plan.fail_after_tokens is not None:
            responder.error(f"{failure} after {len(sent)} tokens", pb_utils.TritonError.INTERNAL)
            return "failed", len(sent)
        if not req.streaming:
            responder.send(ids_response(sent if req.exclude_input else req.input_ids + sent, responder.requested),
                           final=True)
        elif not responder.final_sent:  # stopped, or nothing to send
            responder.send(final=True)
        if interrupted == "stopped":
            return "stopped", len(sent)
        return ("length" if truncated else "completed"), len(sent)
