"""The gRPC engine transport on real tritonservers: loading fails clearly where the engine cannot be reached over
gRPC, and an agent reaches an engine served by another server (`engine_url: host:port`), stopping it on client
cancel with TensorRT-LLM's stop request (an engine without a `stop` input generates to the end: the stream is never
cancelled).
"""

from __future__ import annotations

import time

import pytest

from deploy.triton_launcher import TritonLaunchError, TritonServer, free_port
from function_calling_agent.scripted_engine.repository import make_scripted_engine, read_request_log
from tests.support.agent_repo import make_agent_model
from tests.support.fca_client import make_inputs, stream_request
from tests.support.triton_server import TritonServerFactory

pytestmark = pytest.mark.integration

SCRIPT = {
    "scenarios": [{"name": "slow", "match": "SLOW", "turns": [" ".join(["word"] * 60)], "token_latency_ms": 50}],
    "default_turns": ["Hello from the other server."],
}
# Every optional input of the scripted engine but `stop`: an engine that cannot be stopped by request.
NO_STOP_INPUTS = ("end_id,pad_id,streaming,exclude_input_in_output,temperature,runtime_top_k,runtime_top_p,"
                  "random_seed,repetition_penalty,presence_penalty,frequency_penalty,stop_words_list,bad_words_list,"
                  "return_perf_metrics")


def _failed_load(tmp_path, repo, **options) -> str:
    server = TritonServer(repo, log_path=tmp_path / "server.log", **options)
    with pytest.raises(TritonLaunchError):
        server.launch(timeout=120, attempts=1)
    server.stop()
    return server.log_text()


def test_loading_fails_clearly_when_the_server_has_grpc_disabled(tmp_path, hermes_tokenizer_dir):
    repo = tmp_path / "repo"
    make_scripted_engine(repo, SCRIPT, hermes_tokenizer_dir)
    make_agent_model(repo, hermes_tokenizer_dir)
    log = _failed_load(tmp_path, repo, extra_args=["--allow-grpc=false"])
    assert "function_calling_agent engine_transport grpc: this tritonserver runs with --allow-grpc=false" in log, log
    assert "set engine_transport to bls" in log


def test_loading_fails_clearly_when_engine_url_points_nowhere(tmp_path, hermes_tokenizer_dir):
    repo = tmp_path / "repo"
    make_scripted_engine(repo, SCRIPT, hermes_tokenizer_dir)
    nowhere = f"127.0.0.1:{free_port()}"
    make_agent_model(repo, hermes_tokenizer_dir, parameters={"engine_url": nowhere})
    log = _failed_load(tmp_path, repo)
    assert f"engine_url {nowhere}: cannot reach the engine's gRPC endpoint" in log, log


@pytest.fixture(scope="module")
def two_servers(tmp_path_factory, hermes_tokenizer_dir):
    """Server A serves only the engine; server B only agents, which reach A's engine over gRPC (B has no engine
    config to read: `engine_inputs` names the engine's optional inputs)."""
    factory = TritonServerFactory(tmp_path_factory.mktemp("two-servers-logs"))
    try:
        engine_repo = tmp_path_factory.mktemp("engine-repo")
        engine_dir = make_scripted_engine(engine_repo, SCRIPT, hermes_tokenizer_dir)
        engine_server = factory(engine_repo)
        agent_repo = tmp_path_factory.mktemp("agent-repo")
        url = engine_server.grpc_url
        make_agent_model(agent_repo, hermes_tokenizer_dir,
                         parameters={"engine_url": url, "engine_inputs": NO_STOP_INPUTS + ",stop"})
        make_agent_model(agent_repo, hermes_tokenizer_dir, model_name="fca_no_stop",
                         parameters={"engine_url": url, "engine_inputs": NO_STOP_INPUTS})
        agent_server = factory(agent_repo)
        yield engine_server, agent_server, engine_dir
    finally:
        factory.stop_all()


def _engine_end(engine_dir, request_prefix_seen: set, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ends = [e for e in read_request_log(engine_dir) if e["event"] == "end" and e.get("scenario") == "slow"
                and e["request_id"] not in request_prefix_seen]
        if ends:
            request_prefix_seen.add(ends[-1]["request_id"])
            return ends[-1]
        time.sleep(0.05)
    raise AssertionError("the engine request never ended")


def test_an_agent_reaches_an_engine_on_another_server(two_servers):
    engine_server, agent_server, _ = two_servers
    outcome = stream_request(agent_server.grpc_url, make_inputs({"text_input": "hi", "max_tokens": 32, "stream": True}))
    assert outcome.error is None and outcome.finals == 1 and outcome.text == "Hello from the other server."


@pytest.mark.parametrize("model, engine_end", [("function_calling_agent", "stopped"), ("fca_no_stop", "completed")])
def test_a_client_cancel_ends_the_engine_request_on_the_other_server(two_servers, model, engine_end):
    engine_server, agent_server, engine_dir = two_servers
    seen = {e["request_id"] for e in read_request_log(engine_dir) if e["event"] == "end"}
    outcome = stream_request(agent_server.grpc_url, make_inputs({"text_input": "SLOW", "max_tokens": 128,
                                                                 "stream": True}),
                             model=model, cancel_when=lambda o, _: bool(o.deltas))
    assert outcome.cancelled and outcome.deltas, outcome
    end = _engine_end(engine_dir, seen)
    # With a stop input the agent sends TensorRT-LLM's stop request on the turn's stream and the engine stops; without
    # one the engine generates to the end. The agent never cancels the engine's stream (that crashes Triton 2.51).
    assert end["end"] == engine_end, end
    assert end["tokens_sent"] < 60 if engine_end == "stopped" else end["tokens_sent"] >= 60, end
    again = stream_request(agent_server.grpc_url, make_inputs({"text_input": "hi", "max_tokens": 32, "stream": True}),
                           model=model)
    assert again.error is None and again.text == "Hello from the other server."
    assert engine_server.server.is_alive() and agent_server.server.is_alive()
