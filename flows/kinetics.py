"""Kinetics pipeline: one Prefect flow per DVC stage, and the whole pipeline.

    python -m flows.kinetics download|frames|index|train|baseline|evaluate|pipeline [--set k=v]

`train` also runs under torchrun (DistributedDataParallel):
    torchrun --nproc-per-node 4 -m flows.kinetics train
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow

from flows.common import dvc_repro, in_dvc_repo, main, settings
from tasks.distributed import cleanup, init_distributed
from tasks.storage import read_json, read_parquet, write_json
from tasks.train import resolve_device
from tasks.video.demo import render_demo_clips
from tasks.video.download import download_all
from tasks.video.frames import build_index, extract_all, write_index
from tasks.video.ledger import Ledger
from tasks.video.manifest import build_manifest, write_manifest
from tasks.video.paths import KineticsPaths
from tasks.video.report import evaluate_models
from tasks.video.training import mark_skipped, train_models

PATHS = KineticsPaths()
STAGES = ["kinetics_download", "kinetics_frames", "kinetics_index", "kinetics_train",
          "kinetics_baseline", "kinetics_evaluate"]


def _manifest() -> pd.DataFrame:
    return read_parquet(PATHS.manifest / "manifest.parquet")


@flow(name="kinetics_download")
def download(overrides: dict[str, Any] | None = None) -> dict:
    """Demo: render the synthetic clips; otherwise read the annotations and fetch the sections."""
    params = settings(overrides)
    k = params.kinetics
    if k.source == "demo":
        manifest, classes = render_demo_clips(PATHS.clips, k.demo, params.common.seed)
        rejects = pd.DataFrame(columns=["file", "line", "reason", "detail", "raw"])
        fetched = {"rendered": len(manifest)}
    else:
        annotations = {"train": k.annotations.train, "val": k.annotations.val,
                       "test": k.annotations.test}
        manifest, classes, rejects = build_manifest(annotations, k.annotations.classes, k.subset)
        ledger = Ledger(PATHS.clips / "ledger.parquet")
        fetched = download_all(manifest, k.download, PATHS.clips, ledger, k.source,
                               params.common)
    summary = write_manifest(manifest, classes, rejects, PATHS.manifest)
    write_json({"manifest": summary, "download": fetched}, PATHS.manifest / "download.json")
    return {"manifest": summary, "download": fetched}


@flow(name="kinetics_frames")
def frames(overrides: dict[str, Any] | None = None) -> dict:
    params = settings(overrides)
    ledger = Ledger(PATHS.frames / "ledger.parquet")
    return extract_all(_manifest(), PATHS.clips, PATHS.frames, params.kinetics.frames, ledger,
                       params.common)


@flow(name="kinetics_index")
def index(overrides: dict[str, Any] | None = None) -> dict:
    params = settings(overrides)
    table = build_index(_manifest(), PATHS.frames, params.kinetics.frames.storage, Path("."))
    write_index(table, PATHS.index)
    classes = read_json(PATHS.manifest / "classes.json")
    report = {"clips": len(table), "classes": len(classes),
              "per_split": {str(k): int(v) for k, v in table["split"].value_counts().items()},
              "frames_total": int(table["n_frames"].sum()),
              "missing": len(_manifest()) - len(table)}
    write_json(report, PATHS.report)
    return report


def _train(names: list[str], stage: str, overrides: dict[str, Any] | None) -> dict:
    params = settings(overrides)
    info = init_distributed(params.common.device)
    try:
        return train_models(names, params.kinetics, params.common, PATHS.index,
                            PATHS.manifest / "classes.json", PATHS.artifacts,
                            PATHS.checkpoints(stage), info.device, stage)
    finally:
        cleanup()


@flow(name="kinetics_train")
def train(overrides: dict[str, Any] | None = None) -> dict:
    """BesNet, and its fixed-dilation twin for the ablation when kinetics.evaluate asks."""
    if settings(overrides).kinetics.evaluate.ablation_dilation:
        return _train(["besnet", "besnet_fixed"], "kinetics_train", overrides)
    mark_skipped(PATHS.artifacts / "besnet_fixed", "kinetics.evaluate.ablation_dilation is false")
    return _train(["besnet"], "kinetics_train", overrides)


@flow(name="kinetics_baseline")
def baseline(overrides: dict[str, Any] | None = None) -> dict:
    """The per-frame 2D ResNet + pooling + MLP baseline."""
    if not settings(overrides).kinetics.baseline.enabled:
        mark_skipped(PATHS.artifacts / "baseline", "kinetics.baseline.enabled is false")
        return {"models": {}}
    return _train(["baseline"], "kinetics_baseline", overrides)


@flow(name="kinetics_evaluate")
def evaluate(overrides: dict[str, Any] | None = None) -> dict:
    params = settings(overrides)
    return evaluate_models(params.kinetics, params.common, PATHS.index,
                           PATHS.manifest / "classes.json", PATHS.artifacts, PATHS.metrics,
                           PATHS.plots, resolve_device(params.common.device))


@flow(name="kinetics-pipeline")
def pipeline(overrides: dict[str, Any] | None = None, use_dvc: bool = True) -> dict:
    """The data pipeline. In a DVC repo without overrides, DVC decides what is stale."""
    if use_dvc and not overrides and in_dvc_repo():
        return {"stages_run": dvc_repro(["kinetics_evaluate"])}
    for stage in (download, frames, index, train, baseline, evaluate):
        stage(overrides=overrides)
    return {"stages_run": STAGES}


if __name__ == "__main__":
    sys.exit(main("kinetics", {"download": download, "frames": frames, "index": index,
                               "train": train, "baseline": baseline, "evaluate": evaluate,
                               "pipeline": pipeline}))
