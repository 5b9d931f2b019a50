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
KINETICS_KEYS = ["test.top1", "test.top5", "test.top1_ci.low", "baselines.frame_model.top1",
                 "ablation.dilation.random", "ablation.dilation.fixed",
                 "ablation.dilation.difference_ci.high", "diagnosis.variance",
                 "diagnosis.dev_overfitting"]
QUORA_KEYS = ["test.accuracy", "test.accuracy_ci.low", "test.f1", "test.roc_auc",
              "diagnosis.avoidable_bias", "diagnosis.variance", "diagnosis.data_mismatch",
              "baselines.majority.accuracy", "baselines.logistic.accuracy",
              "baselines.logistic.accuracy_ci.low", "baselines.logistic.roc_auc",
              "verdict.beats_strongest_baseline"]
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


@pytest.mark.parametrize("name", ["crypto", "quora", "kinetics"])
def test_every_metrics_file_has_baselines_a_verdict_and_the_notes_numbers(repo, name):
    from tasks.evaluate import metric_value
    from tasks.pipeline import declaration

    repo_path, _, _, _ = repo
    spec = declaration(name)
    metrics = json.loads((repo_path / spec.metrics_file).read_text())
    verdict = metrics["verdict"]
    metric = spec.headline.split(".")[-1]
    assert verdict["metric"] == metric and set(verdict["beats"]) == set(metrics["baselines"])
    strongest = max(row[metric] for row in metrics["baselines"].values())
    assert verdict["strongest_value"] == strongest
    low = metric_value(metrics, f"{spec.headline}_ci.low")
    assert verdict["beats_strongest_baseline"] == (low > strongest)
    for key in spec.baselines:
        assert key.startswith("baselines.") and metric_value(metrics, key) >= 0
    rows = metrics["references"]
    assert [r["label"] for r in rows] == [ref.label for ref in spec.references]
    for row, ref in zip(rows, spec.references, strict=True):
        assert row["theirs"] == ref.value and row["measured_on"] == ref.measured_on
        if row["ours"] is not None:
            assert row["ours"] == metric_value(metrics, ref.ours)
    assert any(r["ours"] is not None for r in rows)


def test_the_report_site_reads_clean_in_a_real_browser(repo, tmp_path):
    """Every page opens headless with no failed request and no console error; every marked
    number equals the metrics file; screenshots are not blank; a narrow window scrolls no
    page sideways."""
    from selenium.webdriver.common.by import By

    from tasks.evaluate import metric_value
    from tasks.pipeline import declarations
    from tests.flows.browser import chrome, console_errors, failed_requests, screenshot_is_blank

    path, _, _, _ = repo
    site = path / "reports/site"
    specs = {spec.name: spec for spec in declarations()}
    metrics = {name: json.loads((path / spec.metrics_file).read_text())
               for name, spec in specs.items()}
    browser = chrome()
    try:
        for page in ["index", *specs]:
            browser.get((site / f"{page}.html").as_uri())
            assert browser.title.endswith("ReproLab")
            assert not console_errors(browser) and not failed_requests(browser), page
            checked = 0
            for pipeline in specs if page == "index" else [page]:
                scope = (browser.find_element(By.CSS_SELECTOR, f'[data-pipeline="{pipeline}"]')
                         if page == "index" else browser)
                marks = scope.find_elements(By.CSS_SELECTOR, "[data-metric]")
                keys = [m.get_attribute("data-metric") for m in marks]
                assert specs[pipeline].headline in keys, (page, pipeline)
                for mark, key in zip(marks, keys, strict=True):
                    raw = mark.get_attribute("data-value")
                    value = float(raw)
                    assert value == metric_value(metrics[pipeline], key), (page, key)
                    shown = f"{value:.3f}" if any(c in raw for c in ".en") else raw
                    assert mark.text == shown, (page, key)
                    checked += 1
            shot = tmp_path / f"{page}.png"
            browser.save_screenshot(str(shot))
            assert checked and not screenshot_is_blank(shot), page
        browser.set_window_size(420, 900)
        for page in ["index", *specs]:
            browser.get((site / f"{page}.html").as_uri())
            overflow = browser.execute_script(
                "return document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 1, (page, overflow)
    finally:
        browser.quit()
    html = "".join(p.read_text() for p in site.glob("*.html"))
    assert "http://" not in html and "https://" not in html


def test_dvc_knows_the_data_plots(repo):
    """Learning curves and the equity curve are DVC data plots (what `dvc plots diff` draws)."""
    repo_path, env, _, _ = repo
    shown = json.loads(run(["dvc", "plots", "show", "--json"], repo_path, env).stdout)["data"]
    assert {"crypto: learning curve", "crypto: backtest equity", "quora: learning curve",
            "kinetics: BesNet learning curve"} <= set(shown), set(shown)
    equity = shown["crypto: backtest equity"][0]["content"]["data"]["values"]
    assert {row["field"] for row in equity} == {"model", "buy_and_hold"}
    curve = shown["quora: learning curve"][0]["content"]["data"]["values"]
    assert {row["field"] for row in curve} == {"train_loss", "val_loss"} and len(curve) >= 4


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


# ---------------------------------------------------------------- what makes a stage stale
# (these run last: they edit the copy, restore it, and the experiment adds a model version)
def _stale(path, env) -> set[str]:
    return set(json.loads(run(["dvc", "status", "--json"], path, env).stdout))


@pytest.mark.parametrize(("rel", "expected"), [
    ("tasks/crypto/split.py", {"crypto_split", "crypto_train", "crypto_evaluate"}),
    ("models/siamese.py", {"quora_train"}),
    ("tasks/crypto/backtest.py", {"crypto_evaluate"}),
    ("tasks/video/splits.py", {"kinetics_split", "kinetics_train", "kinetics_baseline",
                               "kinetics_evaluate"}),
    # the file every path param names when it names none: its stages, and only those
    ("inputs/none", {"crypto_ingest", "quora_ingest", "quora_embed", "kinetics_download",
                     "kinetics_train", "kinetics_baseline"}),
])
def test_editing_a_module_or_an_input_file_makes_exactly_its_stages_stale(repo, rel, expected):
    path, env, _, _ = repo
    target = path / rel
    original = target.read_bytes()
    target.write_bytes(original + b"\n# edited\n")
    try:
        assert _stale(path, env) == expected
    finally:
        target.write_bytes(original)
    assert _stale(path, env) == set()


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("crypto.evaluate.fee_bps", 3.0, {"crypto_evaluate"}),
    ("crypto.label.horizon", 2, {"crypto_features", "crypto_split", "crypto_train"}),
    ("quora.split.dev_fraction", 0.15, {"quora_split"}),
    ("kinetics.dataset.train_dev_fraction", 0.1, {"kinetics_split"}),
])
def test_changing_a_param_makes_exactly_the_stages_that_read_it_stale(repo, key, value,
                                                                      expected):
    path, env, _, _ = repo
    params_file = path / "params.yaml"
    original = params_file.read_text()
    params = yaml.safe_load(original)
    node = params
    *parents, leaf = key.split(".")
    for part in parents:
        node = node[part]
    node[leaf] = value
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        assert _stale(path, env) == expected
    finally:
        params_file.write_text(original)
    assert _stale(path, env) == set()


def test_a_stage_run_with_set_is_a_dvc_experiment_and_leaves_the_lock_true(repo):
    path, env, _, _ = repo
    proc = run(["python", "-m", "flows.crypto", "evaluate", "--set",
                "crypto.evaluate.fee_bps=5"], path, env)
    assert "Running stage 'crypto_evaluate'" in proc.stdout + proc.stderr
    assert "Running stage 'crypto_train'" not in proc.stdout + proc.stderr
    metrics = json.loads((path / "metrics/crypto.json").read_text())
    assert metrics["backtest"]["fee_bps"] == 5
    assert metrics["params"]["crypto.evaluate.fee_bps"] == 5
    assert metrics["params"]["crypto.label.horizon"] == 1  # recorded by train, as it ran
    assert yaml.safe_load((path / "params.yaml").read_text())["crypto"]["evaluate"][
        "fee_bps"] == 5
    # dvc.lock describes what is on disk; the site, which shows the old metrics, is stale
    assert _stale(path, env) == {"report"}
    shown = json.loads(run(["dvc", "exp", "show", "--json"], path, env).stdout)
    experiments = [exp for commit in shown for exp in (commit.get("experiments") or [])]
    assert experiments, "no experiment recorded"


def test_a_pipeline_run_shows_the_stages_dvc_ran_as_its_subflow_runs(repo, prefect_server):
    path, env, _, _ = repo
    params_file = path / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    params["crypto"]["evaluate"]["fee_bps"] = 7.0  # crypto_evaluate alone is stale
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    tag = f"test-{uuid.uuid4().hex}"
    run(["python", "-m", "flows.crypto", "pipeline"], path, {**env, "REPROLAB_RUN_TAGS": tag})

    [pipeline] = api_post(prefect_server, "/flow_runs/filter", {"flow_runs": {
        "tags": {"all_": [tag]}, "parent_task_run_id": {"is_null_": True}}})
    assert pipeline["state_type"] == "COMPLETED"
    flows = {f["id"]: f["name"] for f in api_post(prefect_server, "/flows/filter", {})}
    assert flows[pipeline["flow_id"]] == "crypto-pipeline"
    [stage] = api_post(prefect_server, "/flow_runs/filter", {"flow_runs": {
        "parent_flow_run_id": {"any_": [pipeline["id"]]}}})
    assert flows[stage["flow_id"]] == "crypto_evaluate" and tag in stage["tags"]
    tracker = httpx.get(f"{prefect_server}/task_runs/{stage['parent_task_run_id']}").json()
    assert tracker["flow_run_id"] == pipeline["id"] and tracker["state_type"] == "COMPLETED"
    [artifact] = api_post(prefect_server, "/artifacts/filter", {
        "artifacts": {"key": {"any_": ["crypto-stages"]},
                      "flow_run_id": {"any_": [pipeline["id"]]}}})
    assert f"| crypto_evaluate | ran | [{stage['name']}](" in artifact["data"]
    assert "| crypto_train | skipped |" in artifact["data"]
    assert _stale(path, env) == {"report"}  # the pipeline's stages are done; the site waits


def api_post(server: str, path: str, body: dict) -> list:
    response = httpx.post(f"{server}{path}", json=body)
    response.raise_for_status()
    return response.json()
