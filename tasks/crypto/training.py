"""The crypto_train stage: baselines, the neural classifier, the leak audit, the price regressor."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from prefect import task

from tasks import tracking
from tasks.config import CommonSettings, CryptoSettings, flat_params
from tasks.crypto.audit import leak_audit
from tasks.crypto.modeling import (
    logistic_baseline,
    on_flat_windows,
    persistence_direction,
    predict_proba,
    price_regression_illusion,
    train_classifier,
)
from tasks.crypto.prepare import load_segments
from tasks.crypto.split import Windows, usable_positions
from tasks.logs import get_logger
from tasks.storage import read_json, read_parquet, write_json, write_parquet, write_torch


def segment_data(inputs: np.ndarray, samples: pd.DataFrame, window: int) -> dict[str, tuple]:
    """Per segment: (its windows, sliced from `inputs` on access; targets; positions)."""
    data = {}
    for name, part in samples.groupby("segment", sort=False):
        pos = part["position"].to_numpy()
        data[name] = (Windows.of(inputs, pos, window), part["target"].to_numpy(), pos)
    return data


def _backtest_rows(inputs: np.ndarray, features: pd.DataFrame, test_pos: np.ndarray,
                   window: int) -> np.ndarray:
    """Every bar of the test period whose input window is complete, labelled or not."""
    pos = np.arange(test_pos.min(), test_pos.max() + 1)
    finite = np.isin(pos, usable_positions(inputs, np.zeros(len(inputs)), window))
    ok = finite & features["close"].shift(-1).notna().to_numpy()[pos]
    return pos[ok]


def _walk_forward(inputs: np.ndarray, target: np.ndarray, split_dir: Path, folds: int,
                  window: int, seed: int) -> dict:
    from tasks.storage import read_npy

    scores = []
    for i in range(folds):
        train, val = (read_npy(split_dir / f"fold{i}_{k}.npy") for k in ("train", "val"))
        model = logistic_baseline(Windows.of(inputs, train, window), target[train], seed)
        pred = on_flat_windows(model.predict, Windows.of(inputs, val, window))
        scores.append(float(np.mean(pred == target[val])))
    return {"folds": folds, "logistic_accuracy": scores,
            "mean": float(np.mean(scores)) if scores else None}


def log_pyfunc(settings: CryptoSettings, split_dir: Path, weights: Path,
               partitions_file: Path) -> None:
    """Log the network as the pipeline's pyfunc (tasks.crypto.serving): the feature settings,
    the split stage's report (columns, train-only scaler) and the weights go with it; the
    newest candles of the modelled partition are its input example."""
    from tasks.crypto import serving, store
    from tasks.crypto.featurize import model_partition

    part = model_partition(read_json(partitions_file), settings.model_symbol, partitions_file)
    config = {"features": settings.features.model_dump(mode="json"),
              "model": settings.model.model_dump(mode="json"), "window": settings.split.window,
              "horizon": settings.label.horizon, "symbol": part["symbol"],
              "timeframe": part["timeframe"]}
    tracking.log_model(serving.MODEL_CLASS, config=config,
                       artifacts={"weights": weights, "split": split_dir / "split.json"},
                       input_example=serving.input_example(store.load_candles(Path(part["path"]))))


@task(name="crypto-train")
def train_models(settings: CryptoSettings, common: CommonSettings, features_path: Path,
                 split_dir: Path, out_dir: Path, device: torch.device,
                 partitions_file: Path) -> dict:
    """Fit baselines and the network; write predictions, audits and the model; log to MLflow
    (the network as a pyfunc that reads raw candles: `partitions_file` names them)."""
    log = get_logger()
    features = read_parquet(features_path)
    inputs, samples, split_report = load_segments(split_dir)
    window, seed = settings.split.window, common.seed
    data = segment_data(inputs, samples, window)
    close = features["close"].to_numpy()
    params = {**flat_params(settings, "crypto."), "common.seed": seed, "device": str(device)}
    with tracking.run(common, "crypto", "crypto-train", params=params,
                      tags={"stage": "crypto_train", "symbol": settings.symbol}):
        result = train_classifier(
            settings.model, settings.train, {k: v[:2] for k, v in data.items()}, seed, device,
            on_epoch=lambda row: tracking.log_metrics(
                {k: row[k] for k in ("train_loss", "val_loss", "lr", "seconds")},
                step=row["epoch"]))
        logistic = logistic_baseline(data["train"][0], data["train"][1], seed)
        horizon = settings.label.horizon
        frames = []
        bt_pos = _backtest_rows(inputs, features, data["test"][2], window)
        # every segment (train and train-dev too, for the error analysis) and the backtest bars
        rows = {**{k: v[2] for k, v in data.items()}, "backtest": bt_pos}
        for name, pos in rows.items():
            x = Windows.of(inputs, pos, window)
            past = close[pos] / close[np.maximum(pos - horizon, 0)] - 1
            frames.append(pd.DataFrame({
                "segment": name, "position": pos,
                "timestamp": features["timestamp"].to_numpy()[pos],
                "target": features["target"].to_numpy()[pos],
                "next_return": features["next_return"].to_numpy()[pos],
                "prob_model": predict_proba(result.model, x, device),
                "prob_logistic": on_flat_windows(logistic.predict_proba, x)[:, 1],
                "prob_persistence": persistence_direction(past)}))
        write_parquet(pd.concat(frames, ignore_index=True), out_dir / "predictions.parquet")
        walk = _walk_forward(inputs, features["target"].to_numpy(), split_dir,
                             settings.split.walk_forward.folds, window, seed)
        audit = (leak_audit.fn(features, settings, seed, device)
                 if settings.leak_audit.enabled else {})
        train_end = int(data["train"][2].max()) + 1
        illusion = price_regression_illusion(close, train_end, data["test"][2], window)
        log.info("price regressor R² %.4f vs persistence R² %.4f: skill over copying the last "
                 "price %+.4f", illusion["regressor"]["r2"], illusion["persistence"]["r2"],
                 illusion["skill_vs_persistence"])
        summary = {"history": result.history, "best_epoch": result.best_epoch,
                   "stopped_early": result.stopped_early, "walk_forward": walk,
                   "leak_audit": audit, "regression_illusion": illusion,
                   "train_positive_rate": float(np.mean(data["train"][1])),
                   "split": split_report["sizes"], "params": params}
        write_torch(result.model.state_dict(), out_dir / "model.pt")
        write_json(summary, out_dir / "train.json")
        tracking.tag_summary(out_dir / "train.json")  # evaluate finds this run by it
        tracking.log_metrics({"walk_forward_mean": walk["mean"], "best_epoch": result.best_epoch})
        # the model evaluate registers: the network as a pyfunc reading raw candles
        log_pyfunc(settings, split_dir, out_dir / "model.pt", partitions_file)
    return summary


def train_stage(params) -> dict:
    """crypto_train: baselines, the network and the audits; artifacts/crypto."""
    from tasks.crypto.paths import CryptoPaths
    from tasks.train import resolve_device

    paths = CryptoPaths()
    paths.artifacts.mkdir(parents=True, exist_ok=True)
    return train_models(params.crypto, params.common, paths.features, paths.splits,
                        paths.artifacts, resolve_device(params.common.device), paths.partitions)
