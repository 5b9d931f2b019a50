"""Crypto next-move pipeline: one Prefect flow per DVC stage, and the whole pipeline.

    python -m flows.crypto ingest|features|split|train|evaluate|pipeline [--set key=value]
"""
from __future__ import annotations

import sys
from typing import Any

from prefect import flow

from flows.common import dvc_repro, in_dvc_repo, main, settings
from tasks.crypto.ingest import ingest_candles
from tasks.crypto.paths import CryptoPaths
from tasks.crypto.prepare import build_features, build_splits
from tasks.crypto.report import evaluate_models
from tasks.crypto.training import train_models
from tasks.storage import write_json
from tasks.train import resolve_device

PATHS = CryptoPaths()
STAGES = ["crypto_ingest", "crypto_features", "crypto_split", "crypto_train", "crypto_evaluate"]


@flow(name="crypto_ingest")
def ingest(overrides: dict[str, Any] | None = None) -> dict:
    params = settings(overrides)
    report = ingest_candles(params.crypto, PATHS.raw, params.common.seed)
    write_json(report, PATHS.ingest_report)
    return report


@flow(name="crypto_features")
def features(overrides: dict[str, Any] | None = None) -> dict:
    params = settings(overrides)
    return build_features(params.crypto, PATHS.ingest_report, PATHS.features)


@flow(name="crypto_split")
def split(overrides: dict[str, Any] | None = None) -> dict:
    params = settings(overrides)
    return build_splits(params.crypto, PATHS.features, PATHS.splits)


@flow(name="crypto_train")
def train(overrides: dict[str, Any] | None = None) -> dict:
    params = settings(overrides)
    PATHS.artifacts.mkdir(parents=True, exist_ok=True)
    return train_models(params.crypto, params.common, PATHS.features, PATHS.splits,
                        PATHS.artifacts, resolve_device(params.common.device))


@flow(name="crypto_evaluate")
def evaluate(overrides: dict[str, Any] | None = None) -> dict:
    params = settings(overrides)
    return evaluate_models(params.crypto, params.common, PATHS.splits, PATHS.artifacts,
                           PATHS.metrics, PATHS.plots)


@flow(name="crypto-pipeline")
def pipeline(overrides: dict[str, Any] | None = None, use_dvc: bool = True) -> dict:
    """The whole pipeline. In a DVC repo without overrides, DVC decides which stages are stale;
    otherwise every stage runs here as a subflow."""
    if use_dvc and not overrides and in_dvc_repo():
        return {"stages_run": dvc_repro(["crypto_evaluate"])}
    for stage in (ingest, features, split, train, evaluate):
        stage(overrides=overrides)
    return {"stages_run": STAGES}


if __name__ == "__main__":
    sys.exit(main("crypto", {"ingest": ingest, "features": features, "split": split,
                             "train": train, "evaluate": evaluate, "pipeline": pipeline}))
