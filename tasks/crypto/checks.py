"""The rows the night's data checks read (tasks/datachecks.py): the model symbol's stored candles,
one row per bar, with the bar quantities the features stage derives its inputs from.

Ingest already quarantines unparseable timestamps, null values, non-positive prices, negative
volume, a low above or a high below open/close, and conflicting duplicates. What gets past it
(a price spike with a consistent candle, a store written by other means) shows here as a return
or range outside its bounds, or as drift.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.crypto import store
from tasks.crypto.featurize import model_partition
from tasks.crypto.paths import CryptoPaths
from tasks.datachecks import POSITIVE, Column, Table
from tasks.storage import read_json

# a tenfold move within one bar is a broken price in any market we fetch, not a move
MAX_BAR_LOG_MOVE = math.log(10)
LABEL = "next_bar_up"
# the half-life of scaled_return's volatility estimate, in bars: measured on 225 demo-candle
# nights of 24 bars (3 seeds), a night's drift test on raw returns false-stopped 2.2% of normal
# nights; on returns scaled with a half-life of 72 bars 0.9%, of 168 0.7% (99.6% of days at 8x
# the volatility caught, 70% at 3x); shorter half-lives follow a jump too fast to see it
VOLATILITY_HALFLIFE = 168
COLUMNS = (
    *(Column(price, low=POSITIVE, drift=False) for price in ("open", "high", "low", "close")),
    Column("volume", low=0.0, drift=False),
    # log close / previous: range-checked; its size follows the volatility regime, which moves
    # for days at a time (GARCH-like clusters), so drift is tested on it scaled by the volatility
    # of the bars before it: a calm week after a wild one is not drift, a day at 8x the recent
    # volatility is
    Column("log_return", low=-MAX_BAR_LOG_MOVE, high=MAX_BAR_LOG_MOVE, drift=False),
    Column("scaled_return"),  # log_return / the EWMA volatility of the bars before it
    # log high / low: it follows the volatility regime, which moves for days at a time (on the
    # demo's GARCH candles a day's ranges "drift" one night in five), so range-checked only
    Column("log_range", low=0.0, high=MAX_BAR_LOG_MOVE, drift=False),
    Column("log_volume_change"),  # log1p(volume) / previous
    Column("upper_wick", low=0.0, drift=False),  # log high / max(open, close)
    Column("lower_wick", low=0.0, drift=False),  # log min(open, close) / low
)


def table(params, root: Path = Path(".")) -> Table:
    """Every candle stored for crypto.model_symbol (the partition ingest listed) but the first,
    which has no previous close; key timestamp; label: the next bar closes higher (0/1)."""
    paths = CryptoPaths(Path(root))
    part = model_partition(read_json(paths.partitions), params.crypto.model_symbol,
                           paths.partitions)
    candles = store.load_candles(Path(root) / part["path"])
    return candle_table(candles)


def candle_table(candles: pd.DataFrame) -> Table:
    """The checks' table of a candle frame (store.COLUMNS, sorted by timestamp)."""
    close = candles["close"].astype("float64")
    volume = candles["volume"].astype("float64")
    with np.errstate(divide="ignore", invalid="ignore"):  # a broken price is the check's to see
        body_top = np.maximum(candles["open"], close)
        body_bottom = np.minimum(candles["open"], close)
        frame = pd.DataFrame({
            "timestamp": candles["timestamp"],
            "open": candles["open"], "high": candles["high"], "low": candles["low"],
            "close": close, "volume": volume,
            "log_return": (log_return := np.log(close / close.shift(1))),
            "scaled_return": scaled_returns(log_return),
            "log_range": np.log(candles["high"] / candles["low"]),
            "log_volume_change": np.log1p(volume).diff(),
            "upper_wick": np.log(candles["high"] / body_top),
            "lower_wick": np.log(body_bottom / candles["low"]),
            LABEL: (close.shift(-1) > close).astype("float64").where(close.shift(-1).notna()),
        })
    return Table(frame.iloc[1:].reset_index(drop=True), COLUMNS, LABEL, "timestamp")


def scaled_returns(log_return: pd.Series, halflife: int = VOLATILITY_HALFLIFE) -> pd.Series:
    """Each return divided by the volatility of the bars before it (the square root of an
    exponentially weighted mean of squared returns). Where there is none (the first bar, a
    market flat until then) a return is its own scale (±1; a 0 return stays 0); a broken
    return stays NaN for the null check to name."""
    squared = log_return.pow(2)
    variance = squared.ewm(halflife=halflife).mean().shift(1)
    variance = variance.where(variance > 0, squared)
    with np.errstate(divide="ignore", invalid="ignore"):
        scaled = log_return / np.sqrt(variance)
    return scaled.mask(log_return == 0, 0.0)
