"""Kinetics data pipeline: one Prefect flow per DVC stage, and the whole pipeline.

    python -m flows.kinetics download|frames|index|pipeline [--set key=value]
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow

from flows.common import dvc_repro, in_dvc_repo, main, settings
from tasks.storage import read_json, read_parquet, write_json
from tasks.video.demo import render_demo_clips
from tasks.video.download import download_all
from tasks.video.frames import build_index, extract_frames, write_index
from tasks.video.ledger import Ledger
from tasks.video.manifest import build_manifest, write_manifest
from tasks.video.paths import KineticsPaths

PATHS = KineticsPaths()
STAGES = ["kinetics_download", "kinetics_frames", "kinetics_index"]


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
        fetched = download_all(manifest, k.download, PATHS.clips, ledger, k.source)
    summary = write_manifest(manifest, classes, rejects, PATHS.manifest)
    write_json({"manifest": summary, "download": fetched}, PATHS.manifest / "download.json")
    return {"manifest": summary, "download": fetched}


@flow(name="kinetics_frames")
def frames(overrides: dict[str, Any] | None = None) -> dict:
    params = settings(overrides)
    ledger = Ledger(PATHS.frames / "ledger.parquet")
    return extract_frames(_manifest(), PATHS.clips, PATHS.frames, params.kinetics.frames, ledger)


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


@flow(name="kinetics-pipeline")
def pipeline(overrides: dict[str, Any] | None = None, use_dvc: bool = True) -> dict:
    """The data pipeline. In a DVC repo without overrides, DVC decides what is stale."""
    if use_dvc and not overrides and in_dvc_repo():
        return {"stages_run": dvc_repro(["kinetics_index"])}
    for stage in (download, frames, index):
        stage(overrides=overrides)
    return {"stages_run": STAGES}


if __name__ == "__main__":
    sys.exit(main("kinetics", {"download": download, "frames": frames, "index": index,
                               "pipeline": pipeline}))
