"""Leak-free chronological splits of windowed samples, with purge, embargo and walk-forward folds.

A sample at position t reads feature rows t-window+1..t and its label reads closes t..t+horizon.
Between two consecutive segments we purge `window + horizon + embargo` positions, so no bar that
feeds one segment's inputs or labels feeds another's.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tasks.config import CryptoSplit
from tasks.errors import DataError, LeakError

SEGMENTS = ("train", "val", "test")


@dataclass(frozen=True)
class Scaler:
    """Per-feature mean and std, fitted on training rows only."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, rows: np.ndarray) -> Scaler:
        std = np.nanstd(rows, axis=0)
        return cls(np.nanmean(rows, axis=0), np.where(std > 0, std, 1.0))

    @classmethod
    def fit_on_samples(cls, matrix: np.ndarray, positions: np.ndarray, window: int) -> Scaler:
        """Fitted on exactly the rows these samples' input windows read (train only: held-out
        train-dev runs inside the training period stay unseen)."""
        return cls.fit(matrix[window_rows(positions, window, len(matrix))])

    def transform(self, rows: np.ndarray) -> np.ndarray:
        return ((rows - self.mean) / self.std).astype(np.float32)

    def as_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, data: dict) -> Scaler:
        return cls(np.asarray(data["mean"]), np.asarray(data["std"]))


def window_rows(positions: np.ndarray, window: int, n_rows: int) -> np.ndarray:
    """Boolean mask of the rows read by the input windows of samples at `positions`."""
    diff = np.zeros(n_rows + 1, dtype=np.int64)
    np.add.at(diff, np.maximum(positions - window + 1, 0), 1)
    np.add.at(diff, positions + 1, -1)
    return np.cumsum(diff[:-1]) > 0


def usable_positions(features: np.ndarray, target: np.ndarray, window: int) -> np.ndarray:
    """Positions t whose whole input window is finite and whose label is known."""
    finite = np.isfinite(features).all(axis=1)
    full = np.convolve(finite.astype(int), np.ones(window, dtype=int), "full")[: len(finite)]
    ok = (full == window) & np.isfinite(target)
    ok[: window - 1] = False
    return np.flatnonzero(ok)


def purge_gap(window: int, horizon: int, embargo: int) -> int:
    return window + horizon + embargo


def chronological_split(positions: np.ndarray, settings: CryptoSplit,
                        horizon: int) -> dict[str, np.ndarray]:
    """Train, val, test in time order, with a purge + embargo gap before val and before test."""
    n = len(positions)
    gap = purge_gap(settings.window, horizon, settings.embargo)
    n_test = int(round(n * settings.test_fraction))
    n_val = int(round(n * settings.val_fraction))
    if n - n_test - n_val - 2 * gap < max(100, n // 10):
        raise DataError(f"only {n} usable samples: too few for val/test fractions "
                        f"{settings.val_fraction}/{settings.test_fraction} and purge gaps of {gap}",
                        field="crypto.split")
    test = positions[n - n_test:]
    val = positions[positions < test[0] - gap][-n_val:]
    train = positions[positions < val[0] - gap]
    return {"train": train, "val": val, "test": test}


def carve_train_dev(train: np.ndarray, fraction: float, blocks: int, gap: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(train, train_dev): `blocks` contiguous runs holding `fraction` of the training samples,
    one in the middle of each of `blocks` equal slots of the training period (the training
    distribution, early to late), with `gap` samples purged on both sides of every run so that
    no bar feeds both a training and a train-dev sample."""
    if fraction <= 0:
        return train, train[:0]
    n = len(train)
    size, slot = max(1, round(fraction * n / blocks)), n // blocks
    margin = (slot - size) // 2
    if margin < gap or n - blocks * (size + 2 * gap) < max(100, n // 10):
        raise DataError(f"{n} training samples are too few for {blocks} train-dev runs of "
                        f"{size} with purge gaps of {gap}", field="crypto.split.train_dev_fraction")
    keep, held = np.ones(n, dtype=bool), np.zeros(n, dtype=bool)
    for b in range(blocks):
        start = b * slot + margin
        keep[start - gap: start + size + gap] = False
        held[start: start + size] = True
    return train[keep], train[held]


def check_train_dev(train: np.ndarray, train_dev: np.ndarray, window: int, horizon: int) -> None:
    """Raise LeakError if a training sample reads a bar (input or label) a train-dev one reads."""
    if not len(train_dev):
        return
    runs = np.split(train_dev, np.flatnonzero(np.diff(train_dev) > 1) + 1)
    starts = np.array([run[0] - window + 1 for run in runs])
    ends = np.array([run[-1] + horizon for run in runs])
    first, last = train - window + 1, train + horizon
    # the last run starting at or before each training sample's last bar must end before its first
    idx = np.searchsorted(starts, last, side="right") - 1
    clash = (idx >= 0) & (ends[np.maximum(idx, 0)] >= first)
    if clash.any():
        raise LeakError(f"training sample at position {int(train[clash][0])} shares bars with a "
                        "train-dev run: the purge around train-dev is missing")


def walk_forward_folds(positions: np.ndarray, folds: int, mode: str, settings: CryptoSplit,
                       horizon: int) -> list[dict[str, np.ndarray]]:
    """Expanding or rolling (train, val) folds over `positions`, each purged like the main split."""
    gap = purge_gap(settings.window, horizon, settings.embargo)
    block = len(positions) // (folds + 1)
    out = []
    for k in range(1, folds + 1):
        val = positions[k * block: (k + 1) * block]
        first = 0 if mode == "expanding" else (k - 1) * block
        train = positions[first: k * block]
        train = train[train < val[0] - gap]
        out.append({"train": train, "val": val})
    return out


def touched_bars(positions: np.ndarray, window: int, horizon: int) -> tuple[int, int]:
    """First and last bar any sample in `positions` reads (inputs or label)."""
    return int(positions.min()) - window + 1, int(positions.max()) + horizon


def check_no_leak(segments: dict[str, np.ndarray], window: int, horizon: int,
                  scaler: Scaler | None = None, features: np.ndarray | None = None) -> dict:
    """Raise LeakError if segments overlap in time or share a bar; verify the scaler's origin."""
    names = [s for s in SEGMENTS if s in segments and len(segments[s])] or list(segments)
    for earlier, later in zip(names, names[1:], strict=False):
        a, b = segments[earlier], segments[later]
        if not (np.all(np.diff(a) > 0) and np.all(np.diff(b) > 0)):
            raise LeakError(f"{earlier}/{later}: samples are not in time order (shuffled windows)")
        _, last_a = touched_bars(a, window, horizon)
        first_b, _ = touched_bars(b, window, horizon)
        if last_a >= first_b:
            raise LeakError(f"{earlier} reads bars up to {last_a} but {later} starts reading at "
                            f"bar {first_b}: windows/labels straddle the boundary")
    if "train_dev" in segments:
        check_train_dev(segments["train"], segments["train_dev"], window, horizon)
    if scaler is not None and features is not None:
        expected = Scaler.fit_on_samples(features, segments["train"], window)
        if not np.allclose(expected.mean, scaler.mean) or not np.allclose(expected.std, scaler.std):
            raise LeakError("scaler statistics differ from the training rows' own: it was fitted "
                            "on data outside the training segment")
    return {"checked": names, "window": window, "horizon": horizon, "ok": True}


@dataclass(frozen=True)
class Windows:
    """The (n, window, features) model inputs ending at `ends`, sliced from `series` on access:
    sample i reads rows ends[i]-window+1 .. ends[i]. Memory stays the series' (held once),
    however many windows overlap on it."""

    series: np.ndarray  # (bars, features) float32, C-contiguous
    ends: np.ndarray  # (n,) row of each sample's last bar
    window: int

    @classmethod
    def of(cls, matrix: np.ndarray, ends: np.ndarray, window: int) -> Windows:
        """Windows over `matrix` (as float32, copied only if it is not already so)."""
        series = np.ascontiguousarray(matrix, dtype=np.float32)
        ends = np.asarray(ends, dtype=np.int64)
        if len(ends) and (ends.min() < window - 1 or ends.max() >= len(series)):
            raise DataError(f"window ends must lie in [{window - 1}, {len(series) - 1}] for "
                            f"windows of {window} bars, got {ends.min()}..{ends.max()}")
        return cls(series, ends, window)

    def __len__(self) -> int:
        return len(self.ends)

    @property
    def n_features(self) -> int:
        return self.series.shape[1]

    def take(self, rows: slice | np.ndarray = slice(None)) -> np.ndarray:
        """The windows of samples `rows` as one (k, window, features) array (a copy)."""
        ends = self.ends[rows]
        return self.series[ends[:, None] + np.arange(1 - self.window, 1)]

    def flat(self, rows: slice | np.ndarray = slice(None)) -> np.ndarray:
        """The windows of samples `rows` flattened to (k, window * features)."""
        out = self.take(rows)
        return out.reshape(len(out), -1)

    def chunks(self, size: int) -> Iterator[slice]:
        """Consecutive sample slices of at most `size` samples, in order."""
        return (slice(i, i + size) for i in range(0, len(self), size))


def split_table(frame: pd.DataFrame, segments: dict[str, np.ndarray]) -> pd.DataFrame:
    """One row per sample: position, timestamp, segment, target, returns."""
    parts = []
    for name, pos in segments.items():
        part = frame.iloc[pos][["timestamp", "target", "fwd_return", "next_return", "close"]]
        parts.append(part.assign(position=pos, segment=name))
    return pd.concat(parts, ignore_index=True)
