"""Stored candles say where they came from: a file's own exchange/symbol (or crypto.file
settings) name its partition, live/file/demo never share one, and the features stage models
the partition the ingest report lists."""
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from tasks.config import CryptoSettings
from tasks.crypto import store
from tasks.crypto.candles import demo_candles
from tasks.crypto.featurize import build_features
from tasks.crypto.ingest import ingest_candles
from tasks.crypto.origin import unified_symbol
from tasks.crypto.store import Partition
from tasks.errors import DataError
from tasks.storage import read_json, write_json
from tests.fakes.exchange import FakeBinance, settings_for

START = datetime(2024, 1, 1, tzinfo=UTC)
NOW = datetime(2030, 1, 1, tzinfo=UTC)


def candle_csv(path: Path, n: int = 48, url_line: bool = False, **columns: object) -> Path:
    """A CSV of `n` valid hourly candles from START, with extra constant or per-row columns."""
    frame = demo_candles(n, START, "1h", 1).assign(**columns)
    frame["timestamp"] = frame["timestamp"].dt.strftime("%Y-%m-%d %H:%M:%S")
    text = frame.to_csv(index=False)
    path.write_text(("https://www.CryptoDataDownload.com\n" if url_line else "") + text)
    return path


def file_settings(path: Path, **file: object) -> CryptoSettings:
    return CryptoSettings(source="file", file={"path": str(path), **file})


@pytest.mark.parametrize("text, unified", [("BTCUSDT", "BTC/USDT"), ("btc/usdt", "BTC/USDT"),
                                           ("ETH-BTC", "ETH/BTC"), ("BTCTUSD", "BTC/TUSD"),
                                           ("XYZ", None)])
def test_unified_symbol(text, unified):
    assert unified_symbol(text) == unified


def test_csv_with_symbol_column_is_stored_under_its_symbol(tmp_path):
    path = candle_csv(tmp_path / "Binance_ETHUSDT_1h.csv", url_line=True, symbol="ETHUSDT")
    raw = tmp_path / "raw"
    report = ingest_candles.fn(file_settings(path, exchange="binance"), raw, 0)

    part = Partition("file", "binance", "ETH/USDT", "1h")
    expected = raw / "source=file/exchange=binance/symbol=ETH-USDT/timeframe=1h/candles.parquet"
    assert store.candles_path(raw, part) == expected and expected.exists()
    assert report["partitions"] == [{"source": "file", "exchange": "binance",
                                     "symbol": "ETH/USDT", "timeframe": "1h",
                                     "path": str(expected)}]
    assert list(report["symbols"]) == ["ETH/USDT"]  # not crypto.symbols' BTC/USDT
    assert len(store.read_candles(raw, part)) == 47  # the newest candle is dropped
    assert list(pd.read_parquet(expected).columns) == ["timestamp", "open", "high", "low",
                                                      "close", "volume"]


def test_exchange_and_symbol_columns_need_no_settings(tmp_path):
    path = candle_csv(tmp_path / "c.csv", exchange="Binance US", symbol="BTC/USD")
    report = ingest_candles.fn(file_settings(path, symbol="BTCUSD"), tmp_path / "raw", 0)
    assert {k: report["partitions"][0][k] for k in ("exchange", "symbol")} == {
        "exchange": "binanceus", "symbol": "BTC/USD"}  # the setting agrees (compact form)


def test_file_that_says_nothing_needs_the_settings(tmp_path):
    path = tmp_path / "freqtrade.json"
    rows = demo_candles(10, START, "1h", 2)
    path.write_text(str([[int(t.value // 1_000_000), o, h, lo, c, v] for t, o, h, lo, c, v in
                         rows.itertuples(index=False)]))
    for settings in ({}, {"exchange": "binance"}, {"symbol": "BTC/USDT"}):
        with pytest.raises(DataError) as info:
            ingest_candles.fn(file_settings(path, **settings), tmp_path / "raw", 0)
        message = str(info.value)
        assert str(path) in message and "does not say which" in message
        assert "crypto.file.exchange" in message and "crypto.file.symbol" in message
    assert not (tmp_path / "raw").exists()  # nothing stored under a guessed market
    report = ingest_candles.fn(file_settings(path, exchange="kraken", symbol="BTC/EUR"),
                               tmp_path / "raw", 0)
    assert report["partitions"][0]["path"].endswith(
        "source=file/exchange=kraken/symbol=BTC-EUR/timeframe=1h/candles.parquet")


@pytest.mark.parametrize("columns, settings, said", [
    ({"symbol": "ETHUSDT"}, {"exchange": "binance", "symbol": "BTC/USDT"}, "symbol 'ETH/USDT'"),
    ({"exchange": "kraken", "symbol": "BTC/USDT"}, {"exchange": "binance"}, "exchange 'kraken'"),
], ids=["symbol", "exchange"])
def test_file_and_settings_disagree(tmp_path, columns, settings, said):
    path = candle_csv(tmp_path / "c.csv", **columns)
    with pytest.raises(DataError) as info:
        ingest_candles.fn(file_settings(path, **settings), tmp_path / "raw", 0)
    message = str(info.value)
    field = said.split()[0]
    assert str(path) in message and f"the file says {said}" in message
    assert f"crypto.file.{field} is {settings[field]!r}" in message


def test_file_with_several_symbols_is_rejected(tmp_path):
    symbols = ["BTCUSDT"] * 30 + ["ETHUSDT"] * 18
    path = candle_csv(tmp_path / "mixed.csv", symbol=symbols)
    with pytest.raises(DataError) as info:
        ingest_candles.fn(file_settings(path, exchange="binance"), tmp_path / "raw", 0)
    message = str(info.value)
    assert str(path) in message and "row 32" in message  # header is line 1
    assert "several symbol values (BTCUSDT, ETHUSDT)" in message


def test_live_file_and_demo_never_share_a_partition(tmp_path):
    raw = tmp_path / "raw"
    path = candle_csv(tmp_path / "c.csv", n=20, symbol="BTC/USDT")  # same hours as the fake
    ingest_candles.fn(file_settings(path, exchange="binance"), raw, 0)
    file_part = Partition("file", "binance", "BTC/USDT", "1h")
    from_file = store.read_candles(raw, file_part)

    with FakeBinance(count=30) as server:
        report = ingest_candles.fn(settings_for(server, page_limit=10), raw, 0, now=NOW)
        served = server.candles()
        first_since = int(server.klines_requests()[0].query["startTime"])
    live_part = Partition("live", "binance", "BTC/USDT", "1h")
    assert first_since == server.start_ms  # the file's candles did not make live skip ahead
    live = store.read_candles(raw, live_part)
    assert [round(c, 8) for c in live["close"]] == [row[4] for row in served]
    pd.testing.assert_frame_equal(store.read_candles(raw, file_part), from_file)  # untouched
    assert report["partitions"][0]["source"] == "live"

    demo = CryptoSettings(source="demo", demo={"n_bars": 500})
    demo_report = ingest_candles.fn(demo, raw, 0)
    assert demo_report["partitions"][0]["path"].startswith(str(raw / "source=demo/exchange=demo"))
    assert sorted(p.name for p in raw.iterdir()) == ["source=demo", "source=file", "source=live"]


def test_features_model_the_partition_the_report_names(tmp_path):
    raw, report_path = tmp_path / "raw", tmp_path / "reports/ingest.json"
    with FakeBinance(count=60) as server:  # a live BTC/USDT partition the params would name
        ingest_candles.fn(settings_for(server), raw, 0, now=NOW)
    path = candle_csv(tmp_path / "eth.csv", n=40, symbol="ETHUSDT")
    settings = file_settings(path, exchange="binance")  # crypto.symbols stays [BTC/USDT]
    write_json(ingest_candles.fn(settings, raw, 0), report_path)

    summary = build_features.fn(settings, report_path, tmp_path / "features.parquet")
    assert summary["candles"] == read_json(report_path)["partitions"][0]
    assert summary["candles"]["symbol"] == "ETH/USDT" and summary["rows"] == 39

    wrong = settings.model_copy(update={"model_symbol": "BTC/USDT"})
    with pytest.raises(DataError, match=r"model_symbol 'BTC/USDT' was not ingested "
                                        r"\(ingested: file binance ETH/USDT\)"):
        build_features.fn(wrong, report_path, tmp_path / "features.parquet")
