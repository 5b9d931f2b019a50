"""`dvc repro` of every pipeline in a temporary copy of the repo on source: demo, each stage a
real Prefect flow reporting to a real Prefect server; a second `dvc repro` reproduces nothing."""
import json
import uuid

import httpx
import mlflow
import pandas as pd
import pytest
import yaml

from tests.flows.repo_copy import repo_env, run, small_repo

pytestmark = pytest.mark.slow
KINETICS_KEYS = ["test.top1", "test.top5", "test.top1_ci.low", "baseline.top1",
                 "ablation.dilation.random", "ablation.dilation.fixed",
                 "ablation.dilation.difference_ci.high", "diagnosis.variance",
                 "diagnosis.dev_overfitting"]
QUORA_KEYS = ["test.accuracy", "test.accuracy_ci.low", "test.f1", "test.roc_auc",
              "diagnosis.avoidable_bias", "diagnosis.variance", "diagnosis.data_mismatch",
              "baselines.majority.accuracy"]
CRYPTO_KEYS = ["test.accuracy", "test.accuracy_ci.low", "test.accuracy_ci.high", "baselines.majority.accuracy",
               "baselines.persistence.accuracy", "leak_audit.leaky.accuracy",
               "leak_audit.leak_free.accuracy", "backtest.sharpe", "backtest.buy_and_hold_sharpe"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory, prefect_server):
    repo = small_repo(tmp_path_factory.mktemp("repo"))
    tag = f"test-{uuid.uuid4().hex}"  # this repro's flow runs, apart from the session's others
    env = repo_env(prefect_server, PYTHONPATH=str(repo), REPROLAB_RUN_TAGS=tag)
    first = run(["dvc", "repro"], repo, env)
    env.pop("REPROLAB_RUN_TAGS")
    return repo, env, first, tag


def test_first_repro_runs_every_stage_as_a_flow(repo, prefect_server):
    path, env, first, tag = repo
    stages = list(yaml.safe_load((path / "dvc.yaml").read_text())["stages"])
    for stage in stages:
        assert f"Running stage '{stage}'" in first.stdout
    runs = httpx.post(f"{prefect_server}/flow_runs/filter",
                      json={"flow_runs": {"tags": {"all_": [tag]}}}).json()
    flows = {f["id"]: f["name"] for f in httpx.post(f"{prefect_server}/flows/filter",
                                                    json={}).json()}
    states: dict[str, list[str]] = {}
    for r in runs:
        states.setdefault(flows[r["flow_id"]], []).append(r["state_type"])
    # exactly one completed flow run per stage, from this repro (not from other tests' runs)
    assert {s: states.get(s) for s in stages} == {s: ["COMPLETED"] for s in stages}, states


def test_second_repro_reproduces_nothing_and_status_is_clean(repo):
    path, env, _, _ = repo
    second = run(["dvc", "repro"], path, env)
    assert "Running stage" not in second.stdout
    assert "up to date" in second.stdout
    status = run(["dvc", "status", "--json"], path, env)
    assert json.loads(status.stdout) == {}


@pytest.mark.parametrize(("path", "keys"), [("metrics/crypto.json", CRYPTO_KEYS),
                                           ("metrics/quora.json", QUORA_KEYS),
                                           ("reports/kinetics/data.json", ["clips", "classes"]),
                                           ("metrics/kinetics.json", KINETICS_KEYS)])
def test_metrics_show_lists_the_interface_keys(repo, path, keys):
    repo_path, env, _, _ = repo
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], repo_path, env).stdout)
    metrics = shown[""]["data"][path]["data"]
    for dotted in keys:
        node = metrics
        for part in dotted.split("."):
            assert part in node, dotted
            node = node[part]


def test_mlflow_sqlite_store_holds_the_runs_and_models(repo):
    path, _, _, _ = repo
    assert (path / "mlflow.db").exists()
    mlflow.set_tracking_uri(f"sqlite:///{path}/mlflow.db")
    client = mlflow.tracking.MlflowClient()
    runs = mlflow.search_runs(experiment_names=["reprolab-crypto"], output_format="list")
    assert len(runs) == 1
    assert "test.accuracy" in runs[0].data.metrics
    assert len(client.search_model_versions("name='crypto-next-move'")) == 1
    quora = mlflow.search_runs(experiment_names=["reprolab-quora"], output_format="list")
    parent = [r for r in quora if "mlflow.parentRunId" not in r.data.tags]
    assert len(parent) == 1 and "test.accuracy" in parent[0].data.metrics
    assert len(quora) - 1 == 4  # one nested run per configuration of the table
    assert len(client.search_model_versions("name='quora-duplicates'")) == 1
    kinetics = mlflow.search_runs(experiment_names=["reprolab-kinetics"], output_format="list")
    names = sorted(r.info.run_name for r in kinetics)
    assert names == ["baseline", "besnet", "besnet_fixed", "kinetics_baseline", "kinetics_train"]
    besnet = next(r for r in kinetics if r.info.run_name == "besnet")
    assert "test.top1" in besnet.data.metrics and "val_loss" in besnet.data.metrics
    assert len(client.search_model_versions("name='kinetics-besnet'")) == 1


def test_kinetics_index_lists_every_demo_clip(repo):
    path, _, _, _ = repo
    index = pd.read_parquet(path / "data/kinetics/index.parquet")
    assert len(index) == 6 * 3 and set(index["status"]) == {"ok"}
    assert (index["n_frames"] >= 6).all()
    for rel in index["path"]:
        assert any((path / rel).glob("img_*.jpg"))
