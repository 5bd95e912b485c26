"""MCP tools end to end: a real tritonserver, the scripted engine, and real MCP servers started by the test: one over
stdio (the agent spawns it from the mcp_servers file), one over streamable HTTP on a loopback socket the test holds,
and an optional one that comes up only during the tests.

The transcript of the two-server turn is written to /tmp/fca_mcp_transcript.txt.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest
import requests

from function_calling_agent.scripted_engine.repository import make_scripted_engine
from tests.support.agent_repo import make_agent_model
from tests.support.fca_client import fca_lines, make_inputs, scrape_text, settled, stop_with_stubs, \
    stream_request, value
from tests.support.mcp_servers import HttpMcpServer, http_entry, server_pid, stdio_entry, wait_for, \
    write_servers_file
from tests.support.triton_server import TritonServerFactory

pytestmark = pytest.mark.integration

MODEL = "function_calling_agent"
TRANSCRIPT = Path("/tmp/fca_mcp_transcript.txt")
ALLOWED = ["create_order", "timed_echo", "fail", "read_web_page"]


def call(name: str, arguments: dict) -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


SCENARIOS = [
    {"name": "both", "match": "[mcp-both]",
     "turns": [call("local_timed_echo", {"text": "via-stdio", "seconds": 1.0}) + "\n"
               + call("remote_timed_echo", {"text": "via-http", "seconds": 1.0}),
               "Both servers answered: {tool_response}"]},
    {"name": "kill", "match": "[mcp-kill]",
     "turns": [call("local_timed_echo", {"text": "doomed", "seconds": 60}), "The tool said: {tool_response}"]},
    {"name": "cancel", "match": "[mcp-cancel]",
     "turns": [call("remote_timed_echo", {"text": "cancel-me", "seconds": 60}), "never reached"]},
    {"name": "revived", "match": "[mcp-revived]",
     "turns": [call("local_timed_echo", {"text": "revived"}), "The tool said: {tool_response}"]},
    {"name": "inject", "match": "[mcp-inject]",
     "turns": [call("remote_read_web_page", {"url": "https://example.com"}),
               call("remote_delete_all_files", {"confirm": True}), "Final: {tool_response}"]},
    {"name": "nested", "match": "[mcp-nested]",
     "turns": [call("remote_create_order", {"order": {"customer": {"name": "Ada", "email": "ada"},
                                                      "items": [{"sku": "A-1", "quantity": 0}]}}),
               "Fixing it: {tool_response}"]},
    {"name": "fail", "match": "[mcp-fail]",
     "turns": [call("local_fail", {"reason": "disk on fire"}), "The tool said: {tool_response}"]},
    {"name": "narrow", "match": "[mcp-narrow]",
     "turns": [call("local_timed_echo", {"text": "narrowed-away"}), "The tool said: {tool_response}"]},
    {"name": "late", "match": "[mcp-late]",
     "turns": [call("late_timed_echo", {"text": "late"}), "The tool said: {tool_response}"]},
]


@pytest.fixture(scope="module")
def agent(tmp_path_factory, hermes_tokenizer_dir):
    state = tmp_path_factory.mktemp("mcp-state")
    remote = HttpMcpServer(state, label="remote").start()
    late = HttpMcpServer(state, label="late")  # bound and listening, nothing serving it until a test starts it
    repo = tmp_path_factory.mktemp("mcp-repo")
    servers = write_servers_file(repo.parent / f"{repo.name}-mcp_servers.json", [
        stdio_entry("local", state, allowed_tools=ALLOWED, tool_prefix="local_"),
        http_entry("remote", remote.url, allowed_tools=ALLOWED, tool_prefix="remote_", timeout_seconds=20),
        http_entry("late", late.url, allowed_tools=["timed_echo"], tool_prefix="late_", required=False,
                   connect_timeout_seconds=2),
    ])
    make_scripted_engine(repo, {"scenarios": SCENARIOS, "default_turns": ["Default answer."]}, hermes_tokenizer_dir,
                         token_latency_ms=1)
    make_agent_model(repo, hermes_tokenizer_dir, tool_modules="scripted_tools", max_context_tokens=16384,
                     parameters={"mcp_servers": str(servers), "max_tool_result_chars": "2000"})
    # A second agent whose required server is down: loaded on demand, it must fail loading with a clear message.
    refused = socket.socket()
    refused.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused, and the port stays ours
    offline_url = f"http://127.0.0.1:{refused.getsockname()[1]}/mcp"
    down = write_servers_file(repo.parent / f"{repo.name}-down.json", [
        http_entry("offline", offline_url, allowed_tools=["timed_echo"], connect_timeout_seconds=2)])
    make_agent_model(repo, hermes_tokenizer_dir, model_name="fca_mcp_down", parameters={"mcp_servers": str(down)})
    factory = TritonServerFactory(tmp_path_factory.mktemp("mcp-logs"))
    try:
        running = factory(repo, model_control_mode="explicit", load_models=["tensorrt_llm", MODEL])
        running.state, running.remote, running.late, running.offline_url = state, remote, late, offline_url
        yield running
    finally:
        for running in factory.servers:
            stop_with_stubs(running)
        remote.close()
        late.close()
        refused.close()


def ask(agent, text: str, timeout: float = 60.0, **options):
    inputs = make_inputs({"text_input": text, "max_tokens": 256, "stream": True, "return_trace": True, **options})
    return stream_request(agent.grpc_url, inputs, timeout=timeout)


def tool_results(trace: dict) -> list[dict]:
    """The tool messages' payloads (`{"name", "content"}`), in call order."""
    return [json.loads(m["content"]) for m in trace["messages"] if m["role"] == "tool"]


def test_one_turn_calls_a_stdio_tool_and_an_http_tool_concurrently(agent):
    before = settled(agent.metrics_url)
    url = f"http://{agent.http_url}/v2/models/{MODEL}/generate"
    body = json.dumps({"text_input": "[mcp-both] Echo through both servers", "max_tokens": 256, "stream": False,
                       "return_trace": True})
    done = subprocess.run(["curl", "-sS", "-w", "\\nelapsed_s=%{time_total}\\n", "-X", "POST", url, "-d", body],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    response_text, elapsed = done.stdout.rsplit("\nelapsed_s=", 1)
    response = json.loads(response_text)
    trace = json.loads(response["tool_trace"])
    assert response["finish_reason"] == "stop"
    assert response["text_output"].startswith("Both servers answered: ")

    records = trace["tool_calls"]
    assert [(r["name"], r["server"], r["status"]) for r in records] == [
        ("local_timed_echo", "local", "ok"), ("remote_timed_echo", "remote", "ok")]
    local, remote = (result["content"] for result in tool_results(trace))
    assert (local["server"], local["text"]) == ("local", "via-stdio")
    assert (remote["server"], remote["text"]) == ("remote", "via-http")
    # Concurrent: each call started on its server before the other one ended (server-side clocks).
    assert local["started"] < remote["ended"] and remote["started"] < local["ended"]
    overlap = min(local["ended"], remote["ended"]) - max(local["started"], remote["started"])
    assert overlap > 0.5  # of 1 s each

    after = settled(agent.metrics_url)
    for tool, server in (("local_timed_echo", "local"), ("remote_timed_echo", "remote")):
        assert value(after, "fca_tool_calls_total", tool=tool, server=server, outcome="ok") - value(
            before, "fca_tool_calls_total", tool=tool, server=server, outcome="ok") == 1
        assert value(after, "fca_tool_latency_seconds_count", tool=tool, server=server) - value(
            before, "fca_tool_latency_seconds_count", tool=tool, server=server) == 1
    assert value(after, "fca_mcp_server_up", server="local") == 1
    assert value(after, "fca_mcp_server_up", server="remote") == 1
    assert value(after, "fca_mcp_server_tools", server="remote") == len(ALLOWED)

    metric_lines = [line for line in fca_lines(scrape_text(agent.metrics_url)).splitlines()
                    if "server=" in line and ("_timed_echo" in line or "fca_mcp_" in line) and "_bucket" not in line]
    TRANSCRIPT.write_text(
        f"$ curl -X POST {url} -d '{body}'\n{json.dumps(response, indent=1, ensure_ascii=False)}\n"
        f"(client-side elapsed: {float(elapsed):.3f} s)\n\n"
        "tool calls:\n" + "\n".join(
            f"  {r['server']:>6} {r['name']}: {r['status']} in {r['latency_ms']:.0f} ms" for r in records) + "\n"
        "server-side run times (epoch s):\n" + "\n".join(
            f"  {c['server']:>6} started {c['started']:.3f} ended {c['ended']:.3f}" for c in (local, remote))
        + f"\n  overlap {overlap:.3f} s\n\n/metrics:\n" + "\n".join(metric_lines) + "\n", encoding="utf-8")


def test_a_server_killed_mid_call_ends_the_request_once_and_the_next_request_reconnects(agent):
    first_pid = server_pid(agent.state, "local")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(ask, agent, "[mcp-kill] Echo slowly")
        wait_for(lambda: (agent.state / "started-doomed").exists(), 30, "the call to reach the stdio server")
        os.kill(first_pid, signal.SIGKILL)
        outcome = pending.result(timeout=60)
    assert outcome.finals == 1 and outcome.error is None, outcome
    assert outcome.finish_reason == "stop"
    (record,) = outcome.trace["tool_calls"]
    assert (record["name"], record["server"], record["status"]) == ("local_timed_echo", "local", "error")
    assert "closed the connection during the call" in record["error"]
    assert "closed the connection during the call" in outcome.text  # the model was told
    assert outcome.elapsed < 30  # ended by the server's death, not by the tool's 60 s sleep

    again = ask(agent, "[mcp-revived] Echo again")
    assert again.finals == 1 and again.error is None, again
    (record,) = again.trace["tool_calls"]
    assert (record["server"], record["status"]) == ("local", "ok"), record
    (result,) = tool_results(again.trace)
    assert result["content"]["text"] == "revived" and result["content"]["pid"] != first_pid
    samples = settled(agent.metrics_url)
    assert value(samples, "fca_mcp_server_events_total", server="local", event="lost") >= 1
    assert value(samples, "fca_mcp_server_events_total", server="local", event="connected") >= 2
    assert value(samples, "fca_mcp_server_up", server="local") == 1
    with TRANSCRIPT.open("a", encoding="utf-8") as f:
        f.write(f"\nkill mid-call: stdio server pid {first_pid} killed while local_timed_echo ran\n"
                f"  responses={outcome.responses} finals={outcome.finals} error={outcome.error} "
                f"finish_reason={outcome.finish_reason} elapsed={outcome.elapsed:.2f} s\n"
                f"  answer: {outcome.text}\n"
                f"  next request: {record['status']} from pid {result['content']['pid']} "
                f"in {again.elapsed:.2f} s\n")


def test_a_cancelled_request_cancels_its_mcp_call_on_the_server(agent):
    outcome = stream_request(
        agent.grpc_url, make_inputs({"text_input": "[mcp-cancel] Echo", "max_tokens": 64, "stream": True}),
        cancel_when=lambda _outcome, _elapsed: (agent.state / "started-cancel-me").exists(), timeout=30)
    assert outcome.cancelled and outcome.finals == 0
    wait_for(lambda: (agent.state / "cancelled-cancel-me").exists(), 30, "the HTTP server to cancel the call")
    samples = settled(agent.metrics_url)
    assert value(samples, "fca_mcp_server_up", server="remote") == 1


def test_an_injected_instruction_cannot_reach_a_tool_that_is_not_allowed(agent):
    outcome = ask(agent, "[mcp-inject] Summarise example.com")
    assert outcome.finals == 1 and outcome.error is None, outcome
    calls = [(r["name"], r["status"]) for r in outcome.trace["tool_calls"]]
    assert calls == [("remote_read_web_page", "ok"), ("remote_delete_all_files", "unknown_tool")]
    assert "unknown tool 'remote_delete_all_files'" in outcome.text
    assert not (agent.state / "ran-delete_all_files").exists()


def test_invalid_nested_arguments_and_a_raising_tool_go_back_to_the_model(agent):
    nested = ask(agent, "[mcp-nested] Order")
    (record,) = nested.trace["tool_calls"]
    assert (record["status"], record["server"]) == ("invalid_args", "remote")
    assert "order.customer.email: 'ada' does not match" in record["error"]
    assert "order.items.0.quantity: 0 is less than the minimum of 1" in nested.text

    failed = ask(agent, "[mcp-fail] Fail")
    (record,) = failed.trace["tool_calls"]
    assert (record["status"], record["server"]) == ("error", "local")
    assert "failed on purpose: disk on fire" in failed.text


def test_a_request_narrows_mcp_tools(agent):
    narrowed = ask(agent, "[mcp-narrow] Echo", tools=json.dumps(["remote_timed_echo"]))
    (record,) = narrowed.trace["tool_calls"]
    assert record["status"] == "unknown_tool" and "the available tools are: remote_timed_echo" in record["error"]
    refused = ask(agent, "[mcp-narrow] Echo", tools=json.dumps(["remote_delete_all_files"]))
    assert refused.finals == 1 and "tools not offered by this server: remote_delete_all_files" in refused.error


def test_an_optional_server_is_offered_once_it_comes_up(agent):
    early = ask(agent, "[mcp-late] Echo", tools=json.dumps(["late_timed_echo"]))
    assert early.finals == 1 and "tools not offered by this server: late_timed_echo" in early.error
    assert value(settled(agent.metrics_url), "fca_mcp_server_up", server="late") == 0
    agent.late.start()

    def offered():
        outcome = ask(agent, "[mcp-late] Echo", tools=json.dumps(["late_timed_echo"]))
        return outcome if outcome.error is None else None

    outcome = wait_for(offered, 90, "the optional server's tools to be offered", interval=0.5)
    (record,) = outcome.trace["tool_calls"]
    assert (record["name"], record["server"], record["status"]) == ("late_timed_echo", "late", "ok")
    samples = settled(agent.metrics_url)
    assert value(samples, "fca_mcp_server_up", server="late") == 1
    assert value(samples, "fca_mcp_server_tools", server="late") == 1
    assert value(samples, "fca_mcp_server_events_total", server="late", event="failed") >= 1
    assert "MCP server 'late' (streamable-http) is up" in agent.log_text()


def test_a_required_server_that_is_down_fails_loading_with_a_clear_message(agent):
    from tritonclient.utils import InferenceServerException

    admin = agent.http_client()
    with pytest.raises(InferenceServerException) as caught:
        admin.load_model("fca_mcp_down")
    message = str(caught.value)
    assert (f"mcp_servers: MCP server 'offline' ({agent.offline_url}) is required but could not be used"
            in message), message
    assert admin.is_model_ready(MODEL)  # the other agent keeps serving
    assert requests.get(f"http://{agent.http_url}/v2/health/live", timeout=5).status_code == 200
