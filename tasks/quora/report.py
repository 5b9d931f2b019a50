"""The quora_evaluate stage: the configured model's test metrics with bootstrap intervals,
the majority baseline, the table of configurations, errors per split, plots."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect import task

from tasks import tracking
from tasks.config import CommonSettings, QuoraSettings, flat_params
from tasks.evaluate import (
    binary_metrics,
    choose_threshold,
    diagnosis_line,
    error_analysis,
    majority_baseline,
    metrics_with_ci,
    plot_confusion,
    plot_learning_curve,
    plot_roc,
    reference_rows,
    verdict,
    write_learning_curve,
    write_results,
)
from tasks.logs import get_logger
from tasks.quora.pipeline import PIPELINE
from tasks.storage import read_json, read_parquet

ROW_FIELDS = ("accuracy", "accuracy_ci", "f1", "roc_auc", "log_loss", "threshold")


def _scored(preds: pd.DataFrame, column: str, settings: QuoraSettings, seed: int) -> dict:
    """Threshold chosen on dev; test metrics with iid bootstrap intervals; error per split."""
    dev = preds[preds["split"] == "dev"]
    threshold = choose_threshold(dev["is_duplicate"].to_numpy(), dev[column].to_numpy())
    test = preds[preds["split"] == "test"]
    metrics = metrics_with_ci(test["is_duplicate"].to_numpy(), test[column].to_numpy(),
                              threshold=threshold, n_resamples=settings.evaluate.bootstrap,
                              block_length=None, seed=seed)
    metrics["roc_auc"], metrics["roc_auc_ci"] = metrics["auc"], metrics["auc_ci"]
    errors = {}
    for name, part in preds.groupby("split"):
        acc = binary_metrics(part["is_duplicate"].to_numpy(), part[column].to_numpy(),
                             threshold)["accuracy"]
        errors[str(name)] = 1 - acc
    return {"test": metrics, "errors": errors}


@task(name="quora-evaluate")
def evaluate_models(settings: QuoraSettings, common: CommonSettings, artifacts: Path,
                    results_path: Path, metrics_path: Path, plots: Path, curves: Path) -> dict:
    """Write reports/quora/results.json, its summary metrics/quora.json and plots/quora/*.png;
    log them to the training MLflow run."""
    trained = read_json(artifacts / "train.json")
    preds = read_parquet(artifacts / "predictions.parquet")
    main = trained["main"]
    scored = _scored(preds, main["column"], settings, common.seed)
    y_train = preds.loc[preds["split"] == "train", "is_duplicate"].to_numpy()
    test = preds[preds["split"] == "test"]
    y_test = test["is_duplicate"].to_numpy()
    table = []
    for cfg in trained["configs"]:
        row = _scored(preds, cfg["column"], settings, common.seed)["test"]
        table.append({"key": cfg["key"], "config": cfg["name"],
                      "vectors": cfg["vectors"] or "token_ids",
                      "variant": cfg["variant"], "main": bool(cfg.get("main")),
                      **{k: row[k] for k in ROW_FIELDS}})
    logistic = _scored(preds, trained["baselines"]["logistic"]["column"], settings,
                       common.seed)["test"]
    baselines = {"majority": majority_baseline(y_train, y_test),
                 "logistic": {k: logistic[k] for k in ROW_FIELDS}}
    metrics = {"config": main["name"], "test": scored["test"], "errors": scored["errors"],
               "diagnosis": error_analysis(scored["errors"], settings.evaluate.reference_error),
               "baselines": baselines, "verdict": verdict(scored["test"], baselines),
               "table": table,
               "params": {**trained["params"], **flat_params(settings, "quora.")}}
    metrics["references"] = reference_rows(PIPELINE.references, metrics)
    plots.mkdir(parents=True, exist_ok=True)
    prob = test[main["column"]].to_numpy()
    plot_confusion(y_test, (prob >= scored["test"]["threshold"]).astype(int),
                   ["different", "duplicate"], plots / "confusion.png")
    plot_roc(y_test, prob, plots / "roc.png")
    plot_learning_curve(main["history"], plots / "learning_curve.png")
    write_learning_curve(main["history"], curves / "learning_curve.csv")
    write_results(metrics, PIPELINE, results_path, metrics_path)
    log = get_logger()
    t = scored["test"]
    log.info("%s: test accuracy %.3f [%.3f, %.3f], F1 %.3f, ROC-AUC %.3f; majority %.3f",
             main["name"], t["accuracy"], t["accuracy_ci"]["low"], t["accuracy_ci"]["high"],
             t["f1"], t["roc_auc"], metrics["baselines"]["majority"]["accuracy"])
    log.info("logistic regression on pair features: accuracy %.3f [%.3f, %.3f]; %s",
             logistic["accuracy"], logistic["accuracy_ci"]["low"], logistic["accuracy_ci"]["high"],
             metrics["verdict"]["text"])
    log.info("%s", diagnosis_line(metrics["diagnosis"]))
    for row in table:
        log.info("  %-32s accuracy %.3f  F1 %.3f  AUC %.3f", row["config"], row["accuracy"],
                 row["f1"], row["roc_auc"])
    trained_run = tracking.run_that_wrote(common, "quora", artifacts / "train.json")
    with tracking.run(common, "quora", "quora-evaluate", run_id=trained_run):
        tracking.log_metrics({k: v for k, v in metrics.items()
                              if k not in ("table", "config", "params", "references")})
        tracking.log_artifacts(plots, artifact_path="plots")
        tracking.log_artifacts(results_path, metrics_path)
    tracking.register_model(common, trained_run, PIPELINE.model_name)
    return metrics


def evaluate_stage(params) -> dict:
    """quora_evaluate: reports/quora/results.json, metrics/quora.json and plots/quora."""
    from tasks.quora.paths import QuoraPaths

    paths = QuoraPaths()
    return evaluate_models(params.quora, params.common, paths.artifacts, paths.results,
                           paths.metrics, paths.plots, paths.curves)
