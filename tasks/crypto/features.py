"""Causal features and forward labels. A feature at bar t reads bars <= t only."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from tasks.config import CryptoFeatures, CryptoLabel


def _rsi(close: pd.Series, window: int) -> pd.Series:
    """Wilder's RSI rescaled to [-1, 1]; exponential averages are causal."""
    delta = close.diff()
    gain = delta.clip(lower=0).ewm(alpha=1 / window, adjust=False, min_periods=window).mean()
    loss = (-delta.clip(upper=0)).ewm(alpha=1 / window, adjust=False, min_periods=window).mean()
    rsi = gain / (gain + loss)
    return (rsi - 0.5) * 2


def compute_features(candles: pd.DataFrame, settings: CryptoFeatures) -> pd.DataFrame:
    """One row per candle: timestamp, close, and feature columns (NaN during warm-up)."""
    close = candles["close"].astype("float64")
    log_close = np.log(close)
    ret1 = log_close.diff()
    out = {"timestamp": candles["timestamp"], "close": close}
    for lag in settings.return_lags:
        out[f"logret_{lag}"] = log_close.diff(lag)
    for window in settings.volatility_windows:
        out[f"vol_{window}"] = ret1.rolling(window).std()
    log_vol = np.log1p(candles["volume"].astype("float64"))
    roll = log_vol.rolling(settings.volume_window)
    out["volume_z"] = (log_vol - roll.mean()) / roll.std().replace(0, np.nan)
    out["rsi"] = _rsi(close, settings.rsi_window)
    out["range"] = (candles["high"] - candles["low"]) / close
    out["body"] = (candles["close"] - candles["open"]) / candles["open"]
    return pd.DataFrame(out).reset_index(drop=True)


def history_bars(settings: CryptoFeatures, tolerance: float = 1e-9) -> int:
    """Bars of history after which no feature at a bar depends on where the candles start
    (up to `tolerance`): the longest lag or rolling window, and RSI's exponential averages,
    which forget an earlier start at the rate 1 - 1/rsi_window per bar."""
    forget = math.ceil(math.log(tolerance) / math.log(1 - 1 / settings.rsi_window))
    return max(*settings.return_lags, *(w + 1 for w in settings.volatility_windows),
               settings.volume_window, forget)


def feature_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c not in ("timestamp", "close", "target", "fwd_return",
                                                  "next_return")]


def add_labels(frame: pd.DataFrame, settings: CryptoLabel) -> pd.DataFrame:
    """target = 1 if close rises more than the dead zone over `horizon` bars, 0 if it falls
    more than it, NaN inside the dead zone and where the future is unknown."""
    close = frame["close"]
    fwd = close.shift(-settings.horizon) / close - 1
    target = pd.Series(np.nan, index=frame.index)
    target[fwd > settings.dead_zone] = 1.0
    target[fwd < -settings.dead_zone] = 0.0
    if settings.dead_zone == 0:
        target[fwd == 0] = np.nan  # a flat bar is no move either way
    return frame.assign(fwd_return=fwd, next_return=close.shift(-1) / close - 1, target=target)
