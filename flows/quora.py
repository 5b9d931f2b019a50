"""Quora duplicate-question pipeline: one Prefect flow per DVC stage, and the whole pipeline.

    python -m flows.quora ingest|clean|embed|train|evaluate|pipeline [--set key=value]
"""
from __future__ import annotations

import sys
from typing import Any

from prefect import flow

from flows.common import dvc_repro, in_dvc_repo, main, settings
from tasks.quora.clean import clean_and_split
from tasks.quora.embed import embed_questions
from tasks.quora.ingest import ingest_pairs
from tasks.quora.paths import QuoraPaths
from tasks.quora.report import evaluate_models
from tasks.quora.training import train_models
from tasks.train import resolve_device

PATHS = QuoraPaths()
STAGES = ["quora_ingest", "quora_clean", "quora_embed", "quora_train", "quora_evaluate"]


@flow(name="quora_ingest")
def ingest(overrides: dict[str, Any] | None = None) -> dict:
    params = settings(overrides)
    return ingest_pairs(params.quora, PATHS.raw, params.common.seed)


@flow(name="quora_clean")
def clean(overrides: dict[str, Any] | None = None) -> dict:
    params = settings(overrides)
    return clean_and_split(params.quora, PATHS.raw, PATHS.clean, params.common.seed)


@flow(name="quora_embed")
def embed(overrides: dict[str, Any] | None = None) -> dict:
    params = settings(overrides)
    return embed_questions(params.quora, PATHS.clean, PATHS.embed, params.common.seed)


@flow(name="quora_train")
def train(overrides: dict[str, Any] | None = None) -> dict:
    params = settings(overrides)
    PATHS.artifacts.mkdir(parents=True, exist_ok=True)
    return train_models(params.quora, params.common, PATHS.clean, PATHS.embed, PATHS.artifacts,
                        resolve_device(params.common.device))


@flow(name="quora_evaluate")
def evaluate(overrides: dict[str, Any] | None = None) -> dict:
    params = settings(overrides)
    return evaluate_models(params.quora, params.common, PATHS.artifacts, PATHS.metrics,
                           PATHS.plots)


@flow(name="quora-pipeline")
def pipeline(overrides: dict[str, Any] | None = None, use_dvc: bool = True) -> dict:
    """The whole pipeline. In a DVC repo without overrides, DVC decides which stages are stale;
    otherwise every stage runs here as a subflow."""
    if use_dvc and not overrides and in_dvc_repo():
        return {"stages_run": dvc_repro(["quora_evaluate"])}
    for stage in (ingest, clean, embed, train, evaluate):
        stage(overrides=overrides)
    return {"stages_run": STAGES}


if __name__ == "__main__":
    sys.exit(main("quora", {"ingest": ingest, "clean": clean, "embed": embed, "train": train,
                            "evaluate": evaluate, "pipeline": pipeline}))
