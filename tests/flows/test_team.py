"""ReproLab run by a team, for real, on loopback: PostgreSQL with a Prefect server and an MLflow
server on it (`python -m tasks.services start --db postgres`, as `make server DB=postgres`),
moto's S3 server for the DVC remote and MLflow's artifacts, the project in a bare git
repository, and two process workers in folders of their own that share no file with the
server or each other. The crypto pipeline is deployed from prefect.team.yaml and run with
`prefect deployment run`, then a night; each flow run clones the repository, pulls what it
needs and publishes its results on the `nightly` branch. A third clone then runs
`git checkout nightly && dvc pull` and has tonight's results, `dvc status` clean, and
`reprolab reproduce models:/crypto-next-move@champion` rebuilds the champion's metrics."""
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import pytest
import yaml

from tasks.provenance import OUTPUT_TAG, tag_key
from tests.conftest import VENV_BIN, free_port
from tests.flows.repo_copy import run, small_repo

pytestmark = pytest.mark.slow
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
BRANCH = "nightly"
MODEL = "crypto-next-move"


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                          check=True).stdout


def plain_env(**extra: str) -> dict[str, str]:
    """A shell's environment with this venv first on PATH; nothing of the test's own Prefect,
    MLflow or AWS settings."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_", "MLFLOW_", "AWS_", "REPROLAB_"))}
    return {**env, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", **extra}


def api(url: str, path: str, body: dict | None = None):
    response = (httpx.post(f"{url}{path}", json=body) if body is not None
                else httpx.get(f"{url}{path}"))
    response.raise_for_status()
    return response.json()


class Team:
    """Where everything is: the servers' URLs, the repository, the workers' folders."""

    def __init__(self, root: Path, bucket) -> None:
        self.root, self.bucket = root, bucket
        self.prefect_port, self.mlflow_port = free_port(), free_port()
        self.api = f"http://127.0.0.1:{self.prefect_port}/api"
        self.mlflow = f"http://127.0.0.1:{self.mlflow_port}"
        self.origin = root / "origin.git"
        self.pool, self.gpu_pool = f"cpu-{uuid.uuid4().hex[:6]}", f"gpu-{uuid.uuid4().hex[:6]}"
        self.workers: list[subprocess.Popen] = []

    def env(self, home: Path, **extra: str) -> dict[str, str]:
        """A machine of the team: its own Prefect home, the servers, the storage's credentials
        (the bucket's env: keys, region, endpoint for MLflow's S3 client)."""
        return plain_env(PREFECT_HOME=str(home / ".prefect"), PREFECT_API_URL=self.api,
                         **self.bucket.env, **extra)

    def clone(self, name: str, ref: str = "main") -> Path:
        path = self.root / name
        git(self.root, "clone", "-q", "-b", ref, f"file://{self.origin}", str(path))
        return path


def start_servers(team: Team, server: Path) -> None:
    env = team.env(server)
    run([str(VENV_BIN / "python"), "-m", "tasks.services", "start", "--db", "postgres",
         "--prefect-port", str(team.prefect_port), "--mlflow-port", str(team.mlflow_port),
         "--artifacts-destination", team.bucket.url("mlflow")], server, env)


def stop_servers(server: Path, env: dict) -> None:
    subprocess.run([str(VENV_BIN / "python"), "-m", "tasks.services", "stop"], cwd=server,
                   env=env, capture_output=True, text=True, timeout=120, check=False)


TRAIN_DECLARED = "deps=(str(P.raw), str(P.features), str(P.splits)), outs=(str(P.artifacts),)),"


def the_repository(team: Team) -> None:
    """The project as a team keeps it: small crypto params, MLflow at the team's server, the
    DVC remote on the bucket (configured by the documented command), committed and pushed.
    Its crypto training is declared on the gpu pool, as Kinetics training is (the test's
    stand-in: a GPU machine is a worker of another pool)."""
    seed = small_repo(team.root / "seed", {
        "common": {"mlflow": {"tracking_uri": team.mlflow, "artifact_dir": None}},
        "nightly": {"pipelines": ["crypto"]}})
    declaration = seed / "tasks" / "crypto" / "pipeline.py"
    text = declaration.read_text()
    assert TRAIN_DECLARED in text
    declaration.write_text(text.replace(TRAIN_DECLARED, TRAIN_DECLARED[:-2] + ', pool="gpu"),'))
    env = team.env(seed)
    run([str(VENV_BIN / "python"), "-m", "tasks.objectstore", "remote", team.bucket.url("dvc"),
         "--endpoint-url", team.bucket.endpoint_url, "--default"], seed, env)
    git(seed, "add", "-A")
    git(seed, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "the team's setup")
    git(team.root, "init", "-q", "--bare", "-b", "main", str(team.origin))
    git(seed, "push", "-q", str(team.origin), "HEAD:main")


def start_worker(team: Team, name: str, pool: str) -> Path:
    folder = team.clone(name)  # the worker's machine: its own checkout, nothing shared
    log = open(folder / "worker.log", "w")  # noqa: SIM115 - closed with the process
    env = team.env(folder, PREFECT_WORKER_QUERY_SECONDS="2", PREFECT_WORKER_PREFETCH_SECONDS="5",
                   OMP_NUM_THREADS="1")
    team.workers.append(subprocess.Popen(
        [str(VENV_BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process",
         "--limit", "1"], cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True))
    return folder


def stop(worker: subprocess.Popen) -> None:
    """A worker and its flow runs: SIGTERM, then SIGKILL if it is still there after 10 s."""
    with contextlib.suppress(ProcessLookupError):  # it may have ended already
        os.killpg(worker.pid, signal.SIGTERM)
    try:
        worker.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()


@pytest.fixture(scope="module")
def team(s3_server, s3_credentials):
    from tests.s3 import S3Bucket  # the bucket fixture is function-scoped: one of our own

    # PostgreSQL, run as its own user when the tests run as root, must reach its cluster's
    # folder: pytest's base folder is private, so the team lives in a folder of its own
    root = Path(tempfile.mkdtemp(prefix="reprolab-team-"))
    root.chmod(0o711)
    aws = root / "no-aws-config"
    aws.mkdir()
    bucket = S3Bucket(f"team-{uuid.uuid4().hex[:8]}", s3_server, {
        **s3_credentials, "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(aws / "config"), "AWS_SHARED_CREDENTIALS_FILE": str(aws / "c"),
        "AWS_EC2_METADATA_DISABLED": "true", "MLFLOW_S3_ENDPOINT_URL": s3_server})
    bucket.client().create_bucket(Bucket=bucket.name)
    team = Team(root, bucket)
    the_repository(team)
    server = team.clone("server")
    try:
        start_servers(team, server)
        seed = team.root / "seed"
        run(["make", "deploy", "PREFECT_FILE=prefect.team.yaml", f"VENV={VENV_BIN.parent}"], seed,
            team.env(seed, REPROLAB_POOL=team.pool, REPROLAB_GPU_POOL=team.gpu_pool,
                     REPROLAB_GIT_URL=f"file://{team.origin}"))
        team.worker_folders = [start_worker(team, "cpu-worker", team.pool),
                               start_worker(team, "gpu-worker", team.gpu_pool)]
        yield team
    finally:
        try:
            for worker in team.workers:
                stop(worker)
        finally:  # whatever happened to the workers, no server of the test outlives it
            stop_servers(server, team.env(server))
        shutil.rmtree(root, ignore_errors=True)


def deployment_run(team: Team, name: str, params: dict | None = None) -> dict:
    cmd = [str(VENV_BIN / "prefect"), "deployment", "run", name]
    if params:
        cmd += ["--params", json.dumps(params)]
    done = run(cmd, team.root / "seed", team.env(team.root / "seed"))
    run_id = next(line.split()[-1] for line in done.stdout.splitlines() if "UUID" in line)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        flow_run = api(team.api, f"/flow_runs/{run_id}")
        if flow_run["state_type"] in TERMINAL:
            return flow_run
        time.sleep(3)
    raise TimeoutError(f"{name} not finished; worker logs:\n" + "\n".join(
        (f / "worker.log").read_text()[-3000:] for f in team.worker_folders))


def worker_logs(team: Team) -> str:
    return "\n".join((f / "worker.log").read_text()[-4000:] for f in team.worker_folders)


def published(team: Team) -> list[str]:
    """The results branch's commits (subjects), newest first."""
    return git(team.origin, "log", "--first-parent", "--format=%s", BRANCH).splitlines()


def test_a_pipeline_then_a_night_on_workers_of_their_own_published_and_pulled(team):
    first = deployment_run(team, "crypto-pipeline/default")
    assert first["state_type"] == "COMPLETED", worker_logs(team)
    # the cpu worker published up to the training, the gpu worker the training, then the cpu
    # worker the rest: three commits, newest first
    subjects = published(team)
    assert subjects[0] == "crypto pipeline: crypto_ingest, crypto_features, crypto_split, " \
                          "crypto_train, crypto_evaluate", subjects
    assert subjects[1].startswith("crypto_train on this pool: crypto_train"), subjects
    assert subjects[2].startswith("crypto pipeline: before crypto_train on pool gpu"), subjects
    handed = [r for r in api(team.api, "/flow_runs/filter", {"limit": 50})
              if r["parameters"].get("targets") == ["crypto_train"]]
    assert len(handed) == 1 and handed[0]["state_type"] == "COMPLETED"
    assert handed[0]["work_pool_name"] == team.gpu_pool

    night = deployment_run(team, "nightly-retrain/nightly")
    assert night["state_type"] == "COMPLETED", worker_logs(team)
    nights = published(team)
    # nothing was stale: the training stayed where it was, and the night is on record
    assert nights[0].startswith("nightly: crypto "), nights
    assert nights[1] == subjects[0], nights
    # the Prefect server kept its runs in PostgreSQL
    runs = api(team.api, "/flow_runs/filter", {"limit": 200})
    assert {"crypto-pipeline", "nightly-retrain"} <= {
        f["name"] for f in api(team.api, "/flows/filter", {})}
    assert len(runs) >= 2

    # a colleague's workspace: tonight's results, exactly, and nothing stale
    mine = team.clone("colleague", ref=BRANCH)
    env = team.env(mine)
    # (the team runs crypto alone: its stages, not the others that never ran)
    run([str(VENV_BIN / "dvc"), "pull", "--with-deps", "crypto_evaluate"], mine, env)
    status = run([str(VENV_BIN / "dvc"), "status", "--json", "--with-deps", "crypto_evaluate"],
                 mine, env)
    assert json.loads(status.stdout) == {}
    lock = yaml.safe_load((mine / "dvc.lock").read_text())["stages"]
    # the night's records came with it: its summary, the champion history the site draws
    assert len(list((mine / "reports" / "nightly" / "nights").glob("*.json"))) == 1
    assert json.loads((mine / "reports/nightly/champions/crypto.json").read_text())[
        "pipeline"] == "crypto"
    evaluated = {out["path"]: out.get("md5") for out in lock["crypto_evaluate"]["outs"]}

    # the champion in the team's registry is the model those results evaluated
    import mlflow

    client = mlflow.tracking.MlflowClient(tracking_uri=team.mlflow)
    night_summary = git(team.origin, "log", "-1", "--format=%B", BRANCH)
    assert "| crypto |" in night_summary, night_summary
    if "champion" not in client.get_registered_model(MODEL).aliases:
        # the small model did not beat the logistic baseline: a person promotes it, as the
        # README shows, here against the team's registry
        run([str(VENV_BIN / "reprolab"), "promote", "crypto", "1", "--reason", "team test"],
            mine, env)
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert champion.version == "1", night_summary
    # the metrics the colleague pulled are, byte for byte, those the champion's evaluation wrote
    recorded = champion.tags[tag_key(OUTPUT_TAG, "metrics/crypto.json")]
    pulled = hashlib.md5((mine / "metrics" / "crypto.json").read_bytes()).hexdigest()
    assert recorded == evaluated["metrics/crypto.json"] == pulled

    reproduced = subprocess.run(
        [str(VENV_BIN / "reprolab"), "reproduce", f"models:/{MODEL}@champion"], cwd=mine,
        env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=900)
    assert reproduced.returncode == 0, reproduced.stdout[-3000:] + reproduced.stderr[-3000:]
    for line in ("packages  as locked at that commit and as the run recorded",
                 "threads   1, as the run recorded",
                 "data      data/crypto/raw: from this checkout's copy",
                 "reran     crypto_features, crypto_split, crypto_train, crypto_evaluate",
                 "identical  artifacts/crypto/predictions.parquet (predictions)",
                 "identical  metrics/crypto.json (metrics)",
                 "verdict   byte-identical: the metrics and predictions are the recorded ones"):
        assert line in reproduced.stdout, reproduced.stdout
    assert git(mine, "worktree", "list").count("\n") == 1  # its worktree is gone

    # the credentials reached no file of the results, no log and no commit
    secret = team.bucket.env["AWS_SECRET_ACCESS_KEY"]
    for folder in (mine, team.root / "seed", *team.worker_folders):
        for path in folder.rglob("*"):
            if path.is_file() and ".dvc/cache" not in str(path):
                assert secret.encode() not in path.read_bytes(), path
    assert secret not in git(team.origin, "log", "-p", "--all")
