"""Finance tools on Yahoo Finance data, through yfinance.

Network behaviour: every HTTP request yfinance makes for one tool call shares one deadline (CALL_DEADLINE_S, below the
server's default tool timeout), each request is capped at REQUEST_TIMEOUT_S, and after the first transport failure the
rest of the call fails at once, so an unreachable Yahoo gives "market data is unreachable: ..." quickly instead of a
hang. HTTP 429 gets one backoff and retry. Proxies come from the standard environment variables (HTTPS_PROXY,
https_proxy, ALL_PROXY, NO_PROXY), which libcurl (under curl_cffi, under yfinance) reads itself; yfinance's own
`yf.config.network.proxy` overrides them. Successful answers are cached for CACHE_TTL_S across requests.
"""

from __future__ import annotations

import collections
import datetime
import math
import re
import threading
import time
import typing
from typing import Any, Callable, Literal

import yfinance as yf
from curl_cffi import requests as curl_requests
from yfinance.exceptions import YFRateLimitError

from function_calling_agent.tools import ToolError, tool

REQUEST_TIMEOUT_S = 4.0
CALL_DEADLINE_S = 8.0
RATE_LIMIT_BACKOFF_S = 2.0
CACHE_TTL_S = 60.0
CACHE_MAX_ENTRIES = 256
MAX_NEWS_ITEMS = 10
MAX_HISTORY_ROWS = 30
MAX_SUMMARY_CHARS = 600

Period = Literal["1d", "5d", "1mo", "3mo", "6mo", "1y", "2y", "5y", "10y", "ytd", "max"]
Interval = Literal["1m", "2m", "5m", "15m", "30m", "60m", "90m", "1h", "1d", "5d", "1wk", "1mo", "3mo"]

# Yahoo keeps 1-minute bars for 7 days, other intraday bars for 60 days, hourly bars for 730 days.
_PERIODS_FOR_INTRADAY = {
    "1m": ("1d", "5d"),
    **{i: ("1d", "5d", "1mo") for i in ("2m", "5m", "15m", "30m", "90m")},
    **{i: ("1d", "5d", "1mo", "3mo", "6mo", "1y") for i in ("60m", "1h")},
}

# Letters, digits and the punctuation Yahoo uses: BRK-B, RDS.A, ^GSPC, EURUSD=X, GC=F.
_SYMBOL = re.compile(r"^(?=.*[A-Z0-9])[A-Z0-9.^=-]{1,12}$")


class TTLCache:
    """A small thread-safe cache: entries expire after `ttl_s`; beyond `max_entries` the least recently used go."""

    def __init__(self, ttl_s: float = CACHE_TTL_S, max_entries: int = CACHE_MAX_ENTRIES, clock=time.monotonic):
        if not ttl_s > 0 or max_entries < 1:
            raise ValueError("ttl_s must be > 0 and max_entries >= 1")
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._clock = clock
        self._entries: collections.OrderedDict[Any, tuple[float, Any]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any, default: Any = None) -> Any:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return default
            if entry[0] <= self._clock():
                del self._entries[key]
                return default
            self._entries.move_to_end(key)
            return entry[1]

    def put(self, key: Any, value: Any) -> None:
        with self._lock:
            self._entries[key] = (self._clock() + self.ttl_s, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


market_data_cache = TTLCache()


class _CallState:
    def __init__(self, deadline: float):
        self.deadline = deadline
        self.transport_error: str | None = None
        self.saw_429 = False


_local = threading.local()


class _Unreachable(OSError):
    """Raised by the session once the current call has already failed to reach Yahoo or has run out of time."""


class _YahooSession(curl_requests.Session):
    """The session handed to yfinance: bounds each request by the current tool call's deadline."""

    def request(self, method, url, *args, **kwargs):
        call: _CallState | None = getattr(_local, "call", None)
        limit = REQUEST_TIMEOUT_S
        if call is not None:
            if call.transport_error is not None:
                raise _Unreachable(call.transport_error)
            remaining = call.deadline - time.monotonic()
            if remaining <= 0.05:
                call.transport_error = f"no answer within {CALL_DEADLINE_S:g} s"
                raise _Unreachable(call.transport_error)
            limit = min(limit, remaining)
        timeout = kwargs.get("timeout")
        valid = isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and timeout > 0
        kwargs["timeout"] = min(timeout, limit) if valid else limit
        try:
            response = super().request(method, url, *args, **kwargs)
        except OSError as exc:  # curl_cffi's connection, DNS, proxy and timeout errors are all OSErrors
            if call is not None and call.transport_error is None:
                call.transport_error = _short_reason(exc)
            raise
        if response.status_code == 429 and call is not None:
            call.saw_429 = True
        return response


def _short_reason(exc: BaseException) -> str:
    text = str(exc).removeprefix("Failed to perform, ")
    return text.split(" See https://curl.se", 1)[0].strip() or type(exc).__name__


_session: _YahooSession | None = None
_session_lock = threading.Lock()


def _yahoo_session() -> _YahooSession:
    global _session
    with _session_lock:
        if _session is None:
            _session = _YahooSession(impersonate="chrome")
        return _session


def _fetch(symbol: str, read: Callable[[Any], Any]) -> Any:
    """`read(yf.Ticker(symbol))` under one deadline, with one backoff on HTTP 429; failures become `ToolError`s."""
    deadline = time.monotonic() + CALL_DEADLINE_S
    for attempt in (1, 2):
        call = _CallState(deadline)
        _local.call = call
        error: Exception | None = None
        try:
            value = read(yf.Ticker(symbol, session=_yahoo_session()))
        except Exception as exc:  # yfinance raises many types; sorted out below
            error = exc
        finally:
            _local.call = None
        if call.transport_error is not None:
            raise ToolError(f"market data is unreachable: {call.transport_error}") from error
        if isinstance(error, YFRateLimitError) or (error is not None and call.saw_429):
            wait = min(RATE_LIMIT_BACKOFF_S, deadline - time.monotonic() - REQUEST_TIMEOUT_S / 2)
            if attempt == 1 and wait >= 0:
                time.sleep(wait)
                continue
            raise ToolError(
                "market data is rate limited by Yahoo Finance (HTTP 429) even after a retry; try again in a minute"
            ) from error
        if isinstance(error, ToolError):
            raise error
        if error is not None:
            raise ToolError(f"market data error for {symbol}: {type(error).__name__}: {error}") from error
        return value
    raise AssertionError("unreachable")


def _market_data(symbol: str, what: str, read: Callable[[Any], Any], *key: Any) -> Any:
    cache_key = (what, symbol, *key)
    missing = object()
    value = market_data_cache.get(cache_key, missing)
    if value is missing:
        value = _fetch(symbol, read)
        market_data_cache.put(cache_key, value)
    return value


def _info(symbol: str) -> dict:
    info = _market_data(symbol, "info", lambda ticker: ticker.info)
    if not isinstance(info, dict):
        raise ToolError(f"market data error for {symbol}: unexpected info of type {type(info).__name__}")
    return info


def normalize_symbol(symbol: str) -> str:
    """Upper-cased, checked ticker symbol; raises `ToolError` before any network call when it is not one."""
    cleaned = symbol.strip().upper() if isinstance(symbol, str) else ""
    if not _SYMBOL.match(cleaned):
        raise ToolError(
            f"invalid ticker symbol {symbol!r}: use 1-12 letters, digits or . - ^ = (e.g. AAPL, BRK-B, ^GSPC, EURUSD=X)"
        )
    return cleaned


def _number(value: Any, digits: int = 4) -> float | int | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(number):
        return None
    return int(number) if number.is_integer() and abs(number) < 2**53 else round(number, digits)


def _utc_iso(epoch: Any) -> str | None:
    seconds = _number(epoch)
    if seconds is None:
        return None
    return datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _without_none(values: dict) -> dict:
    return {k: v for k, v in values.items() if v is not None and v != ""}


@tool
def get_current_stock_price(symbol: str) -> dict:
    """Get the latest market price of a stock, index, currency pair or other Yahoo Finance ticker.

    Args:
        symbol: Ticker symbol as used by Yahoo Finance, e.g. AAPL, RIVN, BRK-B, ^GSPC, EURUSD=X.
    """
    symbol = normalize_symbol(symbol)
    info = _info(symbol)
    price = _number(info.get("regularMarketPrice"))
    if price is None:
        price = _number(info.get("currentPrice"))
    if price is None:
        raise ToolError(f"no price found for {symbol}; check that the ticker symbol is right")
    return _without_none({
        "symbol": symbol,
        "name": info.get("shortName") or info.get("longName"),
        "price": price,
        "currency": info.get("currency"),
        "previous_close": _number(info.get("regularMarketPreviousClose") or info.get("previousClose")),
        "change_percent": _number(info.get("regularMarketChangePercent"), 2),
        "market_state": info.get("marketState"),
        "as_of": _utc_iso(info.get("regularMarketTime")),
    })


def _news_item(item: Any) -> dict | None:
    """One news item in either yfinance shape: flat (before 0.2.50) or nested under `content` (current)."""
    if not isinstance(item, dict):
        return None
    content = item["content"] if isinstance(item.get("content"), dict) else item
    title = content.get("title")
    if not isinstance(title, str) or not title.strip():
        return None

    def url(key: str) -> str | None:
        value = content.get(key)
        return value.get("url") if isinstance(value, dict) else None

    provider = content.get("provider")
    published = content.get("pubDate") or content.get("displayTime") or _utc_iso(content.get("providerPublishTime"))
    return _without_none({
        "title": title.strip(),
        "publisher": content.get("publisher") or (provider.get("displayName") if isinstance(provider, dict) else None),
        "link": content.get("link") or url("clickThroughUrl") or url("canonicalUrl"),
        "published": published if isinstance(published, str) else None,
    })


@tool
def get_company_news(symbol: str, max_items: int = 5) -> dict:
    """Get recent news headlines about a company from Yahoo Finance, with publisher, link and publication date.

    Args:
        symbol: Ticker symbol as used by Yahoo Finance, e.g. AAPL, RIVN.
        max_items: How many news items to return, 1 to 10.
    """
    symbol = normalize_symbol(symbol)
    if not 1 <= max_items <= MAX_NEWS_ITEMS:
        raise ToolError(f"max_items must be between 1 and {MAX_NEWS_ITEMS}, got {max_items}")
    raw = _market_data(symbol, "news", lambda ticker: ticker.news)
    raw = raw if isinstance(raw, list) else []
    items = [parsed for parsed in map(_news_item, raw) if parsed]
    if raw and not items:
        # The seed tutorial's failure: a new item shape read as "no news". Say so instead.
        raise ToolError(f"news for {symbol} came in a shape this tool does not understand")
    return {"symbol": symbol, "news": items[:max_items]}


_PROFILE_FIELDS = {
    "name": "longName",
    "sector": "sector",
    "industry": "industry",
    "country": "country",
    "website": "website",
    "employees": "fullTimeEmployees",
    "exchange": "exchange",
    "currency": "currency",
}
_FUNDAMENTAL_FIELDS = {
    "market_cap": "marketCap",
    "enterprise_value": "enterpriseValue",
    "trailing_pe": "trailingPE",
    "forward_pe": "forwardPE",
    "peg_ratio": "trailingPegRatio",
    "price_to_book": "priceToBook",
    "trailing_eps": "trailingEps",
    "forward_eps": "forwardEps",
    "dividend_yield": "dividendYield",
    "beta": "beta",
    "profit_margin": "profitMargins",
    "revenue_growth": "revenueGrowth",
    "total_revenue": "totalRevenue",
    "ebitda": "ebitda",
    "fifty_two_week_high": "fiftyTwoWeekHigh",
    "fifty_two_week_low": "fiftyTwoWeekLow",
}


@tool
def get_company_profile(symbol: str) -> dict:
    """Get a company's profile (sector, industry, business summary) and fundamentals (market cap, P/E, EPS, margins).

    Args:
        symbol: Ticker symbol as used by Yahoo Finance, e.g. AAPL, MSFT.
    """
    symbol = normalize_symbol(symbol)
    info = _info(symbol)
    profile = {key: info.get(source) for key, source in _PROFILE_FIELDS.items()}
    profile["name"] = profile["name"] or info.get("shortName")
    summary = info.get("longBusinessSummary")
    if isinstance(summary, str) and len(summary) > MAX_SUMMARY_CHARS:
        summary = summary[: MAX_SUMMARY_CHARS - 3].rsplit(" ", 1)[0] + "..."
    profile["summary"] = summary
    fundamentals = _without_none({key: _number(info.get(source)) for key, source in _FUNDAMENTAL_FIELDS.items()})
    profile = _without_none(profile)
    if "name" not in profile and not fundamentals:
        raise ToolError(f"no company data found for {symbol}; check that the ticker symbol is right")
    return {"symbol": symbol, "profile": profile, "fundamentals": fundamentals}


@tool
def get_stock_price_history(symbol: str, period: Period = "1mo", interval: Interval = "1d") -> dict:
    """Get historical prices (open, high, low, close, volume) of a ticker, with a summary of the whole period.

    At most the 30 most recent bars are listed; pick a coarser interval for long periods.

    Args:
        symbol: Ticker symbol as used by Yahoo Finance, e.g. AAPL.
        period: How far back to look.
        interval: Bar size. 1m works for periods up to 5d, other minute bars up to 1mo, 60m/1h up to 1y.
    """
    symbol = normalize_symbol(symbol)
    if period not in typing.get_args(Period):
        raise ToolError(f"invalid period {period!r}; choose one of {', '.join(typing.get_args(Period))}")
    if interval not in typing.get_args(Interval):
        raise ToolError(f"invalid interval {interval!r}; choose one of {', '.join(typing.get_args(Interval))}")
    allowed_periods = _PERIODS_FOR_INTRADAY.get(interval)
    if allowed_periods is not None and period not in allowed_periods:
        raise ToolError(
            f"interval {interval!r} is only available for periods {', '.join(allowed_periods)}; "
            f"use interval '1d' or longer for period {period!r}"
        )
    frame = _market_data(
        symbol,
        "history",
        lambda ticker: ticker.history(period=period, interval=interval, actions=False, timeout=REQUEST_TIMEOUT_S),
        period,
        interval,
    )
    if frame is None or len(frame) == 0 or "Close" not in getattr(frame, "columns", ()):
        raise ToolError(f"no price history for {symbol} over {period} at {interval}; check the ticker symbol")
    frame = frame.dropna(subset=["Close"])
    if len(frame) == 0:
        raise ToolError(f"no price history for {symbol} over {period} at {interval}; check the ticker symbol")
    intraday = interval in _PERIODS_FOR_INTRADAY
    rows = []
    for stamp, bar in frame.tail(MAX_HISTORY_ROWS).iterrows():
        rows.append(_without_none({
            "date": stamp.strftime("%Y-%m-%d %H:%M") if intraday else stamp.strftime("%Y-%m-%d"),
            "open": _number(bar.get("Open")),
            "high": _number(bar.get("High")),
            "low": _number(bar.get("Low")),
            "close": _number(bar.get("Close")),
            "volume": _number(bar.get("Volume")),
        }))
    first_close, last_close = float(frame["Close"].iloc[0]), float(frame["Close"].iloc[-1])
    summary = _without_none({
        "start": frame.index[0].strftime("%Y-%m-%d"),
        "end": frame.index[-1].strftime("%Y-%m-%d"),
        "bars": len(frame),
        "first_close": _number(first_close),
        "last_close": _number(last_close),
        "change_percent": _number((last_close / first_close - 1) * 100, 2) if first_close else None,
        "high": _number(frame["High"].max()) if "High" in frame.columns else None,
        "low": _number(frame["Low"].min()) if "Low" in frame.columns else None,
    })
    return {"symbol": symbol, "period": period, "interval": interval, "summary": summary, "bars": rows}


_TREND_COLUMNS = {"strongBuy": "strong_buy", "buy": "buy", "hold": "hold", "sell": "sell", "strongSell": "strong_sell"}


@tool
def get_analyst_recommendations(symbol: str) -> dict:
    """Get analyst buy/hold/sell recommendation counts for the last months and analyst price targets for a stock.

    Args:
        symbol: Ticker symbol as used by Yahoo Finance, e.g. AAPL.
    """
    symbol = normalize_symbol(symbol)
    trend, targets = _market_data(
        symbol, "recommendations", lambda ticker: (ticker.recommendations, ticker.analyst_price_targets)
    )
    months = []
    if trend is not None and len(trend) > 0:
        if "period" not in trend.columns:
            raise ToolError(f"analyst recommendations for {symbol} came in a shape this tool does not understand")
        for _, row in trend.iterrows():
            counts = {name: _number(row.get(column)) for column, name in _TREND_COLUMNS.items()}
            months.append({"period": str(row["period"]), **_without_none(counts)})
    price_targets = _without_none({
        key: _number(targets.get(key)) for key in ("current", "mean", "median", "high", "low")
    }) if isinstance(targets, dict) else {}
    if not months and not price_targets:
        raise ToolError(f"no analyst recommendations found for {symbol}")
    result: dict[str, Any] = {"symbol": symbol}
    if months:
        result["recommendation_trend"] = months
        result["periods"] = "0m is the current month, -1m the month before, and so on"
    if price_targets:
        result["price_targets"] = price_targets
    return result
