"""Live ingestion with the real ccxt binance client against a local fake Binance server."""
from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tasks.config import CryptoSettings, load_params
from tasks.crypto import store
from tasks.crypto.candles import gap_report
from tasks.crypto.exchange import fetch_ohlcv_range, ingest_live, make_exchange
from tasks.crypto.store import Partition
from tasks.errors import ConfigError, FetchError
from tests.fakes.exchange import FakeBinance, settings_for

HOUR = 3_600_000
ROOT = Path(__file__).resolve().parents[3]
NOW = datetime(2030, 1, 1, tzinfo=UTC)  # long after the fake's bars: all of them closed


@pytest.fixture
def fake():
    """Factory of started fake servers, all stopped at the end of the test."""
    servers: list[FakeBinance] = []

    def make(**kwargs) -> FakeBinance:
        server = FakeBinance(**kwargs).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


def live(symbol: str, timeframe: str = "1h") -> Partition:
    return Partition("live", "binance", symbol, timeframe)


def stored_rows(root, symbol: str, timeframe: str = "1h") -> list[list]:
    frame = store.read_candles(root, live(symbol, timeframe))
    return [[int(t.value // 1_000_000), o, h, lo, c, v] for t, o, h, lo, c, v in
            frame[["timestamp", "open", "high", "low", "close", "volume"]].itertuples(index=False)]


def start_times(server: FakeBinance) -> list[int]:
    return [int(r.query["startTime"]) for r in server.klines_requests()]


def test_pagination_stores_every_served_candle(fake, tmp_path):
    server = fake(symbols=["BTC/USDT", "ETH/USDT"], count=35)
    report = ingest_live(settings_for(server, page_limit=10), tmp_path, now=NOW)

    for symbol in ("BTC/USDT", "ETH/USDT"):
        assert stored_rows(tmp_path, symbol) == server.candles(symbol)
        assert report[symbol]["pages"] == 4
        assert report[symbol]["requests"] == 5  # 4 pages + the empty page that ends the loop
        assert report[symbol]["candles_fetched"] == 35
        assert report[symbol]["added"] == 35
        assert report[symbol]["retries"] == 0
    btc = [r for r in server.klines_requests() if r.query["symbol"] == "BTCUSDT"]
    assert [int(r.query["startTime"]) for r in btc] == [
        server.bar_time(i) for i in (0, 10, 20, 30, 35)]
    assert {r.query["limit"] for r in btc} == {"10"}
    assert {r.path for r in server.requests} == {"/api/v3/exchangeInfo", "/api/v3/klines"}


def test_default_page_size_and_flush_batches(fake):
    server = fake(count=1200)
    exchange = make_exchange(settings_for(server))
    batches: list[list] = []
    stats = fetch_ohlcv_range(exchange, "BTC/USDT", "1h", server.start_ms, None, page_limit=None,
                              max_retries=0, backoff_seconds=0, on_batch=batches.append,
                              flush_every_pages=1)
    assert {r.query["limit"] for r in server.klines_requests()} == {"1000"}  # features limit
    assert [len(b) for b in batches] == [1000, 200]
    assert (stats.pages, stats.requests, stats.candles) == (2, 3, 1200)


def test_until_is_exclusive_and_stops_paging(fake, tmp_path):
    server = fake(count=40)
    until = datetime.fromtimestamp(server.bar_time(25) / 1000, tz=UTC)
    report = ingest_live(settings_for(server, page_limit=10, until=until), tmp_path, now=NOW)
    assert stored_rows(tmp_path, "BTC/USDT") == server.candles()[:25]
    assert start_times(server) == [server.bar_time(i) for i in (0, 10, 20)]
    assert report["BTC/USDT"]["requests"] == 3


def test_incremental_rerun_fetches_only_new_candles(fake, tmp_path):
    server = fake(count=30)
    settings = settings_for(server, page_limit=10)
    ingest_live(settings, tmp_path, now=NOW)
    last = store.last_timestamp_ms(tmp_path, live("BTC/USDT"))
    assert last == server.bar_time(29)

    server.append(10)
    server.reset_requests()
    report = ingest_live(settings, tmp_path, now=NOW)["BTC/USDT"]
    assert start_times(server) == [last + HOUR, server.bar_time(40)]  # new page, then empty
    assert report["added"] == 10 and report["candles_fetched"] == 10
    assert stored_rows(tmp_path, "BTC/USDT") == server.candles()

    server.reset_requests()
    report = ingest_live(settings, tmp_path, now=NOW)["BTC/USDT"]
    assert len(server.klines_requests()) == 1 and report["added"] == 0


def klines_gaps(server: FakeBinance) -> list[float]:
    """Seconds between consecutive klines requests, as the server saw them arrive."""
    times = [r.at for r in server.klines_requests()]
    return [b - a for a, b in zip(times, times[1:], strict=False)]


def test_shipped_rate_limit_spaces_requests_through_ccxt_throttle(fake, tmp_path, monkeypatch):
    shipped = load_params(ROOT / "params.yaml").crypto.live.rate_limit
    assert shipped is True
    server = fake(count=100)
    settings = settings_for(server, page_limit=10, rate_limit=shipped)
    assert make_exchange(settings).enableRateLimit is True and make_exchange(settings).rateLimit == 50
    made: list = []

    def slower(settings: CryptoSettings):
        """ccxt's client as shipped, its rateLimit tripled so 60 ms spacing rises above the
        loopback jitter of a busy machine; the throttle itself is ccxt's own."""
        exchange = make_exchange(settings)
        exchange.rateLimit = 150
        made.append(exchange)
        return exchange

    monkeypatch.setattr("tasks.crypto.exchange.make_exchange", slower)
    report = ingest_live(settings, tmp_path / "on", now=NOW)["BTC/USDT"]
    exchange = made[0]
    spacing = exchange.rateLimit * exchange.api["public"]["get"]["klines"]["cost"] / 1000
    assert spacing == pytest.approx(0.06)  # 150 ms x binance's klines cost 0.4
    assert report["pages"] == 10 and stored_rows(tmp_path / "on", "BTC/USDT") == server.candles()
    throttled = klines_gaps(server)  # arrival jitter moves single gaps, not their sum
    assert len(throttled) == 10 and min(throttled) >= 0.5 * spacing
    assert sum(throttled) >= 0.9 * 10 * spacing

    server.reset_requests()  # the same ingest unthrottled: the test can fail
    ingest_live(settings_for(server, page_limit=10), tmp_path / "off", now=NOW)
    assert sum(klines_gaps(server)) < 0.9 * 10 * spacing


@pytest.mark.parametrize("status, html", [(429, False), (500, False), (500, True), (504, False)],
                         ids=["429", "500-json", "500-html", "504"])
def test_transient_error_is_retried(fake, tmp_path, status, html):
    server = fake(count=30)
    server.fail_klines(status, times=1, after=1, html=html)
    report = ingest_live(settings_for(server, page_limit=10), tmp_path, now=NOW)["BTC/USDT"]
    assert report["retries"] == 1
    assert report["requests"] == 5  # 3 pages + empty page + 1 retry
    assert start_times(server)[1:3] == [server.bar_time(10)] * 2  # the same page again
    assert stored_rows(tmp_path, "BTC/USDT") == server.candles()


def test_repeated_500s_fail_clearly_and_keep_fetched_candles(fake, tmp_path):
    server = fake(count=50)
    server.fail_klines(500, times=None, after=2)  # 2 good pages, then 500 for ever
    settings = settings_for(server, page_limit=10, max_retries=2)  # flush_every_pages stays 20
    with pytest.raises(FetchError) as info:
        ingest_live(settings, tmp_path, now=NOW)
    message = str(info.value)
    for part in ("binance", "BTC/USDT", "1h", "after 2 retries", "OperationFailed", "-1000",
                 str(server.bar_time(20)), "2024-01-01T20:00:00+00:00"):
        assert part in message
    assert len(server.klines_requests()) == 2 + 3  # 2 pages, then 1 try + 2 retries
    assert stored_rows(tmp_path, "BTC/USDT") == server.candles()[:20]  # flushed before raising

    server.clear_faults()
    server.reset_requests()
    report = ingest_live(settings, tmp_path, now=NOW)["BTC/USDT"]
    assert start_times(server)[0] == server.bar_time(20)
    assert report["added"] == 30
    assert stored_rows(tmp_path, "BTC/USDT") == server.candles()


def test_duplicates_merged_and_missing_candles_reported(fake, tmp_path):
    server = fake(count=40)
    server.duplicate_every = 3  # every 3rd bar sent twice within a page
    server.overlap = 2  # pages start 2 bars before startTime
    server.omit([5, 6, 17])
    report = ingest_live(settings_for(server, page_limit=10), tmp_path, now=NOW)["BTC/USDT"]

    stored = stored_rows(tmp_path, "BTC/USDT")
    assert stored == server.candles()
    assert len(stored) == 37
    assert report["exact_duplicates"] > 0
    assert report["added"] == 37 and not report["quarantined"]
    gaps = gap_report(store.read_candles(tmp_path, live("BTC/USDT")), "1h")
    assert (gaps["missing"], gaps["gaps"], gaps["longest_gap_bars"]) == (3, 2, 2)


def test_unlisted_symbol_fails_before_any_klines_request(fake, tmp_path):
    server = fake(count=10)
    with pytest.raises(FetchError, match=r"binance DOGE/USDT 1h: symbol 'DOGE/USDT' is not listed"):
        ingest_live(settings_for(server, symbols=["DOGE/USDT"]), tmp_path, now=NOW)
    assert server.klines_requests() == []


def test_bad_symbol_from_exchange_is_not_retried(fake, tmp_path):
    server = fake(symbols=["BTC/USDT", "ETH/USDT"], count=10)
    server.delist("ETH/USDT")  # still in exchangeInfo, klines answer -1121 Invalid symbol
    with pytest.raises(FetchError) as info:
        ingest_live(settings_for(server, symbols=["ETH/USDT"], max_retries=5), tmp_path, now=NOW)
    assert "binance ETH/USDT 1h" in str(info.value) and "BadSymbol" in str(info.value)
    assert "not retried" in str(info.value) and "-1121" in str(info.value)
    assert len(server.klines_requests()) == 1
    assert stored_rows(tmp_path, "ETH/USDT") == []


def test_bad_timeframe_fails_without_requests(fake, tmp_path):
    server = fake(count=10)
    with pytest.raises(FetchError, match=r"timeframe '7m' is not offered by binance"):
        ingest_live(settings_for(server, timeframe="7m"), tmp_path, now=NOW)
    assert server.klines_requests() == []


def test_api_keys_from_env_never_logged_or_reported(fake, tmp_path, monkeypatch, caplog):
    key, secret = "KEY-3f9a1c-SENTINEL", "SECRET-77be20-SENTINEL"
    monkeypatch.setenv("REPROLAB_EXCHANGE_API_KEY", key)
    monkeypatch.setenv("REPROLAB_EXCHANGE_SECRET", secret)
    caplog.set_level(logging.DEBUG)
    server = fake(count=30)
    server.rate_limit_next(1)  # a retry warning with the error text gets logged too
    settings = settings_for(server, page_limit=10, max_retries=1)
    report = ingest_live(settings, tmp_path, now=NOW)
    assert any(r.api_key == key for r in server.requests)  # the keys were really used
    server.fail_klines(500, times=None)
    server.append(10)
    with pytest.raises(FetchError) as info:
        ingest_live(settings, tmp_path, now=NOW)

    assert "fetching since" in caplog.text and "retry 1/1" in caplog.text
    assert "'X-MBX-APIKEY': '***'" in caplog.text  # ccxt's own DEBUG request log, scrubbed
    for text in (caplog.text, json.dumps(report), repr(report), str(info.value)):
        assert key not in text and secret not in text


def test_credentials_from_prefect_secret_block(monkeypatch, fake):
    from prefect.blocks.system import Secret

    class Stored:
        def __init__(self, value: str) -> None:
            self.value = value

        def get(self) -> str:
            return self.value

    loaded: list[str] = []

    def load(name, *args, **kwargs):
        loaded.append(name)
        return Stored(values[name])

    values = {"creds": "blockkey:blocksecret", "broken": "no-colon"}
    monkeypatch.setattr(Secret, "load", load)
    server = fake(count=1)
    exchange = make_exchange(settings_for(server, secret_block="creds"))
    assert (exchange.apiKey, exchange.secret, loaded) == ("blockkey", "blocksecret", ["creds"])
    with pytest.raises(ConfigError, match="crypto.live.secret_block") as info:
        make_exchange(settings_for(server, secret_block="broken"))
    assert "no-colon" not in str(info.value)
    loaded.clear()
    make_exchange(settings_for(server))
    assert loaded == []  # the block is only loaded when configured


def test_still_open_candle_is_not_stored(fake, tmp_path):
    server = fake(count=30)
    settings = settings_for(server, page_limit=10)
    now = datetime.fromtimestamp(server.bar_time(29) / 1000, tz=UTC) + timedelta(minutes=30)
    report = ingest_live(settings, tmp_path, now=now)["BTC/USDT"]
    assert stored_rows(tmp_path, "BTC/USDT") == server.candles()[:29]
    assert report["incomplete_dropped"] == 1 and report["added"] == 29

    server.reset_requests()  # an hour later the candle has closed: the rerun picks it up
    ingest_live(settings, tmp_path, now=now + timedelta(minutes=30))
    assert start_times(server)[0] == server.bar_time(29)
    assert stored_rows(tmp_path, "BTC/USDT") == server.candles()


def test_make_exchange_config_errors_and_api_url():
    with pytest.raises(ConfigError, match=r"^crypto\.exchange: 'nosuchexchange'"):
        make_exchange(CryptoSettings(exchange="nosuchexchange"))
    settings = CryptoSettings.model_validate(
        {"exchange": "binance", "live": {"api_url": "http://127.0.0.1:9/proxy/",
                                         "rate_limit": False, "options": {"foo": 1}}})
    exchange = make_exchange(settings)
    api = exchange.urls["api"]
    assert api["public"] == "http://127.0.0.1:9/proxy/api/v3"
    assert all(v.startswith("http://127.0.0.1:9/proxy/") for v in api.values()
               if isinstance(v, str))
    assert exchange.options["foo"] == 1 and "fetchMarkets" in exchange.options  # merged
    assert exchange.enableRateLimit is False


def test_fake_klines_follow_binance_semantics(fake):
    import urllib.error
    import urllib.request

    server = fake(count=1500)

    def get(query: str):
        try:
            with urllib.request.urlopen(f"{server.url}/api/v3/klines?{query}") as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def opens(rows):
        return [r[0] for r in rows]

    status, rows = get("symbol=BTCUSDT&interval=1h")  # no times: the latest 500
    assert status == 200 and opens(rows) == [server.bar_time(i) for i in range(1000, 1500)]
    _, rows = get(f"symbol=BTCUSDT&interval=1h&limit=5000&startTime={server.bar_time(3) + 1}")
    assert opens(rows) == [server.bar_time(i) for i in range(4, 1004)]  # limit capped at 1000
    _, rows = get(f"symbol=BTCUSDT&interval=1h&limit=3&endTime={server.bar_time(9)}")
    assert opens(rows) == [server.bar_time(i) for i in (7, 8, 9)]
    _, rows = get(f"symbol=BTCUSDT&interval=1h&startTime={server.bar_time(2)}"
                  f"&endTime={server.bar_time(4)}")
    assert opens(rows) == [server.bar_time(i) for i in (2, 3, 4)] and len(rows[0]) == 12
    assert get("symbol=NOPE&interval=1h") == (400, {"code": -1121, "msg": "Invalid symbol."})
    assert len(server.klines_requests()) == 5
    assert server.klines_requests()[2].query["limit"] == "3"
