"""What the OpenAI gateway adds per request and per streamed token, side by side with a direct gRPC client, in one run.

    .venv/bin/python -m bench.gateway_overhead [--requests 200] [--stream-requests 30] [--tokens 300]

One tritonserver (scripted engine at 0 ms per token, so the agent and the transport are all that is measured), the
agent over the offline Hermes-shaped tokenizer, and the gateway process in front of it. Two clients, interleaved
request by request so machine load hits both alike:
  direct   tritonclient.grpc streaming to function_calling_agent (what the gateway itself does)
  gateway  HTTP to /v1/chat/completions with `requests` (SSE read line by line when streaming); the openai client's
           own parsing is left out, it is the caller's cost with any server
Measured: a short non-streamed answer (per-request overhead), and a long streamed answer (time to first token, and
the per-token cost: (total - first token) / (deltas - 1)). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import queue
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import requests

from deploy.configure_repository import make_agent_model
from deploy.triton_launcher import TritonServer
from function_calling_agent.gateway.process import GatewayProcess
from function_calling_agent.offline_models.hermes_tokenizer import build_hermes_tokenizer
from function_calling_agent.scripted_engine.repository import make_scripted_engine

MODEL = "function_calling_agent"
SHORT = "OK."
WORDS = ("alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "theta")


def long_answer(tokenizer, tokens: int) -> str:
    text, i = "", 0
    while len(tokenizer.encode(text, add_special_tokens=False)) < tokens:
        text += (" " if text else "") + WORDS[i % len(WORDS)]
        i += 1
    return text


def direct(grpc_url: str, prompt: str, stream: bool, max_tokens: int) -> tuple[float, float, int]:
    """(seconds to the final response, seconds to the first text delta, text deltas) over one gRPC stream."""
    import tritonclient.grpc as grpcclient

    values = {"messages": json.dumps([{"role": "user", "content": prompt}]), "max_tokens": max_tokens,
              "stream": stream}
    inputs = []
    for name, value in values.items():
        if isinstance(value, str):
            array, kind = np.array([[value.encode()]], dtype=np.object_), "BYTES"
        elif isinstance(value, bool):
            array, kind = np.array([[value]], dtype=np.bool_), "BOOL"
        else:
            array, kind = np.array([[value]], dtype=np.int32), "INT32"
        tensor = grpcclient.InferInput(name, list(array.shape), kind)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    client = grpcclient.InferenceServerClient(grpc_url)
    events: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: events.put((result, error)))
    start = time.perf_counter()
    first, deltas = None, 0
    try:
        client.async_stream_infer(MODEL, inputs)
        while True:
            result, error = events.get(timeout=60)
            if error is not None:
                raise RuntimeError(str(error))
            if result.as_numpy("finish_reason") is not None:
                return time.perf_counter() - start, (first or time.perf_counter()) - start, deltas
            if first is None:
                first = time.perf_counter()
            deltas += 1
    finally:
        client.stop_stream()
        client.close()


def gateway(session: requests.Session, base_url: str, prompt: str, stream: bool,
            max_tokens: int) -> tuple[float, float, int]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "stream": stream}
    start = time.perf_counter()
    response = session.post(base_url + "/chat/completions", json=body, stream=stream, timeout=60)
    response.raise_for_status()
    if not stream:
        response.json()
        elapsed = time.perf_counter() - start
        return elapsed, elapsed, 0
    first, deltas = None, 0
    for line in response.iter_lines():
        if not line.startswith(b"data: "):
            continue
        if line == b"data: [DONE]":
            break
        delta = json.loads(line[6:])["choices"][0]["delta"]
        if delta.get("content"):
            if first is None:
                first = time.perf_counter()
            deltas += 1
    return time.perf_counter() - start, (first or time.perf_counter()) - start, deltas


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200, help="short non-streamed requests per client")
    parser.add_argument("--stream-requests", type=int, default=30, help="long streamed requests per client")
    parser.add_argument("--tokens", type=int, default=300, help="tokens in the long streamed answer")
    args = parser.parse_args(argv)

    from transformers import AutoTokenizer

    work = Path(tempfile.mkdtemp(prefix="fca-gateway-bench-"))
    tokenizer_dir = build_hermes_tokenizer(work / "tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    answer = long_answer(tokenizer, args.tokens)
    script = {"scenarios": [{"name": "long", "match": "[long]", "turns": [answer]}], "default_turns": [SHORT]}
    repo = work / "repository"
    make_scripted_engine(repo, script, tokenizer_dir, token_latency_ms=0)
    make_agent_model(repo, tokenizer_dir, tool_modules="")
    server = TritonServer(repo, log_path=work / "server.log")
    server.launch(300)
    proxy = GatewayProcess(triton_url=server.urls["grpc"], log_path=str(work / "gateway.log"))
    try:
        proxy.start()
        session = requests.Session()
        results: dict[str, dict[str, list]] = {"direct": {}, "gateway": {}}

        def measure(label: str, prompt: str, stream: bool, count: int, max_tokens: int) -> None:
            for client in results:
                results[client][label] = []
            for i in range(count + 3):  # 3 warm-up rounds, not counted
                for client in (("direct", "gateway") if i % 2 == 0 else ("gateway", "direct")):
                    if client == "direct":
                        sample = direct(server.urls["grpc"], prompt, stream, max_tokens)
                    else:
                        sample = gateway(session, proxy.base_url, prompt, stream, max_tokens)
                    if i >= 3:
                        results[client][label].append(sample)

        measure("short", "hello", False, args.requests, 64)
        measure("long", "[long] tell me", True, args.stream_requests, args.tokens + 16)
    finally:
        proxy.stop()
        server.stop()

    def p50(label, client, index):
        return statistics.median(s[index] for s in results[client][label]) * 1000

    def mean_per_token(label, client):
        # the streaming rate after the first token: (total - first) / (deltas - 1)
        return statistics.fmean((s[0] - s[1]) / max(s[2] - 1, 1) for s in results[client][label]) * 1000

    tokens = statistics.median(s[2] for s in results["gateway"]["long"])
    direct_tokens = statistics.median(s[2] for s in results["direct"]["long"])
    rows = [
        ("Short answer, not streamed: latency p50", p50("short", "direct", 0), p50("short", "gateway", 0), "ms"),
        ("Long answer, streamed: time to first token p50", p50("long", "direct", 1), p50("long", "gateway", 1),
         "ms"),
        (f"Long answer, streamed: total p50 ({tokens:.0f} deltas)", p50("long", "direct", 0),
         p50("long", "gateway", 0), "ms"),
        ("Long answer, streamed: time per token after the first (mean)", mean_per_token("long", "direct"),
         mean_per_token("long", "gateway"), "ms"),
    ]
    print(f"\nGateway overhead ({args.requests} short and {args.stream_requests} long requests per client, "
          f"interleaved; scripted engine at 0 ms/token; deltas direct {direct_tokens:.0f} / gateway {tokens:.0f})\n")
    print("| measurement | direct gRPC | via gateway | gateway adds |")
    print("|---|---|---|---|")
    for name, base, via, unit in rows:
        digits = 3 if "per token" in name else 1
        print(f"| {name} | {base:.{digits}f} {unit} | {via:.{digits}f} {unit} | {via - base:+.{digits}f} {unit} "
              f"({(via / base - 1) * 100:+.0f} %) |")


if __name__ == "__main__":
    main()
