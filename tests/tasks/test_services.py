"""tasks/services.py for real: the project's PostgreSQL cluster, a Prefect server on it that runs
a flow, an MLflow server on it that stores a run and proxies its artifact to a folder, and a
`stop` that leaves no process behind; an existing server given by URL, its password never shown.
"""
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import psycopg
import pytest

from tasks import services
from tests.servers import PYTHON, TeamServers, start_postgres, start_team_servers, team_env

SECRET = "s3cret-Pw"


def query(url: str, sql: str, *args) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql, args).fetchall()


def processes() -> dict[int, tuple[int, str]]:
    """Every process now: PID -> (parent PID, command line)."""
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            continue
        out[int(pid)] = (parent, cmdline)
    return out


def test_masked_hides_every_password_and_nothing_else():
    text = (f"a postgresql+asyncpg://me:{SECRET}@db:5432/prefect and "
            f"postgresql://you:p@ss/w@rd@10.0.0.1/x, http://127.0.0.1:4200/api")
    shown = services.masked(text)
    assert SECRET not in shown and "p@ss" not in shown and "rd@" not in shown
    assert "postgresql+asyncpg://me:***@db:5432/prefect" in shown
    assert "http://127.0.0.1:4200/api" in shown
    assert services.masked("postgresql://me@db/x") == "postgresql://me@db/x"


def test_database_url_keeps_server_and_password_and_sets_database_and_driver():
    server = "postgresql://me:p%40ss@db.example:6543/admin?sslmode=require"
    assert services.database_url(server, "prefect", "asyncpg", options=False) == \
        "postgresql+asyncpg://me:p%40ss@db.example:6543/prefect"
    assert services.database_url(server, "mlflow", "psycopg") == \
        "postgresql+psycopg://me:p%40ss@db.example:6543/mlflow?sslmode=require"
    assert services.database_url(server, "postgres") == \
        "postgresql://me:p%40ss@db.example:6543/postgres?sslmode=require"


@pytest.mark.parametrize("args, error", [
    (["--database-url", "postgresql://me@db/x"], "a database URL is for --db postgres"),
    (["--artifacts-destination", "s3://bucket/mlflow"], "add --mlflow"),
])
def test_start_refuses_what_sqlite_does_not_take(args, error, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    assert services.main(["start", "--db", "sqlite", *args]) == 1
    assert error in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("url", [f"mysql://me:{SECRET}@db/x", f"not a url://me:{SECRET}@"])
def test_a_bad_database_url_is_refused_masked(url, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    assert services.main(["start", "--db", "postgres", "--database-url", url]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: not a") and SECRET not in err and "me:***@" in err


def test_stop_and_status_with_nothing_running(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    assert services.main(["stop"]) == 0
    assert capsys.readouterr().out == "nothing to stop\n"
    assert services.main(["status"]) == 0
    out = capsys.readouterr().out
    assert "Prefect server: not running" in out and "MLflow server: not running" in out
    assert "PostgreSQL: not running" in out and "none yet" in out


def test_cluster_listens_on_loopback_only_and_trusts_local_connections_only(postgres):
    settings = dict(query(postgres.url, "SELECT name, setting FROM pg_settings WHERE name IN "
                                        "('listen_addresses', 'unix_socket_directories')"))
    assert settings == {"listen_addresses": "127.0.0.1",
                        "unix_socket_directories": str(postgres.folder)}
    rules = query(postgres.url, "SELECT type, address, auth_method FROM pg_hba_file_rules")
    assert sorted(rules, key=str) == [("host", "127.0.0.1", "trust"), ("local", None, "trust")]
    name = f"check_{uuid.uuid4().hex[:8]}"
    assert services.create_databases(postgres.url, (name,)) == [name]
    assert services.create_databases(postgres.url, (name,)) == []  # there already
    assert query(postgres.database(name), "SELECT current_database()") == [(name,)]


def test_stop_cluster_leaves_no_postgres_process():
    top = Path(tempfile.mkdtemp(prefix="reprolab-pg-"))
    try:
        cluster = start_postgres(top)
        pid, port = services.cluster_state(cluster.folder)
        assert port == cluster.port
        children = [p for p, (parent, _) in processes().items() if parent == pid]
        assert children  # checkpointer, walwriter, ...
        assert services.stop_cluster(cluster.folder) == pid
        assert not any(services.alive(p) for p in [pid, *children])
        status = subprocess.run(services.pg_command(["pg_ctl", "status", "-D",
                                                     str(cluster.folder / "data")]),
                                capture_output=True, text=True)
        assert status.returncode == 3, status.stdout + status.stderr  # 3: no server running
        assert services.stop_cluster(cluster.folder) is None
    finally:
        services.stop_cluster(top / "cluster")
        shutil.rmtree(top, ignore_errors=True)


@pytest.mark.slow
def test_a_flow_run_on_the_prefect_server_is_stored_in_postgresql(team_servers: TeamServers):
    from prefect import flow, task
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tests.conftest import send_prefect_logs

    @task
    def double(x: int) -> int:
        return 2 * x

    @flow(name="services-check")
    def doubled(n: int) -> int:
        return sum(f.result() for f in double.map(range(n)))

    name = f"services-{uuid.uuid4().hex[:8]}"
    with temporary_settings(updates={PREFECT_API_URL: team_servers.prefect_api}):
        assert doubled.with_options(flow_run_name=name)(3) == 6
        send_prefect_logs()
    prefect_db = services.database_url(team_servers.pg_url, "prefect")
    rows = query(prefect_db, "SELECT f.name, fr.state_type::text FROM flow_run fr "
                             "JOIN flow f ON f.id = fr.flow_id WHERE fr.name = %s", name)
    assert rows == [("services-check", "COMPLETED")]


@pytest.mark.slow
def test_mlflow_stores_the_run_in_postgresql_and_proxies_its_artifact(team_servers, tmp_path):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=team_servers.mlflow_uri)
    experiment = client.create_experiment(f"services-{uuid.uuid4().hex[:8]}")
    run = client.create_run(experiment)
    run_id = run.info.run_id
    client.log_metric(run_id, "accuracy", 0.75)
    note = tmp_path / "note.txt"
    note.write_text("proxied by the server")
    client.log_artifact(run_id, str(note))
    client.set_terminated(run_id)

    assert run.info.artifact_uri.startswith("mlflow-artifacts:")
    stored = team_servers.artifacts / experiment / run_id / "artifacts" / "note.txt"
    assert stored.read_text() == "proxied by the server"
    mlflow_db = services.database_url(team_servers.pg_url, "mlflow")
    assert query(mlflow_db, "SELECT status FROM runs WHERE run_uuid = %s", run_id) == \
        [("FINISHED",)]
    assert query(mlflow_db, "SELECT value FROM metrics WHERE run_uuid = %s AND key = %s",
                 run_id, "accuracy") == [(0.75,)]


@pytest.mark.slow
def test_start_says_what_runs_and_how_to_use_it(team_servers):
    started = team_servers.started
    assert f"Prefect server: {team_servers.prefect_api.removesuffix('/api')} (UI)" in started
    assert f"common.mlflow.tracking_uri: {team_servers.mlflow_uri}" in started
    assert "common.mlflow.artifact_dir: null" in started
    status = team_servers.services("status").stdout
    assert "Prefect server: running" in status and "MLflow server: running" in status
    assert f"PostgreSQL: running (PID {services.cluster_state(team_servers.run / 'postgres')[0]})" \
        in status
    again = team_servers.services("start", "--db", "postgres", "--prefect-port",
                                  team_servers.prefect_api.split(":")[-1].removesuffix("/api"),
                                  "--mlflow-port", team_servers.mlflow_uri.split(":")[-1])
    assert "Prefect server already running" in again.stdout
    assert "MLflow server already running" in again.stdout
    view = subprocess.run([services.program("prefect"), "config", "view"], env=team_servers.env,
                          capture_output=True, text=True).stdout
    assert f"PREFECT_API_URL='{team_servers.prefect_api}' (from profile)" in view


@pytest.mark.slow
def test_stop_leaves_no_process_behind(team_servers):
    """(Last of the tests on `team_servers`: it stops them.)"""
    run = team_servers.run
    groups = [int((run / f"{name}.pid").read_text()) for name in ("server", "mlflow")]
    postmaster, _ = services.cluster_state(run / "postgres")
    backends = [p for p, (parent, _) in processes().items() if parent == postmaster]
    stopped = team_servers.services("stop").stdout
    assert "stopped server" in stopped and "stopped MLflow server" in stopped
    assert f"stopped PostgreSQL (PID {postmaster}" in stopped
    assert not any(services.group_alive(g) for g in groups)
    assert not any(services.alive(p) for p in [postmaster, *backends])
    assert not [cmd for _, cmd in processes().values() if str(team_servers.home) in cmd]
    status = subprocess.run(services.pg_command(["pg_ctl", "status", "-D",
                                                 str(run / "postgres" / "data")]),
                            capture_output=True, text=True)
    assert status.returncode == 3, status.stdout + status.stderr
    assert team_servers.services("stop").stdout == "nothing to stop\n"
    view = subprocess.run([services.program("prefect"), "config", "view"], env=team_servers.env,
                          capture_output=True, text=True).stdout
    assert "PREFECT_API_URL" not in view


@pytest.mark.slow
def test_an_existing_server_by_url_is_used_and_its_password_never_shown(postgres):
    home = Path(tempfile.mkdtemp(prefix="reprolab-team-"))
    url = postgres.url.replace("postgresql://postgres@", f"postgresql://postgres:{SECRET}@")
    # as `make server DB=postgres DATABASE_URL=...` passes it: in the environment
    servers = start_team_servers(home, **{services.URL_VAR: url})
    try:
        assert SECRET not in servers.started
        assert "postgresql://postgres:***@127.0.0.1" in servers.started
        assert not (servers.run / "postgres").exists()  # no cluster of its own
        names = {n for (n,) in query(postgres.url, "SELECT datname FROM pg_database")}
        assert {"prefect", "mlflow"} <= names
        pids = [int((servers.run / f"{n}.pid").read_text()) for n in ("server", "mlflow")]
        group = [p for p in processes() if services.group_of(p) in pids]
        assert group and not [p for p in group
                              if SECRET.encode() in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert SECRET not in servers.services("status").stdout
        stopped = servers.services("stop").stdout
        assert "stopped PostgreSQL" not in stopped  # not the project's: left running
        assert services.cluster_state(postgres.folder) is not None
        written = [f for f in home.rglob("*") if f.is_file() and SECRET in f.read_text("latin-1")]
        assert written == []
    finally:
        subprocess.run([PYTHON, "-m", "tasks.services", "stop"],
                       env=team_env(home), cwd=services.checkout(), capture_output=True)
        shutil.rmtree(home, ignore_errors=True)
