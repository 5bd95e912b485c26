"""CPU engine (`tensorrt_llm` contract on transformers/torch): generation core unit tests, and the contract on a real
server for both CPU engines (torch: tensorrt_llm_cpu; llama.cpp: tensorrt_llm_llamacpp, its core tested in
tests/test_llamacpp_engine.py)."""

from __future__ import annotations

import os
import queue
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
ENGINE_MODEL_DIR = REPO_ROOT / "model_repository" / "tensorrt_llm_cpu"
LLAMACPP_MODEL_DIR = REPO_ROOT / "model_repository" / "tensorrt_llm_llamacpp"
# engine -> (model folder, metric prefix)
SERVER_ENGINES = {"torch": (ENGINE_MODEL_DIR, "tensorrt_llm_cpu"),
                  "llamacpp": (LLAMACPP_MODEL_DIR, "tensorrt_llm_llamacpp")}

from function_calling_agent.cpu_engine import (
    ConfigError,
    EngineConfig,
    FinishReason,
    GenerationEngine,
    GenerationRequest,
    InvalidInput,
    PrefixKVCache,
    SamplingParams,
    StopSignalBoard,
    final_outputs,
    parse_request,
    parse_word_list,
    stop_signals,
)
from tests.support.fca_client import settled

PROMPT = (1, 17, 42, 99, 123, 7, 300, 12, 55, 801, 64, 33)


def word_list(*words) -> np.ndarray:
    """TensorRT-LLM word-list tensor [1, 2, L]."""
    ids = [t for w in words for t in w]
    offsets = list(np.cumsum([len(w) for w in words]))
    length = max(len(ids), len(offsets))
    array = np.zeros((1, 2, length), dtype=np.int32)
    array[0, 1, :] = -1
    array[0, 0, : len(ids)] = ids
    array[0, 1, : len(offsets)] = offsets
    return array


@pytest.fixture(scope="module")
def tiny_model(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()


@pytest.fixture
def make_engine(tiny_model):
    engines = []

    def make(**kwargs) -> GenerationEngine:
        engine = GenerationEngine(tiny_model, **kwargs)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.close()


def greedy_without_cache(model, prompt, n) -> list[int]:
    """Reference greedy decoding: full forward over the whole sequence each step, no KV cache."""
    sequence = list(prompt)
    with torch.inference_mode():
        for _ in range(n):
            sequence.append(int(model(torch.tensor([sequence])).logits[0, -1].argmax()))
    return sequence[len(prompt) :]


# ---- generation core --------------------------------------------------------------------------------------------


def test_greedy_matches_uncached_decoding_and_is_deterministic(make_engine, tiny_model):
    engine = make_engine(prefix_cache_max_tokens=0)
    first = engine.generate(GenerationRequest(PROMPT, 24))
    second = engine.generate(GenerationRequest(PROMPT, 24))
    assert first.token_ids == second.token_ids
    assert list(first.token_ids) == greedy_without_cache(tiny_model, PROMPT, 24)
    assert first.finish_reason is FinishReason.LENGTH
    assert first.stats.prefilled_tokens == len(PROMPT) and first.stats.reused_tokens == 0


def test_prefix_reuse_prefills_only_new_tokens_and_keeps_greedy_output(make_engine):
    cached = make_engine(prefix_cache_max_tokens=4096)
    uncached = make_engine(prefix_cache_max_tokens=0)
    first = cached.generate(GenerationRequest(PROMPT, 16))
    # The agent's next turn: previous prompt + reply + new tokens. The last sampled token was never fed back,
    # so its KV is not cached.
    extended = PROMPT + first.token_ids + (5, 6, 7, 8)
    second = cached.generate(GenerationRequest(extended, 16))
    assert second.stats.reused_tokens == len(PROMPT) + len(first.token_ids) - 1
    assert second.stats.prefilled_tokens == len(extended) - second.stats.reused_tokens
    assert second.token_ids == uncached.generate(GenerationRequest(extended, 16)).token_ids
    # A prompt that diverges midway reuses exactly the shared part.
    diverged = PROMPT[:5] + (900, 901)
    third = cached.generate(GenerationRequest(diverged, 4))
    assert third.stats.reused_tokens == 5
    assert third.token_ids == uncached.generate(GenerationRequest(diverged, 4)).token_ids


def test_prefix_reuse_after_end_id_covers_prompt_and_whole_reply(make_engine):
    engine = make_engine(prefix_cache_max_tokens=4096)
    reference = make_engine(prefix_cache_max_tokens=0).generate(GenerationRequest(PROMPT, 12)).token_ids
    end_id = reference[6]
    first = engine.generate(GenerationRequest(PROMPT, 12, end_id=end_id))
    stop_at = reference.index(end_id)
    assert first.finish_reason is FinishReason.END_ID
    assert first.token_ids == reference[:stop_at]  # end_id itself is not returned
    second = engine.generate(GenerationRequest(PROMPT + first.token_ids + (end_id, 11, 12), 4))
    assert second.stats.reused_tokens == len(PROMPT) + len(first.token_ids)


def test_request_is_never_fully_served_from_cache(make_engine):
    engine = make_engine(prefix_cache_max_tokens=4096)
    first = engine.generate(GenerationRequest(PROMPT, 8))
    again = engine.generate(GenerationRequest(PROMPT, 8))
    assert again.stats.reused_tokens == len(PROMPT) - 1 and again.stats.prefilled_tokens == 1
    assert again.token_ids == first.token_ids


def test_prefix_cache_is_bounded_with_lru_eviction(make_engine):
    engine = make_engine(prefix_cache_max_tokens=60)
    prompts = [tuple(range(start, start + 20)) for start in (10, 200, 400, 600)]
    for prompt in prompts:
        engine.generate(GenerationRequest(prompt, 5))
        assert engine.prefix_cache.total_tokens <= 60
    cached = engine.prefix_cache.sequences()
    assert [seq[:20] for seq in cached] == [prompts[-2], prompts[-1]]  # the two oldest were evicted
    assert engine.generate(GenerationRequest(prompts[0], 2)).stats.reused_tokens == 0
    assert engine.generate(GenerationRequest(prompts[-1], 2)).stats.reused_tokens == 19


def test_prefix_cache_store_keeps_longest_sequences_only():
    from transformers import DynamicCache

    def cache_of(n):
        return DynamicCache(ddp_cache_data=[(torch.randn(1, 2, n, 4), torch.randn(1, 2, n, 4))])

    store = PrefixKVCache(max_tokens=100)
    store.store((1, 2, 3), cache_of(3))
    store.store((1, 2, 3, 4, 5), cache_of(5))  # subsumes the first
    store.store((1, 2), cache_of(2))  # already covered
    assert store.sequences() == [(1, 2, 3, 4, 5)] and store.total_tokens == 5
    hit = store.lookup((1, 2, 3, 9), max_reuse=10)
    assert hit.length == 3 and hit.cache.get_seq_length() == 3
    entry = store._entries[next(iter(store._entries))].cache
    hit.cache.update(torch.zeros(1, 2, 1, 4), torch.zeros(1, 2, 1, 4), 0)
    assert entry.get_seq_length() == 5  # the copy handed out does not alias the stored entry
    store.store(tuple(range(200)), cache_of(200))  # longer than the bound: kept cropped
    assert store.total_tokens <= 100


def test_stop_words_end_generation_and_are_returned(make_engine):
    engine = make_engine()
    reference = engine.generate(GenerationRequest(PROMPT, 20)).token_ids
    stop_word = reference[8:10]
    result = engine.generate(GenerationRequest(PROMPT, 20, stop_words=parse_word_list(word_list((4, 4, 4), stop_word))))
    assert result.finish_reason is FinishReason.STOP_WORDS
    assert result.token_ids[-2:] == stop_word
    assert len(result.token_ids) <= 10


def test_bad_words_are_never_completed(make_engine):
    engine = make_engine()
    reference = engine.generate(GenerationRequest(PROMPT, 6)).token_ids
    single = engine.generate(GenerationRequest(PROMPT, 6, bad_words=((reference[0],),)))
    assert single.token_ids[0] != reference[0]
    pair = engine.generate(GenerationRequest(PROMPT, 6, bad_words=((reference[0], reference[1]),)))
    assert pair.token_ids[0] == reference[0] and pair.token_ids[1] != reference[1]


def test_max_seq_len_caps_output(make_engine):
    engine = make_engine(max_seq_len=len(PROMPT) + 5)
    assert len(engine.generate(GenerationRequest(PROMPT, 50)).token_ids) == 5
    with pytest.raises(ValueError, match="max_seq_len"):
        engine.generate(GenerationRequest(tuple(range(1, 40)), 5))


def test_sampling_is_seeded_and_penalties_apply(make_engine):
    engine = make_engine()
    sampled = SamplingParams(temperature=1.0, top_k=50, top_p=0.9, seed=7)
    a = engine.generate(GenerationRequest(PROMPT, 16, sampling=sampled)).token_ids
    b = engine.generate(GenerationRequest(PROMPT, 16, sampling=sampled)).token_ids
    other_seed = SamplingParams(temperature=1.0, top_k=50, seed=8)
    c = engine.generate(GenerationRequest(PROMPT, 16, sampling=other_seed)).token_ids
    assert a == b and a != c
    greedy = SamplingParams(temperature=0.0, presence_penalty=1e4)
    penalized = engine.generate(GenerationRequest(PROMPT, 16, sampling=greedy)).token_ids
    assert len(set(penalized)) == len(penalized) and not set(penalized) & set(PROMPT)


def test_requests_interleave_and_stop_acts_between_tokens(make_engine):
    engine = make_engine()
    long_updates: queue.Queue = queue.Queue()
    long_handle = engine.submit(GenerationRequest(PROMPT, 3000), long_updates.put)
    short = engine.generate(GenerationRequest(PROMPT[:6], 5), timeout=30)
    assert len(short.token_ids) == 5
    long_handle.stop()
    tokens, update = [], long_updates.get(timeout=30)
    while not update.final:
        tokens.extend(update.token_ids)
        update = long_updates.get(timeout=30)
    assert update.finish_reason is FinishReason.STOPPED
    assert len(tokens) < 3000


def test_stop_posted_by_another_process_stops_generation(make_engine, tmp_path):
    engine = make_engine()
    board = StopSignalBoard(str(tmp_path / "stops"))
    updates: queue.Queue = queue.Queue()
    engine.submit(GenerationRequest(PROMPT, 3000), updates.put, should_stop=board.watch("req-1"))
    assert not updates.get(timeout=30).final
    # Another instance is another process; load the module alone there (no torch import, so it is quick).
    post = (
        "import importlib.util, sys; spec = importlib.util.spec_from_file_location('stop_signals', sys.argv[1]); "
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module); "
        "module.StopSignalBoard(sys.argv[2]).post('req-1')"
    )
    stop_module = Path(stop_signals.__file__)
    subprocess.run([sys.executable, "-c", post, str(stop_module), str(tmp_path / "stops")], check=True, timeout=60)
    generated = 0
    while True:
        update = updates.get(timeout=30)
        generated += len(update.token_ids)
        if update.final:
            break
    assert update.finish_reason is FinishReason.STOPPED and generated < 3000


def test_stale_stop_marker_does_not_stop_a_later_request(tmp_path):
    board = StopSignalBoard(str(tmp_path))
    board.post("reused-id")
    assert board.watch("reused-id", started_at=time.time() + 60)() is False
    board.post("reused-id")
    assert board.watch("reused-id")() is True
    board.clear("reused-id")
    assert os.listdir(tmp_path) == []


# ---- contract and config ----------------------------------------------------------------------------------------


def test_parse_request_maps_the_tensorrt_llm_inputs():
    arrays = {
        "input_ids": np.array([[5, 6, 7, 0, 0]], np.int32),
        "input_lengths": np.array([[3]], np.int32),
        "request_output_len": np.array([[9]], np.int32),
        "end_id": np.array([[2]], np.int32),
        "streaming": np.array([[True]]),
        "temperature": np.array([[0.5]], np.float32),
        "runtime_top_k": np.array([[4]], np.int32),
        "random_seed": np.array([[11]], np.uint64),
        "stop_words_list": word_list((3, 4), (8,)),
        "bad_words_list": word_list((9,)),
    }
    parsed = parse_request(arrays)
    g = parsed.generation
    assert g.input_ids == (5, 6, 7) and g.max_new_tokens == 9 and g.end_id == 2
    assert g.stop_words == ((3, 4), (8,)) and g.bad_words == ((9,),)
    assert g.sampling == SamplingParams(temperature=0.5, top_k=4, seed=11)
    assert parsed.streaming and not parsed.exclude_input_in_output and not parsed.stop
    assert parse_request({"stop": np.array([[True]]), "input_ids": np.array([[0]], np.int32)}).stop
    with pytest.raises(InvalidInput, match="batch 1"):
        parse_request({"input_ids": np.zeros((2, 3), np.int32), "request_output_len": np.array([[1], [1]], np.int32)})
    with pytest.raises(InvalidInput, match="request_output_len"):
        parse_request({"input_ids": np.array([[1]], np.int32)})


def test_block_counts_follow_block_size():
    from function_calling_agent.cpu_engine import GenerationStats

    stats = GenerationStats(prompt_tokens=70, reused_tokens=65, prefilled_tokens=5, generated_tokens=30)
    outputs = final_outputs(stats, 32, True)
    assert outputs["prefix_reused_tokens"].tolist() == [[65]]
    assert outputs["kv_cache_reused_blocks"].tolist() == [[2]]
    assert outputs["kv_cache_alloc_total_blocks"].tolist() == [[4]]
    assert outputs["kv_cache_alloc_new_blocks"].tolist() == [[2]]


def test_config_is_parsed_strictly():
    config = EngineConfig.from_parameters({"model_dir": "/m", "prefix_cache_max_tokens": "100", "stop_signal_dir": ""})
    assert config.prefix_cache_max_tokens == 100 and config.kv_cache_block_size == 32
    with pytest.raises(ConfigError, match="unfilled"):
        EngineConfig.from_parameters({"model_dir": "${model_dir}"})
    with pytest.raises(ConfigError, match="unknown"):
        EngineConfig.from_parameters({"model_dir": "/m", "prefix_cache_max_token": "1"})
    with pytest.raises(ConfigError, match="integer"):
        EngineConfig.from_parameters({"model_dir": "/m", "torch_threads": "two"})


def test_config_template_mirrors_the_stock_contract():
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    text = (ENGINE_MODEL_DIR / "config.pbtxt").read_text(encoding="utf-8")
    assert set(re.findall(r"\$\{(\w+)\}", text)) == {"model_dir", "engine_instance_count"}
    config = text_format.Parse(
        text.replace("${model_dir}", "/m").replace("${engine_instance_count}", "1"), model_config_pb2.ModelConfig()
    )
    assert config.name == "" and config.backend == "python" and config.model_transaction_policy.decoupled
    inputs = {i.name: i for i in config.input}
    assert list(inputs["input_ids"].dims) == [-1] and inputs["input_ids"].data_type == model_config_pb2.TYPE_INT32
    assert list(inputs["stop_words_list"].dims) == [2, -1]
    assert inputs["seed"].data_type == model_config_pb2.TYPE_UINT64
    required = {name for name, i in inputs.items() if not i.optional}
    assert required == {"input_lengths", "request_output_len"}
    outputs = {o.name: list(o.dims) for o in config.output}
    assert outputs["output_ids"] == [-1, -1] and outputs["sequence_length"] == [-1]
    assert outputs["prefix_reused_tokens"] == [1] and outputs["kv_cache_reused_blocks"] == [1]
    EngineConfig.from_model_config(
        {"parameters": {k: {"string_value": v.string_value} for k, v in config.parameters.items()}}
    )


# ---- real tritonserver ------------------------------------------------------------------------------------------


def _assemble_repository(root: Path, engine: str, values: dict[str, str]) -> Path:
    """The engine as `tensorrt_llm` (1 instance) and `tensorrt_llm_x2` (2 instances, separate processes)."""
    repo = root / "repo"
    for name, count in (("tensorrt_llm", 1), ("tensorrt_llm_x2", 2)):
        target = repo / name
        shutil.copytree(SERVER_ENGINES[engine][0], target, ignore=shutil.ignore_patterns("__pycache__"))
        config = target / "config.pbtxt"
        text = config.read_text(encoding="utf-8")
        for key, value in {**values, "engine_instance_count": str(count)}.items():
            text = text.replace("${" + key + "}", value)
        # one thread each: two cores shared with the test process
        text, threads = re.subn(r'(key: "(?:torch_threads|threads)"\s*value: \{ string_value: )"0"', r'\1"1"', text)
        assert threads == 1, "could not set the engine's threads"
        config.write_text(text, encoding="utf-8")
    return repo


@pytest.fixture(scope="module", params=sorted(SERVER_ENGINES))
def engine_server(request, tmp_path_factory, tiny_llama_dir, tiny_llama_gguf, hermes_tokenizer_dir):
    from tests.support.triton_server import TritonServerFactory

    engine = request.param
    values = ({"model_dir": tiny_llama_dir} if engine == "torch"
              else {"gguf_path": tiny_llama_gguf, "tokenizer_dir": hermes_tokenizer_dir})
    root = tmp_path_factory.mktemp(f"cpu-engine-{engine}")
    factory = TritonServerFactory(root)
    try:
        server = factory(_assemble_repository(root, engine, values))
        server.metric_prefix = SERVER_ENGINES[engine][1]
        yield server
    finally:
        factory.stop_all()


class _Stream:
    """A gRPC bidirectional stream collecting responses by request id."""

    def __init__(self, server) -> None:
        self.client = server.grpc_client()
        self.responses: queue.Queue = queue.Queue()
        self.client.start_stream(callback=lambda result, error: self.responses.put((result, error)))

    def send(self, model: str, prompt, max_tokens: int, request_id: str, **extra) -> None:
        import tritonclient.grpc as grpcclient

        arrays = {
            "input_ids": np.array([prompt], np.int32),
            "input_lengths": np.array([[len(prompt)]], np.int32),
            "request_output_len": np.array([[max_tokens]], np.int32),
        }
        arrays.update(extra)
        inputs = []
        for name, array in arrays.items():
            dtype = {np.int32: "INT32", np.bool_: "BOOL", np.float32: "FP32", np.uint64: "UINT64"}[array.dtype.type]
            tensor = grpcclient.InferInput(name, list(array.shape), dtype)
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        self.client.async_stream_infer(model, inputs, request_id=request_id, enable_empty_final_response=True)

    def stop(self, model: str, request_id: str) -> None:
        self.send(model, [0], 0, request_id, stop=np.array([[True]]))

    def next_error(self, timeout: float = 60.0):
        result, error = self.responses.get(timeout=timeout)
        assert error is not None, f"expected an error, got {result.get_response()}"
        return error

    def next(self, timeout: float = 60.0):
        result, error = self.responses.get(timeout=timeout)
        if error is not None:
            raise AssertionError(f"stream error: {error}")
        response = result.get_response()
        final = response.parameters["triton_final_response"].bool_param
        outputs = {o.name: result.as_numpy(o.name) for o in response.outputs}
        return response.id, outputs, final


def _collect(stream: _Stream, request_id: str):
    """All responses of one generation: (concatenated output ids, per-response lengths, last response outputs)."""
    ids, lengths = [], []
    while True:
        rid, outputs, final = stream.next()
        assert rid == request_id
        if "output_ids" in outputs:
            assert outputs["output_ids"].shape[:2] == (1, 1)
            assert outputs["sequence_length"].tolist() == [[outputs["output_ids"].shape[-1]]]
            ids += outputs["output_ids"].reshape(-1).tolist()
            lengths.append(outputs["output_ids"].shape[-1])
        if final:
            return ids, lengths, outputs


@pytest.mark.integration
def test_server_streams_and_answers_in_one_response(engine_server):
    stream = _Stream(engine_server)
    prompt = list(PROMPT)
    stream.send("tensorrt_llm", prompt, 8, "stream-1", streaming=np.array([[True]]))
    streamed, lengths, last = _collect(stream, "stream-1")
    assert len(streamed) == 8 and set(lengths) == {1}
    assert "prefix_reused_tokens" in last

    stream.send("tensorrt_llm", prompt, 8, "whole-1")
    whole, lengths, last = _collect(stream, "whole-1")
    assert lengths == [len(prompt) + 8] and whole == prompt + streamed  # echoes the prompt by default

    stream.send("tensorrt_llm", prompt, 8, "whole-2", exclude_input_in_output=np.array([[True]]),
                return_perf_metrics=np.array([[True]]))
    excluded, lengths, last = _collect(stream, "whole-2")
    assert excluded == streamed and len(lengths) == 1
    assert {"kv_cache_reused_blocks", "kv_cache_alloc_new_blocks", "kv_cache_alloc_total_blocks"} <= set(last)


@pytest.mark.integration
def test_server_reuses_the_prefix_of_an_extending_prompt(engine_server):
    stream = _Stream(engine_server)
    first_prompt = [1, 300, 301, 302, 303, 304, 305, 306]
    stream.send("tensorrt_llm", first_prompt, 6, "turn-1", exclude_input_in_output=np.array([[True]]))
    reply, _, last = _collect(stream, "turn-1")
    second_prompt = first_prompt + reply + [2, 3, 4]
    stream.send("tensorrt_llm", second_prompt, 4, "turn-2", streaming=np.array([[True]]))
    _, _, last = _collect(stream, "turn-2")
    assert last["prefix_reused_tokens"].tolist() == [[len(first_prompt) + len(reply) - 1]]


@pytest.mark.integration
@pytest.mark.parametrize("model", ["tensorrt_llm", "tensorrt_llm_x2"])
def test_server_stop_request_ends_a_long_generation(engine_server, model):
    stream = _Stream(engine_server)
    for attempt in range(3 if model == "tensorrt_llm_x2" else 1):
        request_id = f"long-{model}-{attempt}"
        stream.send(model, list(PROMPT), 3000, request_id, streaming=np.array([[True]]))
        received, stopped, final_seen = 0, False, False
        while not final_seen:
            rid, outputs, final = stream.next()
            assert rid == request_id
            if "output_ids" not in outputs:  # the stop request's own empty answer
                assert final
                stopped = True
                continue
            received += outputs["output_ids"].shape[-1]
            if received == 10:
                stream.stop(model, request_id)
            final_seen = final
        assert received < 3000
        if not stopped:
            _, outputs, final = stream.next()
            assert final and "output_ids" not in outputs
    if model == "tensorrt_llm_x2":
        # Triton spreads requests over the instances, so some stops land on the instance not generating. The stub's
        # log line may reach the file after the stop's response reached us.
        deadline = time.monotonic() + 10
        while "posted to the other instances" not in engine_server.log_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "posted to the other instances" in engine_server.log_text()


def _generated_tokens_total(server) -> float:
    with urllib.request.urlopen(f"http://{server.metrics_url}/metrics", timeout=5) as response:
        text = response.read().decode("utf-8")
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(f"{server.metric_prefix}_generated_tokens_total{{") and 'model="tensorrt_llm"' in line
    )


@pytest.mark.integration
def test_server_client_cancellation_stops_generation(engine_server):
    settled(engine_server.metrics_url)  # an earlier test's generation is counted by now
    before = _generated_tokens_total(engine_server)
    stream = _Stream(engine_server)
    stream.send("tensorrt_llm", list(PROMPT), 3000, "cancel-1", streaming=np.array([[True]]))
    for _ in range(5):
        stream.next()
    stream.client.stop_stream(cancel_requests=True)
    deadline = time.monotonic() + 20
    while _generated_tokens_total(engine_server) == before and time.monotonic() < deadline:
        time.sleep(0.1)
    generated = _generated_tokens_total(engine_server) - before
    assert 5 <= generated < 3000, generated
    print(f"cancelled after {generated:.0f} generated tokens")
    # The engine is free again.
    fresh = _Stream(engine_server)
    fresh.send("tensorrt_llm", list(PROMPT), 3, "after-cancel", exclude_input_in_output=np.array([[True]]))
    assert len(_collect(fresh, "after-cancel")[0]) == 3


@pytest.mark.integration
def test_server_rejects_bad_requests_with_one_error_each(engine_server):
    stream = _Stream(engine_server)
    stream.send("tensorrt_llm", list(PROMPT), -1, "bad-1")
    assert "request_output_len" in stream.next_error().message()
    stream.stop("tensorrt_llm", "")
    assert "request id" in stream.next_error().message()
    stream.send("tensorrt_llm", list(range(1, 5000)), 4, "too-long")
    assert "max_seq_len" in stream.next_error().message()
    # Nothing else was pending on the stream: the next response belongs to the next request.
    stream.send("tensorrt_llm", list(PROMPT), 2, "good-1", exclude_input_in_output=np.array([[True]]))
    assert len(_collect(stream, "good-1")[0]) == 2
