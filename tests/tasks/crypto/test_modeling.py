"""The crypto classifier: its initial weights follow the seed, whatever ran in the process before
(an ablation runs many trainings in one process); lazy windows batch exactly as materialised
ones did; the logistic baseline's memory is bounded."""
import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from tasks.config import CryptoModel, TrainSettings
from tasks.crypto import modeling
from tasks.crypto.modeling import (
    logistic_baseline,
    on_flat_windows,
    predict_proba,
    train_classifier,
    window_loader,
)
from tasks.crypto.split import Windows
from tasks.train import tensor_loader

CPU = torch.device("cpu")


def _series(bars: int = 101, features: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(bars, features)).astype(np.float32)


def _data(seed: int = 0):
    series = _series(seed=seed)
    y = (series[:, 0] > 0).astype(np.float32)
    train, val = np.arange(5, 69), np.arange(74, 101)
    return {"train": (Windows.of(series, train, 6), y[train]),
            "val": (Windows.of(series, val, 6), y[val])}


def _eager(series: np.ndarray, ends: np.ndarray, window: int) -> np.ndarray:
    """The windows materialised as the pipeline used to: a strided view, then a copy."""
    view = np.lib.stride_tricks.sliding_window_view(series, window, axis=0)
    return np.ascontiguousarray(view[ends - window + 1].transpose(0, 2, 1))


@pytest.mark.parametrize(("n", "batch", "shuffle"), [(300, 32, True), (289, 32, True),
                                                     (300, 64, False), (5, 8, True)])
def test_lazy_window_batches_equal_the_materialised_ones(n, batch, shuffle):
    series, window = _series(400, 4, seed=n), 24
    ends = np.sort(np.random.default_rng(1).choice(np.arange(window - 1, 400), n, replace=False))
    y = np.random.default_rng(2).integers(0, 2, n).astype(float)
    lazy = list(window_loader(Windows.of(series, ends, window), y, batch, shuffle, seed=7))
    eager = list(tensor_loader(_eager(series, ends, window), y, batch, shuffle, seed=7))
    assert len(lazy) == len(eager) > 0  # 289 = 9 x 32 + 1: the one-sample batch is dropped
    for (x_l, y_l), (x_e, y_e) in zip(lazy, eager, strict=True):
        assert x_l.dtype == x_e.dtype == torch.float32 and y_l.dtype == y_e.dtype
        assert torch.equal(x_l, x_e) and torch.equal(y_l, y_e)


def test_a_single_window_is_one_sample():
    series = _series()
    x, y = window_loader(Windows.of(series, np.array([9]), 6), np.ones(1), 4, False, 0).dataset[0]
    assert torch.equal(x, torch.from_numpy(series[4:10])) and float(y) == 1.0


def _weights(seed: int, noise_before: bool) -> dict:
    if noise_before:  # someone else used the global generators first
        torch.rand(1000)
        np.random.rand(10)
    result = train_classifier(CryptoModel(kind="mlp", hidden=8, layers=1, dropout=0.0),
                              TrainSettings(epochs=1, batch_size=32), _data(), seed, CPU)
    return {k: v.clone() for k, v in result.model.state_dict().items()}


def test_same_seed_same_weights_whatever_ran_before_and_other_seeds_differ():
    a, b = _weights(5, noise_before=False), _weights(5, noise_before=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = _weights(6, noise_before=False)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_predictions_of_lazy_windows_equal_those_of_materialised_ones():
    data = _data()
    model = train_classifier(CryptoModel(kind="tcn", hidden=8, layers=1, dilations=[1, 2]),
                             TrainSettings(epochs=1, batch_size=16), data, 0, CPU).model
    x = data["val"][0]
    with torch.no_grad():
        model.eval()
        eager = torch.sigmoid(model(torch.from_numpy(_eager(x.series, x.ends, 6)))).numpy()
    np.testing.assert_allclose(predict_proba(model, x, CPU, batch_size=8), eager.reshape(-1),
                               rtol=1e-6)


def test_the_logistic_baseline_reads_at_most_its_cap_of_windows_evenly_spread(monkeypatch):
    series = _series(400, 2)
    x = Windows.of(series, np.arange(5, 400), 6)
    y = (series[5:, 0] > 0).astype(float)
    full = logistic_baseline(x, y, 0)
    np.testing.assert_array_equal(
        full.coef_, LogisticRegression(C=0.1, max_iter=500, random_state=0)
        .fit(x.flat(), y).coef_)
    monkeypatch.setattr(modeling, "LOGISTIC_MAX_SAMPLES", 50)
    capped = logistic_baseline(x, y, 0)
    rows = np.linspace(0, len(x) - 1, 50).round().astype(int)
    assert len(set(rows)) == 50 and rows[0] == 0 and rows[-1] == len(x) - 1
    expected = LogisticRegression(C=0.1, max_iter=500, random_state=0).fit(x.flat(rows), y[rows])
    np.testing.assert_array_equal(capped.coef_, expected.coef_)
    assert not np.array_equal(capped.coef_, full.coef_)


def test_baselines_score_windows_chunk_by_chunk_as_all_at_once(monkeypatch):
    series = _series(400, 2)
    x = Windows.of(series, np.arange(5, 400), 6)
    model = logistic_baseline(x, (series[5:, 0] > 0).astype(float), 0)
    whole = model.predict_proba(x.flat())
    monkeypatch.setattr(modeling, "LOGISTIC_CHUNK", 37)
    np.testing.assert_allclose(on_flat_windows(model.predict_proba, x), whole, rtol=1e-12)
    np.testing.assert_array_equal(on_flat_windows(model.predict, x), model.predict(x.flat()))


def test_lazy_windows_shard_across_ranks_as_materialised_ones():
    from tasks.distributed import shard_train_loader

    series, ends = _series(200, 3), np.arange(10, 200)
    y = np.arange(len(ends), dtype=float)
    for rank in (0, 1):
        lazy = shard_train_loader(window_loader(Windows.of(series, ends, 8), y, 16, True, 3),
                                  rank, 2, seed=5)
        eager = shard_train_loader(tensor_loader(_eager(series, ends, 8), y, 16, True, 3),
                                   rank, 2, seed=5)
        for (x_l, y_l), (x_e, y_e) in zip(lazy, eager, strict=True):
            assert torch.equal(x_l, x_e) and torch.equal(y_l, y_e)
