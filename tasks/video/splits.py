"""kinetics_split: the clip index split four ways (train / train-dev / val / test), written once
and read by kinetics_train and kinetics_evaluate alike."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.errors import DataError
from tasks.logs import get_logger
from tasks.storage import read_json, read_parquet, write_json, write_parquet

SPLITS = ("train", "val", "test")
PARTS = ("train", "train_dev", "val", "test")
CLIPS_FILE = "clips.parquet"


@dataclass(frozen=True)
class ClipSplits:
    """The index split four ways; `test_name` says which split the test numbers come from.
    train_dev: training-distribution clips held out of training (for the variance estimate)."""

    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame
    test_name: str
    train_dev: pd.DataFrame = field(default_factory=pd.DataFrame)


def hold_out(frame: pd.DataFrame, fraction: float, seed: int
             ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(kept, held): `fraction` of each class's rows held out (seeded), at least one per class
    with two or more rows, none when fraction is 0."""
    if fraction <= 0 or frame.empty:
        return frame.reset_index(drop=True), frame.iloc[0:0].reset_index(drop=True)
    rng = np.random.default_rng(seed)
    held = []
    for _, rows in frame.groupby("class_index", sort=True):
        n = min(len(rows) - 1, max(1, round(fraction * len(rows))))
        held.extend(rng.choice(rows.index.to_numpy(), size=n, replace=False).tolist() if n else [])
    return (frame.drop(index=held).reset_index(drop=True),
            frame.loc[sorted(held)].reset_index(drop=True))


def split_index(index: pd.DataFrame, seed: int, train_dev_fraction: float = 0.0) -> ClipSplits:
    """train / val / test from the index's `split`; without val, 10% of train per class (seeded);
    without test (Kinetics' test labels are not public everywhere), the val split is reported;
    then `train_dev_fraction` of each class's training clips is held out as train-dev."""
    unknown = set(index["split"]) - set(SPLITS)
    if unknown:
        raise DataError(f"unknown split names {sorted(unknown)}", field="split")
    parts = {name: index[index["split"] == name].reset_index(drop=True) for name in SPLITS}
    if parts["train"].empty:
        raise DataError("the index has no training clips", field="split")
    if parts["val"].empty:
        parts["train"], parts["val"] = hold_out(parts["train"], 0.1, seed)
    train, train_dev = hold_out(parts["train"], train_dev_fraction, seed + 1)
    test_name = "test" if not parts["test"].empty else "val"
    return ClipSplits(train, parts["val"], parts[test_name], test_name, train_dev)


def write_splits(splits: ClipSplits, dest: Path) -> dict:
    """dest/clips.parquet (every clip with its `part`) and dest/split.json (sizes, test name)."""
    frames = [getattr(splits, part).assign(part=part) for part in PARTS
              if not getattr(splits, part).empty]
    write_parquet(pd.concat(frames, ignore_index=True), dest / CLIPS_FILE)
    report = {"test_split": splits.test_name,
              "sizes": {part: len(getattr(splits, part)) for part in PARTS}}
    write_json(report, dest / "split.json")
    return report


def read_splits(source: Path) -> ClipSplits:
    """The ClipSplits that write_splits wrote."""
    clips, report = read_parquet(source / CLIPS_FILE), read_json(source / "split.json")
    parts = {part: clips[clips["part"] == part].drop(columns="part").reset_index(drop=True)
             for part in PARTS}
    return ClipSplits(parts["train"], parts["val"], parts["test"], report["test_split"],
                      parts["train_dev"])


def split_stage(params) -> dict:
    """kinetics_split: the index's clips split four ways."""
    from tasks.video.paths import KineticsPaths

    paths = KineticsPaths()
    splits = split_index(read_parquet(paths.index), params.common.seed,
                         params.kinetics.dataset.train_dev_fraction)
    report = write_splits(splits, paths.split)
    get_logger().info("kinetics split: %s (test numbers from %s)", report["sizes"],
                      report["test_split"])
    return report
