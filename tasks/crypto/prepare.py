"""The features and split stages: feature table from stored candles, leak-checked splits."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from prefect import task

from tasks.config import CryptoSettings
from tasks.crypto import store
from tasks.crypto.features import add_labels, compute_features, feature_columns
from tasks.crypto.split import (
    Scaler,
    carve_train_dev,
    check_no_leak,
    chronological_split,
    purge_gap,
    split_table,
    usable_positions,
    walk_forward_folds,
)
from tasks.errors import DataError
from tasks.logs import get_logger
from tasks.storage import read_json, read_parquet, write_json, write_npy, write_parquet


def model_partition(report: dict, model_symbol: str | None, report_path: Path) -> dict:
    """The ingested partition to model: crypto.model_symbol's, else the first one written."""
    parts = report.get("partitions") or []
    if not parts:
        raise DataError("lists no ingested partitions; run crypto_ingest first", path=report_path,
                        field="partitions")
    if model_symbol is None:
        return parts[0]
    for part in parts:
        if part["symbol"] == model_symbol:
            return part
    held = ", ".join(f"{p['source']} {p['exchange']} {p['symbol']}" for p in parts)
    raise DataError(f"crypto.model_symbol {model_symbol!r} was not ingested (ingested: {held}); "
                    "set it to one of those, or null", path=report_path, field="partitions")


@task(name="crypto-features")
def build_features(settings: CryptoSettings, ingest_report: Path, dest: Path) -> dict:
    """Causal features and forward labels for the model symbol's ingested candles, as one table."""
    part = model_partition(read_json(ingest_report), settings.model_symbol, ingest_report)
    candles = store.load_candles(Path(part["path"]))
    if candles.empty:
        raise DataError(f"no candles for {part['source']} {part['exchange']} {part['symbol']} "
                        f"{part['timeframe']} (listed in {ingest_report}); run crypto_ingest",
                        path=part["path"])
    frame = add_labels(compute_features(candles, settings.features), settings.label)
    write_parquet(frame, dest)
    summary = {"candles": part, "rows": len(frame), "features": feature_columns(frame),
               "labelled": int(frame["target"].notna().sum()),
               "up_share": float(frame["target"].mean())}
    get_logger().info("features (%s %s %s): %d rows, %d features, %d labelled (%.1f%% up)",
                      part["source"], part["exchange"], part["symbol"], summary["rows"],
                      len(summary["features"]), summary["labelled"], 100 * summary["up_share"])
    return summary


@task(name="crypto-split")
def build_splits(settings: CryptoSettings, features_path: Path, out_dir: Path) -> dict:
    """Chronological purged splits, a train-only scaler, the leak check, walk-forward folds."""
    frame = read_parquet(features_path)
    columns = feature_columns(frame)
    matrix = frame[columns].to_numpy(dtype=np.float64)
    cfg, horizon = settings.split, settings.label.horizon
    positions = usable_positions(matrix, frame["target"].to_numpy(), cfg.window)
    segments = chronological_split(positions, cfg, horizon)
    segments["train"], segments["train_dev"] = carve_train_dev(
        segments["train"], cfg.train_dev_fraction, cfg.train_dev_blocks,
        purge_gap(cfg.window, horizon, cfg.embargo))
    scaler = Scaler.fit_on_samples(matrix, segments["train"], cfg.window)
    leak = check_no_leak(segments, cfg.window, horizon, scaler=scaler, features=matrix)
    folds = walk_forward_folds(np.concatenate([np.sort(np.concatenate(
                                   [segments["train"], segments["train_dev"]])), segments["val"]]),
                               cfg.walk_forward.folds, cfg.walk_forward.mode, cfg, horizon)
    for i, fold in enumerate(folds):
        check_no_leak(fold, cfg.window, horizon)
        write_npy(fold["train"], out_dir / f"fold{i}_train.npy")
        write_npy(fold["val"], out_dir / f"fold{i}_val.npy")
    write_npy(scaler.transform(matrix), out_dir / "inputs.npy")
    write_parquet(split_table(frame, segments), out_dir / "samples.parquet")
    report = {"columns": columns, "scaler": scaler.as_dict(), "leak_check": leak,
              "folds": len(folds), "sizes": {k: int(len(v)) for k, v in segments.items()},
              "ranges": {k: [frame["timestamp"].iloc[v[0]].isoformat(),
                             frame["timestamp"].iloc[v[-1]].isoformat()]
                         for k, v in segments.items()}}
    write_json(report, out_dir / "split.json")
    get_logger().info("split: %s; leak check passed (window %d, horizon %d, embargo %d)",
                      report["sizes"], cfg.window, horizon, cfg.embargo)
    return report


def load_segments(split_dir: Path) -> tuple[np.ndarray, pd.DataFrame, dict]:
    """Scaled input rows, the per-sample table, and the split report."""
    from tasks.storage import read_npy

    return (read_npy(split_dir / "inputs.npy"), read_parquet(split_dir / "samples.parquet"),
            read_json(split_dir / "split.json"))


def features_stage(params) -> dict:
    """crypto_features: the feature table of the model symbol."""
    from tasks.crypto.paths import CryptoPaths

    paths = CryptoPaths()
    return build_features(params.crypto, paths.ingest_report, paths.features)


def split_stage(params) -> dict:
    """crypto_split: leak-checked chronological segments."""
    from tasks.crypto.paths import CryptoPaths

    paths = CryptoPaths()
    return build_splits(params.crypto, paths.features, paths.splits)
