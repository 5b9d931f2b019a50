"""The operator's path for real: a `prefect server` (the session's, on 127.0.0.1), `make deploy`
from prefect.yaml in a temporary copy of the repo, `make worker` (a process worker), and
`prefect deployment run 'nightly-retrain/nightly'`, waited on through the server's API.

A fault: a Quora night whose pretrained vectors file is unreadable fails naming the stage; once
the file is fixed the next night resumes at that stage, completes and promotes the first
champion. (Nights that retrain on new data and nights without any: the README walk,
tests/flows/test_readme.py, which runs the deployments from a plain shell.)"""
import json
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pytest
import yaml

from tasks.threads import BUDGET_VAR, share
from tests.conftest import VENV_BIN
from tests.flows.repo_copy import repo_env, run, small_repo

pytestmark = pytest.mark.slow
VENV = VENV_BIN.parent
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
VECTORS = "vectors.txt"
WORDS = ("what how why is are the a to of in do i you can best way my and for it does learn "
         "get make good difference between people life most which".split())


def make(target: str, repo: Path, env: dict) -> subprocess.CompletedProcess:
    # the venv is the test's own: make must find it installed from the copy's very lock and
    # project (`make -q venv` says so), never rebuild it from the copy
    run(["make", "-q", "venv", f"VENV={VENV}"], repo, env)
    return run(["make", target, f"VENV={VENV}"], repo, env)


def write_vectors(path: Path, readable: bool) -> None:
    if not readable:
        path.write_bytes(b"\x00\xff not vectors \x81\n" * 3)
        return
    rng = np.random.default_rng(0)
    path.write_text("".join(f"{w} {' '.join(f'{v:.4f}' for v in rng.normal(size=8))}\n"
                            for w in WORDS))


@pytest.fixture(scope="module")
def deployed(tmp_path_factory, prefect_server):
    fault = {"quora": {"embed": {"vectors": "pretrained", "pretrained_path": VECTORS,
                                 "pretrained_format": "glove"}}}
    repo = small_repo(tmp_path_factory.mktemp("deployed"), fault)
    write_vectors(repo / VECTORS, readable=False)
    env = repo_env(prefect_server, REPROLAB_POOL=f"test-{uuid.uuid4().hex[:8]}",
                   REPROLAB_TIMEZONE="Europe/Paris", PREFECT_HOME=str(repo / ".prefect"),
                   PREFECT_WORKER_QUERY_SECONDS="2", PREFECT_WORKER_PREFETCH_SECONDS="5")
    env.pop("REPROLAB_HOME", None)  # make deploy sets it to the checkout it runs in
    make("deploy", repo, env)
    make("worker", repo, env)
    try:
        yield repo, env
    finally:
        make("stop", repo, env)


def api(server: str, path: str, body: dict | None = None) -> dict | list:
    response = httpx.post(f"{server}{path}", json=body or {}) if body is not None else \
        httpx.get(f"{server}{path}")
    response.raise_for_status()
    return response.json()


def deployment_run(repo: Path, env: dict, params: dict) -> str:
    done = run([str(VENV_BIN / "prefect"), "deployment", "run", "nightly-retrain/nightly",
                "--params", json.dumps(params)], repo, env)
    return next(line.split()[-1] for line in done.stdout.splitlines() if "UUID" in line)


def wait(server: str, run_id: str, repo: Path, timeout: float = 900) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        flow_run = api(server, f"/flow_runs/{run_id}")
        if flow_run["state_type"] in TERMINAL:
            return flow_run
        time.sleep(2)
    log = (repo / ".prefect" / "run" / "worker.log").read_text()[-3000:]
    raise TimeoutError(f"flow run {run_id} not finished after {timeout} s; worker log:\n{log}")


def night(repo: Path, env: dict, server: str, pipelines: list[str]) -> tuple[dict, dict]:
    flow_run = wait(server, deployment_run(repo, env, {"pipelines": pipelines}), repo)
    summary = json.loads((repo / "reports/nightly/summary.json").read_text())
    return flow_run, summary


def registry(repo: Path) -> mlflow.tracking.MlflowClient:
    return mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{repo}/mlflow.db")


def dvc_clean(repo: Path, env: dict, stage: str) -> bool:
    status = run([str(VENV_BIN / "dvc"), "status", "--json", "--with-deps", stage], repo, env)
    return json.loads(status.stdout) == {}


def test_deploy_creates_every_deployment_with_the_nightly_schedule(deployed, prefect_server):
    flows = {f["id"]: f["name"] for f in api(prefect_server, "/flows/filter", {})}
    deployments = {f"{flows[d['flow_id']]}/{d['name']}": d
                   for d in api(prefect_server, "/deployments/filter", {})}
    assert {"crypto-pipeline/default", "quora-pipeline/default", "kinetics-pipeline/default",
            "ablate/default", "nightly-retrain/nightly"} <= set(deployments)
    assert deployments["ablate/default"]["parameters"] == {
        "pipeline": "crypto", "grid": "grids/crypto-erase-relu.yaml"}
    nightly = deployments["nightly-retrain/nightly"]
    schedule = nightly["schedules"][0]["schedule"]
    assert schedule["cron"] == "0 2 * * *" and schedule["timezone"] == "Europe/Paris"
    assert nightly["work_pool_name"] == deployed[1]["REPROLAB_POOL"]
    assert nightly["pull_steps"][0]["prefect.deployments.steps.set_working_directory"] == {
        "directory": str(deployed[0])}


def test_the_worker_runs_two_flow_runs_at_once_with_half_the_cores_each(deployed):
    repo, _ = deployed
    pid = (repo / ".prefect" / "run" / "worker.pid").read_text().strip()
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    environ = dict(item.split("=", 1) for item in
                   Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0") if "=" in item)
    assert "worker" in argv and argv[argv.index("--limit") + 1] == "2"  # WORKER_FLOWS
    # a process worker starts each flow run with its own environment
    assert environ[BUDGET_VAR] == str(share(2))


def test_a_failing_stage_fails_the_night_naming_it_and_the_next_night_resumes_there(
        deployed, prefect_server):
    repo, env = deployed
    failed, summary = night(repo, env, prefect_server, ["quora"])
    assert failed["state_type"] == "FAILED"
    assert "quora_embed" in failed["state"]["message"], failed["state"]["message"]
    assert "quora_embed" in summary["pipelines"][0]["error"]
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert "quora_clean" in lock and "quora_embed" not in lock  # done stages are recorded

    write_vectors(repo / VECTORS, readable=True)
    resumed, summary = night(repo, env, prefect_server, ["quora"])
    assert resumed["state_type"] == "COMPLETED", resumed["state"]
    row = summary["pipelines"][0]
    assert row["stages_run"][0] == "quora_embed" and "quora_clean" not in row["stages_run"]
    verdict = row["verdict"]  # the first version, judged: the champion if it beats logistic
    assert verdict["challenger"] is not None and verdict["baseline"] == "logistic"
    assert verdict["promoted"] == (verdict["new"] > verdict["baseline_value"])
    assert bool(registry(repo).search_model_versions(
        "name='quora-duplicates'")[0].aliases) == verdict["promoted"]
    assert dvc_clean(repo, env, "quora_evaluate")

