"""The benchmark suite runs end to end on its tiny setting (integration; benchmarks are not tests, this only checks
that `python -m bench.run_all --tiny` still works and writes its report)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.report import CHARTS

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parent.parent

EXPECTED_ROWS = (
    "E2E latency, 0 ms RTT",
    "E2E latency, 20 ms RTT",
    "Time to first answer token, 0 ms RTT",
    "Time to first answer token, 20 ms RTT",
    "Two tool calls in one turn, E2E",
    "Throughput at concurrency 1",
    "Throughput at concurrency 8",
    "Throughput at concurrency 32",
    "Throughput at concurrency 64",
    "Agent overhead per engine turn",
    "Prefilled tokens, 3-turn conversation",
)


@pytest.mark.timeout(600)
def test_tiny_bench_writes_report_and_charts(tmp_path):
    out = tmp_path / "results"
    done = subprocess.run([sys.executable, "-m", "bench.run_all", "--tiny", "--out", str(out)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, done.stderr[-4000:]
    report = (out / "report.md").read_text(encoding="utf-8")
    for name in CHARTS.values():
        png = out / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f"]({name})" in report
    summary = report.split("## Summary", 1)[1].split("\n## ", 1)[0]
    rows = {line.split("|")[1].strip() for line in summary.splitlines() if line.startswith("| ")}
    assert set(EXPECTED_ROWS) <= rows
    for row in EXPECTED_ROWS:  # the summary table is printed too
        assert row in done.stdout

    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    # Both paths replayed the same conversations and got the same answers.
    for scenario in results["scenarios"]:
        runs = [r for r in results["latency"] if r["scenario"] == scenario["name"]]
        assert len({r["answer_sha1"] for r in runs}) == 1 and all(r["answer_chars"] > 0 for r in runs), scenario["name"]
    # The engine log was matched to every run: engine turns as scripted.
    turns = {s["name"]: s["engine_turns"] for s in results["scenarios"]}
    assert all(r["engine_turns"] == turns[r["scenario"]] for r in results["latency"])
    assert all(not p.get("error") and p["throughput"] > 0 for p in results["perf"]["points"]), results["perf"]
    # Prefix reuse: identical prompts, fewer prefilled tokens after the first turn with reuse.
    with_reuse, without = results["prefix"]["with_reuse"], results["prefix"]["without_reuse"]
    assert [r["prompt_tokens"] for r in with_reuse] == [r["prompt_tokens"] for r in without]
    assert all(r["reused_tokens"] == 0 for r in without)
    assert all(r["reused_tokens"] > 0 for r in with_reuse[1:])
