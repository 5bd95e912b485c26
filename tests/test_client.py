"""client/client.py against a real tritonserver running the agent over the scripted engine (integration)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from deploy.triton_launcher import free_port
from function_calling_agent.scripted_engine.repository import make_scripted_engine, read_request_log
from tests.support.agent_repo import make_agent_model
from tests.support.fca_client import settled
from tests.support.triton_server import TritonServerFactory

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parent.parent
CLIENT = REPO_ROOT / "client" / "client.py"

RIVIAN_PROMPT = "Give me Rivian (RIVN) news and stock price"
TWO_CALLS = (
    '<tool_call>\n{"name": "get_current_stock_price", "arguments": {"symbol": "RIVN"}}\n</tool_call>\n'
    '<tool_call>\n{"name": "get_company_news", "arguments": {"symbol": "RIVN"}}\n</tool_call>'
)
SCRIPT = {
    "scenarios": [
        {"name": "rivian", "match": "Rivian", "turns": [TWO_CALLS, "RIVN trades at 12.34 USD; news: {tool_response}"]},
        {"name": "slow", "match": "SLOWLY", "token_latency_ms": 100, "turns": ["This answer is long and slow. " * 20]},
        {"name": "chat", "match": "[chat]", "turns": ["Which company?", "Rivian it is."]},
    ],
    "default_turns": ["Hello there."],
}
EXPECTED_ANSWER = ('RIVN trades at 12.34 USD; news: {"name": "get_company_news", '
                   '"content": [{"title":"RIVN ships more trucks"')


@pytest.fixture(scope="module")
def server(tmp_path_factory, hermes_tokenizer_dir):
    repo = tmp_path_factory.mktemp("client-repo")
    engine_dir = make_scripted_engine(repo, SCRIPT, hermes_tokenizer_dir, token_latency_ms=1)
    make_agent_model(repo, hermes_tokenizer_dir)
    factory = TritonServerFactory(tmp_path_factory.mktemp("client-logs"))
    running = factory(repo)
    running.engine_dir = engine_dir
    try:
        yield running
    finally:
        factory.stop_all()


def run_client(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CLIENT), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO_ROOT)


def url_for(server, protocol: str) -> str:
    return server.grpc_url if protocol == "grpc" else server.http_url


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_streaming_prints_the_answer_and_nothing_else(server, protocol):
    done = run_client("-i", protocol, "-u", url_for(server, protocol), "--streaming", "--output-len", "1000",
                      "--prompt", RIVIAN_PROMPT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(EXPECTED_ANSWER)
    assert "<tool_call>" not in done.stdout and done.stderr == ""


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_non_streaming_prints_one_answer(server, protocol):
    done = run_client("-i", protocol, "-u", url_for(server, protocol), "-p", RIVIAN_PROMPT, "-o", "500")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(EXPECTED_ANSWER) and done.stdout.count("RIVN trades at") == 1


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_verbose_prints_the_tool_trace_after_the_answer(server, protocol):
    done = run_client("-i", protocol, "-u", url_for(server, protocol), "-S", "-v", "-p", RIVIAN_PROMPT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(EXPECTED_ANSWER)
    assert "--- tool trace ---" in done.stderr and "--- tool trace ---" not in done.stdout
    assert re.search(r'turn 0: get_current_stock_price\(\{"symbol": "RIVN"\}\) -> ok', done.stderr)
    assert re.search(r'turn 0: get_company_news\(\{"symbol": "RIVN"\}\) -> ok', done.stderr)
    assert "finish_reason: stop" in done.stderr
    usage = json.loads(re.search(r"^usage: (.*)$", done.stderr, re.M).group(1))
    assert usage["engine_turns"] == 2 and usage["tool_calls"] == 2


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_server_down_gives_one_line_and_exit_2(protocol):
    port = free_port()
    done = run_client("-i", protocol, "-u", f"127.0.0.1:{port}", "-p", "hi")
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot reach Triton at 127.0.0.1:{port}: ")


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_bad_request_gives_the_servers_message_and_exit_1(server, protocol):
    done = run_client("-i", protocol, "-u", url_for(server, protocol), "-p", "hi", "--output-len", "0")
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: max_tokens must be between 1 and"), done.stderr


def test_unknown_model_is_a_server_error(server):
    done = run_client("-u", server.grpc_url, "-p", "hi", "--model-name", "no_such_model")
    assert done.returncode == 1 and "no_such_model" in done.stderr and done.stderr.startswith("error: ")


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_tools_narrows_the_servers_tools(server, protocol):
    done = run_client("-i", protocol, "-u", url_for(server, protocol), "-v", "--tools", "get_company_news",
                      "-p", RIVIAN_PROMPT)
    assert done.returncode == 0, done.stderr
    # The model still asks for the price; the server now offers only the news tool.
    assert re.search(r"turn 0: get_current_stock_price\(.*\) -> unknown_tool in [\d.]+ ms: unknown tool "
                     r"'get_current_stock_price'; the available tools are: get_company_news$", done.stderr, re.M)
    assert re.search(r"turn 0: get_company_news\(.*\) -> ok", done.stderr), done.stderr


HISTORY = [{"role": "user", "content": "[chat] Which stock should I look at?"},
           {"role": "assistant", "content": "Which company?"}]


@pytest.mark.parametrize("protocol, source", [("grpc", "file"), ("http", "file"), ("grpc", "json"), ("http", "stdin")])
def test_messages_continue_a_conversation(server, protocol, source, tmp_path):
    history = tmp_path / "history.json"
    history.write_text(json.dumps({"messages": HISTORY}), encoding="utf-8")  # a saved tool_trace has this shape
    value = {"file": str(history), "json": json.dumps(HISTORY), "stdin": "-"}[source]
    done = subprocess.run([sys.executable, str(CLIENT), "-i", protocol, "-u", url_for(server, protocol), "-v",
                           "--messages", value, "-p", "Rivian."], capture_output=True, text=True, timeout=60,
                          cwd=REPO_ROOT, input=json.dumps(HISTORY) if source == "stdin" else None)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "Rivian it is.\n"  # the engine's second turn: it saw the earlier assistant message
    trace = json.loads(done.stderr[done.stderr.index("{"):done.stderr.index("\nfinish_reason:")])
    assert trace["messages"] == HISTORY + [{"role": "user", "content": "Rivian."},
                                           {"role": "assistant", "content": "Rivian it is."}]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_save_trace_writes_what_messages_continues_from(server, protocol, tmp_path):
    # The README's two-step conversation: save the first request's trace, continue from the file.
    history = tmp_path / "history.json"
    first = run_client("-i", protocol, "-u", url_for(server, protocol), "--messages", json.dumps(HISTORY[:1]),
                       "--save-trace", str(history))
    assert first.returncode == 0, first.stderr
    saved = json.loads(history.read_text(encoding="utf-8"))
    assert saved["messages"] == HISTORY  # the scripted engine's first chat turn answers "Which company?"
    second = run_client("-i", protocol, "-u", url_for(server, protocol), "--messages", str(history), "-p", "Rivian.")
    assert second.returncode == 0, second.stderr
    assert second.stdout == "Rivian it is.\n"


@pytest.mark.parametrize("args, message", [
    (["--messages", "not json and not a file"], "--messages: not a file, and not valid JSON"),
    (["--messages", '{"role": "user"}'], "--messages must hold a JSON list"),
    ([], "give --prompt, --messages, or both"),
])
def test_bad_messages_or_no_question_is_a_usage_error(args, message):
    done = run_client("-u", f"127.0.0.1:{free_port()}", *args)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines()[-1].startswith(f"client.py: error: {message}"), done.stderr


def _cancelled_count(server) -> float:
    text = urllib.request.urlopen(f"http://{server.metrics_url}/metrics", timeout=5).read().decode()
    match = re.search(r'fca_requests_total\{model="function_calling_agent",outcome="cancelled"\} (\S+)', text)
    return float(match.group(1)) if match else 0.0


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_ctrl_c_cancels_the_request_on_the_server(server, protocol):
    settled(server.metrics_url)  # the other protocol's cancelled request is counted by now
    before = _cancelled_count(server)
    known = {e["request_id"] for e in read_request_log(server.engine_dir)}
    process = subprocess.Popen(
        [sys.executable, str(CLIENT), "-i", protocol, "-u", url_for(server, protocol), "-S", "-p", "answer SLOWLY"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO_ROOT)
    try:
        first = process.stdout.read(4)  # tokens are arriving: the slow turn is in flight
        assert first == b"This"
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, err
    assert b"interrupted" in err
    deadline = time.monotonic() + 10
    ended = []
    while time.monotonic() < deadline:
        ended = [e for e in read_request_log(server.engine_dir)
                 if e["event"] == "end" and e["request_id"] not in known and e.get("scenario") == "slow"]
        if ended and _cancelled_count(server) > before:
            break
        time.sleep(0.1)
    # The engine turn ended early (the agent sent TRT-LLM's stop request) and the agent counted a cancellation.
    assert ended and ended[0]["end"] in ("stopped", "cancelled") and ended[0]["tokens_sent"] < 100
    assert _cancelled_count(server) == before + 1
