"""Timeframe strings (ccxt style: 1m, 1h, 1d, 1w, 1M) to milliseconds."""
from __future__ import annotations

_UNITS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000,
          "M": 2_592_000_000, "y": 31_536_000_000}


def timeframe_ms(timeframe: str) -> int:
    """Length of one bar in milliseconds; ValueError naming the timeframe if it is malformed."""
    amount, unit = timeframe[:-1], timeframe[-1:]
    if unit not in _UNITS or not amount.isdigit() or int(amount) < 1:
        raise ValueError(f"timeframe {timeframe!r} is not like 1m, 5m, 1h, 4h, 1d, 1w")
    return int(amount) * _UNITS[unit]


def bars_per_year(timeframe: str) -> float:
    return 365.25 * 86_400_000 / timeframe_ms(timeframe)
