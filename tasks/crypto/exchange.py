"""Live candles from any ccxt exchange, freqtrade-style: pagination here, storage in store.py.

`fetch_ohlcv_range` is a plain `since` loop with retries that hands pages to a callback;
`ingest_live` turns those pages into validated, merged candles, incrementally per symbol.
Credentials (optional; public candles need none) never reach logs, errors or reports.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import ccxt

from tasks.config import CryptoLive, CryptoSettings
from tasks.crypto import store
from tasks.crypto.candles import drop_incomplete, from_ccxt_rows
from tasks.crypto.ingest import live_partition, save_batch
from tasks.crypto.timeframes import timeframe_ms
from tasks.errors import ConfigError, FetchError
from tasks.logs import get_logger

# NetworkError (DDoSProtection, RateLimitExceeded, RequestTimeout, ExchangeNotAvailable, ...)
# derives from OperationFailed, which is also what binance raises for a 500 with a JSON body.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (ccxt.OperationFailed,)
# ExchangeError covers BadSymbol, BadRequest, AuthenticationError, NotSupported, ...
PERMANENT_ERRORS: tuple[type[Exception], ...] = (ccxt.ExchangeError,)
DEFAULT_PAGE_LIMIT = 500
MAX_BACKOFF_SECONDS = 60.0

T = TypeVar("T")


@dataclass
class FetchStats:
    """requests: fetch_ohlcv calls (failed ones too); pages: non-empty pages; candles: rows
    handed to on_batch; retries: retried calls (market loading included)."""

    requests: int = 0
    pages: int = 0
    candles: int = 0
    retries: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------ exchange
def _credentials(live: CryptoLive) -> tuple[str | None, str | None]:
    """(api key, secret) from the Prefect Secret block if configured, else the environment."""
    if live.secret_block:
        from prefect.blocks.system import Secret

        try:
            value = Secret.load(live.secret_block).get()
        except Exception as exc:  # a missing block or no Prefect API: a config problem
            raise ConfigError(f"crypto.live.secret_block: cannot load Secret block "
                              f"{live.secret_block!r} ({type(exc).__name__}: {exc})") from None
        key, sep, secret = str(value).partition(":")
        if not sep or not key or not secret:
            raise ConfigError(f"crypto.live.secret_block: Secret block {live.secret_block!r} "
                              "must hold 'key:secret'")
        return key, secret
    return os.environ.get(live.api_key_env) or None, os.environ.get(live.secret_env) or None


def _rebase_url(url: str, base: str) -> str:
    """Replace scheme+host of `url` with those of `base`; a path in `base` is prefixed."""
    old, new = urlsplit(url), urlsplit(base)
    if not old.scheme or not old.netloc:
        return url
    path = new.path.rstrip("/") + old.path
    return urlunsplit((new.scheme, new.netloc, path, old.query, old.fragment))


def _rebase_urls(node: Any, base: str) -> Any:
    if isinstance(node, dict):
        return {k: _rebase_urls(v, base) for k, v in node.items()}
    if isinstance(node, str):
        return _rebase_url(node, base)
    return node


def _redact(text: str, exchange: ccxt.Exchange) -> str:
    """`text` with every credential the exchange holds replaced by ***."""
    for attr in ("apiKey", "secret", "password", "uid", "privateKey", "token"):
        value = getattr(exchange, attr, None)
        if isinstance(value, str) and len(value) >= 4:
            text = text.replace(value, "***")
    return text


class _RedactingLogger(logging.LoggerAdapter):
    """Wraps ccxt's logger so the exchange's credentials are replaced by *** in every record."""

    def __init__(self, logger: logging.Logger, exchange: ccxt.Exchange) -> None:
        super().__init__(logger, {})
        self.exchange = exchange

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if self.isEnabledFor(level):
            text = str(msg) % args if args else str(msg)
            self.logger.log(level, "%s", _redact(text, self.exchange), **kwargs)


def make_exchange(settings: CryptoSettings) -> ccxt.Exchange:
    """A configured ccxt client for settings.exchange (rate limit, options, credentials, api_url)."""
    live = settings.live
    exchange_id = settings.exchange
    if exchange_id not in ccxt.exchanges or not hasattr(ccxt, exchange_id):
        raise ConfigError(f"crypto.exchange: {exchange_id!r} is not a ccxt exchange id "
                          "(see ccxt.exchanges, e.g. binance, kraken, bitstamp)")
    config: dict[str, Any] = {"enableRateLimit": live.rate_limit, "options": dict(live.options)}
    key, secret = _credentials(live)
    if key:
        config["apiKey"] = key
    if secret:
        config["secret"] = secret
    log = get_logger()
    if bool(key) != bool(secret):
        log.warning("%s: only one of API key / secret is set (%s, %s); using what is there",
                    exchange_id, live.api_key_env, live.secret_env)
    exchange = getattr(ccxt, exchange_id)(config)
    # ccxt logs every request's headers (API key included) at DEBUG: scrub them
    exchange.logger = _RedactingLogger(exchange.logger, exchange)
    if live.api_url:
        exchange.urls["api"] = _rebase_urls(exchange.urls.get("api"), live.api_url)
    log.debug("%s: client ready (rate limit %s, credentials %s, api_url %s)", exchange_id,
              live.rate_limit, "set" if key else "none", live.api_url or "default")
    return exchange


# ------------------------------------------------------------------ fetching
def _iso(ms: int | None) -> str | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat()


def _page_limit(exchange: ccxt.Exchange, page_limit: int | None) -> int:
    if page_limit:
        return page_limit
    features = getattr(exchange, "features", None) or {}
    spot = features.get("spot") or {}
    ohlcv = spot.get("fetchOHLCV") or {}
    return int(ohlcv.get("limit") or DEFAULT_PAGE_LIMIT)


def fetch_ohlcv_range(exchange: ccxt.Exchange, symbol: str, timeframe: str, since_ms: int,
                      until_ms: int | None, *, page_limit: int | None = None,
                      max_retries: int = 5, backoff_seconds: float = 1.0,
                      on_batch: Callable[[list[list]], None],
                      flush_every_pages: int = 20) -> FetchStats:
    """Page through candles [since_ms, until_ms) and pass them to `on_batch` in batches.

    Transient errors are retried with exponential backoff; permanent ones raise FetchError at
    once. Rows fetched so far are always handed to `on_batch` before any error is raised.
    """
    stats = FetchStats()
    where = f"{exchange.id} {symbol} {timeframe}"
    log = get_logger()

    def call(what: str, since: int | None, fn: Callable[[], T]) -> T:
        attempt = 0
        while True:
            try:
                return fn()
            except TRANSIENT_ERRORS as exc:
                detail = _redact(f"{type(exc).__name__}: {exc}", exchange)
                if attempt >= max_retries:
                    at = f" since {_iso(since)} ({since})" if since is not None else ""
                    raise FetchError(f"{where}: {what}{at} still failing after {max_retries} "
                                     f"retries; last error {detail}") from None
                delay = min(backoff_seconds * 2 ** attempt, MAX_BACKOFF_SECONDS)
                attempt += 1
                stats.retries += 1
                log.warning("%s: %s failed (%s); retry %d/%d in %.2fs", where, what,
                            detail[:200], attempt, max_retries, delay)
                time.sleep(delay)
            except PERMANENT_ERRORS as exc:
                detail = _redact(f"{type(exc).__name__}: {exc}", exchange)
                raise FetchError(f"{where}: {what} failed permanently (not retried): "
                                 f"{detail}") from None

    call("loading markets", None, exchange.load_markets)
    if not exchange.has.get("fetchOHLCV"):
        raise FetchError(f"{where}: {exchange.id} does not offer OHLCV candles (fetchOHLCV)")
    if timeframe not in (exchange.timeframes or {}):
        offered = ", ".join(exchange.timeframes or {}) or "none"
        raise FetchError(f"{where}: timeframe {timeframe!r} is not offered by {exchange.id} "
                         f"(offered: {offered}); check crypto.timeframe")
    if symbol not in exchange.markets:
        raise FetchError(f"{where}: symbol {symbol!r} is not listed on {exchange.id}; "
                         "check crypto.symbols")

    limit = _page_limit(exchange, page_limit)
    step = timeframe_ms(timeframe)
    pending: list[list] = []
    pages_pending = 0

    def flush() -> None:
        nonlocal pending, pages_pending
        if pending:
            rows, pending, pages_pending = pending, [], 0
            on_batch(rows)

    since = since_ms
    try:
        while until_ms is None or since < until_ms:
            def fetch_page(since: int = since) -> list[list]:
                stats.requests += 1
                return exchange.fetch_ohlcv(symbol, timeframe, since=since, limit=limit)

            page = call("fetch_ohlcv", since, fetch_page)
            if not page:
                break
            rows = [r for r in page
                    if r[0] >= since and (until_ms is None or r[0] < until_ms)]
            stats.pages += 1
            stats.candles += len(rows)
            pending.extend(rows)
            pages_pending += 1
            if pages_pending >= flush_every_pages:
                flush()
            next_since = max(r[0] for r in page) + step
            if next_since <= since:  # the exchange ignored `since`: stop rather than loop
                log.warning("%s: no progress past %s; stopping", where, _iso(since))
                break
            since = next_since
    except BaseException:
        flush()  # keep what was fetched before the error
        raise
    flush()
    return stats


# ------------------------------------------------------------------ ingestion
def _ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


def _add_counts(total: dict, counts: dict) -> None:
    for key in ("rows_in", "rows_kept", "exact_duplicates", "added"):
        total[key] += int(counts.get(key, 0))
    total["reordered"] = total["reordered"] or bool(counts.get("reordered"))
    for reason, n in (counts.get("quarantined") or {}).items():
        total["quarantined"][reason] = total["quarantined"].get(reason, 0) + int(n)


def ingest_live(settings: CryptoSettings, raw_root: Path,
                now: datetime | None = None) -> dict[str, dict]:
    """Fetch new closed candles for every symbol into the store; returns counts per symbol."""
    live = settings.live
    timeframe = settings.timeframe
    step = timeframe_ms(timeframe)
    now = now or datetime.now(UTC)
    now = now if now.tzinfo else now.replace(tzinfo=UTC)
    now_ms = _ms(now)
    until_ms = _ms(live.until) if live.until else None
    exchange = make_exchange(settings)
    log = get_logger()
    report: dict[str, dict] = {}
    for symbol in settings.symbols:
        source = f"{settings.exchange}:{symbol}"
        part = live_partition(settings, symbol)
        last = store.last_timestamp_ms(raw_root, part)
        since_ms = last + step if last is not None else _ms(live.since)
        end_ms = min(until_ms, now_ms) if until_ms is not None else now_ms
        totals: dict[str, Any] = {"source": source, "since": _iso(since_ms),
                                  "until": _iso(until_ms), "batches": 0, "rows_in": 0,
                                  "rows_kept": 0, "exact_duplicates": 0, "reordered": False,
                                  "quarantined": {}, "incomplete_dropped": 0, "added": 0}
        if since_ms + step > end_ms:  # not even one candle can have closed since the last one
            log.info("%s %s %s: up to date (next candle %s not closed yet)", settings.exchange,
                     symbol, timeframe, _iso(since_ms))
            report[symbol] = {"requests": 0, "pages": 0, "candles_fetched": 0, "retries": 0,
                              **totals}
            continue
        log.info("%s %s %s: fetching since %s%s", settings.exchange, symbol, timeframe,
                 _iso(since_ms), f" until {_iso(until_ms)}" if until_ms else "")
        progress = {"candles": 0}

        def on_batch(rows: list[list], part: store.Partition = part, source: str = source,
                     totals: dict = totals, progress: dict = progress,
                     since_ms: int = since_ms, end_ms: int = end_ms) -> None:
            frame = from_ccxt_rows(rows)
            complete = drop_incomplete(frame, timeframe, now)
            totals["incomplete_dropped"] += len(frame) - len(complete)
            totals["batches"] += 1
            if not complete.empty:
                _add_counts(totals, save_batch(raw_root, part, complete, source))
            progress["candles"] += len(rows)
            reached = max(r[0] for r in rows) + step
            done = 100 * (reached - since_ms) / max(end_ms - since_ms, 1)
            log.info("%s %s %s: %d candles so far, reached %s (~%.0f%%)", part.exchange,
                     part.symbol, timeframe, progress["candles"], _iso(reached), min(done, 100))

        stats = fetch_ohlcv_range(exchange, symbol, timeframe, since_ms, until_ms,
                                  page_limit=live.page_limit, max_retries=live.max_retries,
                                  backoff_seconds=live.backoff_seconds, on_batch=on_batch,
                                  flush_every_pages=live.flush_every_pages)
        report[symbol] = {"requests": stats.requests, "pages": stats.pages,
                          "candles_fetched": stats.candles, "retries": stats.retries, **totals}
        log.info("%s %s %s: %d request(s), %d page(s), %d candles fetched, %d added, "
                 "%d retries", settings.exchange, symbol, timeframe, stats.requests, stats.pages,
                 stats.candles, totals["added"], stats.retries)
    return report
