"""function_calling_agent.tools.finance against fakes of yfinance's `Ticker` attributes, plus the real (unreachable) network path.

The fake data below is NOT recorded from Yahoo (this machine cannot reach it): it is built from the shapes yfinance 1.7
documents and returns (`Ticker.info` dict keys, the two `Ticker.news` item shapes, the `Ticker.history` DataFrame,
the `Ticker.recommendations` trend DataFrame and the `Ticker.analyst_price_targets` dict).
"""

from __future__ import annotations

import json
import socket
import threading
import time

import pandas as pd
import pydantic
import pytest
import yfinance
from yfinance.exceptions import YFRateLimitError

from function_calling_agent.tools import ToolError, finance, load_tool_modules, spec_of
from function_calling_agent.tools.results import serialize_result

# Documented shape: `Ticker.info` is Yahoo's quoteSummary modules flattened into one dict (subset of its keys).
INFO_AAPL = {
    "symbol": "AAPL", "shortName": "Apple Inc.", "longName": "Apple Inc.", "currency": "USD", "exchange": "NMS",
    "quoteType": "EQUITY", "marketState": "REGULAR", "regularMarketPrice": 227.52, "currentPrice": 227.52,
    "regularMarketPreviousClose": 225.0, "previousClose": 225.0, "regularMarketChangePercent": 1.12,
    "regularMarketTime": 1736280000, "sector": "Technology", "industry": "Consumer Electronics",
    "country": "United States", "website": "https://www.apple.com", "fullTimeEmployees": 164000,
    "longBusinessSummary": "Apple Inc. designs, manufactures, and markets smartphones, personal computers, tablets, "
                           "wearables, and accessories worldwide. " * 12,
    "marketCap": 3437000000000, "enterpriseValue": 3470000000000, "trailingPE": 37.4, "forwardPE": 28.9,
    "trailingPegRatio": 2.1, "priceToBook": 57.8, "trailingEps": 6.08, "forwardEps": 7.87, "dividendYield": 0.44,
    "beta": 1.24, "profitMargins": 0.2397, "revenueGrowth": 0.061, "totalRevenue": 391035000000,
    "ebitda": 134661000000, "fiftyTwoWeekHigh": 260.1, "fiftyTwoWeekLow": 164.08, "trailingAnnualDividendRate": None,
}

# Documented shape: current yfinance (>= 0.2.51) news items nest everything under `content`.
NEWS_NESTED = [
    {"id": "3b9a2e0c", "content": {
        "id": "3b9a2e0c", "contentType": "STORY", "title": "Apple unveils new chips",
        "summary": "Apple said ...", "pubDate": "2025-01-06T14:47:49Z", "displayTime": "2025-01-06T15:00:00Z",
        "provider": {"displayName": "Reuters", "url": "http://www.reuters.com/"},
        "canonicalUrl": {"url": "https://finance.yahoo.com/news/apple-unveils-new-chips.html", "site": "finance"},
        "clickThroughUrl": {"url": "https://finance.yahoo.com/news/apple-unveils-new-chips-ct.html"},
        "thumbnail": {"resolutions": [{"url": "https://s.yimg.com/x.jpg", "width": 140, "height": 140}]},
    }},
    {"id": "77aa", "content": {
        "id": "77aa", "contentType": "VIDEO", "title": "Is Apple a buy?", "pubDate": "2025-01-05T10:00:00Z",
        "provider": {"displayName": "Yahoo Finance Video"},
        "canonicalUrl": {"url": "https://finance.yahoo.com/video/is-apple-a-buy.html"}, "clickThroughUrl": None,
    }},
]
# Documented shape: yfinance before 0.2.51 returned flat items.
NEWS_FLAT = [
    {"uuid": "ddd026e3", "title": "Dow Jones Futures: Apple Rallies", "publisher": "Investor's Business Daily",
     "link": "https://finance.yahoo.com/m/ddd026e3/dow-jones-futures.html", "providerPublishTime": 1634395226,
     "type": "STORY", "relatedTickers": ["AAPL"]},
]


def history_frame(rows: int = 40) -> pd.DataFrame:
    """Documented shape: `Ticker.history(actions=False)` has a tz-aware DatetimeIndex named Date and OHLCV columns."""
    index = pd.date_range(end="2025-01-10", periods=rows, freq="B", tz="America/New_York", name="Date")
    close = [200.0 + i for i in range(rows)]
    return pd.DataFrame({"Open": [c - 1 for c in close], "High": [c + 2 for c in close],
                         "Low": [c - 2 for c in close], "Close": close, "Volume": [1_000_000 + i for i in range(rows)]},
                        index=index)


# Documented shape: `Ticker.recommendations` is Yahoo's recommendationTrend as a DataFrame.
RECOMMENDATIONS = pd.DataFrame({
    "period": ["0m", "-1m", "-2m", "-3m"], "strongBuy": [8, 8, 7, 7], "buy": [24, 23, 23, 22],
    "hold": [12, 13, 13, 14], "sell": [1, 1, 2, 2], "strongSell": [2, 2, 2, 2],
})
# Documented shape: `Ticker.analyst_price_targets` dict.
PRICE_TARGETS = {"current": 227.52, "high": 325.0, "low": 183.86, "mean": 251.4, "median": 250.0}


class FakeYahoo:
    """Replaces `yfinance.Ticker`; records every construction; `fail_with` makes attribute reads raise."""

    def __init__(self):
        self.constructed: list[str] = []
        self.info = dict(INFO_AAPL)
        self.news = NEWS_NESTED
        self.history = history_frame()
        self.fail_with: list[BaseException] = []
        self.history_calls: list[dict] = []

    def ticker(self, symbol, session=None):
        self.constructed.append(symbol)
        assert session is not None, "the tools must hand yfinance their bounded session"
        return _FakeTicker(self)


class _FakeTicker:
    def __init__(self, yahoo: FakeYahoo):
        self._yahoo = yahoo

    def _read(self, value):
        if self._yahoo.fail_with:
            raise self._yahoo.fail_with.pop(0)
        return value

    @property
    def info(self):
        return self._read(self._yahoo.info)

    @property
    def news(self):
        return self._read(self._yahoo.news)

    @property
    def recommendations(self):
        return self._read(RECOMMENDATIONS)

    @property
    def analyst_price_targets(self):
        return self._read(PRICE_TARGETS)

    def history(self, **kwargs):
        self._yahoo.history_calls.append(kwargs)
        return self._read(self._yahoo.history)


@pytest.fixture(autouse=True)
def empty_cache():
    finance.market_data_cache.clear()
    yield
    finance.market_data_cache.clear()


@pytest.fixture
def yahoo(monkeypatch) -> FakeYahoo:
    fake = FakeYahoo()
    monkeypatch.setattr(yfinance, "Ticker", fake.ticker)
    return fake


def test_finance_tool_schemas():
    registry = load_tool_modules(["function_calling_agent.tools.finance"])
    assert registry.names() == ("get_current_stock_price", "get_company_news", "get_company_profile",
                                "get_stock_price_history", "get_analyst_recommendations")
    for spec in registry.values():
        print(json.dumps(spec.openai_schema()["function"]))
        assert spec.parameters["required"] == ["symbol"]
        assert spec.parameters["properties"]["symbol"]["type"] == "string"
        assert spec.timeout_s is None  # the server default applies; the network deadline stays below it
    history = registry["get_stock_price_history"].parameters["properties"]
    assert history["period"]["enum"] == ["1d", "5d", "1mo", "3mo", "6mo", "1y", "2y", "5y", "10y", "ytd", "max"]
    assert history["period"]["default"] == "1mo"
    assert history["interval"]["enum"] == ["1m", "2m", "5m", "15m", "30m", "60m", "90m", "1h", "1d", "5d", "1wk",
                                           "1mo", "3mo"]
    assert registry["get_company_news"].parameters["properties"]["max_items"] == {
        "type": "integer", "description": "How many news items to return, 1 to 10.", "default": 5}


def test_history_arguments_outside_the_enum_are_rejected_naming_the_field():
    spec = spec_of(finance.get_stock_price_history)
    with pytest.raises(pydantic.ValidationError) as caught:
        spec.validate_arguments({"symbol": "AAPL", "period": "2w"})
    assert [e["loc"][0] for e in caught.value.errors()] == ["period"]
    with pytest.raises(pydantic.ValidationError) as caught:
        spec.validate_arguments({"symbol": "AAPL", "interval": "1s"})
    assert [e["loc"][0] for e in caught.value.errors()] == ["interval"]


def test_current_price(yahoo):
    assert finance.get_current_stock_price("aapl") == {
        "symbol": "AAPL", "name": "Apple Inc.", "price": 227.52, "currency": "USD", "previous_close": 225,
        "change_percent": 1.12, "market_state": "REGULAR", "as_of": "2025-01-07T20:00:00Z"}
    assert yahoo.constructed == ["AAPL"]


def test_current_price_falls_back_to_current_price_and_reports_a_missing_one(yahoo):
    yahoo.info = {"currentPrice": 10.5}
    assert finance.get_current_stock_price("XYZ")["price"] == 10.5
    yahoo.info = {"trailingPegRatio": None}  # what Yahoo returns for an unknown symbol
    with pytest.raises(ToolError, match="no price found for NOPE; check that the ticker symbol is right"):
        finance.get_current_stock_price("NOPE")


def test_news_in_the_current_nested_shape(yahoo):
    assert finance.get_company_news("AAPL") == {"symbol": "AAPL", "news": [
        {"title": "Apple unveils new chips", "publisher": "Reuters",
         "link": "https://finance.yahoo.com/news/apple-unveils-new-chips-ct.html", "published": "2025-01-06T14:47:49Z"},
        {"title": "Is Apple a buy?", "publisher": "Yahoo Finance Video",
         "link": "https://finance.yahoo.com/video/is-apple-a-buy.html", "published": "2025-01-05T10:00:00Z"},
    ]}


def test_news_in_the_old_flat_shape(yahoo):
    yahoo.news = NEWS_FLAT
    assert finance.get_company_news("AAPL", max_items=1) == {"symbol": "AAPL", "news": [
        {"title": "Dow Jones Futures: Apple Rallies", "publisher": "Investor's Business Daily",
         "link": "https://finance.yahoo.com/m/ddd026e3/dow-jones-futures.html", "published": "2021-10-16T14:40:26Z"},
    ]}


def test_news_never_silently_empty(yahoo):
    yahoo.news = [{"id": "x", "content": {"headline": "a shape nobody documented"}}]
    with pytest.raises(ToolError, match="came in a shape this tool does not understand"):
        finance.get_company_news("AAPL")
    yahoo.news = []
    assert finance.get_company_news("MSFT") == {"symbol": "MSFT", "news": []}
    with pytest.raises(ToolError, match="max_items must be between 1 and 10"):
        finance.get_company_news("AAPL", max_items=50)


def test_company_profile_and_fundamentals(yahoo):
    result = finance.get_company_profile("AAPL")
    summary = result["profile"].pop("summary")
    assert len(summary) <= finance.MAX_SUMMARY_CHARS and summary.endswith("...")
    assert result == {"symbol": "AAPL", "profile": {
        "name": "Apple Inc.", "sector": "Technology", "industry": "Consumer Electronics", "country": "United States",
        "website": "https://www.apple.com", "employees": 164000, "exchange": "NMS", "currency": "USD"},
        "fundamentals": {
        "market_cap": 3437000000000, "enterprise_value": 3470000000000, "trailing_pe": 37.4, "forward_pe": 28.9,
        "peg_ratio": 2.1, "price_to_book": 57.8, "trailing_eps": 6.08, "forward_eps": 7.87, "dividend_yield": 0.44,
        "beta": 1.24, "profit_margin": 0.2397, "revenue_growth": 0.061, "total_revenue": 391035000000,
        "ebitda": 134661000000, "fifty_two_week_high": 260.1, "fifty_two_week_low": 164.08}}


def test_price_history_is_capped_with_a_summary(yahoo):
    result = finance.get_stock_price_history("AAPL", period="3mo", interval="1d")
    assert yahoo.history_calls[0]["period"] == "3mo" and yahoo.history_calls[0]["interval"] == "1d"
    assert len(result["bars"]) == finance.MAX_HISTORY_ROWS
    assert result["bars"][-1] == {"date": "2025-01-10", "open": 238, "high": 241, "low": 237, "close": 239,
                                  "volume": 1000039}
    assert result["summary"] == {"start": "2024-11-18", "end": "2025-01-10", "bars": 40, "first_close": 200,
                                 "last_close": 239, "change_percent": 19.5, "high": 241, "low": 198}
    assert len(serialize_result(result, 100_000)) < 3000


def test_price_history_rejects_unavailable_combinations_before_any_network(yahoo):
    with pytest.raises(ToolError, match="interval '1m' is only available for periods 1d, 5d"):
        finance.get_stock_price_history("AAPL", period="1y", interval="1m")
    with pytest.raises(ToolError, match="invalid period '2w'"):
        finance.get_stock_price_history("AAPL", period="2w")
    assert yahoo.constructed == []
    yahoo.history = history_frame(0)
    with pytest.raises(ToolError, match="no price history for AAPL"):
        finance.get_stock_price_history("AAPL", period="5d", interval="1h")


def test_analyst_recommendations(yahoo):
    assert finance.get_analyst_recommendations("AAPL") == {
        "symbol": "AAPL",
        "recommendation_trend": [
            {"period": "0m", "strong_buy": 8, "buy": 24, "hold": 12, "sell": 1, "strong_sell": 2},
            {"period": "-1m", "strong_buy": 8, "buy": 23, "hold": 13, "sell": 1, "strong_sell": 2},
            {"period": "-2m", "strong_buy": 7, "buy": 23, "hold": 13, "sell": 2, "strong_sell": 2},
            {"period": "-3m", "strong_buy": 7, "buy": 22, "hold": 14, "sell": 2, "strong_sell": 2},
        ],
        "periods": "0m is the current month, -1m the month before, and so on",
        "price_targets": {"current": 227.52, "mean": 251.4, "median": 250, "high": 325, "low": 183.86},
    }


@pytest.mark.parametrize("symbol", ["", "   ", "AAPL; rm -rf /", "../../etc", "$$$", "TOOLONGSYMBOL1", "...", None])
def test_bad_symbols_are_rejected_before_any_network(yahoo, symbol):
    for function in (finance.get_current_stock_price, finance.get_company_news, finance.get_company_profile,
                     finance.get_stock_price_history, finance.get_analyst_recommendations):
        with pytest.raises(ToolError, match="invalid ticker symbol"):
            function(symbol)
    assert yahoo.constructed == []


@pytest.mark.parametrize("symbol, normalized", [(" brk-b ", "BRK-B"), ("^gspc", "^GSPC"), ("eurusd=x", "EURUSD=X"),
                                                ("rds.a", "RDS.A")])
def test_symbols_are_normalized(yahoo, symbol, normalized):
    assert finance.get_current_stock_price(symbol)["symbol"] == normalized
    assert yahoo.constructed == [normalized]


def test_cache_is_shared_across_calls_and_tools(yahoo):
    finance.get_current_stock_price("AAPL")
    finance.get_current_stock_price("aapl")
    finance.get_company_profile("AAPL")  # reads the same `info`
    assert yahoo.constructed == ["AAPL"]
    finance.get_stock_price_history("AAPL", period="5d")
    finance.get_stock_price_history("AAPL", period="1mo")
    finance.get_stock_price_history("AAPL", period="5d")
    assert yahoo.constructed == ["AAPL", "AAPL", "AAPL"]


def test_failures_are_not_cached(yahoo):
    yahoo.fail_with = [KeyError("quoteSummary")]
    with pytest.raises(ToolError, match="market data error for AAPL: KeyError"):
        finance.get_current_stock_price("AAPL")
    assert finance.get_current_stock_price("AAPL")["price"] == 227.52


def test_ttl_cache_expires_and_is_bounded():
    now = [0.0]
    cache = finance.TTLCache(ttl_s=60, max_entries=2, clock=lambda: now[0])
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "a" is now the most recently used
    cache.put("c", 3)
    assert (cache.get("b", "gone"), cache.get("a"), cache.get("c")) == ("gone", 1, 3)
    now[0] = 60.0
    assert cache.get("a", "expired") == "expired" and len(cache) == 1


def test_rate_limit_gets_one_backoff_then_succeeds(yahoo, monkeypatch):
    monkeypatch.setattr(finance, "RATE_LIMIT_BACKOFF_S", 0.2)
    yahoo.fail_with = [YFRateLimitError()]
    started = time.monotonic()
    assert finance.get_current_stock_price("AAPL")["price"] == 227.52
    assert time.monotonic() - started >= 0.2
    assert yahoo.constructed == ["AAPL", "AAPL"]


def test_rate_limit_twice_is_a_clear_error(yahoo, monkeypatch):
    monkeypatch.setattr(finance, "RATE_LIMIT_BACKOFF_S", 0.01)
    yahoo.fail_with = [YFRateLimitError(), YFRateLimitError(), YFRateLimitError()]
    with pytest.raises(ToolError, match=r"rate limited by Yahoo Finance \(HTTP 429\) even after a retry"):
        finance.get_company_news("AAPL")
    assert yahoo.constructed == ["AAPL", "AAPL"]


def test_results_are_small_json(yahoo):
    for result in (finance.get_current_stock_price("AAPL"), finance.get_company_news("AAPL"),
                   finance.get_company_profile("AAPL"), finance.get_stock_price_history("AAPL", period="1y"),
                   finance.get_analyst_recommendations("AAPL")):
        assert len(serialize_result(result, 100_000)) < 4096


def _yahoo_reachable() -> bool:
    if any(name in __import__("os").environ for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # cannot tell cheaply; do not claim the network is down
    try:
        socket.create_connection(("query2.finance.yahoo.com", 443), timeout=3).close()
    except OSError:
        return False
    return True


@pytest.mark.skipif(_yahoo_reachable(), reason="Yahoo Finance is reachable from here; this tests the offline path")
def test_real_unreachable_network_fails_fast_with_a_relayable_error():
    for call in (lambda: finance.get_current_stock_price("AAPL"), lambda: finance.get_company_news("AAPL"),
                 lambda: finance.get_stock_price_history("AAPL", period="5d")):
        started = time.monotonic()
        with pytest.raises(ToolError, match="^market data is unreachable: ") as caught:
            call()
        elapsed = time.monotonic() - started
        print(f"{elapsed:.3f} s: {caught.value}")
        assert elapsed < finance.CALL_DEADLINE_S + 5  # the call's deadline, not a TCP timeout of minutes


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_proxy_environment_variables_are_honoured(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with pytest.raises(ToolError, match="^market data is unreachable: .*over proxy 127.0.0.1"):
        finance.get_current_stock_price("AAPL")


def test_a_silent_network_is_cut_off_at_the_deadline(monkeypatch):
    # A "proxy" that accepts connections and never answers: the hang a firewall that drops packets produces.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(32)
    accepted = []
    threading.Thread(target=lambda: [accepted.append(silent.accept()) for _ in range(32)], daemon=True).start()
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{silent.getsockname()[1]}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.setattr(finance, "REQUEST_TIMEOUT_S", 0.5)
    monkeypatch.setattr(finance, "CALL_DEADLINE_S", 1.0)
    try:
        started = time.monotonic()
        with pytest.raises(ToolError, match="^market data is unreachable: .*timed out"):
            finance.get_analyst_recommendations("AAPL")
        assert time.monotonic() - started < 5  # the 1 s deadline, not a proxy that never answers
    finally:
        silent.close()
        for connection, _ in accepted:
            connection.close()
