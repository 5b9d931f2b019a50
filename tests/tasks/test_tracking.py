"""MLflow helper: experiment artifact locations, credential redaction, flat metrics, provenance."""
import hashlib
import importlib.metadata
import os
import subprocess
import time
from pathlib import Path

import mlflow
import pytest
import yaml
from dvc.repo import Repo

from tasks import provenance, tracking
from tasks.config import CommonSettings


def test_artifact_location_is_a_local_dir_a_uri_or_the_servers_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert tracking.artifact_location("mlartifacts", "crypto") == (
        tmp_path / "mlartifacts" / "crypto").as_uri()
    assert tracking.artifact_location("s3://bucket/reprolab/", "quora") == (
        "s3://bucket/reprolab/quora")
    assert tracking.artifact_location(None, "kinetics") is None


def test_runs_land_in_the_pipelines_experiment_with_credentials_left_out(tmp_path):
    common = CommonSettings.model_validate({"mlflow": {
        "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
        "artifact_dir": str(tmp_path / "art")}})
    with tracking.run(common, "crypto", "train",
                      params={"lr": 0.1, "api_key": "SECRET", "exchange_secret": "S"}) as active:
        tracking.log_metrics({"test": {"accuracy": 0.5, "ci": [1, 2]}, "nan": float("nan")})
    got = mlflow.get_run(active.info.run_id)
    assert got.data.params == {"lr": "0.1"}
    assert got.data.metrics == {"test.accuracy": 0.5}
    experiment = mlflow.get_experiment(got.info.experiment_id)
    assert experiment.name == "reprolab-crypto"
    assert experiment.artifact_location == (Path(tmp_path) / "art" / "crypto").as_uri()


def sh(cwd: Path, *cmd: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True,
                          text=True).stdout


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A git + DVC repo with a lock file, a file input and a directory input, committed."""
    repo = tmp_path / "repo"
    (repo / "data" / "frames").mkdir(parents=True)
    (repo / "data" / "raw.csv").write_text("a,b\n1,2\n")
    (repo / "data" / "frames" / "0.txt").write_text("zero\n")
    (repo / "data" / "frames" / "1.txt").write_text("one\n")
    (repo / "pylock.toml").write_text('lock-version = "1.0"\n')
    (repo / "dvc.yaml").write_text(
        "stages:\n  use:\n    cmd: echo done > out.txt\n"
        "    deps: [data/raw.csv, data/frames]\n    outs: [out.txt]\n")
    sh(repo, "git", "init", "-q")
    Repo.init(str(repo)).close()
    (repo / ".dvc" / "config").write_text("[core]\n    analytics = false\n")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "init")
    monkeypatch.chdir(repo)
    monkeypatch.setattr(provenance, "PROJECT_ROOT", repo)
    yield repo
    tracking.set_stage_inputs([])


def test_input_hashes_equal_what_dvc_repro_writes_to_dvc_lock(project):
    with Repo(str(project)) as repo:
        repo.reproduce()
    locked = {d["path"]: d["md5"] for d in
              yaml.safe_load((project / "dvc.lock").read_text())["stages"]["use"]["deps"]}
    assert locked["data/frames"].endswith(".dir")
    assert provenance.dvc_hash("data/raw.csv") == locked["data/raw.csv"]
    assert provenance.dvc_hash("data/frames") == locked["data/frames"]


def test_input_hashes_outside_a_dvc_repo_and_of_a_missing_path(tmp_path, project):
    outside = tmp_path / "plain.csv"
    outside.write_text("a,b\n1,2\n")
    assert provenance.dvc_hash(outside) == provenance.dvc_hash("data/raw.csv")
    assert provenance.input_tags(["nope.csv"]) == {"reprolab.input.nope.csv": "unknown"}


def test_git_tags_follow_the_commit_and_the_dirty_flag_and_say_unknown_outside_git(
        tmp_path, project):
    head = sh(project, "git", "rev-parse", "HEAD").strip()
    assert provenance.git_commit(project) == head
    assert provenance.git_dirty(project) == "false"
    (project / "untracked.txt").write_text("ignored\n")
    assert provenance.git_dirty(project) == "false"
    (project / "dvc.yaml").write_text((project / "dvc.yaml").read_text() + "# edit\n")
    assert provenance.git_dirty(project) == "true"
    elsewhere = tmp_path / "not-git"
    elsewhere.mkdir()
    assert provenance.git_commit(elsewhere) == "unknown"
    assert provenance.git_dirty(elsewhere) == "unknown"


def test_every_new_run_is_tagged_with_its_provenance(tmp_path, project):
    common = CommonSettings.model_validate({"mlflow": {
        "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
        "artifact_dir": str(tmp_path / "art")}})
    tracking.set_stage_inputs(["data/raw.csv", "data/frames"])
    with tracking.run(common, "crypto", "train") as active:
        pass
    tags = mlflow.get_run(active.info.run_id).data.tags
    assert tags["reprolab.git_commit"] == sh(project, "git", "rev-parse", "HEAD").strip()
    assert tags["reprolab.git_dirty"] == "false"
    lock_sha = hashlib.sha256((project / "pylock.toml").read_bytes()).hexdigest()
    assert tags["reprolab.lock_sha256"] == lock_sha
    assert tags["reprolab.input.data/raw.csv"] == provenance.dvc_hash("data/raw.csv")
    assert tags["reprolab.input.data/frames"].endswith(".dir")
    assert tags["reprolab.version.torch"] == importlib.metadata.version("torch")
    assert {f"reprolab.version.{p}" for p in provenance.KEY_PACKAGES} <= set(tags)


def test_a_later_stage_finds_the_run_that_wrote_a_summary_by_its_content(tmp_path):
    common = CommonSettings.model_validate({"mlflow": {
        "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
        "artifact_dir": str(tmp_path / "art")}})
    summary = tmp_path / "train.json"
    assert tracking.run_that_wrote(common, "crypto", tmp_path / "mlflow.db") is None
    runs = []
    for text in ('{"loss": 1}\n', '{"loss": 2}\n', '{"loss": 1}\n'):
        with tracking.run(common, "crypto", "train") as active:
            summary.write_text(text)
            tracking.tag_summary(summary)
        runs.append(active.info.run_id)
    # same content (an unchanged retrain): the newest run that wrote it
    assert tracking.run_that_wrote(common, "crypto", summary) == runs[2]
    summary.write_text('{"loss": 2}\n')
    assert tracking.run_that_wrote(common, "crypto", summary) == runs[1]
    summary.write_text('{"loss": 3}\n')
    assert tracking.run_that_wrote(common, "crypto", summary) is None



@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """One SQLite store for the tests below (a new one costs seconds of migrations); each
    test keeps to its own experiments through its own prefix."""
    return tmp_path_factory.mktemp("store")


def _common(store: Path, prefix: str, **mlflow_settings) -> CommonSettings:
    return CommonSettings.model_validate({"mlflow": {
        "tracking_uri": f"sqlite:///{store}/mlflow.db", "artifact_dir": str(store / "art"),
        "experiment_prefix": prefix, **mlflow_settings}})


def test_experiments_are_model_training_ones_old_ones_marked_and_a_chosen_kind_kept(store):
    common = _common(store, "kinds")
    tracking.configure(common)
    mlflow.create_experiment("kinds-quora")  # made before the project set a kind
    mlflow.create_experiment("kinds-kinetics",
                             tags={tracking.EXPERIMENT_KIND_TAG: "genai_development"})
    for pipeline in ("crypto", "quora", "kinetics"):
        with tracking.run(common, pipeline, "train"):
            pass
    kinds = {p: mlflow.get_experiment_by_name(f"kinds-{p}").tags.get(
        tracking.EXPERIMENT_KIND_TAG) for p in ("crypto", "quora", "kinetics")}
    assert kinds == {"crypto": "custom_model_development", "quora": "custom_model_development",
                     "kinetics": "genai_development"}


def test_the_training_kind_is_the_one_the_installed_mlflow_ui_files_as_machine_learning():
    bundle = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"
    scripts = list(bundle.glob("main.*.js"))
    if not scripts:
        pytest.skip("this mlflow has no UI bundle (mlflow-skinny)")
    text = "".join(p.read_text(errors="replace") for p in scripts)
    assert f'CUSTOM_MODEL_DEVELOPMENT="{tracking.TRAINING_KIND}"' in text


@pytest.mark.parametrize("switched_on", [True, False])
def test_system_metrics_are_sampled_into_a_run_only_when_switched_on(store, switched_on):
    common = _common(store, f"metrics-{switched_on}", system_metrics=switched_on)
    mlflow.set_system_metrics_sampling_interval(0.5)
    mlflow.set_system_metrics_samples_before_logging(1)
    try:
        with tracking.run(common, "crypto", "train") as active:
            time.sleep(2)
    finally:
        mlflow.set_system_metrics_sampling_interval(None)
        mlflow.set_system_metrics_samples_before_logging(None)
    metrics = mlflow.get_run(active.info.run_id).data.metrics
    sampled = {k for k in metrics if k.startswith("system/")}
    assert ({"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"}
            <= sampled) is switched_on
    assert bool(sampled) is switched_on


def test_a_models_requirements_pin_the_installed_packages_its_shipped_code_imports():
    pins = tracking.requirements(["tasks.crypto.serving"])
    names = {p.split("==")[0].lower() for p in pins}
    assert {"torch", "pandas", "numpy", "scikit-learn", "pydantic", "pyyaml"} <= names
    assert f"torch=={importlib.metadata.version('torch').split('+')[0]}" in pins  # no +cpu
    assert not names & {"mlflow", "tasks", "models", "json", "gensim"}  # MLflow pins itself;
    # first-party, standard library and what crypto's code never imports are left out
