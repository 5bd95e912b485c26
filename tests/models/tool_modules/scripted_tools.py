"""Tools for integration tests: deterministic, offline, with the failure modes the agent must survive."""

import threading
import time

from function_calling_agent.tools import tool

_calls_lock = threading.Lock()
CALLS: list = []


@tool
def get_current_stock_price(symbol: str) -> dict:
    """Get the current stock price of a company (recorded test data, no network).

    Args:
        symbol: The stock ticker symbol, e.g. RIVN.
    """
    prices = {"RIVN": 12.34, "AAPL": 189.5, "NVDA": 131.2}
    if symbol.upper() not in prices:
        raise ValueError(f"no price for {symbol!r}")
    return {"symbol": symbol.upper(), "price": prices[symbol.upper()], "currency": "USD"}


@tool
def get_company_news(symbol: str) -> list:
    """Get recent news headlines about a company (recorded test data, no network).

    Args:
        symbol: The stock ticker symbol, e.g. RIVN.
    """
    return [{"title": f"{symbol.upper()} ships more trucks", "publisher": "Test Wire", "date": "2026-11-20"}]


@tool
def failing_tool(reason: str) -> str:
    """A tool that always raises.

    Args:
        reason: The error message to raise with.
    """
    raise RuntimeError(reason)


@tool(timeout_s=0.5)
def slow_tool(seconds: float) -> str:
    """A tool that sleeps, to exceed its 0.5 s timeout.

    Args:
        seconds: How long to sleep.
    """
    time.sleep(seconds)
    return "woke up"


@tool
def sleep_tool(seconds: float) -> dict:
    """A tool that sleeps and reports when it ran, to observe concurrency.

    Args:
        seconds: How long to sleep.
    """
    start = time.time()
    time.sleep(seconds)
    return {"start": start, "end": time.time()}


@tool
def huge_tool() -> str:
    """A tool that returns far more text than the agent lets through."""
    return "x" * 1_000_000


@tool
def unserializable_tool() -> object:
    """A tool that returns something that is not JSON."""
    return object()
