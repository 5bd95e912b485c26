"""The test harness itself: offline tokenizer builder and a real tritonserver with a decoupled Python model."""

from __future__ import annotations

import json
import textwrap
import time

import numpy as np
import pytest
import requests

from function_calling_agent.offline_models.hermes_tokenizer import SPECIAL_TOKENS, build_hermes_tokenizer

ECHO_CONFIG = """
name: "echo_stream"
backend: "python"
max_batch_size: 0
model_transaction_policy { decoupled: true }
input [ { name: "text_input", data_type: TYPE_STRING, dims: [ 1 ] } ]
output [
  { name: "text_output", data_type: TYPE_STRING, dims: [ 1 ] },
  { name: "index", data_type: TYPE_INT32, dims: [ 1 ] }
]
instance_group [ { kind: KIND_CPU, count: 1 } ]
"""

ECHO_MODEL = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            text = pb_utils.get_input_tensor_by_name(request, "text_input").as_numpy().reshape(-1)[0]
            if isinstance(text, bytes):
                text = text.decode("utf-8")
            for index in range(3):
                out = np.array([f"{text}#{index}".encode("utf-8")], dtype=np.object_)
                sender.send(pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor("text_output", out),
                    pb_utils.Tensor("index", np.array([index], dtype=np.int32)),
                ]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
'''


@pytest.fixture
def echo_repository(tmp_path):
    model_dir = tmp_path / "repo" / "echo_stream"
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text(ECHO_CONFIG, encoding="utf-8")
    (model_dir / "1" / "model.py").write_text(textwrap.dedent(ECHO_MODEL), encoding="utf-8")
    return tmp_path / "repo"


@pytest.mark.integration
def test_decoupled_echo_streams_over_grpc_and_http(triton_server_factory, echo_repository):
    import queue

    import tritonclient.grpc as grpcclient

    server = triton_server_factory(
        echo_repository,
        model_control_mode="explicit",
        load_models=["echo_stream"],
        backend_config=["python,thread-pool-size=16"],
    )
    assert server.pid > 0
    assert server.http_client().is_model_ready("echo_stream")

    responses: queue.Queue = queue.Queue()
    client = server.grpc_client()
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    text_input = grpcclient.InferInput("text_input", [1], "BYTES")
    text_input.set_data_from_numpy(np.array(["héllo 株価".encode("utf-8")], dtype=np.object_))
    client.async_stream_infer("echo_stream", [text_input], request_id="r1", enable_empty_final_response=True)
    texts, final_seen = [], False
    deadline = time.monotonic() + 30
    while not final_seen and time.monotonic() < deadline:
        result, error = responses.get(timeout=30)
        assert error is None, error
        response = result.get_response()
        if response.parameters["triton_final_response"].bool_param:
            final_seen = True
        if response.outputs:
            texts.append(result.as_numpy("text_output")[0].decode("utf-8"))
    client.stop_stream()
    assert final_seen
    assert texts == ["héllo 株価#0", "héllo 株価#1", "héllo 株価#2"]

    with requests.post(
        f"http://{server.http_url}/v2/models/echo_stream/generate_stream",
        json={"text_input": "ping"},
        stream=True,
        timeout=30,
    ) as response:
        assert response.status_code == 200
        events = [
            json.loads(line[len("data:"):])
            for line in response.iter_lines(decode_unicode=True)
            if line and line.startswith("data:")
        ]
    assert [e["text_output"] for e in events] == ["ping#0", "ping#1", "ping#2"]
    assert [e["index"] for e in events] == [0, 1, 2]

    metrics = requests.get(f"http://{server.metrics_url}/metrics", timeout=10).text
    assert 'nv_inference_request_success{model="echo_stream"' in metrics
    assert "echo_stream" in server.log_text()


@pytest.mark.integration
def test_ports_taken_by_another_server_are_never_reported_ready(triton_server_factory, echo_repository, tmp_path,
                                                                monkeypatch):
    """Another server already answers on every port this one was given: this one fails to bind and exits, and until
    then the other's endpoints must not pass for its own. launch() then picks new ports."""
    import deploy.triton_launcher as launcher

    other = triton_server_factory(echo_repository)
    taken = (other.server.http_port, other.server.grpc_port, other.server.metrics_port)
    clash = launcher.TritonServer(echo_repository, *taken, log_path=tmp_path / "clash.log")
    try:
        with pytest.raises(launcher.PortInUse):
            clash.start().wait_ready(timeout=60)
    finally:
        clash.stop()

    picks, real_free_port = iter(taken), launcher.free_port  # the first picks collide; the retry's are free
    monkeypatch.setattr(launcher, "free_port", lambda host="127.0.0.1": next(picks, None) or real_free_port(host))
    moved = launcher.TritonServer(echo_repository, log_path=tmp_path / "moved.log")
    try:
        moved.launch(timeout=60)
        assert not {moved.http_port, moved.grpc_port, moved.metrics_port} & set(taken)
        assert "already in use" in moved.log_text()  # the first start did collide
        assert requests.get(f"http://{moved.urls['http']}/v2/models/echo_stream/ready", timeout=5).status_code == 200
    finally:
        moved.stop()


def test_hermes_tokenizer_shape(hermes_tokenizer_dir, tmp_path):
    from tokenizers.decoders import DecodeStream
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hermes_tokenizer_dir)
    assert 1500 <= len(tok) <= 2100
    for special in SPECIAL_TOKENS:
        ids = tok(special, add_special_tokens=False).input_ids
        assert ids == [tok.convert_tokens_to_ids(special)], special
    assert tok.bos_token == "<|begin_of_text|>"
    assert tok.eos_token == "<|im_end|>"
    assert tok.pad_token == "<|end_of_text|>"
    assert tok("hi").input_ids[0] == tok.bos_token_id

    im_start = tok.convert_tokens_to_ids("<|im_start|>")
    split = tok("<|im_start|>", split_special_tokens=True, add_special_tokens=False).input_ids
    assert split != [im_start] and im_start not in split

    text = "株価 €5 😀"
    stream = DecodeStream(skip_special_tokens=False)
    pieces = [stream.step(tok._tokenizer, i) for i in tok(text, add_special_tokens=False).input_ids]
    assert None in pieces  # some multi-byte characters do span several tokens
    assert "".join(p for p in pieces if p) == text

    prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"

    # Deterministic, cached, and without a template on request.
    again = build_hermes_tokenizer(tmp_path / "again")
    with open(f"{hermes_tokenizer_dir}/tokenizer.json", "rb") as a, open(f"{again}/tokenizer.json", "rb") as b:
        assert a.read() == b.read()
    assert build_hermes_tokenizer(again) == str(again)
    bare = AutoTokenizer.from_pretrained(build_hermes_tokenizer(tmp_path / "bare", with_chat_template=False))
    assert not bare.chat_template


def test_tiny_llama_generates(tiny_llama_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    assert model.config.vocab_size == len(tok)
    assert model.generation_config.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    ids = tok("What is the stock price?", return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=4, do_sample=False, min_new_tokens=4)
    assert out.shape[1] == ids.shape[1] + 4
