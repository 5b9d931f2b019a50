"""MLflow helper: experiment artifact locations, credential redaction, flat metrics."""
from pathlib import Path

import mlflow

from tasks import tracking
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
