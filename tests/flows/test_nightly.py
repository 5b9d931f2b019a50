"""The nightly retrain's parts: champion/challenger on a real MLflow registry (SQLite),
params.yaml overrides, new-data detection from dvc.lock; and a night with new candles."""
import json
import subprocess
from pathlib import Path

import mlflow
import pytest
import torch
import yaml

from flows.nightly import consumed, data_change, markdown, registered_network
from tasks import champion
from tasks.champion import Score
from tasks.config import load_params, save_overrides
from tasks.crypto.candles import demo_candles
from tasks.crypto.report import rescore
from tasks.errors import ConfigError
from tests.conftest import VENV_BIN
from tests.flows.repo_copy import repo_env, run, small_repo

MODEL = "demo-model"


@pytest.fixture
def registry(tmp_path):
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    client.create_registered_model(MODEL)
    return client


def new_version(client) -> str:
    return str(client.create_model_version(MODEL, source="file:///nowhere/model").version)


def judge(client, value: float, data: str = "split:aaa", baseline: float = 0.5,
          margin: float = 0.01, rescore=None) -> champion.Verdict:
    return champion.judge(client, MODEL, Score("test.accuracy", value, data, baseline), margin,
                          rescore)


def champion_of(client) -> str:
    return str(client.get_model_version_by_alias(MODEL, champion.CHAMPION).version)


def test_first_version_becomes_champion_and_is_never_judged_twice(registry):
    version = new_version(registry)
    verdict = judge(registry, 0.55)
    assert verdict.promoted and verdict.challenger == version and verdict.champion is None
    assert champion_of(registry) == version
    tags = registry.get_model_version(MODEL, version).tags
    assert tags["test_data"] == "split:aaa" and float(tags["test_value"]) == 0.55
    again = judge(registry, 0.99)  # a night that trained nothing
    assert not again.promoted and again.challenger is None and "no new model" in again.reason
    assert champion_of(registry) == version


@pytest.mark.parametrize(("value", "promoted"), [(0.565, True), (0.555, False), (0.50, False)])
def test_on_the_same_test_data_a_challenger_needs_the_margin(registry, value, promoted):
    first = new_version(registry)
    judge(registry, 0.55)
    second = new_version(registry)
    verdict = judge(registry, value)
    assert verdict.promoted is promoted and verdict.old == 0.55 and verdict.new == value
    assert champion_of(registry) == (second if promoted else first)
    assert "same test data" in verdict.reason
    assert registry.get_model_version(MODEL, second).tags["decision"].startswith(
        "promoted" if promoted else "kept the champion")


@pytest.mark.parametrize(("value", "promoted"), [(0.52, True), (0.505, False)])
def test_when_the_test_data_changed_the_challenger_must_beat_the_naive_baseline(
        registry, value, promoted):
    new_version(registry)
    judge(registry, 0.70)  # scored on other (older) test data: not comparable
    new_version(registry)
    verdict = judge(registry, value, data="split:bbb", baseline=0.50)
    assert verdict.promoted is promoted and verdict.old is None
    assert "not comparable" in verdict.reason and "naive baseline" in verdict.reason


@pytest.mark.parametrize(("value", "promoted"), [(0.60, True), (0.58, False)])
def test_a_champion_scored_on_older_data_is_rescored_on_tonights(registry, value, promoted):
    first = new_version(registry)
    judge(registry, 0.70)  # a score on the old test data: not comparable any more
    second = new_version(registry)
    rescored = []

    def rescore(version: str) -> float:
        rescored.append(version)
        return 0.585
    verdict = judge(registry, value, data="split:bbb", rescore=rescore)
    assert rescored == [first] and verdict.old == 0.585
    assert verdict.promoted is promoted and "re-scored on tonight's test data" in verdict.reason
    assert champion_of(registry) == (second if promoted else first)
    if not promoted:  # the kept champion now carries its score on tonight's data
        tags = registry.get_model_version(MODEL, first).tags
        assert tags["test_data"] == "split:bbb" and float(tags["test_value"]) == 0.585


def test_a_champion_logged_before_models_were_pyfuncs_is_still_rescored(tmp_path):
    import mlflow.pytorch

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    net = torch.nn.Linear(3, 1)
    with mlflow.start_run():
        mlflow.pytorch.log_model(net, name="model", registered_model_name="old-model",
                                 serialization_format="pickle", pip_requirements=["torch"])
    loaded = registered_network("models:/old-model/1")
    assert torch.equal(loaded.weight, net.weight)


def test_no_registered_version_is_no_verdict(tmp_path):
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    verdict = champion.judge(client, "never-trained", Score("m", 1.0, "d", 0.0), 0.0)
    assert not verdict.promoted and verdict.reason == "no registered model version"


def test_overrides_are_validated_then_written_into_params_keeping_comments(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("# top comment\ncrypto:\n  source: demo   # where candles come from\n"
                    "nightly:\n  margin: 0.0\n")
    params = save_overrides(path, {"crypto.source": "file", "crypto.file.path": "c.csv",
                                   "nightly.margin": 0.02})
    assert params.crypto.source == "file" and params.nightly.margin == 0.02
    text = path.read_text()
    assert "# top comment" in text and "# where candles come from" in text
    assert yaml.safe_load(text)["crypto"]["file"]["path"] == "c.csv"
    before = path.read_text()
    with pytest.raises(ConfigError, match="nightly.pipelines"):
        save_overrides(path, {"nightly.pipelines": ["forex"]})
    with pytest.raises(ConfigError, match="crypto.sourec"):
        save_overrides(path, {"crypto.sourec": "file"})
    assert path.read_text() == before  # nothing written when invalid


def test_new_data_is_a_change_of_what_downstream_stages_read():
    from tasks.site import site_deps

    raw, report = "data/crypto/raw", "reports/crypto/ingest.json"
    assert report in site_deps()  # the site shows the ingest report, a model never reads it
    before = {raw: {"md5": "a", "size": 100, "nfiles": 2},
              report: {"md5": "r1", "size": 10, "nfiles": None}}
    report_only = {**before, report: {"md5": "r2", "size": 12, "nfiles": None}}
    assert not data_change(consumed(before), consumed(report_only))["changed"]
    grown = {**before, raw: {"md5": "b", "size": 150, "nfiles": 3}}
    assert data_change(consumed(before), consumed(grown)) == {
        "changed": True, "bytes_added": 50, "files_added": 1}


def test_the_summary_table_names_failures_and_verdicts():
    verdict = champion.Verdict("m", "2", "1", False, "does not beat", 0.5, 0.6)
    text = markdown([{"pipeline": "crypto", "data": {"changed": False}, "stages_run": [],
                      "verdict": verdict.as_dict()},
                     {"pipeline": "quora", "error": "quora: stage 'quora_embed' failed"}], 3)
    assert "| crypto | no | none | test.accuracy | 0.6000 (v1) | 0.5000 (v2) | no |" in text
    assert "**failed**: quora: stage 'quora_embed' failed" in text
    assert "DVC push: 3 files" in text


@pytest.mark.slow
def test_a_night_with_new_candles_retrains_and_judges_on_the_new_test_data(
        tmp_path_factory, prefect_server):
    dest = tmp_path_factory.mktemp("nightly")
    csv = dest / "candles.csv"
    repo = small_repo(dest, {"crypto": {"source": "file",
                                        "file": {"path": str(csv), "format": "auto",
                                                 "exchange": "binance",
                                                 "symbol": "BTC/USDT"}}})
    candles = demo_candles(3300, pd_start(), "1h", seed=7)
    candles.iloc[:3000].to_csv(csv, index=False)
    env = repo_env(prefect_server)
    nightly = [str(VENV_BIN / "python"), "-m", "flows.nightly", "--pipelines", "crypto"]

    run(nightly, repo, env)
    first = summary(repo)
    assert first["data"]["changed"] and first["verdict"]["promoted"]
    candles.to_csv(csv, index=False)  # 300 new hourly candles at the end of the export
    run(nightly, repo, env)
    second = summary(repo)
    assert second["data"]["changed"] and second["data"]["bytes_added"] > 0
    assert "crypto_train" in second["stages_run"]
    verdict = second["verdict"]
    assert verdict["challenger"] == "2" and verdict["champion"] == "1"
    # the test window moved with the data, so v1 was re-scored on it the way evaluate scores
    assert "re-scored on tonight's test data" in verdict["reason"]
    metrics = json.loads((repo / "reports/crypto/results.json").read_text())
    assert verdict["new"] == metrics["test"]["accuracy"]
    mlflow.set_tracking_uri(f"sqlite:///{repo}/mlflow.db")
    v2 = registered_network("models:/crypto-next-move/2")  # the pyfunc's network
    params = load_params(repo / "params.yaml")
    assert rescore(v2, params.crypto, repo / "data/crypto/splits", torch.device("cpu")) == (
        pytest.approx(metrics["test"]["accuracy"]))  # the rescoring reproduces evaluate's score
    status = subprocess.run([str(VENV_BIN / "dvc"), "status", "--json", "--with-deps",
                             "crypto_evaluate"], cwd=repo, env=env, capture_output=True,
                            text=True, check=True)
    assert json.loads(status.stdout) == {}


def pd_start():
    import pandas as pd

    return pd.Timestamp("2024-01-01", tz="UTC").to_pydatetime()


def summary(repo: Path) -> dict:
    return json.loads((repo / "reports/nightly/summary.json").read_text())["pipelines"][0]
