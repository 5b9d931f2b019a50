"""Data on S3-compatible storage (moto's S3 server on 127.0.0.1): the DVC remote one command
configures, MLflow's artifacts on a bucket, and credentials that reach no output, log, file,
bucket object or MLflow run."""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from flows.nightly import push  # imported at collection: Prefect sets up logging before caplog
from tasks import objectstore, tracking
from tasks.config import CommonSettings
from tests.conftest import ROOT, send_prefect_logs

VENV_BIN = Path(sys.executable).parent
GIT = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
       "GIT_COMMITTER_EMAIL": "t@t"}


def clean_env(bucket=None, **extra: str) -> dict[str, str]:
    """This process's environment without any AWS_* variable, plus the bucket's (credentials,
    endpoint) when given; `python -m tasks.*` importable from any folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({**GIT, "PYTHONPATH": str(ROOT), "DVC_NO_ANALYTICS": "true"})
    return {**env, **(bucket.env if bucket is not None else {}), **extra}


def sh(cwd: Path, env: dict[str, str], *cmd: str) -> str:
    """Run a command; its stdout and stderr together (a failure shows them)."""
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=180)
    out = done.stdout + done.stderr
    assert done.returncode == 0, f"{cmd} failed ({done.returncode}):\n{out}"
    return out


@pytest.fixture
def repo(tmp_path) -> Path:
    """A fresh git + DVC checkout with no remote."""
    path = tmp_path / "repo"
    path.mkdir()
    env = clean_env()
    sh(path, env, "git", "init", "-q")
    sh(path, env, str(VENV_BIN / "dvc"), "init", "-q")
    sh(path, env, str(VENV_BIN / "dvc"), "config", "core.analytics", "false")
    return path


def configure_command(bucket, *extra: str) -> list[str]:
    """The documented command (README, tasks/objectstore.py)."""
    return [sys.executable, "-m", "tasks.objectstore", "remote", bucket.url("reprolab"),
            "--endpoint-url", bucket.endpoint_url, "--default", *extra]


def round_trip(repo: Path, bucket, env: dict[str, str], verbose: bool = False) -> str:
    """Configure the remote, `dvc add` a file, push it, delete it and the cache, pull it
    back: byte for byte the same. Returns everything the commands printed."""
    dvc = [str(VENV_BIN / "dvc")]
    flag = ["-v"] if verbose else []
    out = [sh(repo, env, *configure_command(bucket))]
    data = repo / "data" / "sample.bin"
    data.parent.mkdir(exist_ok=True)
    original = os.urandom(64 * 1024) + b"reprolab sample\n"
    data.write_bytes(original)
    out.append(sh(repo, env, *dvc, "add", *flag, "data/sample.bin"))
    out.append(sh(repo, env, "git", "add", "-A"))
    out.append(sh(repo, env, "git", "commit", "-q", "-m", "sample"))
    out.append(sh(repo, env, *dvc, "push", *flag))
    shutil.rmtree(repo / ".dvc" / "cache")
    data.unlink()
    out.append(sh(repo, env, *dvc, "pull", *flag))
    assert data.read_bytes() == original
    return "\n".join(out)


def test_one_command_configures_the_remote_and_data_round_trips(repo, s3_bucket):
    out = round_trip(repo, s3_bucket, clean_env(s3_bucket))

    assert f"DVC remote 's3' (default): {s3_bucket.url('reprolab')}" in out
    assert "bucket reachable" in out
    assert any(key.startswith("reprolab/files/md5/") for key in s3_bucket.keys("reprolab/"))
    config = (repo / ".dvc" / "config").read_text()
    assert "remote = s3" in config and f"url = {s3_bucket.url('reprolab')}" in config
    assert f"endpointurl = {s3_bucket.endpoint_url}" in config
    assert "access_key" not in config and "secret" not in config
    assert not (repo / ".dvc" / "config.local").exists()


def test_missing_credentials_are_named_and_nothing_is_configured(repo, s3_bucket, monkeypatch,
                                                                 capsys):
    monkeypatch.chdir(repo)
    for var in objectstore.CREDENTIAL_VARS:
        monkeypatch.delenv(var, raising=False)
    config_before = (repo / ".dvc" / "config").read_text()
    argv = configure_command(s3_bucket)[3:]

    assert objectstore.main(argv) == 1
    err = capsys.readouterr().err
    assert "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set" in err
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_bucket.env["AWS_ACCESS_KEY_ID"])
    assert objectstore.main(argv) == 1
    err = capsys.readouterr().err
    assert "no S3 credentials: AWS_SECRET_ACCESS_KEY is not set" in err
    assert s3_bucket.env["AWS_ACCESS_KEY_ID"] not in err
    assert (repo / ".dvc" / "config").read_text() == config_before

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_bucket.env["AWS_SECRET_ACCESS_KEY"])
    missing = ["remote", f"s3://{s3_bucket.name}-missing/x", "--endpoint-url",
               s3_bucket.endpoint_url]
    assert objectstore.main(missing) == 1
    assert f"bucket '{s3_bucket.name}-missing' does not exist at" in capsys.readouterr().err
    assert (repo / ".dvc" / "config").read_text() == config_before

    for var in objectstore.CREDENTIAL_VARS:  # --no-check: configured, for keys given later
        monkeypatch.delenv(var, raising=False)
    assert objectstore.main([*argv, "--no-check"]) == 0
    assert "bucket not checked" in capsys.readouterr().out
    assert f"url = {s3_bucket.url('reprolab')}" in (repo / ".dvc" / "config").read_text()
    monkeypatch.chdir(repo.parent)
    assert objectstore.main([*argv, "--no-check"]) == 1
    assert "not in a DVC checkout" in capsys.readouterr().err


def test_a_subprocess_without_credentials_fails_with_the_variables_named(repo, s3_bucket):
    done = subprocess.run(configure_command(s3_bucket), cwd=repo, env=clean_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set" in done.stderr


def test_mlflow_artifacts_land_in_the_bucket(tmp_path, s3_bucket, monkeypatch):
    for var in objectstore.CREDENTIAL_VARS:
        monkeypatch.delenv(var, raising=False)
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(key, s3_bucket.env[key])
    env = objectstore.mlflow_s3_env(s3_bucket.endpoint_url)
    assert set(env) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
                        "MLFLOW_S3_ENDPOINT_URL"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.create_experiment("objectstore",
                                          artifact_location=s3_bucket.url("mlflow/objectstore"))
    run = client.create_run(experiment)
    report = tmp_path / "report.txt"
    report.write_text("accuracy 0.9\n")
    client.log_artifact(run.info.run_id, str(report))
    client.set_terminated(run.info.run_id)

    key = f"mlflow/objectstore/{run.info.run_id}/artifacts/report.txt"
    assert key in s3_bucket.keys("mlflow/")
    assert s3_bucket.read(key) == b"accuracy 0.9\n"
    assert [f.path for f in client.list_artifacts(run.info.run_id)] == ["report.txt"]


def test_mlflow_s3_env_names_missing_credentials(monkeypatch):
    for var in objectstore.CREDENTIAL_VARS:
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(objectstore.ObjectStoreError, match="AWS_ACCESS_KEY_ID and "
                                                           "AWS_SECRET_ACCESS_KEY are not set"):
        objectstore.mlflow_s3_env("http://127.0.0.1:9")


def leaks(text: str, creds: dict[str, str]) -> list[str]:
    return [name for name, value in creds.items() if value in text]


def logs_but_botocore_debug(caplog) -> str:
    """The captured log without botocore's own DEBUG records: those (off unless a user turns
    the root logger to DEBUG, e.g. REPROLAB_LOG_LEVEL=DEBUG) show each request's Authorization
    header, which holds the access key id (never the secret)."""
    return "\n".join(r.getMessage() for r in caplog.records
                     if not (r.name.startswith("botocore") and r.levelno < logging.INFO))


def secret_only(creds: dict[str, str]) -> dict[str, str]:
    return {"AWS_SECRET_ACCESS_KEY": creds["AWS_SECRET_ACCESS_KEY"]}


def file_leaks(root: Path, creds: dict[str, str]) -> dict[str, list[str]]:
    """Every file under `root` holding a credential (raw bytes: SQLite pages, git objects)."""
    found = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        hits = leaks(path.read_bytes().decode("latin-1"), creds)
        if hits:
            found[str(path)] = hits
    return found


def test_credentials_reach_no_output_log_file_object_or_mlflow_run(
        repo, s3_bucket, s3_credentials, tmp_path, monkeypatch, caplog, capfd):
    creds = s3_credentials
    caplog.set_level(logging.DEBUG)
    site_cache = tmp_path / "dvc-site-cache"  # DVC's per-machine state, searched as well
    env = clean_env(s3_bucket, DVC_SITE_CACHE_DIR=str(site_cache))
    outputs = [round_trip(repo, s3_bucket, env, verbose=True)]  # dvc -v: its debug log too

    # the nightly's own push (flows/nightly.py, `nightly.remote`), in this process
    monkeypatch.chdir(repo)
    for key, value in env.items():
        if key.startswith(("AWS_", "MLFLOW_S3", "DVC_")):
            monkeypatch.setenv(key, value)
    (repo / "data" / "second.txt").write_text("second\n")
    outputs.append(sh(repo, env, str(VENV_BIN / "dvc"), "add", "-v", "data/second.txt"))
    assert push.fn("s3") == 1

    # a project run whose artifacts go to the bucket, with a careless secret among its params
    common = CommonSettings.model_validate({"mlflow": {
        "tracking_uri": f"sqlite:///{repo}/mlflow.db", "artifact_dir": s3_bucket.url("mlflow")}})
    (repo / "notes.txt").write_text("artifact\n")
    with tracking.run(common, "crypto", "objectstore",
                      params={"lr": 0.1, "aws_secret_access_key": creds["AWS_SECRET_ACCESS_KEY"],
                              "storage.secret_access_key": creds["AWS_SECRET_ACCESS_KEY"]}
                      ) as active:
        mlflow.log_artifact(str(repo / "notes.txt"))
    run = mlflow.MlflowClient(common.mlflow.tracking_uri).get_run(active.info.run_id)
    assert run.data.params == {"lr": "0.1"}
    assert any(k.endswith("/artifacts/notes.txt") for k in s3_bucket.keys("mlflow/crypto/"))
    send_prefect_logs()

    out = capfd.readouterr()
    recorded = json.dumps({"params": run.data.params, "tags": run.data.tags,
                           "info": dict(run.info), "inputs": str(run.inputs)}, default=str)
    assert {"commands": leaks("\n".join(outputs), creds), "stdout": leaks(out.out, creds),
            "stderr": leaks(out.err, creds), "logs": leaks(logs_but_botocore_debug(caplog), creds),
            "botocore debug log": leaks(caplog.text, secret_only(creds)),
            "mlflow run": leaks(recorded, creds)} == {
        "commands": [], "stdout": [], "stderr": [], "logs": [], "botocore debug log": [],
        "mlflow run": []}
    assert "Preparing to transfer data" in "\n".join(outputs)  # the debug log was captured
    assert "dvc push -r s3: 1 files" in caplog.text
    # the checkout (.dvc/, .git/, mlflow.db), DVC's machine state, every object in the bucket
    assert file_leaks(repo, creds) == {} and file_leaks(site_cache, creds) == {}
    assert any(site_cache.rglob("*"))
    objects = s3_bucket.keys()
    assert len(objects) >= 3
    assert [k for k in objects if leaks(s3_bucket.read(k).decode("latin-1"), creds)] == []


def test_run_params_drop_secret_named_keys():
    secret = "reprolab-secret-params"
    assert tracking.redact({"aws_secret_access_key": secret, "AWS_SESSION_TOKEN": secret,
                            "s3.secret_access_key": secret, "lr": 0.1}) == {"lr": 0.1}


def test_run_params_drop_access_key_ids_and_nested_secrets():
    kept = tracking.redact({"aws_access_key_id": "AKIAREPROLABKEYID",
                            "options": {"secret": "reprolab-secret-nested"}})
    assert "AKIAREPROLABKEYID" not in str(kept) and "reprolab-secret-nested" not in str(kept)


@pytest.fixture
def secret_block(prefect_api, s3_bucket):
    """A Prefect Secret block (on the session's Prefect server) holding the bucket's keys."""
    from prefect.blocks.system import Secret

    name = f"s3-{s3_bucket.name}"
    Secret(value={"aws_access_key_id": s3_bucket.env["AWS_ACCESS_KEY_ID"],
                  "aws_secret_access_key": s3_bucket.env["AWS_SECRET_ACCESS_KEY"]}
           ).save(name, overwrite=True)
    return name


def test_credentials_from_a_prefect_secret_block_reach_dvc_and_no_log(
        repo, s3_bucket, s3_credentials, prefect_api, secret_block, monkeypatch, caplog, capfd):
    from prefect import flow
    from prefect.blocks.system import Secret
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter
    from prefect.logging import get_run_logger

    caplog.set_level(logging.DEBUG)
    env = clean_env(s3_bucket)
    for var in objectstore.CREDENTIAL_VARS:
        env.pop(var, None)
        monkeypatch.delenv(var, raising=False)
    assert objectstore.credentials_env(secret_block) == s3_credentials

    # the configure command takes the block too; nothing it writes holds the keys
    sh(repo, {**env, "PREFECT_API_URL": prefect_api},
       *configure_command(s3_bucket, "--secret-block", secret_block))
    (repo / "data.txt").write_text("pushed by a flow\n")
    sh(repo, env, str(VENV_BIN / "dvc"), "add", "data.txt")

    @flow
    def push_with_block(block: str) -> str:
        """How a flow runs DVC with the block's credentials: in its env, for that call only."""
        done = subprocess.run([str(VENV_BIN / "dvc"), "push"], cwd=repo, capture_output=True,
                              text=True, env={**env, **objectstore.credentials_env(block)})
        get_run_logger().info("dvc push: %s%s", done.stdout, done.stderr)
        with objectstore.aws_credentials(block):
            objectstore.check_bucket(s3_bucket.url("reprolab"), s3_bucket.endpoint_url)
        assert "AWS_SECRET_ACCESS_KEY" not in os.environ  # applied for the call only
        return done.stdout

    state = push_with_block(secret_block, return_state=True)
    assert state.is_completed() and "1 file pushed" in state.result()
    send_prefect_logs()
    with get_client(sync_client=True) as client:  # what the Prefect server keeps of the run
        run_id = state.state_details.flow_run_id
        api_logs = "\n".join(log.message for log in client.read_logs(
            LogFilter(flow_run_id={"any_": [run_id]})))
        record = client.read_flow_run(run_id).model_dump_json()
    assert "1 file pushed" in api_logs
    assert leaks(api_logs + record, s3_credentials) == []
    assert any(k.startswith("reprolab/files/md5/") for k in s3_bucket.keys("reprolab/"))
    out = capfd.readouterr()
    assert leaks(out.out + out.err + logs_but_botocore_debug(caplog), s3_credentials) == []
    assert leaks(caplog.text, secret_only(s3_credentials)) == []
    assert "dvc push: 1 file pushed" in caplog.text  # the flow's log was captured
    assert file_leaks(repo, s3_credentials) == {}

    Secret(value="not json").save(f"{secret_block}-bad", overwrite=True)
    with pytest.raises(objectstore.ObjectStoreError, match="not a JSON object") as info:
        objectstore.credentials_env(f"{secret_block}-bad")
    assert "not json" not in str(info.value)
    Secret(value={"aws_access_key_id": "AKIAONLY"}).save(f"{secret_block}-half", overwrite=True)
    with pytest.raises(objectstore.ObjectStoreError, match="no aws_secret_access_key"):
        objectstore.credentials_env(f"{secret_block}-half")
