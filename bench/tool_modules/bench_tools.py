"""Benchmark tools: the seed tutorial's two finance tools with deterministic data and a fixed latency.

The latency (milliseconds) is read once at import from `bench_tools.json` beside this file, written by the benchmark
(`{"latency_ms": 100}`); without that file it is 0. The same module runs inside the agent (copied beside its
model.py) and in the seed-style client loop, so both paths call identical tools. Blocking `time.sleep`, like a
network call to yfinance: the agent runs such tools on threads.
"""

import json
import os
import time

from function_calling_agent.tools import tool

_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_tools.json")


def _latency_s() -> float:
    try:
        with open(_CONFIG, encoding="utf-8") as f:
            return float(json.load(f).get("latency_ms", 0)) / 1000.0
    except FileNotFoundError:
        return 0.0


LATENCY_S = _latency_s()

PRICES = {"RIVN": 12.34, "AAPL": 189.5, "NVDA": 131.2, "TSLA": 242.8}


@tool
def get_current_stock_price(symbol: str) -> dict:
    """Get the current stock price for a given symbol (fixed benchmark data).

    Args:
        symbol: The stock ticker symbol, e.g. RIVN.
    """
    time.sleep(LATENCY_S)
    symbol = symbol.upper()
    return {"symbol": symbol, "price": PRICES.get(symbol, 100.0), "currency": "USD"}


@tool
def get_company_news(symbol: str) -> list:
    """Get recent news headlines about a company (fixed benchmark data).

    Args:
        symbol: The stock ticker symbol, e.g. RIVN.
    """
    time.sleep(LATENCY_S)
    symbol = symbol.upper()
    return [
        {"title": f"{symbol} ships more vehicles than expected", "publisher": "Bench Wire", "date": "2026-11-20"},
        {"title": f"Analysts raise their {symbol} target", "publisher": "Bench Daily", "date": "2026-11-19"},
    ]
