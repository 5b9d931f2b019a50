"""The crypto_evaluate stage: test metrics with block-bootstrap intervals against naive baselines,
a long/flat backtest, and the plots."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from prefect import task

from tasks import tracking
from tasks.config import CommonSettings, CryptoSettings, flat_params
from tasks.crypto.backtest import backtest_long_flat, buy_and_hold, plot_equity
from tasks.crypto.pipeline import PIPELINE
from tasks.crypto.timeframes import bars_per_year
from tasks.evaluate import (
    binary_metrics,
    choose_threshold,
    default_block_length,
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
from tasks.storage import read_json, read_parquet, save_figure, write_text


def _plot_leak_audit(audit: dict, dest: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    names = ["leaky recipe", "leak-free"]
    values = [audit["leaky"]["accuracy"], audit["leak_free"]["accuracy"]]
    ax.bar(names, values, color=["tab:red", "tab:green"])
    ax.axhline(audit["leak_free"]["majority"], color="k", ls="--", label="majority (leak-free)")
    ax.set(ylim=(0.4, max(0.7, max(values) + 0.05)), ylabel="test accuracy",
           title=f"Leak audit, horizon {audit['horizon']} bars")
    ax.legend()
    return save_figure(fig, dest)


def write_equity(timestamps: pd.Series, model: np.ndarray, hold: np.ndarray, dest: Path) -> Path:
    """The backtest's equity curves as data: bar number (the plot's x), time, model
    long/flat, buy and hold."""
    frame = pd.DataFrame({"bar": np.arange(1, len(model) + 1),
                          "timestamp": pd.to_datetime(timestamps, utc=True).dt.strftime(
                              "%Y-%m-%dT%H:%M:%SZ").to_numpy(),
                          "model": model, "buy_and_hold": hold})
    return write_text(frame.to_csv(index=False, float_format="%.6g"), dest)


@task(name="crypto-evaluate")
def evaluate_models(settings: CryptoSettings, common: CommonSettings, split_dir: Path,
                    artifacts: Path, results_path: Path, metrics_path: Path, plots: Path,
                    curves: Path) -> dict:
    """Write reports/crypto/results.json and its summary metrics/crypto.json, plots/crypto/*.png
    and the data plots (learning curve, equity) under `curves`; log them to the training MLflow
    run."""
    trained = read_json(artifacts / "train.json")
    preds = read_parquet(artifacts / "predictions.parquet")
    val, test = (preds[preds["segment"] == s] for s in ("val", "test"))
    cfg = settings.evaluate
    threshold = choose_threshold(val["target"].to_numpy(), val["prob_model"].to_numpy())
    y_test = test["target"].to_numpy()
    block = cfg.block_length or default_block_length(len(test))
    test_metrics = metrics_with_ci(y_test, test["prob_model"].to_numpy(), threshold=threshold,
                                   n_resamples=cfg.bootstrap, block_length=block, seed=common.seed)
    samples = read_parquet(split_dir / "samples.parquet", columns=["segment", "target"])
    y_train = samples.loc[samples["segment"] == "train", "target"].to_numpy()
    baselines = {
        "majority": majority_baseline(y_train, y_test),
        "persistence": binary_metrics(y_test, test["prob_persistence"].to_numpy()),
        "logistic": binary_metrics(y_test, test["prob_logistic"].to_numpy()),
    }
    bt_rows = preds[preds["segment"] == "backtest"]
    bt_rows = bt_rows.sort_values("position")
    per_year = bars_per_year(trained["params"]["crypto.timeframe"])
    returns = bt_rows["next_return"].to_numpy()
    strategy = backtest_long_flat((bt_rows["prob_model"].to_numpy() >= threshold).astype(float),
                                  returns, cfg.fee_bps, per_year)
    hold = buy_and_hold(returns, cfg.fee_bps, per_year)
    plots.mkdir(parents=True, exist_ok=True)
    plot_equity({"model long/flat": strategy["equity"], "buy and hold": hold["equity"]},
                pd.to_datetime(bt_rows["timestamp"]).to_numpy(), plots / "equity.png")
    plot_roc(y_test, test["prob_model"].to_numpy(), plots / "roc.png")
    plot_confusion(y_test, (test["prob_model"].to_numpy() >= threshold).astype(int),
                   ["down", "up"], plots / "confusion.png")
    plot_learning_curve(trained["history"], plots / "learning_curve.png")
    write_learning_curve(trained["history"], curves / "learning_curve.csv")
    write_equity(bt_rows["timestamp"], strategy["equity"], hold["equity"], curves / "equity.csv")
    if trained["leak_audit"]:
        _plot_leak_audit(trained["leak_audit"], plots / "leak_audit.png")
    backtest = {k: v for k, v in strategy.items() if k != "equity"}
    backtest.update({f"buy_and_hold_{k}": v for k, v in hold.items() if k != "equity"})
    backtest["fee_bps"] = cfg.fee_bps
    errors = {name: 1 - binary_metrics(part["target"].to_numpy(), part["prob_model"].to_numpy(),
                                       threshold)["accuracy"]
              for name, part in preds.groupby("segment") if name != "backtest"}
    errors["dev"] = errors.pop("val")
    diagnosis = error_analysis(errors, cfg.reference_error)
    get_logger().info("%s", diagnosis_line(diagnosis))
    metrics = {
        "test": test_metrics,
        "diagnosis": diagnosis,
        "val": binary_metrics(val["target"].to_numpy(), val["prob_model"].to_numpy(), threshold),
        "baselines": baselines,
        "verdict": verdict(test_metrics, baselines),
        "walk_forward": trained["walk_forward"],
        "leak_audit": trained["leak_audit"],
        "regression_illusion": trained["regression_illusion"],
        "backtest": backtest,
        "split": trained["split"],
        "bootstrap": {"resamples": cfg.bootstrap, "block_length": block},
        # what shaped these numbers: the train stage's params as it ran, and this stage's own
        "params": {**trained["params"], **flat_params(settings, "crypto.")},
    }
    metrics["references"] = reference_rows(PIPELINE.references, metrics)
    write_results(metrics, PIPELINE, results_path, metrics_path)
    log = get_logger()
    log.info("test accuracy %.3f [%.3f, %.3f] at threshold %.3f; %s",
             test_metrics["accuracy"], test_metrics["accuracy_ci"]["low"],
             test_metrics["accuracy_ci"]["high"], threshold,
             metrics["verdict"]["text"])
    log.info("backtest Sharpe %.2f vs buy-and-hold %.2f (fees %.1f bps)", backtest["sharpe"],
             backtest["buy_and_hold_sharpe"], cfg.fee_bps)
    trained_run = tracking.run_that_wrote(common, "crypto", artifacts / "train.json")
    with tracking.run(common, "crypto", "crypto-evaluate", run_id=trained_run):
        tracking.log_metrics({k: v for k, v in metrics.items() if k not in ("split", "params", "references")})
        tracking.log_artifacts(plots, artifact_path="plots")
        tracking.log_artifacts(results_path, metrics_path)
    tracking.register_model(common, trained_run, PIPELINE.model_name)
    return metrics


def evaluate_stage(params) -> dict:
    """crypto_evaluate: reports/crypto/results.json, metrics/crypto.json, plots/crypto, the
    registered model."""
    from tasks.crypto.paths import CryptoPaths

    paths = CryptoPaths()
    return evaluate_models(params.crypto, params.common, paths.splits, paths.artifacts,
                           paths.results, paths.metrics, paths.plots, paths.curves)
