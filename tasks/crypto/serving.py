"""crypto-next-move as an MLflow pyfunc: recent candles in, P(up) out.

Every step is the pipeline's own code (tasks.crypto.features, the split stage's train-only
scaler and windows, the trained network), so the served model computes what was evaluated.
This module and what it imports are shipped with the model (tasks.tracking.log_model).
"""
from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch

from tasks.config import CryptoFeatures, CryptoModel
from tasks.crypto.candles import COLUMNS
from tasks.crypto.features import compute_features, history_bars
from tasks.crypto.modeling import build_model, predict_proba
from tasks.crypto.split import Scaler, Windows, usable_positions
from tasks.errors import DataError
from tasks.storage import read_json

MODEL_CLASS = "tasks.crypto.serving:NextMoveModel"
EXAMPLE_CANDLES = 500
CPU = torch.device("cpu")


def as_candles(frame: pd.DataFrame) -> pd.DataFrame:
    """The candle columns in time order with UTC timestamps (naive ones are read as UTC);
    a missing column or a repeated timestamp is a DataError."""
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise DataError("the candles lack columns", field=", ".join(missing))
    candles = frame[COLUMNS].assign(timestamp=pd.to_datetime(frame["timestamp"], utc=True))
    candles = candles.sort_values("timestamp", kind="stable").reset_index(drop=True)
    repeated = candles["timestamp"].duplicated()
    if repeated.any():
        raise DataError(f"timestamp {candles['timestamp'][repeated].iloc[0]} appears twice",
                        field="timestamp")
    return candles


def model_inputs(candles: pd.DataFrame, features: CryptoFeatures, columns: list[str],
                 scaler: Scaler, window: int) -> tuple[np.ndarray, Windows]:
    """(positions, their (n, window, features) inputs) of every candle whose input window has the
    full history behind it (features.history_bars: then its features are the ones the pipeline
    computed on the whole series), made as the features and split stages make them: features,
    then the train-only scaler."""
    frame = compute_features(candles, features)
    inputs = scaler.transform(frame[columns].to_numpy(dtype=np.float64))
    first = history_bars(features) + window - 1
    positions = usable_positions(inputs, np.zeros(len(inputs)), window)
    positions = positions[positions >= first]
    if not len(positions):
        raise DataError(f"{len(candles)} candles are too few: P(up) needs {first + 1} or more "
                        f"(features from {first + 1 - window} bars of history, then a window of "
                        f"{window})", field="timestamp")
    return positions, Windows.of(inputs, positions, window)


class NextMoveModel(mlflow.pyfunc.PythonModel):
    """Candles in (timestamp UTC, open, high, low, close, volume; a few hundred recent ones);
    out, one row per candle with enough history before it (model_inputs): its timestamp and
    p_up, the probability that the close rises over the next `horizon` bars."""

    def load_context(self, context: Any) -> None:
        config = context.model_config
        split = read_json(context.artifacts["split"])  # the split stage's report
        self.features = CryptoFeatures.model_validate(config["features"])
        self.window, self.columns = int(config["window"]), list(split["columns"])
        self.scaler = Scaler.from_dict(split["scaler"])
        self.network = build_model(CryptoModel.model_validate(config["model"]),
                                   len(self.columns), self.window)
        self.network.load_state_dict(torch.load(context.artifacts["weights"], map_location="cpu",
                                                weights_only=True))
        self.network.eval()

    def predict(self, context: Any, model_input: pd.DataFrame,
                params: dict | None = None) -> pd.DataFrame:
        candles = as_candles(model_input)
        positions, x = model_inputs(candles, self.features, self.columns, self.scaler,
                                    self.window)
        stamps = candles["timestamp"].dt.tz_localize(None).to_numpy()[positions]
        return pd.DataFrame({"timestamp": stamps, "p_up": predict_proba(self.network, x, CPU)})


def input_example(candles: pd.DataFrame) -> pd.DataFrame:
    """The newest EXAMPLE_CANDLES candles, timestamps UTC without a zone (MLflow's signatures
    know no time zones)."""
    recent = as_candles(candles).tail(EXAMPLE_CANDLES).reset_index(drop=True)
    return recent.assign(timestamp=recent["timestamp"].dt.tz_localize(None))
