"""The engine transports' pieces without a server: where `engine_url: self` points (read from tritonserver's command
line), coalesced client deltas, and KV-cache reuse from TensorRT-LLM 1.0.0's outputs. The transports themselves run
end to end in test_agent_model, test_faults, test_metrics and test_soak (once per transport) and in
test_engine_transport_server.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from deploy.configure_repository import configure
from function_calling_agent.adapter.coalescing import DeltaCoalescer
from function_calling_agent.adapter.engine_tensors import (
    engine_inputs,
    engine_output,
    engine_tokens_per_block,
    requested_outputs,
    reused_tokens,
    stop_inputs,
)
from function_calling_agent.adapter.grpc_engine import (
    EngineUrlError,
    parse_engine_url,
    resolve_engine_url,
    server_command_line,
    server_grpc_endpoint,
)
from function_calling_agent.adapter.parameters import ConfigError, parse_parameters
from function_calling_agent.engine import EngineRequest, SamplingParams
from function_calling_agent.model_config import read_model_config, tensor_names

STOCK_FIXTURE = Path(__file__).parent / "fixtures" / "stock_inflight_batcher_llm"
TRITON = ["/opt/tritonserver/bin/tritonserver", "--model-repository=/models"]


# ---- engine_url ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, endpoint", [
    (TRITON, "127.0.0.1:8001"),  # tritonserver's defaults: every address, port 8001
    (TRITON + ["--grpc-port=9101"], "127.0.0.1:9101"),
    (TRITON + ["--grpc-port", "9102", "--grpc-address", "127.0.0.1"], "127.0.0.1:9102"),
    (TRITON + ["--grpc-address=10.1.2.3", "--grpc-port=9103"], "10.1.2.3:9103"),
    (TRITON + ["--grpc-address=::", "--grpc-port=9104"], "[::1]:9104"),
    (TRITON + ["--grpc-port=9105", "--grpc-port=9106"], "127.0.0.1:9106"),  # the last one wins, as in getopt
    (TRITON + ["--allow-grpc=true", "--grpc-use-ssl=false"], "127.0.0.1:8001"),
])
def test_own_grpc_endpoint_comes_from_the_command_line(argv, endpoint):
    assert server_grpc_endpoint(argv) == endpoint
    assert resolve_engine_url("self", argv) == (endpoint, True)


@pytest.mark.parametrize("flags, message", [
    (["--allow-grpc=false"], "--allow-grpc=false"),
    (["--allow-grpc", "0"], "--allow-grpc=false"),
    (["--grpc-use-ssl=true"], "SSL"),
    (["--grpc-restricted-protocol=inference,health:key=value"], "restricts"),
    (["--grpc-port=0"], "no gRPC endpoint"),
    (["--grpc-port=grpc"], "cannot read"),
])
def test_a_server_without_a_usable_grpc_endpoint_fails_self_clearly(flags, message):
    with pytest.raises(EngineUrlError, match=message) as raised:
        resolve_engine_url("self", TRITON + flags)
    assert "engine_transport" in str(raised.value) or "port" in str(raised.value)


def test_an_explicit_url_is_recognised_as_this_server_or_another():
    argv = TRITON + ["--grpc-port=9001", "--http-port=9000", "--metrics-port=9002"]
    assert resolve_engine_url("localhost:9001", argv) == ("127.0.0.1:9001", True)
    assert resolve_engine_url("127.0.0.1:9001", argv) == ("127.0.0.1:9001", True)
    assert resolve_engine_url("engine-host:8001", argv) == ("engine-host:8001", False)
    assert resolve_engine_url("127.0.0.1:7001", argv) == ("127.0.0.1:7001", False)  # another server on this host
    with pytest.raises(EngineUrlError, match="HTTP port"):
        resolve_engine_url("127.0.0.1:9000", argv)
    with pytest.raises(EngineUrlError, match="METRICS port"):
        resolve_engine_url("localhost:9002", argv)
    assert resolve_engine_url("engine-host:8001", None) == ("engine-host:8001", False)
    with pytest.raises(EngineUrlError, match="could not be read"):
        resolve_engine_url("self", None)


@pytest.mark.parametrize("text, parsed", [("self", "self"), ("localhost:8001", "localhost:8001"),
                                          ("grpc://10.0.0.5:8001", "10.0.0.5:8001"), ("[::1]:8001", "[::1]:8001")])
def test_engine_url_values(text, parsed):
    assert parse_engine_url(text) == parsed


@pytest.mark.parametrize("text", ["", "localhost", "localhost:http", "localhost:0", "host:70000", "::1:8001",
                                  "http://host:8001/v2"])
def test_bad_engine_urls_fail_loading_with_what_to_write(text):
    with pytest.raises(ConfigError, match="engine_url must be 'self'|engine_url: an IPv6"):
        parse_parameters({"tokenizer_dir": "/tmp", "max_context_tokens": "4096", "engine_url": text},
                         check_paths=False)


def test_transport_parameters_are_strict():
    config = parse_parameters({"tokenizer_dir": "/tmp", "max_context_tokens": "4096"}, check_paths=False)
    assert (config.engine_transport, config.engine_url, config.stream_interval) == ("grpc", "self", 16)
    for bad, message in (({"engine_transport": "http"}, "one of grpc, bls"), ({"stream_interval": "0"}, "between"),
                         ({"stream_flush_ms": "0"}, "must be > 0"), ({"kv_cache_tokens_per_block": "-1"}, "between")):
        with pytest.raises(ConfigError, match=message):
            parse_parameters({"tokenizer_dir": "/tmp", "max_context_tokens": "4096", **bad}, check_paths=False)


def test_the_server_command_line_is_found_above_the_stub(tmp_path):
    # A process named tritonserver (a stand-in: `sleep` under that name), and a child under it, as the stub runs.
    fake = tmp_path / "tritonserver"
    fake.symlink_to("/bin/sleep")
    server = subprocess.Popen([str(fake), "30"])
    try:
        deadline = time.monotonic() + 5
        while Path(f"/proc/{server.pid}/cmdline").read_bytes().split(b"\0")[0] != str(fake).encode():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert server_command_line(server.pid) == [str(fake), "30"]
    finally:
        server.kill()
        server.wait()
    with pytest.raises(EngineUrlError, match="set engine_url"):
        server_command_line(os.getpid())  # pytest runs under no tritonserver


# ---- coalesced deltas ----------------------------------------------------------------------------------------------
def _coalescer(interval, flush_s=10.0):
    sent: list[tuple[str, str]] = []
    loop = asyncio.new_event_loop()
    return sent, loop, DeltaCoalescer(lambda name, text: sent.append((name, text)), interval, flush_s, loop=loop)


def test_first_delta_goes_at_once_then_every_interval_tokens():
    sent, loop, deltas = _coalescer(3)
    for piece in ["A", "b", "c", "d", "e", "f", "g"]:
        deltas.push("text_output", piece)
    assert sent == [("text_output", "A"), ("text_output", "bcd"), ("text_output", "efg")]
    deltas.push("text_output", "h")
    deltas.close()
    assert sent[-1] == ("text_output", "h") and "".join(t for _, t in sent) == "Abcdefgh"
    deltas.push("text_output", "late")  # nothing follows close (the FINAL)
    assert sent[-1] == ("text_output", "h")
    loop.close()


def test_held_text_is_flushed_by_the_timer():
    sent, loop, deltas = _coalescer(100, flush_s=0.05)

    async def main():
        deltas.push("text_output", "first")
        deltas.push("text_output", " held")
        assert sent == [("text_output", "first")]
        await asyncio.sleep(0.15)

    loop.run_until_complete(main())
    assert sent == [("text_output", "first"), ("text_output", " held")]
    loop.close()


def test_outputs_keep_their_order_and_a_discarded_close_sends_nothing():
    sent, loop, deltas = _coalescer(4)
    deltas.push("reasoning_output", "think")
    deltas.push("reasoning_output", "ing")
    deltas.push("text_output", "Ans")
    deltas.push("text_output", "wer")
    deltas.close(flush=False)
    assert sent == [("reasoning_output", "think"), ("reasoning_output", "ing")]
    loop.close()


def test_interval_one_sends_every_delta():
    sent, loop, deltas = _coalescer(1)
    for piece in "abc":
        deltas.push("text_output", piece)
    assert [t for _, t in sent] == ["a", "b", "c"]
    loop.close()


# ---- KV reuse from TensorRT-LLM 1.0.0's outputs ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def stock_engine(tmp_path_factory):
    """The stock tensorrt_llm model's config (TensorRT-LLM 1.0.0's tensors), as the gpu profile fills it."""
    repo = tmp_path_factory.mktemp("gpu") / "repo"
    configure("gpu", repo, {"tokenizer_dir": "/ckpt", "engine_dir": "/engines/x"}, STOCK_FIXTURE)
    return read_model_config(repo / "tensorrt_llm" / "config.pbtxt")


@pytest.fixture(scope="module")
def stock_engine_outputs(stock_engine):
    return tensor_names(stock_engine, "output")


_NUMPY_OF = {"TYPE_INT32": np.int32, "TYPE_UINT64": np.uint64, "TYPE_FP32": np.float32, "TYPE_BOOL": np.bool_}


def _matches(array: np.ndarray, spec) -> bool:
    """An array fits a declared input: its type, and [batch 1] + dims (-1 matching any length)."""
    from tritonclient.grpc import model_config_pb2

    dims = list(spec.dims)
    return (array.dtype == _NUMPY_OF[model_config_pb2.DataType.Name(spec.data_type)] and array.shape[0] == 1
            and len(array.shape) == len(dims) + 1 and all(d in (-1, n) for d, n in zip(dims, array.shape[1:])))


def test_every_input_the_agent_sends_fits_the_stock_engine(stock_engine):
    declared = {spec.name: spec for spec in stock_engine.input}
    request = EngineRequest(
        request_id="fca-1-0", prompt_ids=[5, 6, 7], max_tokens=64, end_id=2, pad_id=0,
        sampling=SamplingParams(temperature=0.7, top_k=20, top_p=0.9, random_seed=1234, repetition_penalty=1.1,
                                presence_penalty=0.2, frequency_penalty=0.3),
        bad_words=((11, 12),), stop_words=((13,), (14,)))
    arrays = engine_inputs(request, frozenset(declared))
    # TensorRT-LLM 1.x calls the seed `seed` (0.x: random_seed); every sampling setting and word list goes out.
    assert set(arrays) == {"input_ids", "input_lengths", "request_output_len", "end_id", "pad_id", "streaming",
                           "exclude_input_in_output", "return_perf_metrics", "temperature", "runtime_top_k",
                           "runtime_top_p", "seed", "repetition_penalty", "presence_penalty", "frequency_penalty",
                           "bad_words_list", "stop_words_list"}
    for name, array in {**arrays, **stop_inputs()}.items():
        assert _matches(array, declared[name]), (name, array.dtype, array.shape, declared[name])
    assert arrays["seed"].tolist() == [[1234]] and arrays["pad_id"].tolist() == [[0]]
    assert arrays["bad_words_list"].tolist() == [[[11, 12], [2, -1]]]
    assert arrays["stop_words_list"].tolist() == [[[13, 14], [1, 2]]]


def test_stock_engine_outputs_ask_for_reused_blocks(stock_engine_outputs):
    outputs = stock_engine_outputs
    assert "kv_cache_reused_blocks" in outputs and "prefix_reused_tokens" not in outputs
    assert requested_outputs(outputs) == ["output_ids", "kv_cache_reused_blocks"]


def test_reused_blocks_become_tokens_capped_below_the_prompt():
    assert reused_tokens(3, 32) == 96
    assert reused_tokens(3, 32, prompt_tokens=200) == 96
    assert reused_tokens(4, 32, prompt_tokens=128) == 127  # TensorRT-LLM always computes the last prompt token
    assert reused_tokens(0, 64, prompt_tokens=10) == 0


def test_a_trtllm_shaped_response_reports_reused_tokens():
    # What tensorrt_llm (1.0.0, streaming, return_perf_metrics) sends: new ids [1, 1, n] and the block counts [1, 1].
    response = {"output_ids": np.array([[[11, 12]]], dtype=np.int32),
                "kv_cache_reused_blocks": np.array([[5]], dtype=np.int32),
                "kv_cache_alloc_new_blocks": np.array([[2]], dtype=np.int32),
                "kv_cache_alloc_total_blocks": np.array([[7]], dtype=np.int32)}
    output = engine_output(response.get, tokens_per_block=32, prompt_tokens=210)
    assert output.token_ids == (11, 12) and output.reused_prompt_tokens == 160
    assert engine_output(response.get, prompt_tokens=210).reused_prompt_tokens is None  # blocks of unknown size
    final_only = {"kv_cache_reused_blocks": np.array([[1]], dtype=np.int32)}
    assert engine_output(final_only.get, tokens_per_block=64, prompt_tokens=100).reused_prompt_tokens == 64
    assert engine_output({}.get) is None


def test_tokens_per_block_comes_from_the_engine_build_config(tmp_path, stock_engine_outputs):
    # The engine's config.json as trtllm-build (TensorRT-LLM 1.0.0) writes it; the runtime reads the same field.
    (tmp_path / "config.json").write_text(json.dumps({
        "version": "1.0.0", "pretrained_config": {"architecture": "LlamaForCausalLM"},
        "build_config": {"max_input_len": 7168, "max_seq_len": 8192,
                         "plugin_config": {"paged_kv_cache": True, "tokens_per_block": 32,
                                           "use_paged_context_fmha": True}}}))
    outputs = stock_engine_outputs
    assert engine_tokens_per_block(outputs, {"gpt_model_path": str(tmp_path)}) == 32
    assert engine_tokens_per_block(outputs, {"gpt_model_path": str(tmp_path)}, configured=16) == 16
    assert engine_tokens_per_block(("output_ids", "prefix_reused_tokens", "kv_cache_reused_blocks"), {}) is None
    with pytest.raises(ValueError, match="set kv_cache_tokens_per_block"):
        engine_tokens_per_block(outputs, {"gpt_model_path": str(tmp_path / "missing")})
    (tmp_path / "config.json").write_text(json.dumps({"build_config": {"plugin_config": {}}}))
    with pytest.raises(ValueError, match="no build_config.plugin_config.tokens_per_block"):
        engine_tokens_per_block(outputs, {"gpt_model_path": str(tmp_path)})
