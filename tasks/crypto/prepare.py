"""The crypto_split stage: leak-checked chronological segments of the feature table."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from prefect import task

from tasks.config import CryptoSettings
from tasks.crypto.features import feature_columns
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
from tasks.logs import get_logger
from tasks.storage import read_json, read_parquet, write_json, write_npy, write_parquet


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


def split_stage(params) -> dict:
    """crypto_split: leak-checked chronological segments."""
    from tasks.crypto.paths import CryptoPaths

    paths = CryptoPaths()
    return build_splits(params.crypto, paths.features, paths.splits)
