"""Per-conversation latency of the seed-style client loop and of function_calling_agent, with the time split into
engine, tools and overhead using the scripted engine's request log."""

from __future__ import annotations

import dataclasses
import hashlib
import statistics
from typing import Iterable, Optional, Sequence

from bench import timed_calls
from bench.repo import EngineTiming
from bench.seed_client_loop import SeedClientLoop, SeedRun

SEED = "seed_loop"


@dataclasses.dataclass
class RunRecord:
    path: str  # seed_loop | function_calling_agent | function_calling_agent_seqtools
    scenario: str
    rtt_ms: float
    rep: int
    t_start: float
    t_end: float
    e2e_ms: float
    ttft_ms: float  # first token of the final answer, as it arrived at the client
    answer: str
    tool_calls: int
    tool_critical_ms: float  # measured tool time on the critical path
    tool_nominal_ms: float  # the tools' fixed latency on the critical path
    engine_turns: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    engine_measured_ms: float = 0.0  # sum of the engine's own request durations (requests.jsonl start -> end)
    engine_nominal_ms: float = 0.0  # prompt tokens x prefill ms + generated tokens x token ms

    @property
    def overhead_ms(self) -> float:
        """End-to-end minus the measured engine and tool time on the critical path."""
        return self.e2e_ms - self.engine_measured_ms - self.tool_critical_ms

    @property
    def overhead_nominal_ms(self) -> float:
        """End-to-end minus the configured engine and tool budgets (also charges the engine's own timing slack)."""
        return self.e2e_ms - self.engine_nominal_ms - self.tool_nominal_ms

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        # The answer itself stays out of results.json (it is long); its hash still shows both paths said the same.
        answer = d.pop("answer")
        d["answer_sha1"] = hashlib.sha1(answer.encode("utf-8")).hexdigest()[:16]
        d["answer_chars"] = len(answer)
        d["overhead_ms"] = self.overhead_ms
        d["overhead_nominal_ms"] = self.overhead_nominal_ms
        d["outside_engine_ms"] = self.e2e_ms - self.engine_measured_ms
        return d


def run_agent(client, model: str, scenario, rtt_ms: float, rep: int, timing: EngineTiming,
              max_tokens: int) -> RunRecord:
    result = timed_calls.agent_call(client, model, scenario.prompt, max_tokens)
    trace = timed_calls.trace_of(result)
    per_turn: dict[int, float] = {}
    calls = trace.get("tool_calls", [])
    for call in calls:
        per_turn[call["turn"]] = max(per_turn.get(call["turn"], 0.0), float(call.get("latency_ms") or 0.0))
    concurrent = model != "function_calling_agent_seqtools"
    nominal = sum(timing.tool_latency_ms * (1 if concurrent else n) for n in scenario.tool_rounds)
    return RunRecord(
        path=model, scenario=scenario.name, rtt_ms=rtt_ms, rep=rep, t_start=result.t_start, t_end=result.t_end,
        e2e_ms=1000 * (result.t_end - result.t_start),
        ttft_ms=1000 * ((result.t_first or result.t_end) - result.t_start),
        answer=result.text, tool_calls=len(calls), tool_critical_ms=sum(per_turn.values()),
        tool_nominal_ms=nominal,
    )


def run_seed(loop: SeedClientLoop, scenario, rtt_ms: float, rep: int, timing: EngineTiming) -> RunRecord:
    run: SeedRun = loop.run(scenario.prompt)
    return RunRecord(
        path=SEED, scenario=scenario.name, rtt_ms=rtt_ms, rep=rep, t_start=run.t_start, t_end=run.t_end,
        e2e_ms=1000 * (run.t_end - run.t_start),
        ttft_ms=1000 * ((run.t_first_answer or run.t_end) - run.t_start),
        answer=run.answer, tool_calls=run.tool_calls, tool_critical_ms=1000 * run.tool_s,
        tool_nominal_ms=timing.tool_latency_ms * sum(scenario.tool_rounds),
    )


@dataclasses.dataclass
class EngineRequest:
    start: float
    end: float
    prompt_len: int
    tokens_sent: int


def engine_requests(log: Iterable[dict]) -> list[EngineRequest]:
    """Pairs the scripted engine's start/end events (FIFO per request id; the seed model sends no id)."""
    open_: dict[str, list[dict]] = {}
    out = []
    for entry in log:
        if entry.get("event") == "start":
            open_.setdefault(entry.get("request_id", ""), []).append(entry)
        elif entry.get("event") == "end":
            starts = open_.get(entry.get("request_id", ""))
            if starts:
                start = starts.pop(0)
                out.append(EngineRequest(start["ts"], entry["ts"], int(entry.get("prompt_len", 0)),
                                         int(entry.get("tokens_sent", 0))))
    return sorted(out, key=lambda r: r.start)


def attach_engine_time(records: Sequence[RunRecord], log: Iterable[dict], timing: EngineTiming) -> None:
    """Adds the engine requests that started within each (sequential) run's window to that run."""
    requests = engine_requests(log)
    for record in records:
        mine = [r for r in requests if record.t_start <= r.start <= record.t_end]
        record.engine_turns = len(mine)
        record.prompt_tokens = sum(r.prompt_len for r in mine)
        record.generated_tokens = sum(r.tokens_sent for r in mine)
        record.engine_measured_ms = sum(1000 * (r.end - r.start) for r in mine)
        record.engine_nominal_ms = timing.engine_ms(record.prompt_tokens, record.generated_tokens)


def median(values: Iterable[float]) -> Optional[float]:
    values = list(values)
    return statistics.median(values) if values else None


def summarize(records: Sequence[RunRecord], path: str, scenario: Optional[str] = None,
              rtt_ms: Optional[float] = None) -> dict:
    chosen = [r for r in records if r.path == path and (scenario is None or r.scenario == scenario)
              and (rtt_ms is None or r.rtt_ms == rtt_ms)]
    if not chosen:
        return {}
    turns = sum(r.engine_turns for r in chosen)
    return {
        "runs": len(chosen),
        "e2e_ms": median(r.e2e_ms for r in chosen),
        "e2e_min_ms": min(r.e2e_ms for r in chosen),
        "e2e_max_ms": max(r.e2e_ms for r in chosen),
        "ttft_ms": median(r.ttft_ms for r in chosen),
        "engine_measured_ms": median(r.engine_measured_ms for r in chosen),
        "engine_nominal_ms": median(r.engine_nominal_ms for r in chosen),
        "tool_critical_ms": median(r.tool_critical_ms for r in chosen),
        "tool_nominal_ms": median(r.tool_nominal_ms for r in chosen),
        "overhead_ms": median(r.overhead_ms for r in chosen),
        "overhead_nominal_ms": median(r.overhead_nominal_ms for r in chosen),
        "engine_turns": turns / len(chosen),
        # Per engine turn, over all runs: total overhead / total turns.
        "overhead_per_turn_ms": sum(r.overhead_ms for r in chosen) / turns if turns else None,
        "overhead_nominal_per_turn_ms": sum(r.overhead_nominal_ms for r in chosen) / turns if turns else None,
        "overhead_share": sum(r.overhead_ms for r in chosen) / sum(r.e2e_ms for r in chosen),
        "prompt_tokens": median(r.prompt_tokens for r in chosen),
        "generated_tokens": median(r.generated_tokens for r in chosen),
    }
