"""kinetics_evaluate: every trained model on the test clips with multi-view testing (clips x crops,
softmax averaged), Top-1/Top-5 with bootstrap intervals, per-class accuracy, confusion plots, the
random-vs-fixed dilation ablation as a paired difference, BesNet's train / train-dev / dev /
test error breakdown; BesNet registered in MLflow."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.layers import ViewAverage
from tasks import tracking
from tasks.config import CommonSettings, KineticsSettings
from tasks.errors import DataError
from tasks.evaluate import (
    diagnosis_line,
    error_analysis,
    mean_ci,
    per_class_accuracy,
    plot_confusion,
    plot_learning_curve,
    reference_rows,
    topk_accuracy,
    verdict,
    write_learning_curve,
    write_results,
)
from tasks.logs import get_logger
from tasks.storage import read_json
from tasks.train import predict
from tasks.video.modeling import clip_loader, fresh_model
from tasks.video.pipeline import PIPELINE
from tasks.video.preprocess import normalize_clips
from tasks.video.splits import ClipSplits, read_splits
from tasks.video.training import MODEL_FILE, SUMMARY_FILE

MODELS = ("besnet", "besnet_fixed", "baseline")


def recorded_params(settings: KineticsSettings, artifacts: Path) -> dict[str, Any]:
    """The params the models were trained with (each train.json records its stage's), with this
    stage's own keys (kinetics.evaluate, the test-time views) on top."""
    recorded: dict[str, Any] = {}
    for name in MODELS:
        summary = artifacts / name / SUMMARY_FILE
        if summary.exists():
            recorded.update(read_json(summary).get("params", {}))
    return {**recorded, **settings.flat("kinetics.")}


def as_settings(params: dict[str, Any]) -> KineticsSettings:
    """KineticsSettings from flat `kinetics.` keys: evaluate never re-reads what training
    recorded (sections no stage recorded keep their defaults and are not read here)."""
    nested: dict[str, Any] = {}
    for dotted, value in params.items():
        if dotted.startswith("kinetics."):
            *parents, leaf = dotted.removeprefix("kinetics.").split(".")
            node = nested
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
    return KineticsSettings.model_validate(nested)


def load_trained(name: str, settings: KineticsSettings, num_classes: int,
                 artifacts: Path) -> torch.nn.Module:
    """A model of the configured shape with the weights kinetics_train wrote."""
    model = fresh_model(name, settings, num_classes, imagenet=False)
    path = artifacts / name / MODEL_FILE
    try:
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except (OSError, RuntimeError) as exc:
        raise DataError(f"trained weights do not fit the configured model ({str(exc)[:200]}); "
                        "rerun kinetics_train", path=path) from None
    return model


def score(log_probs: np.ndarray, labels: np.ndarray, classes: list[str], seed: int,
          n_resamples: int) -> dict[str, Any]:
    """Top-1/Top-5, Top-1's 95% interval, per-class and mean class accuracy."""
    top = topk_accuracy(log_probs, labels, (1, 5))
    pred = log_probs.argmax(axis=1)
    per_class = per_class_accuracy(pred, labels, len(classes))
    ci = mean_ci(pred == labels, n_resamples=n_resamples, seed=seed)
    present = [a for a in per_class if not np.isnan(a)]
    return {"top1": top["top1"], "top5": top["top5"],
            "top1_ci": {"low": ci["low"], "high": ci["high"]},
            "mean_class_accuracy": float(np.mean(present)) if present else float("nan"),
            "per_class": {c: (None if np.isnan(a) else a) for c, a in
                          zip(classes, per_class, strict=True)}}


def chance(n_classes: int) -> dict[str, float]:
    """Top-1 / Top-5 of guessing uniformly among the classes."""
    return {"top1": 1 / n_classes, "top5": min(5, n_classes) / n_classes}


def without(metrics: dict[str, Any], key: str) -> dict[str, Any]:
    """A copy of nested metrics with every `key` left out (per-class accuracies: class names
    are not valid MLflow metric keys)."""
    return {k: without(v, key) if isinstance(v, dict) else v
            for k, v in metrics.items() if k != key}


def _ablation(correct: dict[str, np.ndarray], seed: int, n_resamples: int) -> dict:
    diff = mean_ci(correct["besnet"].astype(float) - correct["besnet_fixed"], seed=seed,
                   n_resamples=n_resamples)
    return {"random": float(correct["besnet"].mean()),
            "fixed": float(correct["besnet_fixed"].mean()),
            "difference": diff["mean"], "difference_ci": {"low": diff["low"], "high": diff["high"]},
            "significant": bool(diff["low"] > 0 or diff["high"] < 0)}


def split_errors(model: nn.Module, splits: ClipSplits, settings: KineticsSettings, seed: int,
                 device: torch.device) -> dict[str, float]:
    """Top-1 error (test views averaged, as for test) on a sample of the training clips as
    large as the test set, on train-dev (if any) and on val (the dev set)."""
    n_train = min(len(splits.train), max(len(splits.test), len(splits.train_dev)))
    frames = {"train": splits.train.sample(n=n_train, random_state=seed),
              "train_dev": splits.train_dev, "dev": splits.val}
    errors = {}
    for name, frame in frames.items():
        if frame.empty:
            continue
        loader = clip_loader(frame, settings, seed, train=False, device=device)
        log_probs = predict(ViewAverage(model), loader, device, normalize_clips)
        errors[name] = float(np.mean(log_probs.argmax(axis=1) != frame["class_index"].to_numpy()))
    return errors


def evaluate_models(settings: KineticsSettings, common: CommonSettings, split_dir: Path,
                    classes_path: Path, artifacts: Path, results_path: Path,
                    metrics_path: Path, plots: Path, curves: Path, device: torch.device) -> dict:
    """Score every model kinetics_train / kinetics_baseline wrote on kinetics_split's test
    clips; metrics JSON, plots, MLflow."""
    log = get_logger()
    params = recorded_params(settings, artifacts)
    settings = as_settings(params)
    classes = read_json(classes_path)
    splits = read_splits(split_dir)
    labels = splits.test["class_index"].to_numpy()
    loader = clip_loader(splits.test, settings, common.seed, train=False, device=device)
    names = [n for n in MODELS if (artifacts / n / MODEL_FILE).exists()]
    if "besnet" not in names:
        raise DataError("no trained BesNet; run kinetics_train first", path=artifacts)
    n_boot = settings.evaluate.bootstrap
    metrics: dict[str, Any] = {
        "test_split": splits.test_name, "clips": int(len(labels)), "classes": len(classes),
        "views": settings.dataset.test_clips * settings.dataset.test_crops,
        "baselines": {"chance": chance(len(classes))}, "params": params}
    correct = {}
    for name in names:
        model = load_trained(name, settings, len(classes), artifacts)
        log_probs = predict(ViewAverage(model), loader, device, normalize_clips)
        scored = score(log_probs, labels, classes, common.seed, n_boot)
        if name == "baseline":
            metrics["baselines"]["frame_model"] = scored
        elif name == "besnet_fixed":
            metrics["besnet_fixed"] = {**scored, "dilation": settings.model.fixed_dilation}
        else:
            metrics["test"] = scored
        correct[name] = log_probs.argmax(axis=1) == labels
        plot_confusion(labels, log_probs.argmax(axis=1), classes,
                       plots / f"confusion_{name}.png")
        history = read_json(artifacts / name / SUMMARY_FILE)["history"]
        plot_learning_curve(history, plots / f"learning_curve_{name}.png")
        if name == "besnet":  # the registered model's curve is also a DVC data plot
            write_learning_curve(history, curves / "learning_curve.csv")
        log.info("%s: top1 %.3f top5 %.3f on %d %s clips (%d views each)", name,
                 scored["top1"], scored["top5"], len(labels), splits.test_name,
                 metrics["views"])
    if "besnet_fixed" in correct:
        metrics["ablation"] = {"dilation": _ablation(correct, common.seed, n_boot)}
    errors = split_errors(load_trained("besnet", settings, len(classes), artifacts), splits,
                          settings, common.seed, device)
    errors["test"] = 1 - metrics["test"]["top1"]
    metrics["diagnosis"] = error_analysis(errors, settings.evaluate.reference_error)
    log.info("besnet: %s", diagnosis_line(metrics["diagnosis"]))
    metrics["verdict"] = verdict(metrics["test"], metrics["baselines"], "top1")
    metrics["references"] = reference_rows(PIPELINE.references, metrics)
    log.info("besnet: %s", metrics["verdict"]["text"])
    write_results(metrics, PIPELINE, results_path, metrics_path)
    trained_run = tracking.run_that_wrote(common, "kinetics", artifacts / "besnet" / SUMMARY_FILE)
    with tracking.run(common, "kinetics", "kinetics-evaluate", run_id=trained_run):
        # per-class accuracies stay in the JSON: class names are not valid MLflow metric keys
        tracking.log_metrics(without(
            {k: v for k, v in metrics.items()
             if k in ("test", "baselines", "ablation", "besnet_fixed", "diagnosis", "verdict")},
            "per_class"))
        tracking.log_artifacts(plots, artifact_path="plots")
        tracking.log_artifacts(results_path, metrics_path)
    tracking.register_model(common, trained_run, PIPELINE.model_name)
    return metrics


def evaluate_stage(params) -> dict:
    """kinetics_evaluate: Top-1/Top-5 with intervals, the dilation ablation, the registry."""
    from tasks.train import resolve_device
    from tasks.video.paths import KineticsPaths

    paths = KineticsPaths()
    return evaluate_models(params.kinetics, params.common, paths.split,
                           paths.manifest / "classes.json", paths.artifacts, paths.results,
                           paths.metrics, paths.plots, paths.curves,
                           resolve_device(params.common.device))
