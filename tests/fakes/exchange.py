"""A fake Binance spot REST server on 127.0.0.1 for a real ccxt client (no mocks of ccxt).

It answers what ccxt's `binance` calls with options={"fetchMarkets": {"types": ["spot"]}}:
GET /api/v3/exchangeInfo and /api/v3/klines (plus /api/v3/time, /api/v3/ping and, when API
keys are configured, the signed /sapi/v1 calls of load_markets, answered with empty lists).
Klines honour symbol, interval, startTime, endTime and limit (default 500, max 1000) like
Binance. Every request is recorded; faults (429s, 500s, duplicates, overlapping pages,
missing candles) are switched on with methods. Stdlib only, so benchmarks can import it too.

    with FakeBinance(symbols=["BTC/USDT"], timeframe="1h", count=30) as server:
        settings = settings_for(server, page_limit=10)
"""
from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from tests.fakes.loopback import LoopbackServer

BINANCE_INTERVALS_MS = {
    "1s": 1_000, "1m": 60_000, "3m": 180_000, "5m": 300_000, "15m": 900_000,
    "30m": 1_800_000, "1h": 3_600_000, "2h": 7_200_000, "4h": 14_400_000, "6h": 21_600_000,
    "8h": 28_800_000, "12h": 43_200_000, "1d": 86_400_000, "3d": 259_200_000,
    "1w": 604_800_000, "1M": 2_592_000_000,
}
MAX_LIMIT = 1000
DEFAULT_LIMIT = 500
DEFAULT_START = datetime(2024, 1, 1, tzinfo=UTC)

INVALID_SYMBOL = {"code": -1121, "msg": "Invalid symbol."}
INVALID_INTERVAL = {"code": -1120, "msg": "Invalid interval."}
TOO_MANY_REQUESTS = {"code": -1003, "msg": "Too many requests; current limit of IP is 6000 "
                     "requests per minute. Please use WebSocket Streams for live updates."}
UNKNOWN_ERROR = {"code": -1000, "msg": "An unknown error occurred while processing the request."}
HTML_ERROR = "<html><head><title>500 Internal Server Error</title></head><body></body></html>"


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server saw it; `api_key` is the X-MBX-APIKEY header, if any; `at`
    its arrival (time.monotonic(), seconds)."""

    method: str
    path: str
    query: dict[str, str]
    api_key: str | None = None
    at: float = 0.0


def _ms(value: datetime | int) -> int:
    if isinstance(value, datetime):
        value = value if value.tzinfo else value.replace(tzinfo=UTC)
        return int(value.timestamp() * 1000)
    return int(value)


def _market_id(symbol: str) -> str:
    return symbol.replace("/", "")


def _fmt(x: float) -> str:
    return f"{x:.8f}"


@dataclass
class _Fault:
    status: int
    remaining: int | None  # None: forever
    after: int  # klines requests to serve normally first
    html: bool


class FakeBinance(LoopbackServer):
    """Deterministic Binance spot klines for `symbols`, `count` bars of `timeframe` from `start`.

    Knobs: fail_klines / rate_limit_next / clear_faults, duplicate_every, overlap, omit,
    delist, append. Candle values depend only on (symbol, bar index), so appending bars
    never changes bars already served.
    """

    thread_name = "fake-binance"

    def __init__(self, symbols: Iterable[str] = ("BTC/USDT",), timeframe: str = "1h",
                 start: datetime | int = DEFAULT_START, count: int = 100, *,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        if timeframe not in BINANCE_INTERVALS_MS:
            raise ValueError(f"the fake serves Binance intervals only, not {timeframe!r}")
        self.symbols = list(symbols)
        self.timeframe = timeframe
        self.step_ms = BINANCE_INTERVALS_MS[timeframe]
        self.start_ms = _ms(start)
        self.counts = {s: int(count) for s in self.symbols}
        self.requests: list[RecordedRequest] = []
        # fault knobs (change through the methods below, or set these attributes directly)
        self.duplicate_every = 0  # > 0: every k-th bar (by bar index) is sent twice in a page
        self.overlap = 0  # > 0: a page starts this many bars before startTime
        self.missing: set[int] = set()  # open times (ms) the server does not have
        self.delisted: set[str] = set()  # listed in exchangeInfo, klines answer -1121
        self._fault: _Fault | None = None
        self._lock = threading.Lock()
        super().__init__(host, port)


    # ------------------------------------------------------------ data
    def bar_time(self, index: int) -> int:
        """Open time (ms) of bar `index`."""
        return self.start_ms + index * self.step_ms

    def append(self, n: int, symbol: str | None = None) -> None:
        """Make `n` more bars available (for one symbol or all)."""
        with self._lock:
            for s in [symbol] if symbol else self.symbols:
                self.counts[s] += n

    def omit(self, indexes: Iterable[int]) -> None:
        """Make bars (by index, for every symbol) missing, as after an exchange outage."""
        with self._lock:
            self.missing.update(self.bar_time(i) for i in indexes)

    def delist(self, symbol: str) -> None:
        """Keep `symbol` in exchangeInfo but answer its klines with Binance's -1121."""
        with self._lock:
            self.delisted.add(symbol)

    def _bar(self, symbol: str, index: int) -> list[Any]:
        level = 100.0 * (self.symbols.index(symbol) + 1)

        def close(i: int) -> float:
            return level * (1 + 0.05 * math.sin(i / 7) + 0.0005 * i)

        o = float(_fmt(close(index - 1) if index else level))
        c = float(_fmt(close(index)))
        h = float(_fmt(max(o, c) * 1.002))
        low = float(_fmt(min(o, c) * 0.998))
        v = float(_fmt(10 + (index * 37) % 11 + index / 1000))
        return [self.bar_time(index), o, h, low, c, v]

    def _indexes(self, symbol: str) -> list[int]:
        return [i for i in range(self.counts[symbol]) if self.bar_time(i) not in self.missing]

    def _select(self, symbol: str, start: int | None, end: int | None, limit: int) -> list[int]:
        """Bar indexes Binance would send: from startTime the first `limit` bars, otherwise
        the latest `limit` bars up to endTime (O(limit), so big series stay fast)."""
        count = self.counts[symbol]
        last = count - 1
        if end is not None:
            last = min(last, (end - self.start_ms) // self.step_ms)
        out: list[int] = []
        if start is not None:
            start -= self.overlap * self.step_ms
            i = max(0, -(-(start - self.start_ms) // self.step_ms))  # ceil division
            while i <= last and len(out) < limit:
                if self.bar_time(i) not in self.missing:
                    out.append(i)
                i += 1
            return out
        i = last
        while i >= 0 and len(out) < limit:
            if self.bar_time(i) not in self.missing:
                out.append(i)
            i -= 1
        return out[::-1]

    def candles(self, symbol: str | None = None) -> list[list]:
        """The unique bars the server holds, as ccxt rows [ms, open, high, low, close, volume]."""
        symbol = symbol or self.symbols[0]
        with self._lock:
            return [self._bar(symbol, i) for i in self._indexes(symbol)]

    def _kline(self, symbol: str, index: int) -> list[Any]:
        ts, o, h, low, c, v = self._bar(symbol, index)
        return [ts, _fmt(o), _fmt(h), _fmt(low), _fmt(c), _fmt(v), ts + self.step_ms - 1,
                _fmt(v * c), 100 + index % 50, _fmt(v / 2), _fmt(v * c / 2), "0"]

    # ------------------------------------------------------------ faults
    def fail_klines(self, status: int = 500, times: int | None = 1, *, after: int = 0,
                    html: bool = False) -> None:
        """After `after` good klines requests, answer `times` of them (None: all) with `status`.

        429 comes with Binance's -1003 body and Retry-After; other codes with a -1000 JSON
        body, or an HTML page when `html` (ccxt maps that to ExchangeNotAvailable).
        """
        with self._lock:
            self._fault = _Fault(status, times, after, html)

    def rate_limit_next(self, n: int = 1) -> None:
        """Answer the next `n` klines requests with 429 Too Many Requests."""
        self.fail_klines(429, n)

    def clear_faults(self) -> None:
        """Back to a healthy server (duplicates, overlap, missing bars and delistings too)."""
        with self._lock:
            self._fault = None
            self.duplicate_every = self.overlap = 0
            self.missing.clear()
            self.delisted.clear()

    # ------------------------------------------------------------ recorded requests
    def klines_requests(self) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.path == "/api/v3/klines"]

    def reset_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    # ------------------------------------------------------------ endpoints
    def _exchange_info(self) -> dict:
        symbols = []
        for s in self.symbols:
            base, quote = s.split("/")
            symbols.append({
                "symbol": _market_id(s), "status": "TRADING", "baseAsset": base,
                "baseAssetPrecision": 8, "quoteAsset": quote, "quotePrecision": 8,
                "quoteAssetPrecision": 8, "baseCommissionPrecision": 8,
                "quoteCommissionPrecision": 8,
                "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS_LIMIT",
                               "TAKE_PROFIT_LIMIT"],
                "icebergAllowed": True, "ocoAllowed": True, "isSpotTradingAllowed": True,
                "isMarginTradingAllowed": False,
                "filters": [
                    {"filterType": "PRICE_FILTER", "minPrice": "0.01000000",
                     "maxPrice": "1000000.00000000", "tickSize": "0.01000000"},
                    {"filterType": "LOT_SIZE", "minQty": "0.00001000",
                     "maxQty": "9000.00000000", "stepSize": "0.00001000"},
                ],
                "permissions": [], "permissionSets": [["SPOT"]],
                "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
                "allowedSelfTradePreventionModes": ["EXPIRE_TAKER", "EXPIRE_MAKER"],
            })
        return {"timezone": "UTC", "serverTime": _now_ms(),
                "rateLimits": [{"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE",
                                "intervalNum": 1, "limit": 6000}],
                "exchangeFilters": [], "symbols": symbols}

    def _klines(self, q: dict[str, str]) -> tuple[int, Any, dict[str, str]]:
        by_id = {_market_id(s): s for s in self.symbols}
        symbol = by_id.get(q.get("symbol", ""))
        if symbol is None or symbol in self.delisted:
            return 400, INVALID_SYMBOL, {}
        if q.get("interval") != self.timeframe:
            # the fake serves one timeframe; Binance would serve any of its intervals
            return 400, INVALID_INTERVAL, {}
        fault = self._fault
        if fault is not None:
            if fault.after > 0:
                fault.after -= 1
            else:
                if fault.remaining is not None:
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._fault = None
                if fault.status == 429:
                    return 429, TOO_MANY_REQUESTS, {"Retry-After": "1"}
                return fault.status, (HTML_ERROR if fault.html else UNKNOWN_ERROR), {}
        try:
            limit = min(max(int(q.get("limit", DEFAULT_LIMIT)), 1), MAX_LIMIT)
            start = int(q["startTime"]) if "startTime" in q else None
            end = int(q["endTime"]) if "endTime" in q else None
        except ValueError:
            return 400, {"code": -1100, "msg": "Illegal characters found in a parameter."}, {}
        indexes = self._select(symbol, start, end, limit)
        rows = []
        for i in indexes:
            rows.append(self._kline(symbol, i))
            if self.duplicate_every and i % self.duplicate_every == 0:
                rows.append(self._kline(symbol, i))
        return 200, rows, {}

    def _route(self, method: str, path: str, q: dict[str, str]) -> tuple[int, Any, dict]:
        with self._lock:
            if path == "/api/v3/exchangeInfo":
                return 200, self._exchange_info(), {}
            if path == "/api/v3/klines":
                return self._klines(q)
            if path == "/api/v3/time":
                return 200, {"serverTime": _now_ms()}, {}
            if path == "/api/v3/ping":
                return 200, {}, {}
            if path in ("/sapi/v1/capital/config/getall", "/sapi/v1/margin/allPairs",
                        "/sapi/v1/margin/isolated/allPairs"):
                return 200, [], {}
        return 404, "<html><body><h1>404 Not Found</h1></body></html>", {}


def _now_ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeBinance/1.0"
    # headers and body go out in two writes: with Nagle on, the client's delayed ACK adds
    # ~40 ms to every keep-alive request, which would hide ccxt's own request spacing
    disable_nagle_algorithm = True

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        fake: FakeBinance = self.server.fake  # type: ignore[attr-defined]
        parts = urlsplit(self.path)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        with fake._lock:
            fake.requests.append(RecordedRequest(self.command, parts.path, query,
                                                 self.headers.get("X-MBX-APIKEY"),
                                                 time.monotonic()))
        status, body, headers = fake._route(self.command, parts.path, query)
        text = body if isinstance(body, str) else json.dumps(body, separators=(",", ":"))
        data = text.encode()
        self.send_response(status)
        ctype = "text/html" if isinstance(body, str) else "application/json;charset=UTF-8"
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass  # keep test output clean; requests are recorded in FakeBinance.requests


def settings_for(server: FakeBinance, **overrides: Any):
    """CryptoSettings for a live ingest from `server` (binance, api_url -> server, no rate limit).

    Keyword overrides: any CryptoSettings field (symbols=..., timeframe=...), any CryptoLive
    field directly (page_limit=10, max_retries=2) or `live={...}` merged into the live section.
    """
    from tasks.config import CryptoLive, CryptoSettings

    live: dict[str, Any] = {
        "since": datetime.fromtimestamp(server.start_ms / 1000, tz=UTC),
        "api_url": server.url,
        "rate_limit": False,
        "options": {"fetchMarkets": {"types": ["spot"]}},
        "backoff_seconds": 0.01,
        "max_retries": 3,
    }
    live.update(overrides.pop("live", {}))
    for key in list(overrides):
        if key in CryptoLive.model_fields:
            live[key] = overrides.pop(key)
    fields = {"source": "live", "exchange": "binance", "symbols": list(server.symbols),
              "timeframe": server.timeframe, "live": live, **overrides}
    return CryptoSettings.model_validate(fields)


FakeBinance.handler = _Handler
