"""OHLCV candles: parse real-world files, validate, quarantine bad rows, report gaps, make demo data.

A candle frame has columns timestamp (UTC, ms precision), open, high, low, close, volume and is
sorted, unique by timestamp. Nothing is dropped silently: every removed row is either an exact
duplicate (counted) or quarantined with its reason and source row.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.crypto.timeframes import timeframe_ms
from tasks.errors import DataError

OHLCV = ["open", "high", "low", "close", "volume"]
COLUMNS = ["timestamp", *OHLCV]
BINANCE_KLINE = ["open_time", "open", "high", "low", "close", "volume", "close_time",
                 "quote_volume", "trades", "taker_base_volume", "taker_quote_volume", "ignore"]
_TIME_NAMES = ("timestamp", "open_time", "opentime", "time", "date", "datetime", "unix",
               "unix_timestamp", "ts", "open time", "time_open", "date_time")


@dataclass
class ValidationReport:
    """What validation did to one batch of candles."""

    source: str
    rows_in: int = 0
    rows_kept: int = 0
    exact_duplicates: int = 0
    reordered: bool = False
    quarantined: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def empty_candles() -> pd.DataFrame:
    frame = pd.DataFrame({c: pd.Series(dtype="float64") for c in COLUMNS})
    frame["timestamp"] = pd.Series(dtype="datetime64[ms, UTC]")
    return frame


# ------------------------------------------------------------------ timestamps
def to_utc(values: pd.Series) -> pd.Series:
    """Epoch numbers (s, ms, us or ns, told apart by size) or date strings -> UTC timestamps."""
    numeric = pd.to_numeric(values, errors="coerce")
    if numeric.notna().mean() > 0.9:
        # guess the unit from the magnitude of the typical value
        typical = float(numeric.abs().median())
        unit = "s" if typical < 1e11 else "ms" if typical < 1e14 else "us" if typical < 1e17 else "ns"
        stamps = pd.to_datetime(numeric, unit=unit, utc=True, errors="coerce")
    else:
        stamps = pd.to_datetime(values.astype("string").str.strip(), utc=True, errors="coerce",
                                format="mixed")
    return stamps.astype("datetime64[ms, UTC]")


def from_ccxt_rows(rows: list[list]) -> pd.DataFrame:
    """ccxt fetch_ohlcv rows [[ms, o, h, l, c, v], ...] -> candle frame (unvalidated)."""
    if not rows:
        return empty_candles()
    frame = pd.DataFrame([r[:6] for r in rows], columns=COLUMNS)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], unit="ms", utc=True).astype(
        "datetime64[ms, UTC]")
    for col in OHLCV:
        frame[col] = pd.to_numeric(frame[col], errors="coerce")
    return frame


# ------------------------------------------------------------------ files
def _sniff_format(path: Path, head: str) -> str:
    if path.suffix.lower() in (".parquet", ".pq"):
        return "parquet"
    stripped = head.lstrip()
    if stripped.startswith("["):
        return "ccxt_json"
    first = next((ln for ln in head.splitlines() if ln.strip()), "")
    cells = [c.strip() for c in first.split(",")]
    if len(cells) >= 11 and all(_is_number(c) for c in cells[:6]):
        return "binance"  # data.binance.vision kline dump: no header, 12 columns
    return "generic"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _find_header_line(lines: list[str]) -> int:
    """Exports such as CryptoDataDownload put a URL line above the header: skip to the header."""
    for i, line in enumerate(lines[:20]):
        names = [c.strip().strip('"').lower() for c in line.split(",")]
        if any(n in _TIME_NAMES for n in names) and "close" in names:
            return i
    return 0


def _pick_columns(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    lower = {c.strip().lower(): c for c in frame.columns}
    time_col = next((lower[n] for n in _TIME_NAMES if n in lower), None)
    picked = {}
    for name in ("open", "high", "low", "close"):
        if name in lower:
            picked[name] = lower[name]
    volume = lower.get("volume") or next(
        (orig for low, orig in lower.items() if low.startswith("volume")), None)
    missing = [n for n, c in [("timestamp", time_col), *[(k, picked.get(k)) for k in
               ("open", "high", "low", "close")], ("volume", volume)] if c is None]
    if missing:
        raise DataError(f"missing column(s) {missing}; found {list(frame.columns)} "
                        "(expected timestamp,open,high,low,close,volume or a Binance kline layout)",
                        path=path)
    out = pd.DataFrame({"timestamp": frame[time_col]})
    for name, col in picked.items():
        out[name] = frame[col]
    out["volume"] = frame[volume]
    for name in ("exchange", "symbol"):  # where the file says which market it holds
        if name in lower:
            out[name] = frame[lower[name]]
    return out


def read_candle_file(path: str | Path, fmt: str = "auto") -> pd.DataFrame:
    """Read a CSV / parquet / ccxt-JSON candle file; returns candles plus a `_row` column (and
    the file's `exchange` / `symbol` columns where it has them)."""
    path = Path(path)
    if not path.exists():
        raise DataError("candle file not found", path=path)
    if path.suffix.lower() in (".parquet", ".pq") and fmt in ("auto", "generic"):
        fmt = "parquet"
    text = "" if fmt == "parquet" else path.read_text(encoding="utf-8-sig", errors="replace")
    if fmt == "auto":
        fmt = _sniff_format(path, text[:4096])
    if fmt == "parquet":
        frame = _pick_columns(pd.read_parquet(path), path)
        rows = np.arange(1, len(frame) + 1)
    elif fmt == "ccxt_json":
        frame, rows = _read_ccxt_json(path, text)
    elif fmt == "binance":
        frame = pd.read_csv(io.StringIO(text), header=None, dtype=str)
        if frame.shape[1] < 6:
            raise DataError(f"Binance kline rows need 12 columns, found {frame.shape[1]}", path=path)
        frame = frame.iloc[:, :6].set_axis(COLUMNS, axis=1)
        rows = np.arange(1, len(frame) + 1)
    else:
        lines = text.splitlines()
        skip = _find_header_line(lines)
        try:
            raw = pd.read_csv(io.StringIO(text), skiprows=skip, dtype=str, skipinitialspace=True,
                              quoting=csv.QUOTE_MINIMAL, on_bad_lines="error")
        except pd.errors.ParserError as exc:
            raise DataError(f"not a readable CSV ({exc})", path=path) from None
        frame = _pick_columns(raw, path)
        rows = np.arange(skip + 2, skip + 2 + len(frame))  # 1-based file lines, header included
    frame = frame.copy()
    frame["timestamp"] = to_utc(frame["timestamp"])
    for col in OHLCV:
        frame[col] = pd.to_numeric(frame[col], errors="coerce")
    frame["_row"] = rows
    return frame.reset_index(drop=True)


def _read_ccxt_json(path: Path, text: str) -> tuple[pd.DataFrame, np.ndarray]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"not valid JSON ({exc.msg})", path=path, row=exc.lineno) from None
    if not isinstance(data, list) or any(not isinstance(r, list) or len(r) < 6 for r in data):
        raise DataError("expected a JSON array of [ms, open, high, low, close, volume] rows",
                        path=path)
    frame = pd.DataFrame([r[:6] for r in data], columns=COLUMNS)
    return frame, np.arange(1, len(frame) + 1)


# ------------------------------------------------------------------ validation
def _rule_violations(frame: pd.DataFrame) -> pd.Series:
    """One reason per row (first rule broken) or empty string."""
    reason = pd.Series("", index=frame.index, dtype=object)

    def mark(mask: pd.Series, text: str) -> None:
        reason[(reason == "") & mask.fillna(False)] = text

    mark(frame["timestamp"].isna(), "unparseable timestamp")
    for col in OHLCV:
        mark(frame[col].isna(), f"null {col}")
    mark((frame[["open", "high", "low", "close"]] <= 0).any(axis=1), "non-positive price")
    mark(frame["volume"] < 0, "negative volume")
    mark(frame["low"] > frame[["open", "close"]].min(axis=1), "low above open/close")
    mark(frame["high"] < frame[["open", "close"]].max(axis=1), "high below open/close")
    return reason


def validate_candles(frame: pd.DataFrame, source: str) -> tuple[pd.DataFrame, pd.DataFrame,
                                                                 ValidationReport]:
    """Split into clean candles and quarantined rows (with `reason`, `source`, `row`)."""
    report = ValidationReport(source=source, rows_in=len(frame))
    frame = frame.copy()
    if "_row" not in frame:
        frame["_row"] = np.arange(1, len(frame) + 1)
    reason = _rule_violations(frame)
    bad = frame[reason != ""].assign(reason=reason[reason != ""])
    good = frame[reason == ""]
    ts = good["timestamp"]
    report.reordered = bool(len(ts) > 1 and not ts.is_monotonic_increasing)
    good = good.sort_values(["timestamp", "_row"], kind="stable")
    exact = good.duplicated(subset=COLUMNS, keep="last")
    report.exact_duplicates = int(exact.sum())
    good = good[~exact]
    conflict = good.duplicated(subset=["timestamp"], keep="last")
    bad = pd.concat([bad, good[conflict].assign(
        reason="duplicate timestamp with different values (kept the later row)")])
    good = good[~conflict]
    report.rows_kept = len(good)
    report.quarantined = {str(k): int(v) for k, v in bad["reason"].value_counts().items()}
    quarantine = bad.rename(columns={"_row": "row"}).assign(source=source)
    quarantine["timestamp"] = quarantine["timestamp"].astype("datetime64[ms, UTC]")
    return good[COLUMNS].reset_index(drop=True), quarantine.reset_index(drop=True), report


def drop_incomplete(frame: pd.DataFrame, timeframe: str, now: datetime | None) -> pd.DataFrame:
    """Drop candles still open at `now`; with no `now` (a file), the newest candle can't be
    trusted and is dropped, whatever the row order. Unparseable timestamps are kept for
    validation to quarantine."""
    if frame.empty:
        return frame
    stamps = frame["timestamp"]
    if now is None:
        return frame.drop(index=stamps.idxmax()) if stamps.notna().any() else frame
    closes = stamps + pd.Timedelta(milliseconds=timeframe_ms(timeframe))
    return frame[~(closes > pd.Timestamp(now))]


# ------------------------------------------------------------------ gaps
def gap_report(frame: pd.DataFrame, timeframe: str, max_listed: int = 50) -> dict:
    """Missing candles between first and last: count, gaps (start, bars missing), longest."""
    step = pd.Timedelta(milliseconds=timeframe_ms(timeframe))
    out = {"candles": len(frame), "first": None, "last": None, "expected": len(frame),
           "missing": 0, "gaps": 0, "longest_gap_bars": 0, "longest_gap_start": None,
           "listed": []}
    if frame.empty:
        return out
    ts = frame["timestamp"]
    out["first"], out["last"] = ts.iloc[0].isoformat(), ts.iloc[-1].isoformat()
    missing = (ts.diff().iloc[1:] / step).round().astype(int) - 1
    missing = missing[missing > 0]
    out["expected"] = int((ts.iloc[-1] - ts.iloc[0]) / step) + 1
    out["missing"] = int(missing.sum())
    out["gaps"] = int(len(missing))
    if len(missing):
        longest = missing.idxmax()
        out["longest_gap_bars"] = int(missing.max())
        out["longest_gap_start"] = (ts.loc[longest - 1] + step).isoformat()
        out["listed"] = [{"after": ts.loc[i - 1].isoformat(), "missing_bars": int(n)}
                         for i, n in missing.head(max_listed).items()]
    return out


# ------------------------------------------------------------------ demo data
def demo_candles(n_bars: int, start: datetime, timeframe: str, seed: int) -> pd.DataFrame:
    """Deterministic synthetic candles: GARCH-like volatility, 1-bar mean reversion.

    The mean reversion gives a model something small but real to find (as in real 1h BTC);
    volume rises with absolute returns.
    """
    rng = np.random.default_rng(seed)
    n = n_bars + 1
    shocks = rng.standard_normal(n)
    vol = np.empty(n)
    ret = np.empty(n)
    vol[0], ret[0] = 0.01, 0.0
    for t in range(1, n):
        vol[t] = np.sqrt(1e-6 + 0.08 * ret[t - 1] ** 2 + 0.9 * vol[t - 1] ** 2)
        ret[t] = -0.25 * ret[t - 1] + vol[t] * shocks[t]
    close = 20000.0 * np.exp(np.cumsum(ret))
    open_ = close[:-1]
    close = close[1:]
    spread = np.abs(rng.standard_normal((2, n_bars))) * vol[1:] * close * 0.5
    high = np.maximum(open_, close) + spread[0]
    low = np.minimum(open_, close) - spread[1]
    volume = 100.0 * (1 + 40 * np.abs(ret[1:])) * rng.lognormal(0, 0.3, n_bars)
    stamps = pd.date_range(pd.Timestamp(start), periods=n_bars,
                           freq=pd.Timedelta(milliseconds=timeframe_ms(timeframe)))
    return pd.DataFrame({"timestamp": stamps.astype("datetime64[ms, UTC]"), "open": open_,
                         "high": high, "low": low, "close": close, "volume": volume})
