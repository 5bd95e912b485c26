"""Relay throughput: tokens per second the agent streams to its clients vs what the same clients get from the engine
alone, on one real tritonserver, side by side in one run.

The engine is the scripted `tensorrt_llm` at 0 ms per token answering `--tokens` tokens (one per response), so the
engine's own cost per token is the floor and everything above it is the relay's. Every agent variant is loaded at
once as its own model and measured in turn, round after round (`--rounds`; the table shows medians), at each
concurrency:
  engine alone          clients call `tensorrt_llm` directly (streaming, token ids)
  agent <transport>     clients call the agent (`text_input`, stream=true), which calls the engine over gRPC or BLS;
                        coalescing off (`stream_interval` 1: one client delta per token) or on (the default), one or
                        two agent instances (`instance_group.count`)
Agent CPU per token: CPU time (user + system, from /proc) of the agent's stub processes over the window, divided by
the tokens relayed. The clients run in this process on the same cores, one asyncio loop, one gRPC stream per request;
after each window the requests in flight run to their end (never cancelled, see `measure`).

    .venv/bin/python -m bench.relay [--concurrency 1 8 32] [--tokens 1000] [--seconds 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from deploy.configure_repository import make_agent_model
from deploy.triton_launcher import TritonServer
from function_calling_agent.adapter.parameters import AgentConfig
from function_calling_agent.offline_models.hermes_tokenizer import build_hermes_tokenizer
from function_calling_agent.scripted_engine.repository import make_scripted_engine

ENGINE = "tensorrt_llm"
WORD = " the"  # one token in the offline tokenizer: an answer of N words is N tokens, countable in any delta


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str  # model name, or ENGINE for the engine alone
    label: str
    transport: str = ""
    stream_interval: int = 1
    instances: int = 1


DEFAULT_INTERVAL = AgentConfig.stream_interval
VARIANTS = (
    Variant(ENGINE, "engine alone"),
    Variant("fca_grpc", "agent, gRPC, coalescing off", "grpc", 1),
    Variant("fca_grpc_coalesced", "agent, gRPC, coalescing on", "grpc", DEFAULT_INTERVAL),
    Variant("fca_grpc_coalesced_x2", "agent, gRPC, coalescing on, 2 instances", "grpc", DEFAULT_INTERVAL, 2),
    Variant("fca_bls", "agent, BLS, coalescing off", "bls", 1),
    Variant("fca_bls_coalesced", "agent, BLS, coalescing on", "bls", DEFAULT_INTERVAL),
    Variant("fca_bls_coalesced_x2", "agent, BLS, coalescing on, 2 instances", "bls", DEFAULT_INTERVAL, 2),
)


def interval_variants(intervals) -> tuple[Variant, ...]:
    """--sweep-intervals: the engine alone and the gRPC agent at each stream_interval (how the default was chosen)."""
    return (VARIANTS[0],) + tuple(Variant(f"fca_grpc_interval_{n}", f"agent, gRPC, stream_interval {n}", "grpc", n)
                                  for n in intervals)


def build_repository(root: Path, tokens: int, variants=VARIANTS) -> tuple[Path, list[int]]:
    from transformers import AutoTokenizer

    tokenizer_dir = build_hermes_tokenizer(root / "tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    answer = WORD * tokens
    assert len(tokenizer.encode(answer, add_special_tokens=False)) == tokens, "the answer word is not one token"
    repo = root / "repository"
    repo.mkdir(parents=True)
    make_scripted_engine(repo, {"scenarios": [], "default_turns": [answer]}, tokenizer_dir, token_latency_ms=0)
    for variant in variants:
        if variant.name == ENGINE:
            continue
        make_agent_model(repo, tokenizer_dir, tool_modules="function_calling_agent.tools.finance",
                         instance_count=variant.instances, model_name=variant.name, max_context_tokens=tokens + 2048,
                         parameters={"engine_transport": variant.transport,
                                     "stream_interval": str(variant.stream_interval)})
    prompt = tokenizer.encode("<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)
    return repo, prompt


# ---- clients -------------------------------------------------------------------------------------------------------
class Counter:
    def __init__(self):
        self.tokens = 0
        self.requests = 0
        self.errors: list[str] = []


def _engine_request(prompt: list[int], tokens: int, index: int) -> dict:
    import tritonclient.grpc as grpcclient

    arrays = {"input_ids": np.array([prompt], dtype=np.int32), "input_lengths": np.array([[len(prompt)]], np.int32),
              "request_output_len": np.array([[tokens + 8]], np.int32), "streaming": np.array([[True]]),
              "exclude_input_in_output": np.array([[True]])}
    types = {np.dtype(np.int32): "INT32", np.dtype(np.bool_): "BOOL"}
    inputs = []
    for name, array in arrays.items():
        tensor = grpcclient.InferInput(name, list(array.shape), types[array.dtype])
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return {"model_name": ENGINE, "inputs": inputs, "request_id": f"relay-{index}",
            "outputs": [grpcclient.InferRequestedOutput("output_ids")],
            "parameters": {"triton_enable_empty_final_response": True}}


def _agent_request(model: str, tokens: int, index: int) -> dict:
    import tritonclient.grpc as grpcclient

    arrays = {"text_input": np.array([[b"Hello"]], dtype=np.object_), "max_tokens": np.array([[tokens + 8]], np.int32),
              "stream": np.array([[True]])}
    types = {"text_input": "BYTES", "max_tokens": "INT32", "stream": "BOOL"}
    inputs = []
    for name, array in arrays.items():
        tensor = grpcclient.InferInput(name, list(array.shape), types[name])
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return {"model_name": model, "inputs": inputs, "request_id": f"relay-{index}",
            "outputs": [grpcclient.InferRequestedOutput("text_output"),
                        grpcclient.InferRequestedOutput("finish_reason")],
            "parameters": {"triton_enable_empty_final_response": True}}


async def one_request(client, request: dict, counter: Counter, is_engine: bool) -> None:
    done = asyncio.Event()

    async def requests():
        yield request
        await done.wait()

    try:
        async for result, error in client.stream_infer(requests()):
            if error is not None:
                counter.errors.append(str(error))
                return
            if is_engine:
                ids = result.as_numpy("output_ids")
                counter.tokens += 0 if ids is None else ids.size
            else:
                text = result.as_numpy("text_output")
                if text is not None:
                    counter.tokens += sum(item.decode("utf-8").count(WORD.strip()) for item in text.reshape(-1))
            parameters = result.get_response().parameters
            if "triton_final_response" in parameters and parameters["triton_final_response"].bool_param:
                counter.requests += 1
                return
    finally:
        done.set()


async def measure(url: str, variant: Variant, concurrency: int, prompt: list[int], tokens: int,
                  warmup_s: float, seconds: float, stubs) -> dict:
    import tritonclient.grpc.aio as aioclient

    client = aioclient.InferenceServerClient(url)
    counter = Counter()
    is_engine = variant.name == ENGINE
    stop = asyncio.Event()
    index = [0]

    async def worker():
        while not stop.is_set():
            index[0] += 1
            request = (_engine_request(prompt, tokens, index[0]) if is_engine
                       else _agent_request(variant.name, tokens, index[0]))
            await one_request(client, request, counter, is_engine)

    tasks = [asyncio.ensure_future(worker()) for _ in range(concurrency)]
    await asyncio.sleep(warmup_s)
    tokens0, cpu0, wall0 = counter.tokens, stubs(), time.monotonic()
    await asyncio.sleep(seconds)
    tokens1, cpu1, wall1 = counter.tokens, stubs(), time.monotonic()
    # Requests in flight run to their end: cancelling many busy gRPC streams at once crashes tritonserver 2.51's gRPC
    # frontend (SIGSEGV or a failed ProtoBufferWriter assertion; seen here with clients of the engine alone).
    stop.set()
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=600)
    await client.close()
    relayed = tokens1 - tokens0
    return {"tokens_per_s": relayed / (wall1 - wall0), "cpu_ms_per_token": (cpu1 - cpu0) * 1000 / max(relayed, 1),
            "errors": len(counter.errors), "error": counter.errors[0] if counter.errors else ""}


# ---- processes -----------------------------------------------------------------------------------------------------
_TICK = os.sysconf("SC_CLK_TCK")


def _stub_pids(server_pid: int, model: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if parent == server_pid and any(f"/{model}/".encode() in part for part in cmdline):
            pids.append(int(entry.name))
    return pids


def _cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / _TICK


async def settle(url: str, timeout_s: float = 30.0) -> None:
    """Waits until the engine has no request left from the previous measurement (cancelled clients stop it)."""
    import requests

    metrics = url  # host:port of the metrics endpoint
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = requests.get(f"http://{metrics}/metrics", timeout=5).text
        inflight = [line for line in text.splitlines() if line.startswith("scripted_engine_inflight")]
        if inflight and all(float(line.split()[-1]) == 0 for line in inflight):
            return
        await asyncio.sleep(0.2)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--tokens", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", nargs="+", help="model names of the variants to run (default: all)")
    parser.add_argument("--log", help="keep the server log here (default: a temporary folder)")
    parser.add_argument("--sweep-intervals", type=int, nargs="+",
                        help="instead: the gRPC agent at each of these stream_interval values")
    args = parser.parse_args(argv)
    variants = interval_variants(args.sweep_intervals) if args.sweep_intervals else VARIANTS
    variants = [v for v in variants if not args.variants or v.name in args.variants]

    with tempfile.TemporaryDirectory(prefix="fca-relay-") as root:
        repo, prompt = build_repository(Path(root), args.tokens, variants)
        with TritonServer(repo, log_path=args.log or Path(root) / "server.log") as server:
            stubs = {v.name: _stub_pids(server.pid, v.name) for v in variants}
            results: dict[tuple[str, int], list[dict]] = {}
            for round_ in range(args.rounds):
                for concurrency in args.concurrency:
                    for variant in variants:
                        asyncio.run(settle(server.urls["metrics"]))
                        result = asyncio.run(measure(server.urls["grpc"], variant, concurrency, prompt, args.tokens,
                                                     args.warmup, args.seconds,
                                                     lambda name=variant.name: _cpu_seconds(stubs[name])))
                        results.setdefault((variant.name, concurrency), []).append(result)
                        print(f"round {round_ + 1} c={concurrency} {variant.label}: "
                              f"{result['tokens_per_s']:.0f} tokens/s, {result['cpu_ms_per_token']:.3f} ms CPU/token"
                              + (f", {result['errors']} errors ({result['error'][:80]})" if result["errors"] else ""),
                              flush=True)
    print()
    print(f"Relay: {args.tokens}-token answers from a 0 ms/token scripted engine; median of {args.rounds} rounds of "
          f"{args.seconds:g} s; the engine's own CPU per token is in the engine-alone row.")
    print()
    print("| variant | " + " | ".join(f"c={c} tokens/s (x engine)" for c in args.concurrency)
          + " | stub CPU ms/token (c=" + str(args.concurrency[-1]) + ") |")
    print("|---|" + "---|" * len(args.concurrency) + "---|")
    for variant in variants:
        cells = []
        for concurrency in args.concurrency:
            rate = statistics.median(r["tokens_per_s"] for r in results[(variant.name, concurrency)])
            base = statistics.median(r["tokens_per_s"] for r in results[(ENGINE, concurrency)]) \
                if (ENGINE, concurrency) in results else None
            cells.append(f"{rate:,.0f}" + (f" ({rate / base:.2f}x)" if base and variant.name != ENGINE else ""))
        cpu = statistics.median(r["cpu_ms_per_token"] for r in results[(variant.name, args.concurrency[-1])])
        print(f"| {variant.label} | " + " | ".join(cells) + f" | {cpu:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
