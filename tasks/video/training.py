"""kinetics_train / kinetics_baseline: BesNet (and its fixed-dilation ablation) and the frame
baseline, trained by the one loop in tasks/train.py on the clip index, logged to MLflow.

Each model's checkpoint is named by, and carries, a hash of everything that decides its weights
(settings, seed, index, training code), so a killed run resumes exactly and a changed config or
edited code never resumes a stale one.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from models.layers import ViewAverage
from tasks import distributed, tracking
from tasks.config import CommonSettings, KineticsSettings, flat_params
from tasks.fingerprint import code_digest
from tasks.logs import get_logger
from tasks.storage import read_json, read_parquet, write_json, write_torch
from tasks.train import FitConfig, fit, seed_everything
from tasks.video.modeling import clip_loader, fresh_model
from tasks.video.preprocess import normalize_clips
from tasks.video.splits import CLIPS_FILE, ClipSplits, read_splits

MODEL_FILE, SUMMARY_FILE, SKIPPED_FILE = "model.pt", "train.json", "skipped.json"


# ================================================================== identity
def data_digest(path: Path) -> str:
    """SHA-256 of the clips file a model trains on (part of every checkpoint's identity)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def training_code_digest() -> str:
    """SHA-256 of the code that trains a model: this module's first-party import closure
    (the loop, the models, the dataset, the settings)."""
    return code_digest([__name__])


def checkpoint_identity(name: str, settings: KineticsSettings, seed: int, index_sha: str,
                        code_sha: str) -> str:
    """SHA-256 over what decides a model's weights: settings, seed, index and training code."""
    own = "baseline" if name == "baseline" else "model"
    decisive = {"name": name, "seed": seed, "index": index_sha, "code": code_sha,
                **{k: flat_params(getattr(settings, k)) for k in (own, "train", "dataset")},
                "storage": settings.frames.storage}
    return hashlib.sha256(json.dumps(decisive, sort_keys=True, default=str).encode()).hexdigest()


def checkpoint_path(folder: Path, name: str, identity: str) -> Path:
    """folder/{name}-{identity[:12]}.ckpt."""
    return Path(folder) / f"{name}-{identity[:12]}.ckpt"


# ================================================================== one model
def train_model(name: str, model: nn.Module, splits: ClipSplits, settings: KineticsSettings,
                common: CommonSettings, device: torch.device, checkpoint: Path,
                identity: str) -> dict:
    """Fit `model` (early stopping on val loss, multi-view val) and return its summary; only a
    checkpoint of the same `identity` is resumed."""
    seed = common.seed
    train_loader = clip_loader(splits.train, settings, seed, train=True, device=device)
    val_loader = clip_loader(splits.val, settings, seed, train=False, device=device)
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    result = fit(ViewAverage(model), train_loader, val_loader, nn.CrossEntropyLoss(),
                 FitConfig.from_settings(settings.train, seed), device,
                 on_epoch=lambda row: tracking.log_metrics(
                     {k: row[k] for k in ("train_loss", "val_loss", "lr", "seconds")},
                     step=row["epoch"]),
                 checkpoint_path=checkpoint, checkpoint_identity=identity,
                 prepare=normalize_clips)
    get_logger().info("%s: best epoch %d of %d (val loss %.4f)", name, result.best_epoch,
                      len(result.history), result.best_val_loss)
    if distributed.is_main():  # how this run went, not what it made: MLflow, not train.json
        tracking.log_metrics({"resumed_from_epoch": result.resumed_from_epoch,
                              "steps_run": result.steps_run})
    return {"history": result.history, "best_epoch": result.best_epoch,
            "best_val_loss": result.best_val_loss, "stopped_early": result.stopped_early,
            "params": sum(p.numel() for p in model.parameters())}


def drop_stale_checkpoints(current: Path) -> None:
    """Remove this model's checkpoints of other configurations (the current one stays: a rerun
    of the same configuration finds it finished and does not train again)."""
    stem = current.name.rsplit("-", 1)[0]
    for old in current.parent.glob(f"{stem}-*.ckpt"):
        if old != current:
            old.unlink(missing_ok=True)


def save_model(model: nn.Module, dest: Path) -> Path:
    """The trained weights (state dict, loadable with weights_only=True), atomically."""
    return write_torch({k: v.detach().cpu() for k, v in model.state_dict().items()}, dest)


def log_pyfunc(settings: KineticsSettings, test: pd.DataFrame, classes_path: Path,
               weights: Path, clips_dir: Path) -> None:
    """Log BesNet as the pipeline's pyfunc (tasks.video.serving), with the class names and
    the settings of its frame extraction and test views; the first test clip's source file
    (kinetics_download's) is its input example."""
    from tasks.video import serving

    manifest = read_parquet(classes_path.with_name("manifest.parquet"))
    row = manifest[manifest["clip_id"] == test["clip_id"].iloc[0]].iloc[0]
    clip = (clips_dir / str(row["label_dir"]) / f"{row['clip_id']}.mp4").resolve()
    tracking.log_model(serving.MODEL_CLASS, config={"settings": serving.serving_settings(settings)},
                       artifacts={"weights": weights, "classes": classes_path},
                       input_example=pd.DataFrame({"path": [str(clip)]}))


# ================================================================== the stages
def train_models(names: list[str], settings: KineticsSettings, common: CommonSettings,
                 split_dir: Path, classes_path: Path, out_dir: Path, checkpoints: Path,
                 device: torch.device, stage: str, clips_dir: Path) -> dict:
    """Train each named model ("besnet", "besnet_fixed", "baseline") on kinetics_split's clips;
    write out_dir/{name}/model.pt and train.json; one MLflow parent run for the stage, a nested
    run per model (BesNet's logs it as a pyfunc reading clips from `clips_dir`'s kind)."""
    classes = read_json(classes_path)
    splits = read_splits(split_dir)
    sha, code_sha = data_digest(split_dir / CLIPS_FILE), training_code_digest()
    out_dir.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"models": {}, "splits": {
        "train": len(splits.train), "train_dev": len(splits.train_dev), "val": len(splits.val),
        "test": len(splits.test), "test_split": splits.test_name}}
    params = {**flat_params(settings, "kinetics."), "common.seed": common.seed}
    with tracking.run(common, "kinetics", stage, params=params, tags={"stage": stage},
                      enabled=distributed.is_main()):
        for name in names:
            seed_everything(common.seed)  # initial weights follow the seed (and pair models)
            model = fresh_model(name, settings, len(classes))
            identity = checkpoint_identity(name, settings, common.seed, sha, code_sha)
            ckpt = checkpoint_path(checkpoints, name, identity)
            with tracking.run(common, "kinetics", name, nested=True,
                              enabled=distributed.is_main()):
                fitted = train_model(name, model, splits, settings, common, device, ckpt,
                                     identity)
                entry = {**fitted, "params": params}
                if distributed.is_main():
                    save_model(model, out_dir / name / MODEL_FILE)
                    write_json(entry, out_dir / name / SUMMARY_FILE)
                    tracking.tag_summary(out_dir / name / SUMMARY_FILE)  # for evaluate
                    if name == "besnet":  # the model evaluate registers
                        log_pyfunc(settings, splits.test, classes_path,
                                   out_dir / name / MODEL_FILE, clips_dir)
                    drop_stale_checkpoints(ckpt)
                summary["models"][name] = entry
    return summary


def mark_skipped(folder: Path, reason: str) -> None:
    """A model folder that says why the model was not trained (DVC needs the output to exist)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in (MODEL_FILE, SUMMARY_FILE):
        (folder / name).unlink(missing_ok=True)
    write_json({"skipped": reason}, folder / SKIPPED_FILE)


def _train_stage(names: list[str], stage: str, params) -> dict:
    from tasks.distributed import cleanup, init_distributed
    from tasks.video.paths import KineticsPaths

    paths = KineticsPaths()
    info = init_distributed(params.common.device)
    try:
        return train_models(names, params.kinetics, params.common, paths.split,
                            paths.manifest / "classes.json", paths.artifacts,
                            paths.checkpoints(stage), info.device, stage, paths.clips)
    finally:
        cleanup()


def train_stage(params) -> dict:
    """kinetics_train: BesNet, and its fixed-dilation twin when kinetics.evaluate asks."""
    from tasks.video.paths import KineticsPaths

    if params.kinetics.evaluate.ablation_dilation:
        return _train_stage(["besnet", "besnet_fixed"], "kinetics_train", params)
    mark_skipped(KineticsPaths().artifacts / "besnet_fixed",
                 "kinetics.evaluate.ablation_dilation is false")
    return _train_stage(["besnet"], "kinetics_train", params)


def baseline_stage(params) -> dict:
    """kinetics_baseline: the per-frame 2D ResNet + pooling + MLP baseline."""
    from tasks.video.paths import KineticsPaths

    if not params.kinetics.baseline.enabled:
        mark_skipped(KineticsPaths().artifacts / "baseline", "kinetics.baseline.enabled is false")
        return {"models": {}}
    return _train_stage(["baseline"], "kinetics_baseline", params)
