"""The real BTC/USDT 1h sample through every stage (source: file): leak checks, report shape,
and the leak audit exposing the illusion. No lucky accuracy is asserted."""
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from tasks import tracking
from tasks.config import load_params
from tasks.crypto.featurize import build_features
from tasks.crypto.ingest import ingest_candles
from tasks.crypto.paths import CryptoPaths
from tasks.crypto.prepare import build_splits
from tasks.crypto.report import evaluate_models
from tasks.crypto.training import train_models
from tasks.storage import read_json, write_json

ROOT = Path(__file__).resolve().parents[3]
SAMPLE = ROOT.parent / "shared" / "data" / "crypto" / "binance_btc_usdt_1h_ccxt.json"

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not SAMPLE.exists(), reason=f"{SAMPLE} (shared sample) missing")]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("real")
    params = load_params(ROOT / "params.yaml", {
        "crypto.source": "file", "crypto.file.path": str(SAMPLE), "crypto.model.kind": "mlp",
        "crypto.file.exchange": "binance", "crypto.file.symbol": "BTC/USDT",
        "crypto.train.epochs": 6, "crypto.split.walk_forward.folds": 2,
        "crypto.evaluate.bootstrap": 200,
        "common.mlflow.tracking_uri": f"sqlite:///{tmp}/mlflow.db",
        "common.mlflow.artifact_dir": str(tmp / "mlartifacts")})
    paths = CryptoPaths(tmp)
    crypto, common = params.crypto, params.common
    ingest = ingest_candles.fn(crypto, paths.raw, common.seed)
    write_json(ingest, paths.ingest_report)
    build_features.fn(crypto, paths.ingest_report, paths.features)
    split = build_splits.fn(crypto, paths.features, paths.splits)
    paths.artifacts.mkdir(parents=True)
    train = train_models.fn(crypto, common, paths.features, paths.splits, paths.artifacts,
                            torch.device("cpu"), paths.ingest_report)
    metrics = evaluate_models.fn(crypto, common, paths.splits, paths.artifacts, paths.results,
                                 paths.metrics, paths.plots, paths.curves)
    return {"ingest": ingest, "split": split, "train": train, "metrics": metrics,
            "paths": paths, "common": common}


def test_ingest_reports_real_gaps(run):
    gaps = run["ingest"]["symbols"]["BTC/USDT"]["gaps"]
    assert gaps["candles"] == 45023 and gaps["gaps"] == 27  # the exchange's real outages


def test_split_is_leak_checked_and_chronological(run):
    split = run["split"]
    assert split["leak_check"]["ok"]
    ranges = split["ranges"]
    assert ranges["train"][1] < ranges["val"][0] and ranges["val"][1] < ranges["test"][0]


def test_results_file_has_the_interface_keys(run):
    metrics = read_json(run["paths"].results)
    for dotted in ("test.accuracy", "test.accuracy_ci.low", "test.accuracy_ci.high", "baselines.majority.accuracy",
                   "baselines.persistence.accuracy", "leak_audit.leaky.accuracy",
                   "leak_audit.leak_free.accuracy", "backtest.sharpe",
                   "backtest.buy_and_hold_sharpe"):
        node = metrics
        for part in dotted.split("."):
            node = node[part]
        assert node is not None, dotted
    low, high = metrics["test"]["accuracy_ci"]["low"], metrics["test"]["accuracy_ci"]["high"]
    assert low <= metrics["test"]["accuracy"] <= high
    assert metrics["verdict"]["text"].startswith(("skill", "no evidence"))
    summary = read_json(run["paths"].metrics)  # DVC's metrics: the scalars to compare
    assert set(summary) == {"crypto_accuracy", "ci_low", "ci_high", "majority", "persistence",
                            "logistic", "skill", "sharpe"}
    assert (summary["crypto_accuracy"], summary["ci_low"]) == (metrics["test"]["accuracy"], low)
    assert {p.name for p in run["paths"].plots.iterdir()} >= {
        "equity.png", "roc.png", "confusion.png", "learning_curve.png", "leak_audit.png"}


def test_leak_audit_exposes_the_illusion(run):
    audit = run["metrics"]["leak_audit"]
    assert "shuffled" in audit["leaky"]["leak_check"]  # the leak check rejects the leaky split
    assert audit["leaky"]["accuracy"] - audit["leak_free"]["accuracy"] > 0.03


def test_price_regressor_is_no_better_than_copying_the_last_price(run):
    reg = run["metrics"]["regression_illusion"]
    assert reg["regressor"]["r2"] > 0.99 and reg["persistence"]["r2"] > 0.99
    assert reg["skill_vs_persistence"] < 0.01
    assert abs(reg["regressor"]["direction_accuracy"] - 0.5) < 0.05


def test_mlflow_run_holds_params_metrics_and_model(run):
    client = MlflowClient(tracking_uri=run["common"].mlflow.tracking_uri)
    run_id = tracking.run_that_wrote(run["common"], "crypto", run["paths"].artifacts / "train.json")
    found = client.get_run(run_id)  # train's run, which evaluate resumed
    assert found.data.params["crypto.source"] == "file"
    assert "test.accuracy" in found.data.metrics and "val_loss" in found.data.metrics
    history = client.get_metric_history(found.info.run_id, "val_loss")
    assert len(history) == len(run["train"]["history"])
    assert not any("key" in k.lower() or "secret" in k.lower() for k in found.data.params
                   if not k.endswith(("_env", "secret_block")))
    assert np.isfinite(found.data.metrics["backtest.sharpe"])
