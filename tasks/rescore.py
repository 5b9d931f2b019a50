"""Any registered model version scored on tonight's rows, through its pyfunc as it is served.

The nightly judges a challenger against the champion on the same rows: tonight's test split,
in raw form (candles, question pairs, clip files), fed to each model's registered pyfunc
(`models:/<name>/<version>`), scored with the rule evaluate uses (binary: the threshold
chosen on tonight's dev rows from that model's own probabilities; multi-class: top-1). Each
pipeline says how its rows are read and how its pyfunc's output maps to them, in the module
its declaration names (`Pipeline.rescorer`):

    rows(params: Params, root: Path) -> Rows
    predict(model: mlflow.pyfunc.PyFuncModel, rows: Rows) -> Predictions

The per-row correctness of the two models gives the paired difference (challenger -
champion) and its bootstrap interval (blocks for ordered rows, as evaluate's).
"""
from __future__ import annotations

import hashlib
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from tasks.errors import DataError


@dataclass(frozen=True)
class Rows:
    """Tonight's rows a model is scored on."""

    kind: Literal["binary", "top1"]
    test_labels: np.ndarray            # binary: 0/1; top1: class names
    inputs: Any                        # what the pipeline's predict() feeds the pyfunc
    digest: str                        # of the test rows (their inputs and labels)
    dev_labels: np.ndarray | None = None  # binary: the rows the threshold is chosen on
    block_length: int | None = None    # paired bootstrap in blocks of ordered rows; None iid


@dataclass(frozen=True)
class Predictions:
    """A model's output on Rows, row for row: binary, P(positive) for the dev and the test
    rows; top1, the predicted class name of each test row (dev None)."""

    test: np.ndarray
    dev: np.ndarray | None = None


@dataclass(frozen=True)
class Scored:
    correct: np.ndarray                # per test row: right or not
    threshold: float | None

    @property
    def value(self) -> float:
        return float(self.correct.mean())


def digest(*arrays: Any) -> str:
    """sha256 (first 16 hex digits) of the arrays' values in order: a name for a set of rows."""
    sha = hashlib.sha256()
    for array in arrays:
        sha.update(np.asarray(array).astype(str).tobytes())
        sha.update(b"\0")
    return sha.hexdigest()[:16]


def scored(predictions: Predictions, rows: Rows) -> Scored:
    """Per-row correctness as evaluate scores: the dev-chosen threshold for binary models."""
    from tasks.evaluate import choose_threshold

    test = np.asarray(predictions.test)
    if len(test) != len(rows.test_labels):
        raise DataError(f"{len(test)} predictions for {len(rows.test_labels)} test rows",
                        field="predictions")
    if rows.kind == "top1":
        return Scored(test.astype(str) == np.asarray(rows.test_labels).astype(str), None)
    if predictions.dev is None or rows.dev_labels is None:
        raise DataError("a binary model needs dev predictions to choose its threshold",
                        field="dev")
    threshold = choose_threshold(rows.dev_labels, predictions.dev)
    return Scored((test >= threshold).astype(int) == np.asarray(rows.test_labels).astype(int),
                  threshold)


def module(spec: Any) -> Any:
    """The pipeline's rescorer module (its declaration's `rescorer`)."""
    return importlib.import_module(spec.rescorer)


def tonight(spec: Any, params: Any, root: Path = Path(".")) -> Rows:
    return module(spec).rows(params, root)


def score_version(spec: Any, model_uri: str, rows: Rows) -> Scored:
    """The registered model at `model_uri`, loaded as a user would, scored on `rows`."""
    from tasks import tracking

    model = tracking.load_model(model_uri)
    return scored(module(spec).predict(model, rows), rows)
