"""Which exchange and symbol a candle file holds: what its own columns say, else what the
`crypto.file.exchange` / `crypto.file.symbol` settings name. Never guessed from crypto.exchange.
"""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from tasks.config import CryptoFile
from tasks.errors import ConfigError, DataError

ORIGIN_COLUMNS = ("exchange", "symbol")
# quote currencies for splitting a compact market id (BTCUSDT); longer ones are tried first
QUOTES = ("FDUSD", "USDT", "USDC", "BUSD", "TUSD", "USD", "EUR", "GBP", "JPY", "TRY", "BRL",
          "DAI", "BTC", "ETH", "BNB")
_HOW_TO_SET = "set crypto.file.exchange and crypto.file.symbol to the market this file holds"


def exchange_id(name: str) -> str:
    """'Binance', 'Binance US' -> 'binance', 'binanceus' (the ccxt id style)."""
    return re.sub(r"[^a-z0-9]", "", name.strip().lower())


def unified_symbol(name: str) -> str | None:
    """'BTC/USDT', 'btc-usdt', 'BTC_USDT', 'BTCUSDT' -> 'BTC/USDT'; None if the quote is unknown."""
    text = name.strip().upper()
    if "/" in text:
        return text
    for sep in ("-", "_"):
        if sep in text:
            base, quote = text.split(sep, 1)
            return f"{base}/{quote}" if base and quote else None
    for quote in sorted(QUOTES, key=len, reverse=True):
        if text.endswith(quote) and len(text) > len(quote):
            return f"{text[:-len(quote)]}/{quote}"
    return None


def _compact(symbol: str) -> str:
    return re.sub(r"[^A-Z0-9]", "", symbol.upper())


def _file_value(frame: pd.DataFrame, column: str, path: Path) -> tuple[str, int] | None:
    """The one value a file's column holds, with its first row; None if the file says nothing."""
    if column not in frame:
        return None
    values = frame[column].astype("string").str.strip()
    said = values[values.notna() & (values != "")]
    if said.empty:
        return None
    first = said.iloc[0]
    keyed = said.map(exchange_id if column == "exchange" else _compact)
    other = said[keyed != keyed.iloc[0]]
    if not other.empty:
        seen = ", ".join(sorted(set(said)))
        row = int(frame.loc[other.index[0], "_row"]) if "_row" in frame else None
        raise DataError(f"the file holds several {column} values ({seen}); keep one market per "
                        "file (split it)", path=path, row=row, field=column)
    row = int(frame.loc[said.index[0], "_row"]) if "_row" in frame else 1
    return first, row


def _file_symbol(frame: pd.DataFrame, path: Path) -> str | None:
    found = _file_value(frame, "symbol", path)
    if found is None:
        return None
    unified = unified_symbol(found[0])
    if unified is None:
        raise DataError(f"symbol {found[0]!r}: cannot tell base from quote; set "
                        "crypto.file.symbol (e.g. BTC/USDT)", path=path, row=found[1],
                        field="symbol")
    return unified


def _setting_symbol(settings: CryptoFile) -> str | None:
    if settings.symbol is None:
        return None
    unified = unified_symbol(settings.symbol)
    if unified is None:
        raise ConfigError(f"crypto.file.symbol: {settings.symbol!r} is not a symbol like BTC/USDT")
    return unified


def _agree(field: str, said: str | None, setting: str | None, path: Path) -> str:
    """The file's value or the setting's; an error when both are missing or they disagree."""
    if said is None and setting is None:
        raise DataError(f"the file does not say which {field} it holds (no {field!r} column) "
                        f"and crypto.file.{field} is not set; {_HOW_TO_SET}", path=path,
                        field=field)
    if said is not None and setting is not None:
        key = exchange_id if field == "exchange" else _compact
        if key(said) != key(setting):
            raise DataError(f"the file says {field} {said!r} but crypto.file.{field} is "
                            f"{setting!r}; fix the setting or remove it (null)", path=path,
                            field=field)
    return setting or said  # type: ignore[return-value]


def file_origin(frame: pd.DataFrame, path: Path, settings: CryptoFile) -> tuple[str, str]:
    """(exchange, symbol) of a candle file read by read_candle_file."""
    said_exchange = _file_value(frame, "exchange", path)
    exchange = _agree("exchange", exchange_id(said_exchange[0]) if said_exchange else None,
                      exchange_id(settings.exchange) if settings.exchange else None, path)
    symbol = _agree("symbol", _file_symbol(frame, path), _setting_symbol(settings), path)
    return exchange, symbol
