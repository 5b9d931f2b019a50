"""Crypto ingestion against the fake Binance server on 127.0.0.1 (rate limit off).

Measures candles/s stored by a full fetch of 100 pages, and an incremental update of 1 new
page against that full refetch: requests and seconds, side by side, as ratios.

    python -m benchmarks.crypto_ingest [--pages 100] [--repeats 3]
"""
from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

from tasks.crypto.exchange import ingest_live
from tests.fakes.exchange import MAX_LIMIT, FakeBinance, settings_for


def _timed_ingest(server: FakeBinance, root: Path) -> tuple[float, int, int]:
    server.reset_requests()
    start = time.perf_counter()
    report = ingest_live(settings_for(server, flush_every_pages=20), root)
    seconds = time.perf_counter() - start
    entry = next(iter(report.values()))
    return seconds, len(server.klines_requests()), entry["added"]


def run(pages: int, repeats: int) -> dict:
    full, incr = [], []
    for _ in range(repeats):
        with FakeBinance(timeframe="1m", count=pages * MAX_LIMIT) as server, \
                tempfile.TemporaryDirectory() as tmp:
            full.append(_timed_ingest(server, Path(tmp) / "raw"))
            server.append(MAX_LIMIT)
            incr.append(_timed_ingest(server, Path(tmp) / "raw"))
    full_s = statistics.median(r[0] for r in full)
    incr_s = statistics.median(r[0] for r in incr)
    return {"pages": pages, "full_seconds": full_s, "full_requests": full[0][1],
            "full_candles": full[0][2], "candles_per_second": full[0][2] / full_s,
            "incremental_seconds": incr_s, "incremental_requests": incr[0][1],
            "incremental_candles": incr[0][2]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.disable(logging.INFO)
    r = run(args.pages, args.repeats)
    print(f"{'':28}{'full refetch':>16}{'incremental':>16}{'ratio':>10}")
    print(f"{'pages fetched':28}{r['pages']:>16}{1:>16}")
    print(f"{'klines requests':28}{r['full_requests']:>16}{r['incremental_requests']:>16}"
          f"{r['full_requests'] / r['incremental_requests']:>9.1f}x")
    print(f"{'seconds (median of runs)':28}{r['full_seconds']:>16.3f}"
          f"{r['incremental_seconds']:>16.3f}{r['full_seconds'] / r['incremental_seconds']:>9.1f}x")
    print(f"{'candles stored':28}{r['full_candles']:>16}{r['incremental_candles']:>16}")
    print(f"full fetch throughput: {r['candles_per_second']:,.0f} candles/s stored "
          f"({r['pages']} pages of {MAX_LIMIT}, rate limit off)")


if __name__ == "__main__":
    main()
