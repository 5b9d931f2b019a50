"""Candle storage: one parquet file per exchange/symbol/timeframe partition (hive-style dirs).

Kept apart from fetching (as freqtrade does): the store only merges, dedups and rewrites
atomically, so an interrupted update leaves the previous version intact.
"""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from tasks.crypto.candles import COLUMNS, empty_candles
from tasks.storage import write_parquet


def symbol_slug(symbol: str) -> str:
    """BTC/USDT -> BTC-USDT, BTC/USDT:USDT -> BTC-USDT-USDT (safe as a directory name)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", symbol).strip("-")


def partition(root: Path, exchange: str, symbol: str, timeframe: str) -> Path:
    return (Path(root) / f"exchange={exchange}" / f"symbol={symbol_slug(symbol)}"
            / f"timeframe={timeframe}")


def candles_path(root: Path, exchange: str, symbol: str, timeframe: str) -> Path:
    return partition(root, exchange, symbol, timeframe) / "candles.parquet"


def read_candles(root: Path, exchange: str, symbol: str, timeframe: str) -> pd.DataFrame:
    path = candles_path(root, exchange, symbol, timeframe)
    if not path.exists():
        return empty_candles()
    frame = pd.read_parquet(path)
    frame["timestamp"] = frame["timestamp"].astype("datetime64[ms, UTC]")
    return frame


def last_timestamp_ms(root: Path, exchange: str, symbol: str, timeframe: str) -> int | None:
    frame = read_candles(root, exchange, symbol, timeframe)
    if frame.empty:
        return None
    return int(frame["timestamp"].iloc[-1].value // 1_000_000)


def merge_candles(root: Path, exchange: str, symbol: str, timeframe: str,
                  new: pd.DataFrame) -> int:
    """Merge validated candles into the partition; newer rows win; returns candles added."""
    old = read_candles(root, exchange, symbol, timeframe)
    if new.empty:
        return 0
    merged = pd.concat([old, new[COLUMNS]], ignore_index=True)
    merged = merged.drop_duplicates(subset="timestamp", keep="last").sort_values("timestamp")
    write_parquet(merged.reset_index(drop=True), candles_path(root, exchange, symbol, timeframe))
    return len(merged) - len(old)


def append_quarantine(root: Path, exchange: str, symbol: str, timeframe: str,
                      rows: pd.DataFrame) -> Path | None:
    """Add quarantined rows (with reasons) to the partition's side file; returns its path."""
    if rows.empty:
        return None
    path = partition(root, exchange, symbol, timeframe) / "quarantine.parquet"
    if path.exists():
        rows = pd.concat([pd.read_parquet(path), rows], ignore_index=True)
    rows = rows.astype({c: "string" for c in rows.columns if rows[c].dtype == object})
    return write_parquet(rows, path)
