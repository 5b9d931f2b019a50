"""Crypto models: the neural next-move classifier (shared loop), baselines, the price regressor."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import r2_score
from torch.utils.data import DataLoader, Dataset

from models.sequence import build_sequence_model
from tasks.config import CryptoModel, TrainSettings
from tasks.crypto.split import Windows
from tasks.errors import DataError
from tasks.train import FitConfig, FitResult, dataset_loader, fit, predict, seed_everything


def build_model(cfg: CryptoModel, n_features: int, window: int) -> torch.nn.Module:
    return build_sequence_model(
        cfg.kind, n_features, window, hidden=cfg.hidden, layers=cfg.layers,
        kernel_size=cfg.kernel_size, dilations=cfg.dilations, dropout=cfg.dropout,
        activation=cfg.activation, erase_relu=cfg.erase_relu, residual_scale=cfg.residual_scale)


# the logistic baseline's fit reads at most this many training windows (evenly spaced in time):
# a flattened float64 copy of every window of a long series would outgrow the machine
LOGISTIC_MAX_SAMPLES = 200_000
# windows flattened at once when a baseline scores a segment
LOGISTIC_CHUNK = 65_536


class WindowDataset(Dataset):
    """(window, target) samples read from `Windows` on access; a batch is one gather."""

    def __init__(self, inputs: Windows, target: np.ndarray) -> None:
        if len(inputs) != len(target):
            raise DataError(f"{len(inputs)} windows but {len(target)} targets")
        self.inputs = inputs
        self.target = torch.tensor(np.asarray(target), dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.__getitems__([i])
        return x[0], y[0]

    def __getitems__(self, rows: list[int]) -> list[torch.Tensor]:
        """The whole batch at once (DataLoader calls this with a batch's sample indices)."""
        return [torch.from_numpy(self.inputs.take(np.asarray(rows))), self.target[rows]]


def _as_batch(batch: list[torch.Tensor]) -> list[torch.Tensor]:
    """WindowDataset already returns the collated batch."""
    return batch


def window_loader(inputs: Windows, target: np.ndarray, batch_size: int, shuffle: bool,
                  seed: int) -> DataLoader:
    """Batches of windows gathered from the series as they are drawn; the same batches, in the
    same order, as a tensor_loader over the materialised windows."""
    return dataset_loader(WindowDataset(inputs, target), batch_size, shuffle, seed,
                          collate_fn=_as_batch)


def train_classifier(cfg: CryptoModel, train_cfg: TrainSettings,
                     data: dict[str, tuple[Windows, np.ndarray]], seed: int,
                     device: torch.device, *, on_epoch: Callable[[dict], None] | None = None,
                     checkpoint_path: Path | None = None) -> FitResult:
    """Fit the configured network on data['train'] with early stopping on data['val']."""
    x_train, y_train = data["train"]
    x_val, y_val = data["val"]
    seed_everything(seed)  # the initial weights follow the seed, whatever ran before
    model = build_model(cfg, x_train.n_features, x_train.window)
    loaders = (window_loader(x_train, y_train, train_cfg.batch_size, True, seed),
               window_loader(x_val, y_val, train_cfg.batch_size, False, seed))
    return fit(model, *loaders, torch.nn.BCEWithLogitsLoss(), FitConfig.from_settings(
        train_cfg, seed), device, on_epoch=on_epoch, checkpoint_path=checkpoint_path)


def predict_proba(model: torch.nn.Module, x: Windows, device: torch.device,
                  batch_size: int = 1024) -> np.ndarray:
    loader = window_loader(x, np.zeros(len(x)), batch_size, False, 0)
    logits = predict(model, loader, device).reshape(-1)
    return 1.0 / (1.0 + np.exp(-logits))


def logistic_baseline(x_train: Windows, y_train: np.ndarray, seed: int) -> LogisticRegression:
    """L2 logistic regression over the flattened input window, fitted on at most
    LOGISTIC_MAX_SAMPLES training windows evenly spaced in time (all of them when fewer)."""
    rows = np.arange(len(x_train))
    if len(rows) > LOGISTIC_MAX_SAMPLES:
        rows = np.linspace(0, len(rows) - 1, LOGISTIC_MAX_SAMPLES).round().astype(np.int64)
    model = LogisticRegression(C=0.1, max_iter=500, random_state=seed)
    return model.fit(x_train.flat(rows), np.asarray(y_train)[rows])


def on_flat_windows(method: Callable[[np.ndarray], np.ndarray], x: Windows) -> np.ndarray:
    """`method` (a fitted baseline's predict or predict_proba) applied to every window of `x`,
    flattened LOGISTIC_CHUNK windows at a time."""
    if not len(x):
        raise DataError("no windows to score")
    return np.concatenate([method(x.flat(rows)) for rows in x.chunks(LOGISTIC_CHUNK)])


def persistence_direction(fwd_past: np.ndarray) -> np.ndarray:
    """'Repeat the last move': P(up) = 1 if the past move over the horizon was up, else 0."""
    return (fwd_past > 0).astype(float)


def price_regression_illusion(close: np.ndarray, train_end: int, test_idx: np.ndarray,
                              window: int) -> dict:
    """Ridge regressor of the next close from the last `window` closes vs copying the last close.

    Both score an R² near 1 on price levels; the regressor is no better than persistence, which
    is the illusion of fit the research notes warn about.
    """
    lagged = np.lib.stride_tricks.sliding_window_view(close, window)  # row j ends at j+window-1
    ends = np.arange(window - 1, len(close) - 1)
    x_all, y_all = lagged[: len(ends)], close[ends + 1]
    train = ends < train_end
    test = np.isin(ends, test_idx)
    reg = Ridge(alpha=1.0).fit(x_all[train], y_all[train])
    pred = reg.predict(x_all[test])
    last = x_all[test][:, -1]
    truth = y_all[test]
    mse_reg, mse_pers = np.mean((pred - truth) ** 2), np.mean((last - truth) ** 2)
    moved = truth != last
    return {
        "regressor": {"r2": float(r2_score(truth, pred)), "rmse": float(np.sqrt(mse_reg)),
                      "direction_accuracy": float(np.mean(
                          np.sign(pred - last)[moved] == np.sign(truth - last)[moved]))},
        "persistence": {"r2": float(r2_score(truth, last)), "rmse": float(np.sqrt(mse_pers))},
        "skill_vs_persistence": float(1 - mse_reg / mse_pers),
        "n": int(test.sum()),
    }
