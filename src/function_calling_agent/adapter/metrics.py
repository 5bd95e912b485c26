"""Prometheus metrics of function_calling_agent, all under the `fca_` namespace (pb_utils passed in)."""

from __future__ import annotations

ITERATION_BUCKETS = [0, 1, 2, 3, 4, 5, 6, 8, 10, 15, 20]
LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60]


class AgentMetrics:
    def __init__(self, pb_utils, model_name: str):
        family = pb_utils.MetricFamily
        self._pb_utils = pb_utils
        self._model = {"model": model_name}
        self._requests = family("fca_requests_total", "Requests by outcome (finish reason or error kind)",
                                family.COUNTER)
        self._iterations = family("fca_iterations_per_request", "Tool-call rounds per finished request",
                                  family.HISTOGRAM)
        self._tool_calls = family("fca_tool_calls_total", "Tool calls by tool and outcome (and server, for MCP tools)",
                                  family.COUNTER)
        self._tool_latency = family("fca_tool_latency_seconds", "Tool call latency", family.HISTOGRAM)
        self._ttft = family("fca_time_to_first_token_seconds", "Time to the first final-answer token",
                            family.HISTOGRAM)
        self._empty_family = family("fca_empty_answers_total",
                                    "Requests whose model answered nothing after tool results", family.COUNTER)
        self._empty = self._empty_family.Metric(self._model)
        # Families must outlive their metrics, so both are kept.
        self._active_family = family("fca_active_requests", "Requests in progress", family.GAUGE)
        self._active = self._active_family.Metric(self._model)
        self._abandoned_family = family("fca_abandoned_tool_threads",
                                        "Tool threads still running after their timeout", family.GAUGE)
        self._abandoned = self._abandoned_family.Metric(self._model)
        self._iterations_metric = self._iterations.Metric(self._model, buckets=ITERATION_BUCKETS)
        self._ttft_metric = self._ttft.Metric(self._model, buckets=LATENCY_BUCKETS)
        self._cache: dict = {}

    def _counter(self, family, **labels):
        key = (id(family), tuple(sorted(labels.items())))
        if key not in self._cache:
            self._cache[key] = family.Metric({**self._model, **labels})
        return self._cache[key]

    def _histogram(self, family, buckets, **labels):
        key = (id(family), tuple(sorted(labels.items())))
        if key not in self._cache:
            self._cache[key] = family.Metric({**self._model, **labels}, buckets=buckets)
        return self._cache[key]

    def request_started(self) -> None:
        self._active.increment(1)

    def request_finished(self, outcome: str, iterations: int | None, calls=(), empty_answer: bool = False) -> None:
        """Counts a finished request. The active gauge drops last, so a reader that sees no request in progress also
        sees every finished request counted."""
        self._counter(self._requests, outcome=outcome).increment(1)
        if empty_answer:
            self._empty.increment(1)
        if iterations is not None:
            self._iterations_metric.observe(iterations)
        for call in calls:
            # MCP tools carry the label of their server; module tools keep their labels as they were.
            server = {"server": call.server} if getattr(call, "server", None) else {}
            self._counter(self._tool_calls, tool=call.name or "(malformed)", outcome=call.status,
                          **server).increment(1)
            if call.status in ("ok", "error", "timeout"):
                self._histogram(self._tool_latency, LATENCY_BUCKETS, tool=call.name,
                                **server).observe(call.latency_ms / 1000)
        self._active.increment(-1)

    def mcp_servers(self, labels) -> None:
        """Creates the MCP server metrics up front: `mcp_server_state` runs on the MCP loop thread, which must only
        update existing metrics, never create them concurrently with the request path."""
        family = self._pb_utils.MetricFamily
        self._mcp_up_family = family("fca_mcp_server_up", "1 while the MCP server's session is up", family.GAUGE)
        self._mcp_tools_family = family("fca_mcp_server_tools", "Tools offered from the MCP server", family.GAUGE)
        self._mcp_events_family = family("fca_mcp_server_events_total",
                                         "MCP sessions by event: connected, failed (an attempt), lost", family.COUNTER)
        self._mcp = {}
        for label in labels:
            server = {**self._model, "server": label}
            self._mcp[label] = (
                self._mcp_up_family.Metric(server), self._mcp_tools_family.Metric(server),
                {event: self._mcp_events_family.Metric({**server, "event": event})
                 for event in ("connected", "failed", "lost")})

    def mcp_server_state(self, label: str, up: bool, tools: int, event: str) -> None:
        up_gauge, tools_gauge, events = self._mcp[label]
        up_gauge.set(1 if up else 0)
        tools_gauge.set(tools)
        events[event].increment(1)

    def first_token(self, seconds: float) -> None:
        self._ttft_metric.observe(seconds)

    def abandoned_threads(self, count: int) -> None:
        self._abandoned.set(count)
