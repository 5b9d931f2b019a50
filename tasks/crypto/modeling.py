"""Crypto models: the neural next-move classifier (shared loop), baselines, the price regressor."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import r2_score

from models.sequence import build_sequence_model
from tasks.config import CryptoModel, TrainSettings
from tasks.train import FitConfig, FitResult, fit, predict, seed_everything, tensor_loader


def build_model(cfg: CryptoModel, n_features: int, window: int) -> torch.nn.Module:
    return build_sequence_model(
        cfg.kind, n_features, window, hidden=cfg.hidden, layers=cfg.layers,
        kernel_size=cfg.kernel_size, dilations=cfg.dilations, dropout=cfg.dropout,
        activation=cfg.activation, erase_relu=cfg.erase_relu, residual_scale=cfg.residual_scale)


def train_classifier(cfg: CryptoModel, train_cfg: TrainSettings, data: dict[str, tuple],
                     seed: int, device: torch.device, *,
                     on_epoch: Callable[[dict], None] | None = None,
                     checkpoint_path: Path | None = None) -> FitResult:
    """Fit the configured network on data['train'] with early stopping on data['val']."""
    x_train, y_train = data["train"]
    x_val, y_val = data["val"]
    seed_everything(seed)  # the initial weights follow the seed, whatever ran before
    model = build_model(cfg, x_train.shape[2], x_train.shape[1])
    loaders = (tensor_loader(x_train, y_train, train_cfg.batch_size, True, seed),
               tensor_loader(x_val, y_val, train_cfg.batch_size, False, seed))
    return fit(model, *loaders, torch.nn.BCEWithLogitsLoss(), FitConfig.from_settings(
        train_cfg, seed), device, on_epoch=on_epoch, checkpoint_path=checkpoint_path)


def predict_proba(model: torch.nn.Module, x: np.ndarray, device: torch.device,
                  batch_size: int = 1024) -> np.ndarray:
    loader = tensor_loader(x, np.zeros(len(x)), batch_size, False, 0)
    logits = predict(model, loader, device).reshape(-1)
    return 1.0 / (1.0 + np.exp(-logits))


def logistic_baseline(x_train: np.ndarray, y_train: np.ndarray, seed: int) -> LogisticRegression:
    """L2 logistic regression over the flattened input window."""
    model = LogisticRegression(C=0.1, max_iter=500, random_state=seed)
    return model.fit(x_train.reshape(len(x_train), -1), y_train)


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
