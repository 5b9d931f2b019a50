"""A long/flat backtest: hold the asset or cash each bar, paying a fee on every switch."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from tasks.errors import DataError
from tasks.storage import save_figure


def _check_returns(next_returns: np.ndarray) -> np.ndarray:
    returns = np.asarray(next_returns, dtype=np.float64).reshape(-1)
    if returns.size == 0:
        raise DataError("no bars to backtest", field="next_returns")
    bad = np.flatnonzero(~np.isfinite(returns) | (returns <= -1))
    if bad.size:
        raise DataError(f"return {returns[bad[0]]} is not finite or is <= -100%",
                        row=int(bad[0]), field="next_returns")
    return returns


def _summary(position: np.ndarray, returns: np.ndarray, fee_bps: float,
             bars_per_year: float) -> dict[str, Any]:
    """Equity and its summary for a checked 0/1 position series over checked returns."""
    if fee_bps < 0:
        raise ValueError(f"fee_bps must be >= 0, got {fee_bps}")
    if bars_per_year <= 0:
        raise ValueError(f"bars_per_year must be > 0, got {bars_per_year}")
    trades = np.abs(np.diff(position, prepend=0.0))  # the start is flat
    # the fee comes off equity at close t when switching, before the bar's return
    bar_returns = (1 - trades * fee_bps / 1e4) * (1 + position * returns) - 1
    equity = np.cumprod(1 + bar_returns)
    peak = np.maximum.accumulate(np.r_[1.0, equity])[1:]
    std = float(np.std(bar_returns, ddof=1)) if bar_returns.size > 1 else 0.0
    sharpe = float(np.mean(bar_returns)) / std * np.sqrt(bars_per_year) if std > 0 else 0.0
    return {
        "total_return": float(equity[-1] - 1),
        "sharpe": float(sharpe),
        "max_drawdown": float(np.min(equity / peak - 1)),
        "n_trades": int(trades.sum()),
        "exposure": float(position.mean()),
        "equity": equity,
    }


def backtest_long_flat(position: np.ndarray, next_returns: np.ndarray, fee_bps: float,
                       bars_per_year: float) -> dict[str, Any]:
    """Hold position[t] (0/1, set at close t) over next_returns[t] (close t to t+1).

    Returns total_return, sharpe (annualised, sample std), max_drawdown (<= 0), n_trades
    (switches incl. the first entry), exposure, and "equity" (after each bar, starting from 1).
    """
    returns = _check_returns(next_returns)
    pos = np.asarray(position).reshape(-1)
    if pos.size != returns.size:
        raise DataError(f"{pos.size} positions but {returns.size} returns", field="position")
    bad = np.flatnonzero((pos != 0) & (pos != 1))
    if bad.size:
        raise DataError(f"position {pos[bad[0]]!r} is not 0 or 1", row=int(bad[0]),
                        field="position")
    return _summary(pos.astype(np.float64), returns, fee_bps, bars_per_year)


def buy_and_hold(next_returns: np.ndarray, fee_bps: float, bars_per_year: float) -> dict[str, Any]:
    """Long on every bar: one entry fee, same keys as backtest_long_flat."""
    returns = _check_returns(next_returns)
    return _summary(np.ones(returns.size), returns, fee_bps, bars_per_year)


def plot_equity(curves: dict[str, np.ndarray], index: Any, dest: str | os.PathLike) -> Path:
    """Equity curves on one chart (x = index, datetime-like, or bar number when None) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for name, curve in curves.items():
        curve = np.asarray(curve, dtype=np.float64).reshape(-1)
        x = np.arange(curve.size) if index is None else np.asarray(index)
        if len(x) != curve.size:
            raise DataError(f"{curve.size} equity points but {len(x)} index entries", field=name)
        ax.plot(x, curve, label=name, linewidth=1)
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=0.8)
    ax.set_ylabel("equity (start = 1)")
    ax.set_xlabel("bar" if index is None else "time")
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(loc="best")
    fig.autofmt_xdate()
    return save_figure(fig, dest)
