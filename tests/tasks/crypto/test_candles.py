"""Candle files in real-world layouts, validation with quarantine, gaps, incomplete candles."""
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks.config import CryptoSettings
from tasks.crypto import store
from tasks.crypto.candles import (
    demo_candles,
    drop_incomplete,
    gap_report,
    read_candle_file,
    validate_candles,
)
from tasks.crypto.ingest import ingest_candles
from tasks.errors import DataError

SHARED = Path(__file__).resolve().parents[4] / "shared" / "data" / "crypto"
KLINES = SHARED / "binance_btcusdt_1h_klines.csv"
CCXT_JSON = SHARED / "binance_btc_usdt_1h_ccxt.json"
needs_shared = pytest.mark.skipif(not SHARED.exists(), reason="../shared/data/crypto not present")

GOOD = """timestamp,open,high,low,close,volume
2024-01-01 00:00:00,100,110,95,105,10
2024-01-01 01:00:00,105,108,100,101,12
2024-01-01 02:00:00,101,103,99,102,9
"""


def _write(tmp_path, text, name="candles.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_generic_csv_parses_to_utc(tmp_path):
    frame = read_candle_file(_write(tmp_path, GOOD))
    assert str(frame["timestamp"].dt.tz) == "UTC"
    assert frame["close"].tolist() == [105, 101, 102]
    assert frame["_row"].tolist() == [2, 3, 4]  # file lines, header is line 1


def test_cryptodatadownload_layout_with_url_line_and_unix_seconds(tmp_path):
    text = ("https://www.CryptoDataDownload.com\n"
            "unix,date,symbol,open,high,low,close,Volume BTC,Volume USDT,tradecount\n"
            "1704070800,2024-01-01 01:00:00,BTC/USDT,105,108,100,101,12,1200,5\n"
            "1704067200,2024-01-01 00:00:00,BTC/USDT,100,110,95,105,10,1000,4\n")
    frame = read_candle_file(_write(tmp_path, text))
    good, bad, report = validate_candles(frame, "cdd")
    assert report.reordered and bad.empty
    assert good["timestamp"].iloc[0] == pd.Timestamp("2024-01-01 00:00", tz="UTC")
    assert good["volume"].tolist() == [10, 12]  # base volume, not quote volume


def test_binance_vision_headerless_klines_in_microseconds(tmp_path):
    start_us = 1_735_689_600_000_000  # 2025-01-01, Binance dumps switched to microseconds
    rows = [f"{start_us + i * 3_600_000_000},1,2,0.5,1.5,3,{start_us + (i + 1) * 3_600_000_000 - 1},"
            "4,5,6,7,0" for i in range(3)]
    frame = read_candle_file(_write(tmp_path, "\n".join(rows) + "\n"))
    assert frame["timestamp"].iloc[1] == pd.Timestamp("2025-01-01 01:00", tz="UTC")


def test_parquet_input(tmp_path):
    src = read_candle_file(_write(tmp_path, GOOD)).drop(columns="_row")
    src.to_parquet(tmp_path / "c.parquet")
    frame = read_candle_file(tmp_path / "c.parquet")
    assert len(frame) == 3


def test_wrong_columns_is_a_clear_error(tmp_path):
    path = _write(tmp_path, "time,price,qty\n1,2,3\n")
    with pytest.raises(DataError) as err:
        read_candle_file(path)
    assert str(path) in str(err.value)
    assert "missing column(s)" in str(err.value) and "open" in str(err.value)


def test_missing_file_and_bad_json(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_candle_file(tmp_path / "none.csv")
    with pytest.raises(DataError, match="not valid JSON"):
        read_candle_file(_write(tmp_path, "[[1,2,3", "c.json"))


def test_bad_rows_are_quarantined_with_line_and_reason(tmp_path):
    text = GOOD + ("2024-01-01 03:00:00,102,104,101,103,-5\n"      # negative volume (line 5)
                   "2024-01-01 04:00:00,103,,101,103,5\n"          # NaN high (line 6)
                   "2024-01-01 05:00:00,103,102,101,103,5\n"       # high below close (line 7)
                   "2024-01-01 02:00:00,101,103,99,102,9\n"        # exact duplicate (line 8)
                   "2024-01-01 01:00:00,105,109,100,101,13\n"      # conflicting duplicate (line 9)
                   "not a date,1,1,1,1,1\n")                       # bad timestamp (line 10)
    good, bad, report = validate_candles(read_candle_file(_write(tmp_path, text)), "t.csv")
    reasons = dict(zip(bad["row"], bad["reason"], strict=True))
    assert reasons[5] == "negative volume"
    assert reasons[6] == "null high"
    assert reasons[7] == "high below open/close"
    assert reasons[10] == "unparseable timestamp"
    assert reasons[3].startswith("duplicate timestamp with different values")  # later row kept
    assert report.exact_duplicates == 1 and report.reordered
    assert good["timestamp"].is_monotonic_increasing and good["timestamp"].is_unique
    assert good.loc[good["timestamp"] == pd.Timestamp("2024-01-01 01:00", tz="UTC"),
                    "volume"].item() == 13
    # nothing is lost: every input row is kept, merged as a duplicate, or quarantined
    assert report.rows_in == len(good) + len(bad) + report.exact_duplicates


def test_gap_report_counts_missing_candles():
    frame = demo_candles(100, datetime(2024, 1, 1, tzinfo=UTC), "1h", 0)
    holed = frame.drop(index=[10, 11, 12, 50]).reset_index(drop=True)
    report = gap_report(holed, "1h")
    assert report["missing"] == 4 and report["gaps"] == 2
    assert report["longest_gap_bars"] == 3
    assert report["longest_gap_start"] == frame["timestamp"][10].isoformat()


def test_drop_incomplete_keeps_only_closed_candles():
    frame = demo_candles(5, datetime(2024, 1, 1, tzinfo=UTC), "1h", 0)
    now = datetime(2024, 1, 1, 4, 30, tzinfo=UTC)  # the 04:00 candle is still open
    assert len(drop_incomplete(frame, "1h", now)) == 4
    assert len(drop_incomplete(frame, "1h", None)) == 4  # a file: the newest can't be trusted


def test_demo_candles_are_deterministic_and_valid():
    start = datetime(2024, 1, 1, tzinfo=UTC)
    a, b = demo_candles(3000, start, "1h", 7), demo_candles(3000, start, "1h", 7)
    pd.testing.assert_frame_equal(a, b)
    good, bad, _ = validate_candles(a, "demo")
    assert bad.empty and len(good) == 3000
    ret = np.log(a["close"]).diff().dropna()
    assert ret.autocorr(1) < -0.1  # the small, real signal the demo models can find


def test_file_ingest_quarantines_to_side_file(tmp_path):
    path = _write(tmp_path, GOOD + "2024-01-01 03:00:00,102,104,101,103,-5\n"
                  "2024-01-01 04:00:00,103,104,101,103,5\n")
    settings = CryptoSettings(source="file", file={"path": str(path), "exchange": "binance",
                                                   "symbol": "BTC/USDT"})
    report = ingest_candles.fn(settings, tmp_path / "raw", 0)
    entry = report["symbols"]["BTC/USDT"]
    assert entry["ingest"]["quarantined"] == {"negative volume": 1}
    part = store.Partition("file", "binance", "BTC/USDT", "1h")
    quarantine = pd.read_parquet(store.partition_dir(tmp_path / "raw", part)
                                 / "quarantine.parquet")
    assert quarantine["row"].tolist() == [5]
    # the newest candle of a file is treated as possibly incomplete and not stored
    assert entry["gaps"]["candles"] == 3 and entry["gaps"]["missing"] == 0


@needs_shared
def test_real_binance_klines_csv_descending_with_partial_last_candle(tmp_path):
    settings = CryptoSettings(source="file", file={"path": str(KLINES), "exchange": "binance",
                                                   "symbol": "BTC/USDT"})
    report = ingest_candles.fn(settings, tmp_path / "raw", 0)
    gaps = report["symbols"]["BTC/USDT"]["gaps"]
    assert gaps["candles"] == 8749  # 8,750 rows less the still-open newest candle
    assert gaps["last"] == "2020-12-10T00:00:00+00:00"
    assert gaps["gaps"] == 6  # the six Binance outages
    assert report["symbols"]["BTC/USDT"]["ingest"]["reordered"] is True


@needs_shared
def test_real_ccxt_json_matches_klines_csv():
    json_frame, _, _ = validate_candles(read_candle_file(CCXT_JSON), "json")
    csv_frame, _, _ = validate_candles(read_candle_file(KLINES), "csv")
    csv_frame = csv_frame.iloc[:-1]  # partial candle
    merged = csv_frame.merge(json_frame, on="timestamp", suffixes=("_csv", "_json"))
    assert len(merged) == len(csv_frame)
    np.testing.assert_allclose(merged["close_csv"], merged["close_json"])
