"""The offline demo of `./serve.sh`: a tiny model trained to drive the built-in finance tools through a real tool round.

Without a checkpoint (no model hub) there is usually no Yahoo Finance either, so the finance tools fail fast with
"market data is unreachable: <reason>". The model learns two requests:

    1. DEMO_PROMPT      -> get_current_stock_price(RIVN) and get_company_news(RIVN) in one turn, then ANSWERS[0]
    2. FOLLOW_UP_PROMPT -> continues request 1 through `messages`: get_current_stock_price(TSLA), then ANSWERS[1]

Its answers relay the failure and must not depend on the exact reason, so it is trained on many reasons (curl's
texts for DNS, connect, proxy and timeout failures, with varying hosts and numbers), plus the reason the real tools
give on this machine at build time, and checked on reasons it never saw. The cache key covers only the fixed reasons
(see tiny_tool_model), so the machine's own reason does not retrain it on every start.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
from typing import Callable, Mapping, Optional

from ..tools import ToolError, ToolRegistry, load_tool_modules
from ..tools.spec import ToolSpec
from .tiny_tool_model import Conversation, ToolVariant, build_tiny_tool_model

FINANCE_MODULE = "function_calling_agent.tools.finance"
PRICE_TOOL = "get_current_stock_price"
NEWS_TOOL = "get_company_news"

DEMO_PROMPT = "Give me Rivian (RIVN) news and stock price"
FOLLOW_UP_PROMPT = "And what is Tesla (TSLA) trading at?"
ANSWERS = (
    "I could not get Rivian's (RIVN) stock price or news: both finance tools answered that market data is "
    "unreachable from this server.",
    "Tesla's (TSLA) price is unavailable too: the finance tool again reported that market data is unreachable.",
)


def _call(name: str, symbol: str) -> str:
    return f'<tool_call>\n{{"name": "{name}", "arguments": {{"symbol": "{symbol}"}}}}\n</tool_call>'


CONVERSATIONS = (
    Conversation("rivn", DEMO_PROMPT, (_call(PRICE_TOOL, "RIVN") + "\n" + _call(NEWS_TOOL, "RIVN"), ANSWERS[0])),
    Conversation("tsla", FOLLOW_UP_PROMPT, (_call(PRICE_TOOL, "TSLA"), ANSWERS[1]), follows="rivn"),
)

_HOSTS = ("fc.yahoo.com", "guce.yahoo.com", "query1.finance.yahoo.com", "query2.finance.yahoo.com")
_REASONS = (
    "curl: (6) Could not resolve host: {host} (Domain name not found).",
    "curl: (6) Could not resolve host: {host}",
    "curl: (7) Failed to connect to {host} port 443 after {ms} ms: Couldn't connect to server",
    "curl: (7) Failed to connect to 127.0.0.1 port {port} after {ms} ms: Couldn't connect to server",
    "curl: (5) Could not resolve proxy: proxy{n}.example.com",
    "curl: (28) Connection timed out after {ms} milliseconds",
    "curl: (28) Operation timed out after {ms} milliseconds with 0 bytes received",
    "curl: (56) CONNECT tunnel failed, response {status}",
    "curl: (35) Recv failure: Connection reset by peer",
    "curl: (60) SSL certificate problem: unable to get local issuer certificate",
)
TRAINED_VARIANTS = 48
HELD_OUT_VARIANTS = 6


def unreachable_reasons(count: int, seed: int) -> list[str]:
    """`count` texts of the form curl gives for an unreachable Yahoo (deterministic for a seed)."""
    rng = random.Random(seed)
    reasons = []
    for index in range(count):
        template = _REASONS[index % len(_REASONS)] if seed == 0 else rng.choice(_REASONS)
        reasons.append(template.format(host=rng.choice(_HOSTS), ms=rng.choice((0, 1, 3, 12, 250, 4001, 8000)),
                                       port=rng.randrange(1024, 65536), n=rng.randrange(1, 10),
                                       status=rng.choice((403, 407, 502, 503))))
    return reasons


def _failing(spec: ToolSpec, reason: str) -> ToolSpec:
    def fail(**_arguments):
        raise ToolError(f"market data is unreachable: {reason}")

    return dataclasses.replace(spec, fn=fail)


def unreachable_variant(tools: Mapping[str, ToolSpec], name: str, price_reason: str, news_reason: str) -> ToolVariant:
    """`tools` with the price and news tools failing as the finance tools do when Yahoo is unreachable."""
    replaced = {PRICE_TOOL: price_reason, NEWS_TOOL: news_reason}
    return ToolVariant(name, ToolRegistry(_failing(spec, replaced[n]) if n in replaced else spec
                                          for n, spec in tools.items()))


def _variants(tools: Mapping[str, ToolSpec], count: int, seed: int, prefix: str) -> list[ToolVariant]:
    reasons = unreachable_reasons(count + 1, seed)
    return [unreachable_variant(tools, f"{prefix}{i}", reasons[i], reasons[i + 1]) for i in range(count)]


def observed_reasons(tools: Mapping[str, ToolSpec]) -> Optional[tuple[str, str]]:
    """The reasons the real price and news tools give here for RIVN, or None when either does not fail as
    unreachable (Yahoo answers: then there is no offline failure to learn)."""
    prefix = "market data is unreachable: "
    reasons = []
    quiet = logging.getLogger("yfinance")  # its "continuing without crumb" warnings are expected here
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        for name in (PRICE_TOOL, NEWS_TOOL):
            try:
                tools[name].fn(symbol="RIVN")
            except ToolError as exc:
                if not str(exc).startswith(prefix):
                    return None
                reasons.append(str(exc)[len(prefix):])
            else:
                return None
    finally:
        quiet.setLevel(level)
    return reasons[0], reasons[1]


def has_demo_tools(tools: Mapping[str, ToolSpec]) -> bool:
    return PRICE_TOOL in tools and NEWS_TOOL in tools


def build_finance_demo_model(cache_dir: str | os.PathLike, tokenizer_dir: str | os.PathLike,
                             tools: Optional[Mapping[str, ToolSpec]] = None,
                             announce: Optional[Callable[[], None]] = None) -> str:
    """The demo model for the served `tools` (default: the finance tools alone; they must include the price and news
    tools, whose schemas are part of every prompt). Returns its directory; trains it the first time (118 s measured on
    two shared cores). Raises `TinyModelError` if it cannot be trained."""
    tools = tools if tools is not None else load_tool_modules([FINANCE_MODULE])
    if not has_demo_tools(tools):
        raise ValueError(f"the finance demo needs the tools {PRICE_TOOL} and {NEWS_TOOL} ({FINANCE_MODULE})")

    def this_machine() -> list[ToolVariant]:
        observed = observed_reasons(tools)
        return [unreachable_variant(tools, "this-machine", *observed)] if observed else []

    return build_tiny_tool_model(
        cache_dir, tokenizer_dir, CONVERSATIONS, _variants(tools, TRAINED_VARIANTS, 0, "trained-"),
        extra_variants=this_machine,
        held_out=_variants(tools, HELD_OUT_VARIANTS, 1, "held-out-"), announce=announce)
