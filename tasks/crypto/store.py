"""Candle storage: one parquet file per source/exchange/symbol/timeframe partition (hive-style
dirs). Live, file and demo candles never share a partition.

Kept apart from fetching (as freqtrade does): the store only merges, dedups and rewrites
atomically, so an interrupted update leaves the previous version intact.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from tasks.crypto.candles import COLUMNS, empty_candles
from tasks.storage import write_parquet


@dataclass(frozen=True)
class Partition:
    """One stored series: where it came from (demo, file, live), exchange, symbol, timeframe."""

    source: str
    exchange: str
    symbol: str
    timeframe: str

    def as_dict(self, root: Path) -> dict:
        """The partition as ingest.json records it: its keys and the path of its candles."""
        return {**asdict(self), "path": str(candles_path(root, self))}


def symbol_slug(symbol: str) -> str:
    """BTC/USDT -> BTC-USDT, BTC/USDT:USDT -> BTC-USDT-USDT (safe as a directory name)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", symbol).strip("-")


def partition_dir(root: Path, part: Partition) -> Path:
    return (Path(root) / f"source={part.source}" / f"exchange={part.exchange}"
            / f"symbol={symbol_slug(part.symbol)}" / f"timeframe={part.timeframe}")


def candles_path(root: Path, part: Partition) -> Path:
    return partition_dir(root, part) / "candles.parquet"


def load_candles(path: Path) -> pd.DataFrame:
    """The candles stored at `path` (empty when there is no file yet)."""
    if not Path(path).exists():
        return empty_candles()
    frame = pd.read_parquet(path)
    frame["timestamp"] = frame["timestamp"].astype("datetime64[ms, UTC]")
    return frame


def read_candles(root: Path, part: Partition) -> pd.DataFrame:
    return load_candles(candles_path(root, part))


def last_timestamp_ms(root: Path, part: Partition) -> int | None:
    frame = read_candles(root, part)
    if frame.empty:
        return None
    return int(frame["timestamp"].iloc[-1].value // 1_000_000)


def merge_candles(root: Path, part: Partition, new: pd.DataFrame) -> int:
    """Merge validated candles into the partition; newer rows win; returns candles added."""
    old = read_candles(root, part)
    if new.empty:
        return 0
    merged = pd.concat([old, new[COLUMNS]], ignore_index=True)
    merged = merged.drop_duplicates(subset="timestamp", keep="last").sort_values("timestamp")
    write_parquet(merged.reset_index(drop=True), candles_path(root, part))
    return len(merged) - len(old)


def append_quarantine(root: Path, part: Partition, rows: pd.DataFrame) -> Path | None:
    """Add quarantined rows (with reasons) to the partition's side file; returns its path."""
    if rows.empty:
        return None
    path = partition_dir(root, part) / "quarantine.parquet"
    if path.exists():
        rows = pd.concat([pd.read_parquet(path), rows], ignore_index=True)
    rows = rows.astype({c: "string" for c in rows.columns if rows[c].dtype == object})
    return write_parquet(rows, path)
