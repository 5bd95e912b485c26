"""The scripted `tensorrt_llm` engine inside a real tritonserver, driven over gRPC streaming like the agent's BLS."""

from __future__ import annotations

import dataclasses
import queue
import re
import time
from typing import Optional

import numpy as np
import pytest
import requests

from function_calling_agent.scripted_engine.repository import make_scripted_engine, read_request_log, write_script
from tests.support.fca_client import settled
from tests.support.triton_server import TritonServerFactory

pytestmark = pytest.mark.integration

MODEL = "tensorrt_llm"
TOOL_CALL = '<tool_call>\n{"name": "get_current_stock_price", "arguments": {"symbol": "RIVN"}}\n</tool_call>'
SCRIPT = {
    "scenarios": [
        {"name": "price", "match": "stock price", "turns": [TOOL_CALL, "RIVN trades at {tool_response}.", "Bye."]},
        {"name": "no_end", "match": "NOEND", "turns": ["no end id here"], "emit_end_id": False},
        {"name": "hang", "match": "HANG", "turns": ["never sent"], "hang_at_turn": 0},
        {"name": "boom", "match": "BOOM", "turns": ["never sent"], "fail_at_turn": 0},
        {"name": "mid", "match": "MIDFAIL", "turns": ["one two three four five six"], "fail_after_tokens": 3},
        {"name": "slow", "match": "SLOW", "turns": ["the quick brown fox jumps over the lazy dog"],
         "token_latency_ms": 40},
    ],
    "default_turns": ["Hello! How can I help you today?"],
}


def chat(user: str, *later: str) -> str:
    system = "<|im_start|>system\nYou are a function calling AI model.<|im_end|>\n"
    return f"<|begin_of_text|>{system}<|im_start|>user\n{user}<|im_end|>\n{''.join(later)}<|im_start|>assistant\n"


@dataclasses.dataclass
class Reply:
    ids: list[list[int]]  # output_ids[0][0] of every response with tensors
    sequence_lengths: list[int]
    responses: int  # responses received, tensor-less FINAL included
    final: bool
    error: Optional[str]


class EngineStream:
    """One gRPC stream to the engine; `send` then `reply` collects one request's responses up to its FINAL."""

    def __init__(self, server, tokenizer):
        import tritonclient.grpc as grpcclient

        self._grpc = grpcclient
        self.tokenizer = tokenizer
        self.client = server.grpc_client()
        self.queue: queue.Queue = queue.Queue()
        self.client.start_stream(callback=lambda result, error: self.queue.put((result, error)))

    def tensor(self, name: str, value, dtype: str):
        array = np.asarray(value, dtype={"INT32": np.int32, "FP32": np.float32, "UINT64": np.uint64, "BOOL": bool}[dtype])
        tensor = self._grpc.InferInput(name, list(array.shape), dtype)
        tensor.set_data_from_numpy(array)
        return tensor

    def send(self, request_id: str, prompt: str = "", *, max_tokens: int = 200, streaming: bool = True,
             stop: bool = False, **optional) -> list[int]:
        ids = self.tokenizer.encode(prompt, add_special_tokens=False) if prompt else [0]
        inputs = [
            self.tensor("input_ids", [ids], "INT32"),
            self.tensor("input_lengths", [[len(ids)]], "INT32"),
            self.tensor("request_output_len", [[0 if stop else max_tokens]], "INT32"),
            self.tensor("streaming", [[streaming]], "BOOL"),
        ]
        if stop:
            inputs.append(self.tensor("stop", [[True]], "BOOL"))
        for name, (value, dtype) in optional.items():
            inputs.append(self.tensor(name, value, dtype))
        self.client.async_stream_infer(MODEL, inputs, request_id=request_id, enable_empty_final_response=True)
        return ids

    def reply(self, timeout: float = 20) -> Reply:
        reply = Reply([], [], 0, False, None)
        deadline = time.monotonic() + timeout
        while not reply.final:
            result, error = self.queue.get(timeout=max(deadline - time.monotonic(), 0.01))
            reply.responses += 1
            if error is not None:  # an error response carries the FINAL flag
                reply.error, reply.final = str(error), True
                break
            response = result.get_response()
            reply.final = response.parameters["triton_final_response"].bool_param
            if response.outputs:
                reply.ids.append(result.as_numpy("output_ids")[0][0].tolist())
                reply.sequence_lengths.append(int(result.as_numpy("sequence_length")[0][0]))
                assert result.as_numpy("prefix_reused_tokens").tolist() == [[0]]
        return reply

    def assert_quiet(self, seconds: float = 0.3) -> None:
        """Nothing more arrives: the FINAL really was the last response."""
        with pytest.raises(queue.Empty):
            self.queue.get(timeout=seconds)


@dataclasses.dataclass
class ScriptedServer:
    server: object  # tests.support.triton_server.RunningServer
    dir: object  # the engine's model folder
    tokenizer: object


@pytest.fixture(scope="module")
def engine(tmp_path_factory, hermes_tokenizer_dir):
    from transformers import AutoTokenizer

    # One server for the module: loading the engine (transformers import) costs most of this file's runtime.
    repo = tmp_path_factory.mktemp("scripted-repo")
    engine_dir = make_scripted_engine(repo, SCRIPT, hermes_tokenizer_dir, token_latency_ms=1)
    factory = TritonServerFactory(tmp_path_factory.mktemp("scripted-logs"))
    try:
        yield ScriptedServer(factory(repo), engine_dir, AutoTokenizer.from_pretrained(hermes_tokenizer_dir))
    finally:
        factory.stop_all()


@pytest.fixture
def stream(engine):
    return EngineStream(engine.server, engine.tokenizer)


def log_entries(engine, request_id: str, event: str, wait_s: float = 5) -> list[dict]:
    """The request log's `event` lines for `request_id`, waiting for the first (the end line follows the FINAL)."""
    deadline = time.monotonic() + wait_s
    while True:
        found = [e for e in read_request_log(engine.dir) if e["request_id"] == request_id and e["event"] == event]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def metrics(engine) -> dict[str, float]:
    text = requests.get(f"http://{engine.server.metrics_url}/metrics", timeout=10).text
    return {name: float(value) for name, value in re.findall(r"^(scripted_engine_\S+) (\S+)$", text, re.M)}


def encode(engine, text: str) -> list[int]:
    return engine.tokenizer.encode(text, add_special_tokens=False)


def test_streams_the_first_turn_one_token_per_response(engine, stream):
    stream.send("price-0", chat("What is the stock price of Rivian?"))
    reply = stream.reply()
    assert reply.error is None and reply.final
    assert all(len(ids) == 1 for ids in reply.ids) and set(reply.sequence_lengths) == {1}
    tokens = [ids[0] for ids in reply.ids]
    assert tokens == encode(engine, TOOL_CALL) + [engine.tokenizer.eos_token_id]
    assert tokens[0] == engine.tokenizer.convert_tokens_to_ids("<tool_call>")
    assert reply.responses == len(tokens)  # FINAL rides on the last token
    stream.assert_quiet()
    (end,) = log_entries(engine, "price-0", "end")
    assert (end["scenario"], end["turn"], end["end"], end["tokens_sent"]) == ("price", 0, "completed", len(tokens))


def test_later_turns_follow_the_assistant_count_and_see_the_tool_response(engine, stream):
    result = '{"name": "get_current_stock_price", "content": {"price": 12.34}}'
    turn1 = chat("stock price of RIVN?", f"<|im_start|>assistant\n{TOOL_CALL}<|im_end|>\n",
                 f"<|im_start|>tool\n<tool_response>\n{result}\n</tool_response>\n<|im_end|>\n")
    stream.send("price-1", turn1, end_id=([[7]], "INT32"))
    reply = stream.reply()
    # The caller's end_id (7) ends the stream, not the tokenizer's.
    assert [i[0] for i in reply.ids] == encode(engine, f"RIVN trades at {result}.") + [7]
    turn5 = chat("stock price", *["<|im_start|>assistant\nx<|im_end|>\n"] * 5)
    stream.send("price-5", turn5, end_id=([[engine.tokenizer.eos_token_id]], "INT32"))
    assert engine.tokenizer.decode([i[0] for i in stream.reply().ids]) == "Bye.<|im_end|>"
    stream.send("other", chat("Tell me a joke.", "<|im_start|>user\nstock price<|im_end|>\n"))
    assert engine.tokenizer.decode([i[0] for i in stream.reply().ids]) == SCRIPT["default_turns"][0] + "<|im_end|>"
    assert [e["turn"] for e in log_entries(engine, "price-5", "start")] == [5]


def test_non_streaming_echoes_the_prompt_unless_excluded(engine, stream):
    completion = encode(engine, "no end id here")
    prompt_ids = stream.send("echo", chat("NOEND please"), streaming=False)
    reply = stream.reply()
    assert reply.responses == 1 and reply.final and reply.error is None
    assert reply.ids == [prompt_ids + completion] and reply.sequence_lengths == [len(prompt_ids) + len(completion)]

    stream.send("exclude", chat("NOEND please"), streaming=False, exclude_input_in_output=([[True]], "BOOL"))
    assert stream.reply().ids == [completion]

    stream.send("short", chat("NOEND please"), streaming=False, max_tokens=2,
                exclude_input_in_output=([[True]], "BOOL"))
    assert stream.reply().ids == [completion[:2]]
    assert log_entries(engine, "short", "end")[0]["end"] == "length"
    stream.assert_quiet()


def test_stop_request_ends_a_hanging_turn_with_final(engine, stream):
    stream.send("hang-1", chat("HANG forever"))
    assert log_entries(engine, "hang-1", "start")
    time.sleep(0.2)
    assert stream.queue.empty()  # hanging: nothing sent

    stopper = EngineStream(engine.server, engine.tokenizer)
    stopper.send("hang-1", stop=True)
    stop_reply = stopper.reply()
    assert (stop_reply.final, stop_reply.ids, stop_reply.error) == (True, [], None)

    reply = stream.reply(timeout=5)
    assert (reply.final, reply.ids, reply.error) == (True, [], None)
    stream.assert_quiet()
    assert log_entries(engine, "hang-1", "end")[0]["end"] == "stopped"
    assert log_entries(engine, "hang-1", "stop")[0]["stopped"] == 1


def test_stop_returns_the_ids_so_far_when_not_streaming(engine, stream):
    stream.send("slow-stop", chat("SLOW please"), streaming=False, exclude_input_in_output=([[True]], "BOOL"))
    time.sleep(0.15)
    EngineStream(engine.server, engine.tokenizer).send("slow-stop", stop=True)
    reply = stream.reply()
    full = encode(engine, SCRIPT["scenarios"][5]["turns"][0])
    assert reply.final and reply.error is None and len(reply.ids) == 1
    assert 0 < len(reply.ids[0]) < len(full) and reply.ids[0] == full[: len(reply.ids[0])]
    (end,) = log_entries(engine, "slow-stop", "end")
    assert (end["end"], end["tokens_sent"]) == ("stopped", len(reply.ids[0]))


def test_client_cancellation_ends_the_request_as_cancelled(engine, stream):
    stream.send("hang-cancel", chat("HANG until cancelled"))
    assert log_entries(engine, "hang-cancel", "start")
    stream.client.stop_stream(cancel_requests=True)
    (end,) = log_entries(engine, "hang-cancel", "end")
    assert end["end"] == "cancelled" and end["tokens_sent"] == 0


def test_failure_injection_sends_one_error_response(engine, stream):
    stream.send("boom", chat("BOOM now"))
    reply = stream.reply()
    assert reply.ids == [] and reply.responses == 1 and "scripted failure" in reply.error
    stream.assert_quiet()

    stream.send("mid", chat("MIDFAIL later"))
    reply = stream.reply()
    assert [i[0] for i in reply.ids] == encode(engine, "one two three four five six")[:3]
    assert reply.responses == 4 and "after 3 tokens" in reply.error
    stream.assert_quiet()
    (end,) = log_entries(engine, "mid", "end")
    assert (end["end"], end["tokens_sent"], end["scenario"]) == ("failed", 3, "mid")


def test_request_log_records_the_sampling_inputs(engine, stream):
    stream.send(
        "sampling",
        chat("hello"),
        max_tokens=3,
        temperature=([[0.5]], "FP32"),
        runtime_top_k=([[4]], "INT32"),
        runtime_top_p=([[0.25]], "FP32"),
        random_seed=([[2**40 + 1]], "UINT64"),
        repetition_penalty=([[1.5]], "FP32"),
        pad_id=([[1]], "INT32"),
        stop_words_list=([[[5, 6, 7], [2, 3, -1]]], "INT32"),
        bad_words_list=([[[9], [1]]], "INT32"),
        return_perf_metrics=([[False]], "BOOL"),
    )
    reply = stream.reply()
    assert len(reply.ids) == 3
    (end,) = log_entries(engine, "sampling", "end")  # written just after the FINAL goes out
    (start,) = log_entries(engine, "sampling", "start")
    assert (start["event"], end["event"], start["streaming"], start["scenario"]) == ("start", "end", True, "default")
    assert start["prompt_len"] == len(encode(engine, chat("hello")))
    assert start["inputs"] == {
        "temperature": 0.5, "runtime_top_k": 4, "runtime_top_p": 0.25, "random_seed": 2**40 + 1,
        "repetition_penalty": 1.5, "pad_id": 1, "stop_words_list": [[5, 6, 7], [2, 3, -1]],
        "bad_words_list": [[9], [1]], "return_perf_metrics": False, "request_output_len": 3,
    }
    assert (end["end"], end["tokens_sent"]) == ("length", 3)


def test_bad_input_is_rejected_with_one_error(engine, stream):
    ids = encode(engine, chat("hi"))
    inputs = [stream.tensor("input_ids", [ids, ids], "INT32"), stream.tensor("input_lengths", [[len(ids)]] * 2, "INT32"),
              stream.tensor("request_output_len", [[5]] * 2, "INT32")]
    stream.client.async_stream_infer(MODEL, inputs, request_id="batch2", enable_empty_final_response=True)
    reply = stream.reply()
    assert "batch size 1" in reply.error and reply.responses == 1
    stream.assert_quiet()


def test_one_instance_runs_requests_concurrently_and_counts_them(engine):
    settled(engine.server.metrics_url)  # counter deltas over a quiescent engine
    before = metrics(engine)
    streams = [EngineStream(engine.server, engine.tokenizer) for _ in range(8)]
    started = time.monotonic()
    for n, s in enumerate(streams):
        s.send(f"slow-{n}", chat("SLOW together"))
    replies = [s.reply() for s in streams]
    elapsed = time.monotonic() - started
    tokens = len(encode(engine, SCRIPT["scenarios"][5]["turns"][0])) + 1
    assert all(len(r.ids) == tokens and r.error is None for r in replies)
    assert elapsed < 8 * tokens * 0.040 / 2  # one after another would take 8x one stream
    EngineStream(engine.server, engine.tokenizer).send("nobody", stop=True)
    # Counters move just before each log line is written.
    assert log_entries(engine, "nobody", "stop")[0]["stopped"] == 0
    assert all(log_entries(engine, f"slow-{n}", "end") for n in range(8))
    settled(engine.server.metrics_url)
    after = metrics(engine)
    assert after['scripted_engine_requests_total{end="completed"}'] - before.get(
        'scripted_engine_requests_total{end="completed"}', 0) == 8
    assert after["scripted_engine_stop_requests_total"] - before.get("scripted_engine_stop_requests_total", 0) == 1
    assert after["scripted_engine_max_inflight"] >= 8 and after["scripted_engine_inflight"] == 0


def test_rewriting_the_script_rescripts_the_running_server(engine, stream):
    changed = {**SCRIPT, "default_turns": ["Rescripted."]}
    write_script(engine.dir, changed)
    try:
        stream.send("rescripted", chat("hello again"))
        assert engine.tokenizer.decode([i[0] for i in stream.reply().ids]) == "Rescripted.<|im_end|>"
    finally:
        write_script(engine.dir, SCRIPT)
