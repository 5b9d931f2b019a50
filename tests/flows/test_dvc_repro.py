"""Every pipeline end to end in the README's fresh clone (tests/flows/conftest.py: `make demo`
from a plain shell on CPU-small params, each stage a real Prefect flow reporting to a real
Prefect server), then what DVC must get right: nothing stale after it, exactly the right stages
stale after an edit, a failure that loses nothing, a forced rerun that changes nothing. Each
test leaves the clone as it found it: the README walk (test_readme.py) goes on from there."""
import json
from contextlib import contextmanager
from pathlib import Path

import httpx
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from tasks.pipeline import declaration, declarations
from tests.conftest import ROOT, dotted

pytestmark = pytest.mark.slow
WIDTH = 200  # what DVC's own views must fit: a terminal, not a scroll


@pytest.fixture(scope="module")
def repo(readme_clone, prefect_server):
    """The clone; its stage runs here report to the session's Prefect server (a newcomer's
    plain shell would start an ephemeral server in every stage process: slower, the same)."""
    readme_clone.shell.env["PREFECT_API_URL"] = prefect_server
    yield readme_clone
    del readme_clone.shell.env["PREFECT_API_URL"]


def dvc(repo, *args: str, check: bool = True):
    return repo.shell.run(" ".join([".venv/bin/dvc", *args]), check=check)


def stale(repo) -> set[str]:
    return set(json.loads(dvc(repo, "status", "--json").stdout))


def outputs(path: Path) -> dict[str, bytes]:
    """Every file DVC tracks as an output, by path: what a failure must not lose."""
    lock = yaml.safe_load((path / "dvc.lock").read_text())["stages"]
    found = {}
    for stage in lock.values():
        for out in stage.get("outs", []):
            target = path / out["path"]
            files = sorted(target.rglob("*")) if target.is_dir() else [target]
            found.update({str(f.relative_to(path)): f.read_bytes() for f in files if f.is_file()})
    return found


@contextmanager
def left_as_found(repo):
    """params.yaml, dvc.lock and every output as they were before the block (DVC's cache
    holds each version), so the next test starts from the demo's results."""
    kept = {name: (repo.path / name).read_bytes() for name in ("params.yaml", "dvc.lock")}
    try:
        yield
    finally:
        for name, data in kept.items():
            (repo.path / name).write_bytes(data)
        dvc(repo, "checkout", "--force", "--quiet")
    assert stale(repo) == set()


def client(repo) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{repo.path}/mlflow.db")


def runs(repo, pipeline: str) -> list:
    mlflow = client(repo)
    return mlflow.search_runs([mlflow.get_experiment_by_name(f"reprolab-{pipeline}")
                               .experiment_id])


# ---------------------------------------------------------------- the demo, as it ran
def test_every_stage_ran_once_as_a_flow_of_the_demo(repo, prefect_server):
    stages = list(yaml.safe_load((repo.path / "dvc.yaml").read_text())["stages"])
    found = httpx.post(f"{prefect_server}/flow_runs/filter",
                       json={"flow_runs": {"tags": {"all_": [repo.tag]}}}).json()
    flows = {f["id"]: f["name"] for f in httpx.post(f"{prefect_server}/flows/filter",
                                                    json={}).json()}
    states: dict[str, list[str]] = {}
    for r in found:
        states.setdefault(flows[r["flow_id"]], []).append(r["state_type"])
    # exactly one completed flow run per stage, from this demo (not from other tests' runs)
    assert {s: states.get(s) for s in stages} == {s: ["COMPLETED"] for s in stages}, states


def test_a_second_repro_reproduces_nothing_and_status_is_clean(repo):
    second = dvc(repo, "repro")
    assert "Running stage" not in second.stdout and "up to date" in second.stdout
    assert stale(repo) == set()


def test_dvc_metrics_show_is_a_table_a_terminal_shows(repo):
    """metrics/<pipeline>.json hold the scalars to compare, under names the pipelines share."""
    shown = dvc(repo, "metrics", "show").stdout
    assert max(len(line) for line in shown.splitlines()) <= WIDTH, shown
    data = json.loads(dvc(repo, "metrics", "show", "--json").stdout)[""]["data"]
    assert set(data) == {spec.metrics_file for spec in declarations()}
    for spec in declarations():
        summary = data[spec.metrics_file]["data"]
        results = json.loads((repo.path / spec.results_file).read_text())
        metric = spec.headline.rpartition(".")[2]
        assert summary[f"{spec.name}_{metric}"] == results["test"][metric]
        assert set(summary) >= {"ci_low", "ci_high", "skill", *results["baselines"]}
        assert summary["skill"] == results["verdict"]["beats_strongest_baseline"]


@pytest.mark.parametrize("name", ["crypto", "quora", "kinetics"])
def test_every_results_file_has_baselines_a_verdict_and_the_notes_numbers(repo, name):
    from tasks.evaluate import metric_value

    spec = declaration(name)
    metrics = json.loads((repo.path / spec.results_file).read_text())
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
    number equals the results file; screenshots are not blank; a narrow window scrolls no
    page sideways."""
    from selenium.webdriver.common.by import By

    from tasks.evaluate import metric_value
    from tests.flows.browser import chrome, console_errors, failed_requests, screenshot_is_blank

    site = repo.path / "reports/site"
    specs = {spec.name: spec for spec in declarations()}
    metrics = {name: json.loads((repo.path / spec.results_file).read_text())
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
    shown = json.loads(dvc(repo, "plots", "show", "--json").stdout)["data"]
    assert {"crypto: learning curve", "crypto: backtest equity", "quora: learning curve",
            "kinetics: BesNet learning curve"} <= set(shown), set(shown)
    equity = shown["crypto: backtest equity"][0]["content"]["data"]["values"]
    assert {row["field"] for row in equity} == {"model", "buy_and_hold"}
    curve = shown["quora: learning curve"][0]["content"]["data"]["values"]
    assert {row["field"] for row in curve} == {"train_loss", "val_loss"} and len(curve) >= 4


def test_mlflow_sqlite_store_holds_the_runs_and_models(repo):
    crypto = runs(repo, "crypto")
    assert len(crypto) == 1 and "test.accuracy" in crypto[0].data.metrics
    mlflow = client(repo)
    assert len(mlflow.search_model_versions("name='crypto-next-move'")) == 1
    quora = runs(repo, "quora")
    parent = [r for r in quora if "mlflow.parentRunId" not in r.data.tags]
    assert len(parent) == 1 and "test.accuracy" in parent[0].data.metrics
    assert len(quora) - 1 == 4  # one nested run per configuration of the table
    assert len(mlflow.search_model_versions("name='quora-duplicates'")) == 1
    kinetics = runs(repo, "kinetics")
    names = sorted(r.info.run_name for r in kinetics)
    assert names == ["baseline", "besnet", "besnet_fixed", "kinetics_baseline", "kinetics_train"]
    besnet = next(r for r in kinetics if r.info.run_name == "besnet")
    assert "test.top1" in besnet.data.metrics and "val_loss" in besnet.data.metrics
    assert besnet.data.metrics["resumed_from_epoch"] == 0  # the run's facts: MLflow's
    assert len(mlflow.search_model_versions("name='kinetics-besnet'")) == 1


def test_a_stage_runs_input_tags_are_the_hashes_dvc_lock_records(repo):
    """Provenance that can be checked: every input of crypto_train, as its MLflow run tags it,
    has the md5 dvc.lock records for that dependency."""
    lock = yaml.safe_load((repo.path / "dvc.lock").read_text())["stages"]["crypto_train"]
    [train] = [r for r in runs(repo, "crypto") if r.info.run_name == "crypto-train"]
    tags = {k.removeprefix("reprolab.input."): v for k, v in train.data.tags.items()
            if k.startswith("reprolab.input.")}
    deps = {dep["path"]: dep["md5"] for dep in lock["deps"]}
    assert set(tags) == {"data/crypto/raw", "data/crypto/features.parquet", "data/crypto/splits"}
    assert tags == {path: deps[path] for path in tags}
    assert train.data.tags["reprolab.git_commit"] != "unknown"


def test_kinetics_index_lists_every_demo_clip(repo):
    index = pd.read_parquet(repo.path / "data/kinetics/index.parquet")
    assert len(index) == 6 * 3 and set(index["status"]) == {"ok"}
    assert (index["n_frames"] >= 6).all()
    for rel in index["path"]:
        assert any((repo.path / rel).glob("img_*.jpg"))


# params.yaml keys the demo's stages do not read, and who reads them instead (by key prefix)
READ_ELSEWHERE = {
    "nightly.": "the nightly flow (flows/nightly.py), around the stages it runs",
    "common.dask_address": "the data stages, under common.task_runner: dask only",
    "common.lock_wait": "the drivers' run lock (tasks/runlock.py), around dvc repro and nights",
    "crypto.live.": "crypto_ingest, with crypto.source: live",
    "crypto.file.": "crypto_ingest, with crypto.source: file (path is read always: a DVC dep)",
    "crypto.exchange": "crypto_ingest, for live and file candles",
    "crypto.drop_incomplete": "crypto_ingest, for live and file candles",
    "quora.live.": "quora_ingest, with quora.source: live",
    "quora.file.format": "quora_ingest, with quora.source: file",
    "quora.embed.pretrained_format": "quora_embed, with quora.embed.vectors: pretrained",
    "kinetics.subset.": "kinetics_download, on an official list (the demo renders its clips)",
    "kinetics.download.": "kinetics_download, with kinetics.source live, http or local",
}


def test_every_params_key_is_read_by_a_stage_of_the_demo(repo):
    """Recorded as the stages read them (ParamsView, REPROLAB_PARAMS_READ) during `make demo`:
    a key nothing reads is dead, whatever other code says a name like it. Logging or hashing a
    section is not reading it."""
    read = set()
    for line in repo.reads.read_text().splitlines():
        read.update(json.loads(line)["read"])
    leaves = list(dotted(yaml.safe_load((ROOT / "params.yaml").read_text())))
    unread = [key for key in leaves if not any(key == r or key.startswith(f"{r}.")
                                               for r in read)]
    assert [key for key in unread if not key.startswith(tuple(READ_ELSEWHERE))] == []
    for prefix in READ_ELSEWHERE:  # no allowance outlives the unread keys it explains
        assert any(key.startswith(prefix) for key in unread), prefix


# ---------------------------------------------------------------- what makes a stage stale
@pytest.mark.parametrize(("rel", "expected"), [
    ("tasks/crypto/split.py", {"crypto_split", "crypto_train"}),
    ("models/siamese.py", {"quora_train"}),
    ("tasks/crypto/backtest.py", {"crypto_evaluate"}),
    ("tasks/video/splits.py", {"kinetics_split", "kinetics_train", "kinetics_baseline",
                               "kinetics_evaluate"}),
    # run by path inside every logged model: the stages that log and register models
    ("tasks/pyfunc_entry.py", {"crypto_train", "crypto_evaluate", "quora_train",
                               "quora_evaluate", "kinetics_train", "kinetics_evaluate"}),
    # the file every path param names when it names none: its stages, and only those
    ("inputs/none", {"crypto_ingest", "quora_ingest", "quora_embed", "kinetics_download",
                     "kinetics_train", "kinetics_baseline"}),
])
def test_editing_a_module_or_an_input_file_makes_exactly_its_stages_stale(repo, rel, expected):
    target = repo.path / rel
    original = target.read_bytes()
    target.write_bytes(original + b"\n# edited\n")
    try:
        assert stale(repo) == expected
    finally:
        target.write_bytes(original)
    assert stale(repo) == set()


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("crypto.evaluate.fee_bps", 3.0, {"crypto_evaluate"}),
    ("crypto.label.horizon", 2, {"crypto_features", "crypto_split", "crypto_train"}),
    ("quora.split.dev_fraction", 0.15, {"quora_split"}),
    ("kinetics.dataset.train_dev_fraction", 0.1, {"kinetics_split"}),
])
def test_changing_a_param_makes_exactly_the_stages_that_read_it_stale(repo, key, value,
                                                                      expected):
    from tasks.params_text import with_overrides

    params_file = repo.path / "params.yaml"
    original = params_file.read_text()
    params_file.write_text(with_overrides(original, {key: value}))
    try:
        assert stale(repo) == expected
    finally:
        params_file.write_text(original)
    assert stale(repo) == set()


# ---------------------------------------------------------------- runs that change the clone
def test_a_stage_run_with_set_is_a_dvc_experiment_and_leaves_the_lock_true(repo):
    with left_as_found(repo):
        before = (repo.path / "params.yaml").read_text()
        proc = repo.shell.run(".venv/bin/python -m flows.crypto evaluate --set "
                              "crypto.evaluate.fee_bps=5")
        assert "Running stage 'crypto_evaluate'" in proc.stdout + proc.stderr
        assert "Running stage 'crypto_train'" not in proc.stdout + proc.stderr
        results = json.loads((repo.path / "reports/crypto/results.json").read_text())
        assert results["backtest"]["fee_bps"] == 5
        assert results["params"]["crypto.evaluate.fee_bps"] == 5
        assert results["params"]["crypto.label.horizon"] == 1  # recorded by train, as it ran
        after = (repo.path / "params.yaml").read_text()
        assert [a for a, b in zip(before.splitlines(), after.splitlines(), strict=True)
                if a != b] == [next(line for line in before.splitlines()
                                    if line.strip().startswith("fee_bps:"))]
        # dvc.lock describes what is on disk; the site, which shows the old metrics, is stale
        assert stale(repo) == {"report"}
        shown = json.loads(dvc(repo, "exp", "show", "--json").stdout)
        assert [exp for commit in shown for exp in (commit.get("experiments") or [])]


def test_a_failed_run_with_set_leaves_params_lock_and_outputs_as_they_were(repo):
    """The override runs ingest and features, then the split fails: everything is put back,
    byte for byte, and the error names the stage and its own error line."""
    path = repo.path
    kept = {name: (path / name).read_bytes() for name in ("params.yaml", "dvc.lock")}
    before = outputs(path)
    proc = repo.shell.run(".venv/bin/reprolab run crypto --set crypto.label.horizon=3900",
                          check=False)
    assert proc.returncode == 2
    [error] = [line for line in proc.stderr.splitlines()
               if line.startswith("error: crypto pipeline")]
    assert error.startswith("error: crypto pipeline: stage 'crypto_split' failed: ")
    assert "too few" in error  # the split stage's own words, not only DVC's exit code
    assert {name: (path / name).read_bytes() for name in kept} == kept
    assert outputs(path) == before
    assert stale(repo) == set()


def test_a_failed_stage_puts_its_outputs_back_and_status_says_what_is_stale(repo):
    """`dvc repro` typed by hand: DVC deletes a stage's outputs before running it; the stage
    that fails puts them back (the site keeps its last good version) and only the changed
    stage is stale."""
    path = repo.path
    results = path / "reports/quora/results.json"
    kept = results.read_bytes()
    site = {p.name: p.read_bytes() for p in (path / "reports/site").iterdir()}
    with left_as_found(repo):
        results.write_text("{ not json")  # the report stage reads it and fails
        proc = dvc(repo, "repro", "--single-item", "report", check=False)
        assert proc.returncode != 0 and "failed to reproduce 'report'" in proc.stderr
        assert "reports/quora/results.json" in proc.stderr  # the stage's own error line
        assert {p.name: p.read_bytes() for p in (path / "reports/site").iterdir()} == site
        assert stale(repo) == {"quora_evaluate", "report"}
        results.write_bytes(kept)
        assert stale(repo) == set()


def test_a_forced_rerun_of_unchanged_stages_changes_no_output(repo):
    """Same inputs, same bytes: forcing every Kinetics stage and the site (the crypto and
    Quora stages: tests/flows/test_determinism.py) leaves `dvc status` clean."""
    kinetics = [stage.name for stage in declaration("kinetics").stages]
    dvc(repo, "repro", "--force", "--single-item", *kinetics, "report")
    assert stale(repo) == set()


def test_a_pipeline_run_shows_the_stages_dvc_ran_as_its_subflow_runs(repo, prefect_server):
    import uuid

    from tasks.params_text import with_overrides

    tag = f"test-{uuid.uuid4().hex}"
    with left_as_found(repo):
        params_file = repo.path / "params.yaml"
        params_file.write_text(with_overrides(params_file.read_text(),
                                              {"crypto.evaluate.fee_bps": 7.0}))
        repo.shell.run(".venv/bin/python -m flows.crypto pipeline", REPROLAB_RUN_TAGS=tag)
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
        assert stale(repo) == {"report"}  # the pipeline's stages are done; the site waits


def api_post(server: str, path: str, body: dict) -> list:
    response = httpx.post(f"{server}{path}", json=body)
    response.raise_for_status()
    return response.json()
