"""Ingestion for every source (demo, file, live): validate, quarantine, merge, report gaps."""
from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pandas as pd
from prefect import task

from tasks.config import CryptoSettings
from tasks.crypto import store
from tasks.crypto.candles import (
    demo_candles,
    drop_incomplete,
    gap_report,
    read_candle_file,
    validate_candles,
)
from tasks.logs import get_logger

DEMO_EXCHANGE = "demo"


def exchange_label(settings: CryptoSettings) -> str:
    """The partition's exchange name: demo data never mixes with real candles."""
    return DEMO_EXCHANGE if settings.source == "demo" else settings.exchange


def save_batch(raw_root: Path, exchange: str, symbol: str, timeframe: str, frame: pd.DataFrame,
               source: str) -> dict:
    """Validate one batch, quarantine what is bad, merge the rest; returns counts."""
    good, bad, report = validate_candles(frame, source)
    added = store.merge_candles(raw_root, exchange, symbol, timeframe, good)
    quarantine = store.append_quarantine(raw_root, exchange, symbol, timeframe, bad)
    log = get_logger()
    if report.quarantined:
        log.warning("%s %s: quarantined %d row(s) to %s: %s", exchange, symbol,
                    sum(report.quarantined.values()), quarantine, report.quarantined)
    if report.exact_duplicates:
        log.info("%s %s: %d exact duplicate candle(s) merged", exchange, symbol,
                 report.exact_duplicates)
    return {**report.as_dict(), "added": added}


def _ingest_demo(settings: CryptoSettings, raw_root: Path, seed: int) -> dict[str, dict]:
    out = {}
    for i, symbol in enumerate(settings.symbols):
        frame = demo_candles(settings.demo.n_bars, settings.demo.start, settings.timeframe,
                             seed + i)
        out[symbol] = save_batch(raw_root, DEMO_EXCHANGE, symbol, settings.timeframe, frame, "demo")
    return out


def _ingest_file(settings: CryptoSettings, raw_root: Path) -> dict[str, dict]:
    path = Path(settings.file.path)
    frame = read_candle_file(path, settings.file.format)
    if settings.drop_incomplete:  # an export may end with a still-open candle, unmarked
        frame = drop_incomplete(frame, settings.timeframe, now=None)
    symbol = settings.symbol
    return {symbol: save_batch(raw_root, settings.exchange, symbol, settings.timeframe, frame,
                               str(path))}


@task(name="crypto-ingest", retries=0)
def ingest_candles(settings: CryptoSettings, raw_root: Path, seed: int,
                   now: datetime | None = None) -> dict:
    """Bring candles from the configured source into the store; return a per-symbol report."""
    if settings.source == "demo":
        batches = _ingest_demo(settings, raw_root, seed)
    elif settings.source == "file":
        batches = _ingest_file(settings, raw_root)
    else:
        from tasks.crypto.exchange import ingest_live

        batches = ingest_live(settings, raw_root, now=now)
    exchange = exchange_label(settings)
    report = {"source": settings.source, "exchange": exchange, "timeframe": settings.timeframe,
              "symbols": {}}
    log = get_logger()
    for symbol in settings.symbols if settings.source != "file" else [settings.symbol]:
        candles = store.read_candles(raw_root, exchange, symbol, settings.timeframe)
        gaps = gap_report(candles, settings.timeframe)
        report["symbols"][symbol] = {"ingest": batches.get(symbol, {}), "gaps": gaps}
        log.info("%s %s %s: %d candles stored (%s -> %s), %d missing in %d gap(s), longest %d bars",
                 exchange, symbol, settings.timeframe, gaps["candles"], gaps["first"],
                 gaps["last"], gaps["missing"], gaps["gaps"], gaps["longest_gap_bars"])
    return report


def ingest_stage(params) -> dict:
    """crypto_ingest: the source's candles into the store, and the ingest report."""
    from tasks.crypto.paths import CryptoPaths
    from tasks.storage import write_json

    paths = CryptoPaths()
    report = ingest_candles(params.crypto, paths.raw, params.common.seed)
    write_json(report, paths.ingest_report)
    return report
