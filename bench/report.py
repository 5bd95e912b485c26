"""Markdown report and PNG charts from the benchmark results (bench/run_all.py writes results.json).

    python -m bench.report bench/results/results.json [--out bench/results]   # re-render without re-running
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

from bench.latency import SEED

AGENT = "function_calling_agent"
AGENT_SEQ = "function_calling_agent_seqtools"

CHARTS = {
    "latency": "latency_seed_vs_agent.png",
    "tools": "tool_calls_sequential_vs_concurrent.png",
    "scaling": "throughput_scaling.png",
    "overhead": "overhead_per_turn.png",
    "prefix": "prefix_reuse.png",
}

# Summary rows, in order; tests look for these labels.
ROW_E2E = "E2E latency, {rtt:g} ms RTT"
ROW_TTFT = "Time to first answer token, {rtt:g} ms RTT"
ROW_OUTSIDE = "E2E minus engine time, {rtt:g} ms RTT"
ROW_TOOLS = "Two tool calls in one turn, E2E"
ROW_THROUGHPUT = "Throughput at concurrency {c}"
ROW_OVERHEAD = "Agent overhead per engine turn"
ROW_PREFIX = "Prefilled tokens, 3-turn conversation"


# ------------------------------------------------------------------------------------------------------- statistics
def _median(values):
    values = sorted(values)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def _records(results: dict, section: str, path: str, scenario: Optional[str] = None,
             rtt: Optional[float] = None) -> list[dict]:
    return [r for r in results[section] if r["path"] == path and (scenario is None or r["scenario"] == scenario)
            and (rtt is None or r["rtt_ms"] == rtt)]


def _stat(results, section, path, key, scenario=None, rtt=None):
    return _median(r[key] for r in _records(results, section, path, scenario, rtt))


def _mean_of_medians(results, path, key, rtt):
    values = [_stat(results, "latency", path, key, s["name"], rtt) for s in results["scenarios"]]
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _per_turn(results, section, path, key, rtt=None, scenario=None):
    chosen = _records(results, section, path, scenario, rtt)
    turns = sum(r["engine_turns"] for r in chosen)
    return sum(r[key] for r in chosen) / turns if turns else None


def _share(results, section, path, rtt=None):
    chosen = _records(results, section, path, None, rtt)
    total = sum(r["e2e_ms"] for r in chosen)
    return sum(r["overhead_ms"] for r in chosen) / total if total else None


def _ms(value) -> str:
    return "n/a" if value is None else f"{value:,.0f} ms"


def _ms1(value) -> str:
    return "n/a" if value is None else f"{value:,.1f} ms"


def _change(baseline, value) -> str:
    if baseline in (None, 0) or value is None:
        return ""
    return f"{100 * (value - baseline) / baseline:+.0f} %"


def _ideal(perf: dict) -> dict:
    points = {p["concurrency"]: p for p in perf["points"]}
    base = points.get(1, {}).get("throughput") or 0
    cap = perf.get("engine_cap_agent_rps")
    out = {}
    for c in points:
        linear = base * c
        out[c] = min(linear, cap) if cap else linear
    return out


# ------------------------------------------------------------------------------------------------------- summary
def summary_rows(results: dict) -> list[tuple[str, str, str, str]]:
    """(measurement, baseline, result, note)."""
    rows = []
    for rtt in results["settings"]["rtts_ms"]:
        seed = _mean_of_medians(results, SEED, "e2e_ms", rtt)
        agent = _mean_of_medians(results, AGENT, "e2e_ms", rtt)
        rows.append((ROW_E2E.format(rtt=rtt), f"seed loop {_ms(seed)}", f"agent {_ms(agent)}",
                     f"{_change(seed, agent)} (mean of per-conversation medians)"))
    for rtt in results["settings"]["rtts_ms"]:
        seed = _mean_of_medians(results, SEED, "ttft_ms", rtt)
        agent = _mean_of_medians(results, AGENT, "ttft_ms", rtt)
        rows.append((ROW_TTFT.format(rtt=rtt), f"seed loop {_ms(seed)}", f"agent {_ms(agent)}",
                     f"{_change(seed, agent)} (seed: best case, first chunk of its last turn)"))
    for rtt in results["settings"]["rtts_ms"]:
        seed = _mean_of_medians(results, SEED, "outside_engine_ms", rtt)
        agent = _mean_of_medians(results, AGENT, "outside_engine_ms", rtt)
        rows.append((ROW_OUTSIDE.format(rtt=rtt), f"seed loop {_ms(seed)}", f"agent {_ms(agent)}",
                     f"{_change(seed, agent)} (tools + overhead; free of the engine's timing noise)"))
    sequential = _stat(results, "tools", AGENT_SEQ, "e2e_ms")
    concurrent = _stat(results, "tools", AGENT, "e2e_ms")
    tool_ms = results["settings"]["timing"]["tool_latency_ms"]
    rows.append((ROW_TOOLS, f"sequential {_ms(sequential)}", f"concurrent {_ms(concurrent)}",
                 f"{_change(sequential, concurrent)} (each tool {tool_ms:g} ms)"))
    perf = results["perf"]
    ideal = _ideal(perf)
    for point in perf["points"]:
        c = point["concurrency"]
        if point.get("error"):
            rows.append((ROW_THROUGHPUT.format(c=c), f"ideal {ideal.get(c, 0):.2f} req/s", "failed", point["error"]))
            continue
        efficiency = point["throughput"] / ideal[c] if ideal.get(c) else None
        rows.append((ROW_THROUGHPUT.format(c=c), f"ideal {ideal[c]:.2f} req/s", f"{point['throughput']:.2f} req/s",
                     f"{100 * efficiency:.0f} % of ideal; p50 {_ms(point['p50_ms'])}, p99 {_ms(point['p99_ms'])}"
                     if efficiency is not None else ""))
    for c in (1, 8, 32, 64):
        if c not in {p["concurrency"] for p in perf["points"]}:
            rows.append((ROW_THROUGHPUT.format(c=c), "", "not run", "--tiny runs concurrency 1 and 8 only"))
    seed_turn = _per_turn(results, "latency", SEED, "overhead_ms", rtt=0.0)
    agent_turn = _per_turn(results, "latency", AGENT, "overhead_ms", rtt=0.0)
    share = _share(results, "latency", AGENT, rtt=0.0)
    rows.append((ROW_OVERHEAD, f"seed loop {_ms1(seed_turn)}", f"agent {_ms1(agent_turn)}",
                 f"agent overhead = {100 * share:.1f} % of its E2E (0 ms RTT)" if share is not None else ""))
    prefix = results["prefix"]
    without = sum(r["prefilled_tokens"] for r in prefix["without_reuse"])
    with_ = sum(r["prefilled_tokens"] for r in prefix["with_reuse"])
    per_turn = " / ".join(str(r["prefilled_tokens"]) for r in prefix["with_reuse"])
    rows.append((ROW_PREFIX, f"no reuse {without:,}", f"reuse {with_:,}",
                 f"{_change(without, with_)}; per turn with reuse {per_turn} (CPU engine)"))
    return rows


def summary_table(results: dict) -> str:
    lines = ["| Measurement | Baseline | Result | Note |", "|---|---|---|---|"]
    for row in summary_rows(results):
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------- charts
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def chart_latency(results: dict, path: Path) -> None:
    plt = _pyplot()
    rtts = results["settings"]["rtts_ms"]
    names = [s["name"] for s in results["scenarios"]]
    fig, axes = plt.subplots(1, len(rtts), figsize=(6 * len(rtts), 4.2), sharey=True, squeeze=False)
    width = 0.38
    for ax, rtt in zip(axes[0], rtts):
        for i, (path_name, label, color) in enumerate(((SEED, "seed client loop", "#999999"),
                                                       (AGENT, "function_calling_agent", "#2a7ab0"))):
            xs = [j + (i - 0.5) * width for j in range(len(names))]
            e2e = [_stat(results, "latency", path_name, "e2e_ms", n, rtt) or 0 for n in names]
            ttft = [_stat(results, "latency", path_name, "ttft_ms", n, rtt) or 0 for n in names]
            ax.bar(xs, e2e, width, color=color, alpha=0.45, label=f"{label}: end-to-end")
            ax.bar(xs, ttft, width, color=color, label=f"{label}: first answer token")
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names)
        ax.set_title(f"client-server RTT {rtt:g} ms")
        ax.set_ylabel("ms (median)")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="upper left")
    fig.suptitle("Same conversations: seed-style client loop vs server-side agent")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _stacked(ax, labels, parts, colors, names):
    bottoms = [0.0] * len(labels)
    for values, color, name in zip(parts, colors, names):
        ax.bar(range(len(labels)), values, 0.6, bottom=bottoms, color=color, label=name)
        bottoms = [b + v for b, v in zip(bottoms, values)]
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, fontsize=8)


def chart_tools(results: dict, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    labels = ["sequential\n(tool_workers=1)", "concurrent\n(default)"]
    models = [AGENT_SEQ, AGENT]
    parts = [[_stat(results, "tools", m, key) or 0 for m in models]
             for key in ("engine_measured_ms", "tool_critical_ms", "overhead_ms")]
    _stacked(ax, labels, parts, ["#2a7ab0", "#e08a2c", "#c44e52"], ["engine", "tools (critical path)", "overhead"])
    ax.set_ylabel("ms (median end-to-end)")
    ax.set_title("One turn with two independent tool calls")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def chart_scaling(results: dict, path: Path) -> None:
    plt = _pyplot()
    perf = results["perf"]
    points = [p for p in perf["points"] if not p.get("error")]
    cs = [p["concurrency"] for p in points]
    ideal = _ideal(perf)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    base = points[0]["throughput"] if points else 0
    left.plot(cs, [base * c for c in cs], "--", color="#999999", label="ideal: throughput(1) x concurrency")
    if perf.get("engine_cap_agent_rps"):
        left.axhline(perf["engine_cap_agent_rps"], color="#e08a2c", linestyle=":",
                     label="scripted engine alone (same requests)")
    left.plot(cs, [ideal[c] for c in cs], "-", color="#bbbbbb", linewidth=4, alpha=0.5, label="ideal, capped")
    left.plot(cs, [p["throughput"] for p in points], "o-", color="#2a7ab0", label="function_calling_agent")
    left.set_xscale("log", base=2)
    left.set_xticks(cs)
    left.set_xticklabels([str(c) for c in cs])
    left.set_xlabel("concurrent requests")
    left.set_ylabel("requests / s")
    left.set_title("Throughput, one agent instance")
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    right.plot(cs, [p["p50_ms"] for p in points], "o-", label="p50")
    right.plot(cs, [p["p99_ms"] for p in points], "s-", label="p99")
    right.set_xscale("log", base=2)
    right.set_xticks(cs)
    right.set_xticklabels([str(c) for c in cs])
    right.set_xlabel("concurrent requests")
    right.set_ylabel("request latency (ms)")
    right.set_title("Latency (send -> final response)")
    right.legend(fontsize=8)
    right.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def chart_overhead(results: dict, path: Path) -> None:
    plt = _pyplot()
    names = [s["name"] for s in results["scenarios"]]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, (path_name, title) in zip(axes, ((SEED, "seed client loop"), (AGENT, "function_calling_agent"))):
        parts = [[_stat(results, "latency", path_name, key, n, 0.0) or 0 for n in names]
                 for key in ("engine_measured_ms", "tool_critical_ms", "overhead_ms")]
        _stacked(ax, names, parts, ["#2a7ab0", "#e08a2c", "#c44e52"], ["engine", "tools (critical path)", "overhead"])
        ax.set_title(f"{title}, 0 ms RTT")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("ms (median)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def chart_prefix(results: dict, path: Path) -> None:
    plt = _pyplot()
    prefix = results["prefix"]
    turns = [r["turn"] for r in prefix["without_reuse"]]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    width = 0.27
    series = (("without_reuse", "no prefix reuse", "#999999"), ("with_reuse", "token-exact prefix reuse", "#2a7ab0"),
              ("text_retokenized", "reuse, text re-tokenized (seed-style)", "#e08a2c"))
    for i, (key, label, color) in enumerate(series):
        ax.bar([t + (i - 1) * width for t in turns], [r["prefilled_tokens"] for r in prefix[key]], width,
               color=color, label=label)
    ax.set_xticks(turns)
    ax.set_xticklabels([f"turn {t}" for t in turns])
    ax.set_ylabel("prefilled prompt tokens")
    ax.set_title("CPU engine: tokens prefilled per engine turn")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------------- markdown
def _latency_table(results: dict) -> str:
    lines = ["| RTT | Conversation | Engine turns | Seed E2E | Agent E2E | Change | Seed first answer token | "
             "Agent first answer token | Seed E2E - engine | Agent E2E - engine | Same answer |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for rtt in results["settings"]["rtts_ms"]:
        for s in results["scenarios"]:
            seed = _stat(results, "latency", SEED, "e2e_ms", s["name"], rtt)
            agent = _stat(results, "latency", AGENT, "e2e_ms", s["name"], rtt)
            seed_answers = {r["answer_sha1"] for r in _records(results, "latency", SEED, s["name"], rtt)}
            agent_answers = {r["answer_sha1"] for r in _records(results, "latency", AGENT, s["name"], rtt)}
            same = "yes" if seed_answers == agent_answers and len(seed_answers) == 1 else "NO"
            lines.append(
                f"| {rtt:g} ms | {s['name']} | {s['engine_turns']} | {_ms(seed)} | {_ms(agent)} | "
                f"{_change(seed, agent)} | {_ms(_stat(results, 'latency', SEED, 'ttft_ms', s['name'], rtt))} | "
                f"{_ms(_stat(results, 'latency', AGENT, 'ttft_ms', s['name'], rtt))} | "
                f"{_ms(_stat(results, 'latency', SEED, 'outside_engine_ms', s['name'], rtt))} | "
                f"{_ms(_stat(results, 'latency', AGENT, 'outside_engine_ms', s['name'], rtt))} | {same} |")
    return "\n".join(lines)


def _overhead_table(results: dict) -> str:
    lines = ["| Path | Conversation | E2E | Engine (measured) | Engine (nominal) | Tools on critical path | Overhead | "
             "Overhead per engine turn | vs nominal budget, per turn |", "|---|---|---|---|---|---|---|---|---|"]
    for path_name, label in ((SEED, "seed loop"), (AGENT, "agent")):
        for s in results["scenarios"]:
            n = s["name"]
            lines.append(
                f"| {label} | {n} | {_ms(_stat(results, 'latency', path_name, 'e2e_ms', n, 0.0))} | "
                f"{_ms(_stat(results, 'latency', path_name, 'engine_measured_ms', n, 0.0))} | "
                f"{_ms(_stat(results, 'latency', path_name, 'engine_nominal_ms', n, 0.0))} | "
                f"{_ms(_stat(results, 'latency', path_name, 'tool_critical_ms', n, 0.0))} | "
                f"{_ms1(_stat(results, 'latency', path_name, 'overhead_ms', n, 0.0))} | "
                f"{_ms1(_per_turn(results, 'latency', path_name, 'overhead_ms', 0.0, n))} | "
                f"{_ms1(_per_turn(results, 'latency', path_name, 'overhead_nominal_ms', 0.0, n))} |")
    return "\n".join(lines)


def _cores(point: dict) -> str:
    cores = point.get("cpu_cores") or {}
    if not cores:
        return "n/a"
    names = (AGENT, "tensorrt_llm", "tritonserver", "perf_analyzer")
    return " / ".join(f"{cores.get(n, 0):.2f}" for n in names)


def _plateau_note(perf: dict) -> str:
    points = [p for p in perf["points"] if not p.get("error") and p.get("cpu_cores")]
    if not points:
        return ""
    top = max(points, key=lambda p: p["concurrency"])
    cores = top["cpu_cores"]
    total = sum(cores.values())
    return (f"At concurrency {top['concurrency']} the agent's stub process used {cores.get(AGENT, 0):.2f} of a core and "
            f"everything measured (server, stubs, perf_analyzer) {total:.2f} of the machine's cores. One agent instance "
            "is one Python process whose per-token relay (BLS response, detokenize, parse, send) runs under one GIL: "
            "the likely limit, below the scripted engine's own rate. More agent instances (`agent_instance_count`) "
            "are the lever; this measures one instance.")


def _engine_slowdown_note(results: dict) -> str:
    rtt = 0.0
    pairs = []
    for s in results["scenarios"]:
        seed = _stat(results, "latency", SEED, "engine_measured_ms", s["name"], rtt)
        agent = _stat(results, "latency", AGENT, "engine_measured_ms", s["name"], rtt)
        if seed and agent:
            pairs.append((s["name"], seed, agent))
    if not pairs:
        return ""
    text = ", ".join(f"{n} {a - b:+.0f} ms" for n, b, a in pairs)
    return ("Both paths send the engine the same prompts and get the same tokens, yet the engine's own measured time "
            f"differs behind the agent ({text} vs behind the seed model, 0 ms RTT): on these shared CPU cores the "
            "relay's per-token work competes with the scripted engine's token loop, and the agent does more per token "
            "than seed_text_model (tool-call parsing, stop words, a response per token to the client). The columns "
            "\"E2E - engine\" remove that engine time and show what each path adds itself: the tools, the client "
            "round trips and the overhead.")


def _perf_table(results: dict) -> str:
    perf = results["perf"]
    ideal = _ideal(perf)
    lines = ["| Concurrency | Throughput | Ideal (capped) | Efficiency | p50 | p90 | p99 | Tokens streamed / s | "
             "CPU cores: agent / engine / tritonserver / perf_analyzer |", "|---|---|---|---|---|---|---|---|---|"]
    for p in perf["points"]:
        c = p["concurrency"]
        if p.get("error"):
            lines.append(f"| {c} | failed: {p['error']} | | | | | | | |")
            continue
        eff = f"{100 * p['throughput'] / ideal[c]:.0f} %" if ideal.get(c) else ""
        lines.append(f"| {c} | {p['throughput']:.2f} req/s | {ideal[c]:.2f} req/s | {eff} | {_ms(p['p50_ms'])} | "
                     f"{_ms(p['p90_ms'])} | {_ms(p['p99_ms'])} | {p['response_throughput']:.0f} | {_cores(p)} |")
    return "\n".join(lines)


def _prefix_table(results: dict) -> str:
    prefix = results["prefix"]
    lines = ["| Turn | Prompt tokens | Prefilled, no reuse | Prefilled, token-exact reuse (reused) | "
             "Prefilled, text re-tokenized (reused) |", "|---|---|---|---|---|"]
    for off, on, text in zip(prefix["without_reuse"], prefix["with_reuse"], prefix["text_retokenized"]):
        lines.append(f"| {on['turn']} | {on['prompt_tokens']:,} | {off['prefilled_tokens']:,} | "
                     f"{on['prefilled_tokens']:,} ({on['reused_tokens']:,}) | "
                     f"{text['prefilled_tokens']:,} ({text['reused_tokens']:,}) |")
    total_off = sum(r["prefilled_tokens"] for r in prefix["without_reuse"])
    total_on = sum(r["prefilled_tokens"] for r in prefix["with_reuse"])
    total_text = sum(r["prefilled_tokens"] for r in prefix["text_retokenized"])
    lines.append(f"| all | {sum(r['prompt_tokens'] for r in prefix['with_reuse']):,} | {total_off:,} | {total_on:,} | "
                 f"{total_text:,} |")
    return "\n".join(lines)


def render_markdown(results: dict) -> str:
    s = results["settings"]
    t = s["timing"]
    perf = results["perf"]
    tools_seq = _stat(results, "tools", AGENT_SEQ, "e2e_ms")
    tools_conc = _stat(results, "tools", AGENT, "e2e_ms")
    scenario_lines = "\n".join(f"- `{x['name']}`: \"{x['prompt']}\" - {x['description']}" for x in results["scenarios"])
    cap = perf.get("engine_cap_agent_rps")
    engine_point = perf.get("engine_point", {})
    prefix = results["prefix"]
    same_generation = {True: "yes", False: "NO"}.get(prefix.get("same_generation"), "n/a")
    exact = [r["reused_tokens"] for r in prefix["with_reuse"]]
    text = [r["reused_tokens"] for r in prefix["text_retokenized"]]
    if exact == text:
        text_note = ("Re-tokenizing the rendered text gave back the same ids on this conversation, so a text-level "
                     "client lost nothing here; that is not guaranteed (byte-level BPE can merge generated text with "
                     "the markup appended after it differently), and the agent never depends on it.")
    else:
        text_note = ("Re-tokenizing the rendered text changed the ids, so the text-level client lost reuse from the "
                     "first differing token on.")
    return f"""# function_calling_agent benchmarks ({s['name']} run)

Measured {s['date']} on {s['machine']}, tritonserver {s['tritonserver']} (CPU only), in {s['wall_s']:.0f} s;
1-minute load average {' before, '.join(str(x) for x in s.get('load_average', ['?']))} after the run (the benchmark alone keeps
about 2 cores busy; more means other jobs shared the machine).
Rerun: `.venv/bin/python -m bench.run_all` (add `--tiny` for the CI setting). Raw numbers: `results.json`.

Scripted engine (model_repository/scripted_engine as `tensorrt_llm`, one instance): {t['token_latency_ms']:g} ms per generated
token (the end token included), {t['prefill_ms_per_token']:g} ms per prompt token, no prefix reuse. Tools
(bench/tool_modules/bench_tools.py): `get_current_stock_price` and `get_company_news`, {t['tool_latency_ms']:g} ms each
(blocking sleep, like a yfinance call). {s['repeats']} repetition(s) of each conversation per path and RTT, after one
warm-up; medians reported.

## Summary

{summary_table(results)}

## 1. Seed-style client loop vs function_calling_agent

Conversations (the scripted engine answers each the same way on both paths; "Same answer" checks it):
{scenario_lines}

The **seed loop** (bench/seed_client_loop.py) does what the seed tutorial's `client.py` does against `ensemble`: per
turn it renders the whole prompt as text, opens a gRPC stream, sends it to a text-in/text-out model, waits for the
stream to end, parses `<tool_call>` blocks, runs the tools itself one after another and appends the results as text.
Its model, bench/models/seed_text_model, is a BLS model with the `ensemble` contract over the same scripted engine;
it tokenizes the text and detokenizes with special tokens **kept**. The stock `postprocessing` decodes with
`skip_special_tokens=True`, which strips `<tool_call>` when the tokenizer marks it special (it is a single added token
in Hermes-2-Pro): the seed client could not even see the calls then. To make both paths replay the same conversation
the seed loop renders the agent's Hermes template, runs every call of a turn (the seed parsed only the first) and
sends JSON tool results. The **agent** gets one request (`stream=true`, `return_trace=true`) and runs the same loop
server-side over BLS, token-exact, with a turn's tool calls run concurrently.

RTT: 0 ms is plain loopback. 20 ms is added by bench/rtt_proxy.py, an asyncio TCP proxy in front of the gRPC port
that forwards every chunk {s['rtts_ms'][-1] / 2:g} ms after it was read, in each direction, in order (no root needed, unlike
netns + netem). "First answer token" is when the first token of the final answer reached the client; for the seed loop
it is the first chunk of its last turn, a best case, since that client can only tell a turn is the answer once the
turn has ended without a tool call (the tutorial prints the answer then).

{_latency_table(results)}

{_engine_slowdown_note(results)}

![latency]({CHARTS['latency']})

## 2. Two independent tool calls: sequential vs concurrent

Conversation `two_tools` (one turn calls both tools) on `function_calling_agent` (tool calls of a turn run
concurrently) and on `function_calling_agent_seqtools`, the same agent with `tool_workers` = 1 (its tool pool runs
one call at a time, as the seed's client does). Median E2E: sequential {_ms(tools_seq)}, concurrent
{_ms(tools_conc)} ({_change(tools_seq, tools_conc)}); each tool takes {t['tool_latency_ms']:g} ms.

![tools]({CHARTS['tools']})

## 3. Throughput and latency under concurrency (perf_analyzer)

`perf_analyzer -m function_calling_agent -i grpc --streaming --input-data <two_tools prompt, max_tokens
{s['max_tokens']}, stream true> --concurrency-range C:C --measurement-mode count_windows`, one agent instance, one
scripted-engine instance, on the same {s['machine'].split(',')[1].strip()} as the server. Latency is from sending
the request to its final response (the whole agent run: 2 engine turns, 2 tools). Ideal = throughput at concurrency
1 x concurrency, capped by what the scripted engine alone sustains on this machine: the same two engine requests per
agent run sent straight to `tensorrt_llm` at concurrency {engine_point.get('concurrency', '?')} gave
{engine_point.get('throughput', 0):.2f} engine requests/s ({engine_point.get('response_throughput', 0):.0f} tokens/s), i.e.
{'n/a' if cap is None else f'{cap:.2f}'} agent requests/s. {_plateau_note(perf)}

{_perf_table(results)}

The engine alone at concurrency {engine_point.get('concurrency', '?')} used {_cores(engine_point)} cores (same columns).

![scaling]({CHARTS['scaling']})

## 4. The agent's overhead per engine turn

Overhead = end-to-end latency - engine time - tool time on the critical path. Engine time is measured by the scripted
engine itself (requests.jsonl: start -> end of each engine request, i.e. its prefill wait and its per-token sleeps,
including the sleeps' slack on a busy CPU); tool time is from the agent's trace (per turn, the longest call) or the
seed client's own timer. The overhead therefore holds everything the path adds: gRPC to and from the client, prompt
rendering and tokenization, BLS calls, the per-token relay and detokenization, parsing, the tool threads. "vs nominal
budget" subtracts the configured costs instead (prompt tokens x {t['prefill_ms_per_token']:g} ms + generated tokens x
{t['token_latency_ms']:g} ms + tool latency), so it also charges the scripted engine's timing slack. 0 ms RTT.

{_overhead_table(results)}

![overhead]({CHARTS['overhead']})

## 5. Prefix reuse on the CPU engine

The real CPU engine (`model_repository/tensorrt_llm_cpu`, configured with `deploy/configure_repository.py --profile
cpu`) with the tiny random Llama and the offline Hermes-shaped tokenizer, loaded with its prefix cache (the default)
and with `prefix_cache_max_tokens` 0. A random model never writes a `<tool_call>`, so the agent would stop after one
turn; bench/prefix_reuse.py therefore plays the agent's part over gRPC with the agent's own ChatFormat: each turn's
prompt is the previous prompt + the ids the engine really generated ({results['prefix']['generated_per_turn']} per turn) +
`<|im_end|>\\n` + the tool turn with real bench-tool results, exactly how the agent extends its prompt (conversation
`chained`: price, then news, then the answer). The no-reuse engine gets the identical prompts. The third column is a
text-level client (like the seed loop): the conversation rendered as text and re-tokenized every turn, on a second
reuse-enabled engine with an empty cache. Prefilled = prompt tokens - `prefix_reused_tokens` reported by the engine.
With reuse, a turn reuses the previous turn's prompt and every generated token but the last (whose KV was never
computed), so only the tool turn and that one token are prefilled. Greedy decoding generated the same ids with and
without reuse: {same_generation}. {text_note} Times are not reported here: with a model this small
(hidden size 64) prefilling a few hundred tokens takes milliseconds and is lost in scheduling noise; the scripted
engine of sections 1-4 charges prefill for the whole prompt every turn and does not model reuse.

{_prefix_table(results)}

![prefix]({CHARTS['prefix']})

## Caveats

- Everything (server, scripted engine, agent, clients, perf_analyzer) shares one CPU-only machine; the agent's
  per-token relay and the scripted engine compete for the same cores, which inflates the engine's measured time
  beyond its nominal budget. The scripted engine models neither batching nor prefix reuse: its cost per prompt
  token applies to the whole prompt every turn on both paths.
- The 20 ms RTT proxy runs in the benchmark process (an asyncio thread): its own scheduling adds a little jitter.
"""


def write_report(results: dict, out: Path) -> str:
    out.mkdir(parents=True, exist_ok=True)
    chart_latency(results, out / CHARTS["latency"])
    chart_tools(results, out / CHARTS["tools"])
    chart_scaling(results, out / CHARTS["scaling"])
    chart_overhead(results, out / CHARTS["overhead"])
    chart_prefix(results, out / CHARTS["prefix"])
    (out / "report.md").write_text(render_markdown(results), encoding="utf-8")
    return summary_table(results)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    results = json.loads(args.results.read_text(encoding="utf-8"))
    print(write_report(results, args.out or args.results.parent))
    return 0


if __name__ == "__main__":
    sys.exit(main())
