"""The leak audit: the same model trained with the common leaky recipe and with the leak-free one.

Leaky recipe: raw price level among the features, scaler fitted on the whole series, overlapping
windows shuffled before splitting, a multi-bar horizon. Its test score is an illusion: the leak
check rejects its split, and the leak-free score on the same horizon shows what is real.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from prefect import task

from tasks.config import CryptoLabel, CryptoSettings
from tasks.crypto.features import add_labels, feature_columns
from tasks.crypto.modeling import predict_proba, train_classifier
from tasks.crypto.split import (
    Scaler,
    Windows,
    check_no_leak,
    chronological_split,
    usable_positions,
)
from tasks.errors import LeakError
from tasks.logs import get_logger


def _fit_and_score(settings: CryptoSettings, matrix: np.ndarray, target: np.ndarray,
                   segments: dict[str, np.ndarray], seed: int, device: torch.device) -> dict:
    window = settings.split.window
    data = {k: (Windows.of(matrix, v, window), target[v]) for k, v in segments.items()}
    model_cfg = settings.model.model_copy(update={"kind": settings.leak_audit.model})
    # the audit's own fits stay out of the run's gradient diagnostics
    train_cfg = settings.train.model_copy(update={"diagnostics_every": None})
    result = train_classifier(model_cfg, train_cfg, data, seed, device)
    prob = predict_proba(result.model, data["test"][0], device)
    y_test = data["test"][1]
    majority = float(max(y_test.mean(), 1 - y_test.mean()))
    return {"accuracy": float(np.mean((prob > 0.5) == y_test)), "majority": majority,
            "n_test": int(len(y_test)), "epochs": len(result.history)}


def leaky_segments(positions: np.ndarray, settings: CryptoSettings, seed: int
                   ) -> dict[str, np.ndarray]:
    """Shuffle overlapping windows, then cut by fractions: the recipe the notes warn about."""
    shuffled = np.random.default_rng(seed).permutation(positions)
    n_test = int(len(shuffled) * settings.split.test_fraction)
    n_val = int(len(shuffled) * settings.split.val_fraction)
    return {"train": shuffled[n_test + n_val:], "val": shuffled[n_test: n_test + n_val],
            "test": shuffled[:n_test]}


@task(name="crypto-leak-audit")
def leak_audit(frame: pd.DataFrame, settings: CryptoSettings, seed: int,
               device: torch.device) -> dict:
    """Train the same model both ways at the audit horizon; return both test accuracies."""
    horizon = settings.leak_audit.horizon
    base = frame.drop(columns=["target", "fwd_return", "next_return"], errors="ignore")
    labelled = add_labels(base, CryptoLabel(horizon=horizon, dead_zone=settings.label.dead_zone))
    target = labelled["target"].to_numpy()
    window = settings.split.window

    clean = labelled[feature_columns(labelled)].to_numpy(dtype=np.float64)
    positions = usable_positions(clean, target, window)
    segments = chronological_split(positions, settings.split, horizon)
    scaler = Scaler.fit_on_samples(clean, segments["train"], window)
    check_no_leak(segments, window, horizon, scaler=scaler, features=clean)
    leak_free = _fit_and_score(settings, scaler.transform(clean), target, segments, seed, device)

    leaky_matrix = np.column_stack([clean, labelled["close"].to_numpy()])
    leaky_matrix = Scaler.fit(leaky_matrix).transform(leaky_matrix)  # fitted on everything
    leaky_split = leaky_segments(positions, settings, seed)
    try:
        check_no_leak(leaky_split, window, horizon)
        caught = "not detected"
    except LeakError as exc:
        caught = str(exc)
    leaky = _fit_and_score(settings, leaky_matrix, target, leaky_split, seed, device)

    gap = leaky["accuracy"] - leak_free["accuracy"]
    get_logger().info("leak audit (horizon %d): leaky %.3f vs leak-free %.3f (gap %+.3f); "
                      "leak check on the leaky split: %s", horizon, leaky["accuracy"],
                      leak_free["accuracy"], gap, caught)
    return {"horizon": horizon, "leaky": {**leaky, "leak_check": caught},
            "leak_free": leak_free, "gap": gap}
