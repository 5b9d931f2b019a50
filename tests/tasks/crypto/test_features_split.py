"""Leak-freedom by construction: causal features, purged chronological splits, train-only scaler."""
from datetime import UTC, datetime

import numpy as np
import pytest

from tasks.config import CryptoFeatures, CryptoLabel, CryptoSettings, CryptoSplit
from tasks.crypto.audit import leaky_segments
from tasks.crypto.candles import demo_candles
from tasks.crypto.features import add_labels, compute_features, feature_columns
from tasks.crypto.split import (
    Scaler,
    Windows,
    carve_train_dev,
    check_no_leak,
    check_train_dev,
    chronological_split,
    purge_gap,
    touched_bars,
    usable_positions,
    walk_forward_folds,
    window_rows,
)
from tasks.errors import DataError, LeakError

START = datetime(2024, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def candles():
    return demo_candles(3000, START, "1h", 3)


def _matrix(frame):
    return frame[feature_columns(frame)].to_numpy()


@pytest.mark.parametrize("t", [60, 500, 1777, 2998])
def test_changing_the_future_never_changes_a_feature_at_or_before_t(candles, t):
    settings = CryptoFeatures()
    before = _matrix(compute_features(candles, settings))
    future = candles.copy()
    rng = np.random.default_rng(t)
    scale = rng.uniform(0.5, 2.0, size=len(future) - t - 1)
    for col in ("open", "high", "low", "close"):
        future.loc[t + 1:, col] = future.loc[t + 1:, col] * scale
    future.loc[t + 1:, "volume"] = rng.uniform(1, 1e6, size=len(future) - t - 1)
    after = _matrix(compute_features(future, settings))
    np.testing.assert_array_equal(before[: t + 1], after[: t + 1])
    assert not np.allclose(before[t + 1:], after[t + 1:], equal_nan=True)  # the test can fail


def test_labels_look_forward_by_horizon_with_dead_zone(candles):
    frame = add_labels(compute_features(candles, CryptoFeatures()),
                       CryptoLabel(horizon=3, dead_zone=0.002))
    close = frame["close"].to_numpy()
    fwd = close[3:] / close[:-3] - 1
    target = frame["target"].to_numpy()[:-3]
    assert np.all(target[fwd > 0.002] == 1) and np.all(target[fwd < -0.002] == 0)
    assert np.all(np.isnan(target[np.abs(fwd) <= 0.002]))
    assert np.isnan(frame["target"].to_numpy()[-3:]).all()  # the future is unknown


def _segments(candles, window=24, horizon=1, embargo=5):
    frame = add_labels(compute_features(candles, CryptoFeatures()), CryptoLabel(horizon=horizon))
    matrix = _matrix(frame)
    cfg = CryptoSplit(window=window, embargo=embargo)
    positions = usable_positions(matrix, frame["target"].to_numpy(), window)
    return matrix, positions, chronological_split(positions, cfg, horizon), cfg


@pytest.mark.parametrize(("window", "horizon", "embargo"), [(24, 1, 0), (8, 12, 24), (48, 3, 5)])
def test_chronological_split_purges_window_plus_horizon_plus_embargo(candles, window, horizon,
                                                                       embargo):
    matrix, positions, seg, _ = _segments(candles, window, horizon, embargo)
    assert seg["train"].max() < seg["val"].min() < seg["val"].max() < seg["test"].min()
    for a, b in (("train", "val"), ("val", "test")):
        assert seg[b].min() - seg[a].max() > window + horizon + embargo - 1
        _, last_a = touched_bars(seg[a], window, horizon)
        first_b, _ = touched_bars(seg[b], window, horizon)
        assert last_a < first_b
    assert check_no_leak(seg, window, horizon)["ok"]


def test_leak_check_rejects_straddling_windows_and_shuffled_samples(candles):
    matrix, positions, seg, cfg = _segments(candles)
    straddle = dict(seg, val=np.concatenate([[seg["train"].max() + 2], seg["val"]]))
    with pytest.raises(LeakError, match="straddle"):
        check_no_leak(straddle, cfg.window, 1)
    shuffled = leaky_segments(positions, CryptoSettings(), seed=0)
    with pytest.raises(LeakError, match="shuffled"):
        check_no_leak(shuffled, cfg.window, 1)


def test_leak_check_rejects_a_scaler_fitted_beyond_train(candles):
    matrix, _, seg, cfg = _segments(candles)
    first, last = touched_bars(seg["train"], cfg.window, 0)
    train_only = Scaler.fit(matrix[first: last + 1])
    assert check_no_leak(seg, cfg.window, 1, scaler=train_only, features=matrix)["ok"]
    with pytest.raises(LeakError, match="scaler"):
        check_no_leak(seg, cfg.window, 1, scaler=Scaler.fit(matrix), features=matrix)


@pytest.mark.parametrize("mode", ["expanding", "rolling"])
def test_walk_forward_folds_are_purged_and_move_forward(candles, mode):
    _, positions, _, cfg = _segments(candles)
    folds = walk_forward_folds(positions, 3, mode, cfg, 1)
    assert len(folds) == 3
    for fold in folds:
        check_no_leak(fold, cfg.window, 1)
    assert folds[0]["val"].max() < folds[1]["val"].min() < folds[2]["val"].min()
    sizes = [len(f["train"]) for f in folds]
    assert sizes[0] < sizes[1] < sizes[2] if mode == "expanding" else max(sizes) - min(sizes) < 200


def test_windows_end_at_their_position_and_hold_the_series_once():
    matrix = np.arange(40, dtype=np.float32).reshape(20, 2)
    out = Windows.of(matrix, np.array([4, 19, 7]), 5)
    assert out.series is matrix  # float32 and contiguous already: shared, not copied
    assert len(out) == 3 and out.n_features == 2
    taken = out.take()
    assert taken.shape == (3, 5, 2) and taken.dtype == np.float32
    np.testing.assert_array_equal(taken[0], matrix[0:5])
    np.testing.assert_array_equal(taken[1], matrix[15:20])
    np.testing.assert_array_equal(out.take(np.array([2])), matrix[None, 3:8])
    np.testing.assert_array_equal(out.flat(slice(1, 2)), matrix[15:20].reshape(1, -1))
    assert [(s.start, s.stop) for s in out.chunks(2)] == [(0, 2), (2, 4)]


@pytest.mark.parametrize("ends", [[3], [20]])
def test_a_window_outside_the_series_is_an_error(ends):
    with pytest.raises(DataError, match="window ends"):
        Windows.of(np.zeros((20, 2)), np.array(ends), 5)


def test_too_little_data_is_a_clear_error(candles):
    frame = add_labels(compute_features(candles.iloc[:300], CryptoFeatures()), CryptoLabel())
    matrix = _matrix(frame)
    positions = usable_positions(matrix, frame["target"].to_numpy(), 24)
    with pytest.raises(DataError, match="too few"):
        chronological_split(positions, CryptoSplit(), 1)


# ---------------------------------------------------------------- train-dev
@pytest.mark.parametrize(("window", "horizon", "embargo"), [(24, 1, 5), (8, 12, 24)])
def test_train_dev_runs_span_the_training_period_and_share_no_bar_with_train(
        candles, window, horizon, embargo):
    _, _, seg, _ = _segments(candles, window, horizon, embargo)
    gap = purge_gap(window, horizon, embargo)
    train, train_dev = carve_train_dev(seg["train"], 0.1, 4, gap)
    assert len(train_dev) == 4 * round(0.1 * len(seg["train"]) / 4)
    runs = np.split(train_dev, np.flatnonzero(np.diff(train_dev) > 1) + 1)
    assert len(runs) == 4 and runs[0][0] < seg["train"][len(seg["train"]) // 4] < runs[-1][0]
    assert set(train).isdisjoint(train_dev) and len(train) <= len(seg["train"]) - len(train_dev)
    check_train_dev(train, train_dev, window, horizon)
    for run in runs:  # by hand: every train sample's bars are outside every run's bars
        first, last = touched_bars(run, window, horizon)
        assert not np.any((train + horizon >= first) & (train - window + 1 <= last))
    check_no_leak({"train": train, "train_dev": train_dev, "val": seg["val"],
                   "test": seg["test"]}, window, horizon)


def test_an_unpurged_train_dev_is_caught(candles):
    _, _, seg, _ = _segments(candles)
    train, train_dev = carve_train_dev(seg["train"], 0.1, 3, gap=0)  # no purge
    with pytest.raises(LeakError, match="train-dev"):
        check_train_dev(train, train_dev, 24, 1)
    with pytest.raises(DataError, match="train_dev_fraction"):
        carve_train_dev(seg["train"][:300], 0.1, 5, gap=60)
    same, none = carve_train_dev(seg["train"], 0.0, 5, gap=60)
    assert np.array_equal(same, seg["train"]) and none.size == 0


def test_the_scaler_reads_only_training_windows_not_train_dev(candles):
    matrix, _, seg, cfg = _segments(candles)
    gap = purge_gap(cfg.window, 1, cfg.embargo)
    train, train_dev = carve_train_dev(seg["train"], 0.2, 2, gap)
    rows = window_rows(train, cfg.window, len(matrix))
    assert rows[train].all() and rows[train - cfg.window + 1].all()
    assert not rows[train_dev].any()  # train-dev inputs never reach the scaler
    scaler = Scaler.fit_on_samples(matrix, train, cfg.window)
    segments = {"train": train, "train_dev": train_dev, "val": seg["val"], "test": seg["test"]}
    check_no_leak(segments, cfg.window, 1, scaler=scaler, features=matrix)
    first, last = touched_bars(seg["train"], cfg.window, 0)
    with pytest.raises(LeakError, match="scaler"):  # the whole period, train-dev included
        check_no_leak(segments, cfg.window, 1, scaler=Scaler.fit(matrix[first: last + 1]),
                      features=matrix)
