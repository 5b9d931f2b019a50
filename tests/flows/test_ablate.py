"""`python -m flows.ablate` for real: a crypto grid over 2 seeds in a temporary copy of the repo
(CPU-small params), each run in MLflow under the grid's parent run, the table with intervals
in reports/ablations/crypto.md; a rerun resumes instead of retraining; the workspace's own DVC
outputs and model registry are left alone."""

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import VENV_BIN
from tests.flows.repo_copy import repo_env, run, small_repo

pytestmark = pytest.mark.slow
GRID = """
name: smoke
pipeline: crypto
seeds: 2
metrics: [test.accuracy]
reference: relu
configs:
  relu: {set: {crypto.model.erase_relu: false, crypto.leak_audit.enabled: false}}
  erase_relu: {set: {crypto.model.erase_relu: true, crypto.leak_audit.enabled: false}}
"""


@pytest.fixture(scope="module")
def ablated(tmp_path_factory, prefect_server):
    repo = small_repo(tmp_path_factory.mktemp("ablate"))
    env = repo_env(prefect_server)
    cmd = [str(VENV_BIN / "python"), "-m", "flows.ablate", "crypto", "--grid", GRID]
    first = run(cmd, repo, env)
    return repo, env, cmd, first


def _client(repo) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{repo}/mlflow.db")


def _runs(repo):
    client = _client(repo)
    return client.search_runs([client.get_experiment_by_name("reprolab-crypto").experiment_id])


def test_the_table_has_every_config_with_intervals_and_the_paired_difference(ablated):
    repo, _, _, first = ablated
    text = (repo / "reports/ablations/crypto.md").read_text()
    assert "## smoke" in text and "2 seeds (42, 43)" in text
    assert "| relu | test.accuracy |" in text and "(reference)" in text
    row = next(line for line in text.splitlines() if line.startswith("| erase_relu |"))
    assert row.count("[") == 2 and ("includes 0" in row or "excludes 0" in row)
    assert text in first.stdout  # the command prints the table


def test_every_run_is_tagged_under_the_grids_parent_run(ablated):
    repo = ablated[0]
    runs = _runs(repo)
    [parent] = [r for r in runs if r.info.run_name == "ablation:smoke"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted((r.data.tags["ablation.config"], r.data.tags["ablation.seed"])
                  for r in children) == [("erase_relu", "42"), ("erase_relu", "43"),
                                         ("relu", "42"), ("relu", "43")]
    artifacts = {a.path for a in _client(repo).list_artifacts(parent.info.run_id)}
    assert artifacts == {"crypto.md", "crypto.json"}
    assert _client(repo).search_registered_models() == []
    # the parent carries the provenance every run has: git, lock, versions, its inputs
    tags = parent.data.tags
    assert tags["pipeline"] == "crypto" and len(tags["reprolab.git_commit"]) == 40
    assert tags["reprolab.lock_sha256"] != "unknown" and "reprolab.version.torch" in tags
    [params_input] = [k for k in tags if k.startswith("reprolab.input.")]
    assert params_input.endswith("params.yaml") and tags[params_input] != "unknown"
    assert not (repo / "data").exists() and not (repo / "metrics").exists()


def test_a_rerun_resumes_instead_of_retraining(ablated):
    repo, env, cmd, _ = ablated
    trained = sum(r.info.run_name == "crypto-train" for r in _runs(repo))
    run(cmd, repo, env)
    assert sum(r.info.run_name == "crypto-train" for r in _runs(repo)) == trained == 4
