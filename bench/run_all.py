"""Run every benchmark against real tritonservers and write bench/results/report.md plus PNG charts.

    python -m bench.run_all [--tiny] [--out bench/results] [--keep-work DIR]

Sections (bench/README.md explains each):
  1. seed-style client loop vs function_calling_agent, same conversations, 0 ms and 20 ms client-server RTT
  2. one turn with two independent tool calls: sequential (tool_workers=1) vs concurrent tool execution
  3. throughput and p50/p99 latency at concurrency 1, 8, 32, 64 on one agent instance (perf_analyzer)
  4. the agent's overhead per engine turn (end-to-end minus engine and tool time on the critical path)
  5. prefilled tokens per turn with and without token-exact prefix reuse on the CPU engine

`--tiny` is the CI setting: fast scripted timings, one repetition, concurrency 1 and 8 only (< 2 minutes).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent

from bench import latency, perf, report
from bench.repo import AGENT, AGENT_SEQUENTIAL_TOOLS, ENGINE, EngineTiming, build_bench_repository
from bench.scenarios import SCENARIOS, TWO_TOOLS

DEFAULT_OUT = BENCH_DIR / "results"
ONE_WAY_MS = 10.0  # the proxy's delay each way: 20 ms round trip


@dataclasses.dataclass(frozen=True)
class Settings:
    name: str
    timing: EngineTiming
    repeats: int
    rtts_ms: tuple[float, ...]
    concurrencies: tuple[int, ...]
    request_counts: dict  # concurrency -> perf_analyzer requests per measurement window
    max_tokens: int = 512
    prefix_tokens: int = 16  # tokens the CPU engine generates per turn


FULL = Settings(
    name="full",
    timing=EngineTiming(token_latency_ms=5.0, prefill_ms_per_token=0.05, tool_latency_ms=100.0),
    repeats=7,
    rtts_ms=(0.0, 2 * ONE_WAY_MS),
    concurrencies=(1, 8, 32, 64),
    request_counts={1: 4, 8: 16, 32: 32, 64: 64},
)
TINY = Settings(
    name="tiny",
    timing=EngineTiming(token_latency_ms=1.0, prefill_ms_per_token=0.01, tool_latency_ms=20.0),
    repeats=1,
    rtts_ms=(0.0, 2 * ONE_WAY_MS),
    concurrencies=(1, 8),
    request_counts={1: 2, 8: 16},
    prefix_tokens=4,
)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def section_latency(server, bench, tools, settings: Settings) -> list[latency.RunRecord]:
    import tritonclient.grpc as grpcclient

    from bench.rtt_proxy import DelayProxy
    from bench.seed_client_loop import SeedClientLoop

    records: list[latency.RunRecord] = []
    for rtt in settings.rtts_ms:
        proxy = DelayProxy(server.host, server.grpc_port, rtt / 2).start() if rtt else None
        url = proxy.address if proxy else server.urls["grpc"]
        try:
            client = grpcclient.InferenceServerClient(url)
            client.is_server_live()  # connect now: the TCP handshake is not part of any measurement
            seed = SeedClientLoop(url, bench.tokenizer_dir, tools, max_tokens=settings.max_tokens)
            seed.client.is_server_live()
            for scenario in SCENARIOS:  # warm-up, not recorded
                latency.run_agent(client, AGENT, scenario, rtt, -1, settings.timing, settings.max_tokens)
                latency.run_seed(seed, scenario, rtt, -1, settings.timing)
            for rep in range(settings.repeats):
                for scenario in SCENARIOS:
                    runs = [lambda: latency.run_seed(seed, scenario, rtt, rep, settings.timing),
                            lambda: latency.run_agent(client, AGENT, scenario, rtt, rep, settings.timing,
                                                      settings.max_tokens)]
                    for run in (runs if rep % 2 == 0 else runs[::-1]):  # alternate who goes first
                        records.append(run())
            seed.close()
            client.close()
        finally:
            if proxy:
                proxy.stop()
        log(f"latency at {rtt:g} ms RTT: {settings.repeats} x {len(SCENARIOS)} conversations per path")
    return records


def section_tools(server, settings: Settings) -> list[latency.RunRecord]:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.urls["grpc"])
    records = []
    for model in (AGENT, AGENT_SEQUENTIAL_TOOLS):
        latency.run_agent(client, model, TWO_TOOLS, 0.0, -1, settings.timing, settings.max_tokens)
    for rep in range(settings.repeats):
        for model in (AGENT, AGENT_SEQUENTIAL_TOOLS):
            records.append(latency.run_agent(client, model, TWO_TOOLS, 0.0, rep, settings.timing,
                                             settings.max_tokens))
    client.close()
    log("sequential vs concurrent tool calls done")
    return records


def section_perf(server, bench, tools, settings: Settings, work: Path) -> dict:
    from transformers import AutoTokenizer

    from bench.conversation import scripted_turn_prompts
    from function_calling_agent.chat_format import ChatFormat

    url = server.urls["grpc"]
    scenario = TWO_TOOLS
    agent_data = perf.agent_input_data(work / "perf_agent_input.json", scenario.prompt, settings.max_tokens)
    points = []
    for concurrency in settings.concurrencies:
        point = perf.run_point(url, AGENT, agent_data, concurrency, settings.request_counts[concurrency], work,
                               server_pid=server.pid)
        log(f"perf_analyzer {AGENT} c={concurrency}: {point.throughput:.2f} req/s, p50 {point.p50_ms:.0f} ms, "
            f"p99 {point.p99_ms:.0f} ms{' ERROR ' + point.error if point.error else ''}")
        points.append(point)
    # The scripted engine's own ceiling on this machine: the same engine requests an agent run makes (both turns of
    # the scenario, token-exact), sent straight to the engine at the highest concurrency.
    chat = ChatFormat(AutoTokenizer.from_pretrained(str(bench.tokenizer_dir)))
    prompts = scripted_turn_prompts(chat, tools, scenario)
    entries = []
    for i, prompt in enumerate(prompts):
        path = perf.engine_input_data(work / f"perf_engine_input_{i}.json", prompt, settings.max_tokens, chat.end_id)
        entries.append(json.loads(path.read_text(encoding="utf-8"))["data"][0])
    engine_data = work / "perf_engine_input.json"
    engine_data.write_text(json.dumps({"data": entries}), encoding="utf-8")
    top = max(settings.concurrencies)
    engine_point = perf.run_point(url, ENGINE, engine_data, top, settings.request_counts[top] * len(prompts), work,
                                  label="engine_only", server_pid=server.pid)
    log(f"perf_analyzer {ENGINE} alone c={top}: {engine_point.throughput:.2f} engine req/s")
    engine_cap = engine_point.throughput / len(prompts) if engine_point.throughput else None
    return {
        "scenario": scenario.name,
        "points": [dataclasses.asdict(p) for p in points],
        "engine_point": dataclasses.asdict(engine_point),
        "engine_requests_per_agent_request": len(prompts),
        "engine_cap_agent_rps": engine_cap,
    }


def section_prefix(bench, tools, settings: Settings, work: Path) -> dict:
    from bench.prefix_reuse import measure_prefix_reuse

    result = measure_prefix_reuse(work / "prefix", bench.tokenizer_dir, tools, work,
                                  max_tokens=settings.prefix_tokens)
    log("prefix reuse on the CPU engine done")

    def rows(measures):
        return [{"turn": m.turn + 1, "prompt_tokens": m.prompt_tokens, "reused_tokens": m.reused_tokens,
                 "prefilled_tokens": m.prefilled_tokens, "first_token_ms": m.first_token_ms,
                 "generated_tokens": len(m.generated)} for m in measures]

    return {
        # Greedy decoding: reuse must not change what the engine generates.
        "same_generation": [m.generated for m in result.with_reuse] == [m.generated for m in result.without_reuse],
        "with_reuse": rows(result.with_reuse),
        "without_reuse": rows(result.without_reuse),
        "text_retokenized": rows(result.text_retokenized),
        "generated_per_turn": result.generated_per_turn,
    }


def run(settings: Settings, out: Path, work: Path) -> dict:
    from bench.seed_client_loop import load_tools
    from deploy.triton_launcher import TritonServer
    from function_calling_agent.scripted_engine.repository import read_request_log

    started = time.monotonic()
    load_before = os.getloadavg()[0]
    out.mkdir(parents=True, exist_ok=True)
    bench = build_bench_repository(work / "bench", settings.timing)
    tools = load_tools(bench.tools_dir)  # bench_tools, as the agent loads them
    server = TritonServer(bench.repository, log_path=work / "server_bench.log")
    log(f"starting tritonserver with {bench.repository}")
    try:
        server.launch(300)
        version = server.server_metadata().get("version", "?")
        log(f"tritonserver {version} ready after {time.monotonic() - started:.0f} s")
        latency_records = section_latency(server, bench, tools, settings)
        tool_records = section_tools(server, settings)
        perf_results = section_perf(server, bench, tools, settings, work)
    finally:
        server.stop()
    engine_log = read_request_log(bench.engine_dir)
    latency.attach_engine_time(latency_records + tool_records, engine_log, settings.timing)
    prefix_results = section_prefix(bench, tools, settings, work)

    results = {
        "settings": {
            "name": settings.name,
            "timing": dataclasses.asdict(settings.timing),
            "repeats": settings.repeats,
            "rtts_ms": list(settings.rtts_ms),
            "concurrencies": list(settings.concurrencies),
            "max_tokens": settings.max_tokens,
            "tritonserver": version,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
            "date": time.strftime("%Y-%m-%d %H:%M"),
        },
        "scenarios": [{"name": s.name, "prompt": s.prompt, "engine_turns": s.engine_turns,
                       "tool_rounds": list(s.tool_rounds), "description": s.description} for s in SCENARIOS],
        "latency": [r.as_dict() for r in latency_records],
        "tools": [r.as_dict() for r in tool_records],
        "perf": perf_results,
        "prefix": prefix_results,
    }
    results["settings"]["wall_s"] = round(time.monotonic() - started, 1)
    # Other jobs on the machine skew every number here: the 1-minute load average before and after the run says so.
    results["settings"]["load_average"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    (out / "results.json").write_text(json.dumps(results, separators=(",", ":")), encoding="utf-8")
    summary = report.write_report(results, out)
    log(f"done in {results['settings']['wall_s']:.0f} s: {out / 'report.md'}")
    print(summary)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run_all", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="CI setting: fast timings, few requests (< 2 min)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results folder (default {DEFAULT_OUT})")
    parser.add_argument("--keep-work", type=Path, default=None,
                        help="keep repositories, server logs and perf_analyzer CSVs in this folder")
    args = parser.parse_args(argv)
    settings = TINY if args.tiny else FULL
    if args.keep_work:
        work = args.keep_work.resolve()
        work.mkdir(parents=True, exist_ok=True)
    else:
        work = Path(tempfile.mkdtemp(prefix="fca-bench-"))
    try:
        run(settings, args.out.resolve(), work)
    finally:
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
