"""Ingestion for every source (demo, file, live): validate, quarantine, merge, report gaps.

Each source writes its own partitions (source=demo|file|live); the report lists them, and the
stages after ingestion find their candles there, never by re-deriving them from params.
"""
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
from tasks.crypto.origin import ORIGIN_COLUMNS, file_origin
from tasks.crypto.store import Partition
from tasks.logs import get_logger

DEMO_EXCHANGE = "demo"


def live_partition(settings: CryptoSettings, symbol: str) -> Partition:
    """Where live candles of `symbol` from crypto.exchange are stored."""
    return Partition("live", settings.exchange, symbol, settings.timeframe)


def save_batch(raw_root: Path, part: Partition, frame: pd.DataFrame, source: str) -> dict:
    """Validate one batch, quarantine what is bad, merge the rest; returns counts."""
    good, bad, report = validate_candles(frame, source)
    added = store.merge_candles(raw_root, part, good)
    quarantine = store.append_quarantine(raw_root, part, bad)
    log = get_logger()
    if report.quarantined:
        log.warning("%s %s: quarantined %d row(s) to %s: %s", part.exchange, part.symbol,
                    sum(report.quarantined.values()), quarantine, report.quarantined)
    if report.exact_duplicates:
        log.info("%s %s: %d exact duplicate candle(s) merged", part.exchange, part.symbol,
                 report.exact_duplicates)
    return {**report.as_dict(), "added": added}


def _ingest_demo(settings: CryptoSettings, raw_root: Path, seed: int) -> dict[Partition, dict]:
    out = {}
    for i, symbol in enumerate(settings.symbols):
        part = Partition("demo", DEMO_EXCHANGE, symbol, settings.timeframe)
        frame = demo_candles(settings.demo.n_bars, settings.demo.start, settings.timeframe,
                             seed + i)
        out[part] = save_batch(raw_root, part, frame, "demo")
    return out


def _ingest_file(settings: CryptoSettings, raw_root: Path) -> dict[Partition, dict]:
    path = Path(settings.file.path)
    frame = read_candle_file(path, settings.file.format)
    exchange, symbol = file_origin(frame, path, settings.file)
    frame = frame.drop(columns=[c for c in ORIGIN_COLUMNS if c in frame])
    if settings.drop_incomplete:  # an export may end with a still-open candle, unmarked
        frame = drop_incomplete(frame, settings.timeframe, now=None)
    part = Partition("file", exchange, symbol, settings.timeframe)
    return {part: save_batch(raw_root, part, frame, str(path))}


def _ingest_live(settings: CryptoSettings, raw_root: Path,
                 now: datetime | None) -> dict[Partition, dict]:
    from tasks.crypto.exchange import ingest_live

    counts = ingest_live(settings, raw_root, now=now)
    return {live_partition(settings, s): counts.get(s, {}) for s in settings.symbols}


@task(name="crypto-ingest", retries=0)
def ingest_candles(settings: CryptoSettings, raw_root: Path, seed: int,
                   now: datetime | None = None) -> dict:
    """Bring candles from the configured source into the store; report the partitions written."""
    if settings.source == "demo":
        batches = _ingest_demo(settings, raw_root, seed)
    elif settings.source == "file":
        batches = _ingest_file(settings, raw_root)
    else:
        batches = _ingest_live(settings, raw_root, now)
    first = next(iter(batches))
    report = {"source": first.source, "exchange": first.exchange,
              "timeframe": settings.timeframe, "partitions": [], "symbols": {}}
    log = get_logger()
    for part, counts in batches.items():
        gaps = gap_report(store.read_candles(raw_root, part), part.timeframe)
        entry = part.as_dict(raw_root)
        report["partitions"].append(entry)
        report["symbols"][part.symbol] = {"partition": entry, "ingest": counts, "gaps": gaps}
        log.info("%s %s %s: %d candles stored (%s -> %s), %d missing in %d gap(s), longest %d bars",
                 part.exchange, part.symbol, part.timeframe, gaps["candles"], gaps["first"],
                 gaps["last"], gaps["missing"], gaps["gaps"], gaps["longest_gap_bars"])
    return report


def ingest_stage(params) -> dict:
    """crypto_ingest: the source's candles into the store, and the ingest report."""
    from tasks.crypto.paths import CryptoPaths
    from tasks.storage import write_json

    paths = CryptoPaths()
    report = ingest_candles(params.crypto, paths.raw, params.common.seed)
    # what features reads: the partitions alone, so this run's counts (in the report, which
    # no stage reads) never make the data look new
    write_json({"partitions": report["partitions"]}, paths.partitions)
    write_json(report, paths.ingest_report)
    return report
