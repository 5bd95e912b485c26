"""`list_tools`: which tools a server offers, with the schemas the model sees, answered at once without an engine call.

A real tritonserver with the agent (offering tests/models/tool_modules/scripted_tools) over the scripted engine, whose
request log shows whether the engine was called.
"""

from __future__ import annotations

import json

import pytest

from function_calling_agent.scripted_engine.repository import make_scripted_engine, read_request_log
from tests.support.agent_repo import import_test_tool_module, make_agent_model
from tests.support.fca_client import http_generate, make_inputs
from tests.support.triton_server import TritonServerFactory

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def served(tmp_path_factory, hermes_tokenizer_dir):
    repo = tmp_path_factory.mktemp("list-tools-repo")
    engine_dir = make_scripted_engine(repo, {"default_turns": ["Hello."]}, hermes_tokenizer_dir)
    make_agent_model(repo, hermes_tokenizer_dir, tool_modules="scripted_tools")
    factory = TritonServerFactory(tmp_path_factory.mktemp("list-tools-logs"))
    try:
        yield factory(repo), engine_dir
    finally:
        factory.stop_all()


def offered_schemas(names=None) -> list[dict]:
    """The schemas the agent puts in its prompt: one per @tool of scripted_tools, in definition order."""
    from function_calling_agent.tools import module_tools

    specs = module_tools(import_test_tool_module("scripted_tools"))
    return [spec.openai_schema() for spec in specs if names is None or spec.name in names]


def engine_requests(engine_dir) -> int:
    return sum(1 for entry in read_request_log(engine_dir) if entry["event"] == "start")


def test_http_generate_lists_every_offered_tool_without_calling_the_engine(served):
    server, engine_dir = served
    before = engine_requests(engine_dir)
    status, body = http_generate(server.http_url, {"list_tools": True})
    assert status == 200, body
    listed = json.loads(body["tool_schemas"])
    assert listed == offered_schemas()
    assert [s["function"]["name"] for s in listed][:2] == ["get_current_stock_price", "get_company_news"]
    assert listed[0]["function"]["parameters"]["required"] == ["symbol"]
    assert "text_output" not in body and "finish_reason" not in body
    # The engine log counts requests: a normal request shows up in it, the listing did not.
    status, body = http_generate(server.http_url, {"text_input": "hi", "max_tokens": 16})
    assert status == 200 and body["text_output"] == "Hello.", body
    assert engine_requests(engine_dir) == before + 1


def test_grpc_listing_carries_the_narrowed_schemas(served):
    import numpy as np
    import tritonclient.grpc as grpcclient

    server, _ = served
    client = grpcclient.InferenceServerClient(server.grpc_url)
    results = []
    client.start_stream(callback=lambda result, error: results.append((result, error)))
    try:
        client.async_stream_infer("function_calling_agent", make_inputs(
            {"list_tools": True, "tools": json.dumps(["failing_tool", "get_company_news"])}),
            outputs=[grpcclient.InferRequestedOutput("tool_schemas")])
    finally:
        client.stop_stream()  # waits for the stream to finish
        client.close()
    assert len(results) == 1 and results[0][1] is None, results
    value = results[0][0].as_numpy("tool_schemas").reshape(-1)[0]
    assert isinstance(value, (bytes, np.bytes_))
    # Narrowed to the named tools, in the server's order.
    assert json.loads(value) == offered_schemas({"get_company_news", "failing_tool"})


@pytest.mark.parametrize("body, message", [
    ({"list_tools": True, "tools": '["get_company_news", "rm_rf"]'},
     "tools not offered by this server: rm_rf; offered tools: get_current_stock_price, get_company_news"),
    ({"list_tools": True, "text_input": "hi"}, "list_tools is answered on its own: send it without text_input"),
    ({"list_tools": True, "messages": '[{"role": "user", "content": "hi"}]'},
     "list_tools is answered on its own: send it without messages"),
    ({"list_tools": True, "tools": "get_company_news,get_current_stock_price"},
     "is not a tool name; send tool names one per element"),
    ({"text_input": "hi"}, "max_tokens is required"),
])
def test_bad_listing_requests_say_what_to_change(served, body, message):
    server, _ = served
    status, reply = http_generate(server.http_url, body)
    assert status == 400, reply
    assert message in reply["error"], reply


def test_list_tools_false_is_an_agent_request(served):
    server, _ = served
    status, body = http_generate(server.http_url, {"list_tools": False, "text_input": "hi", "max_tokens": 16})
    assert status == 200, body
    assert body["text_output"] == "Hello." and "tool_schemas" not in body
