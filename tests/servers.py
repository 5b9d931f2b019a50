"""Fixtures for tests that need a PostgreSQL cluster or a Prefect/MLflow server of their own.

- `postgres` (session): a throwaway PostgreSQL cluster (tasks/services.py's initdb and pg_ctl)
  in a temporary folder, on a free loopback port; `pg_ctl stop` at the end.
- `team_servers` (module): `python -m tasks.services start --db postgres`, as `make server
  DB=postgres` runs it, in a temporary PREFECT_HOME on free ports: a Prefect server and an
  MLflow server (artifacts proxied to a temporary folder) on the project's own cluster in the
  run folder; `python -m tasks.services stop` at the end.

PostgreSQL's programs are required here and in CI: one missing fails the test, never skips it.
Folders are made with tempfile under the system's temp folder, not pytest's tmp_path: as root
the cluster runs as the user `postgres`, which must be able to reach it (pytest's base folder is
private to root).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tasks import services

PYTHON = sys.executable


@dataclass(frozen=True)
class Postgres:
    """A running cluster: its folder (data/, socket, postgres.log) and port."""
    folder: Path
    port: int

    @property
    def url(self) -> str:
        """The server's URL (superuser `postgres`, database `postgres`), libpq's form."""
        return services.local_server_url(self.port)

    def database(self, name: str, driver: str = "") -> str:
        """The URL of database `name` (created if missing), for psycopg or a SQLAlchemy
        driver (`asyncpg`, `psycopg`)."""
        services.create_databases(self.url, (name,))
        return services.database_url(self.url, name, driver)


def start_postgres(top: Path) -> Postgres:
    folder = top / "cluster"
    services.init_cluster(folder, top)
    return Postgres(folder, services.start_cluster(folder, services.free_port()))


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    top = Path(tempfile.mkdtemp(prefix="reprolab-pg-"))
    try:
        cluster = start_postgres(top)
        yield cluster
    finally:
        services.stop_cluster(top / "cluster")
        shutil.rmtree(top, ignore_errors=True)


@dataclass(frozen=True)
class TeamServers:
    """What `tasks.services start --db postgres` started in `home` (its PREFECT_HOME)."""
    home: Path
    prefect_api: str
    mlflow_uri: str
    artifacts: Path
    env: dict[str, str] = field(repr=False)
    started: str = ""  # what start printed

    @property
    def run(self) -> Path:
        return self.home / "run"

    @property
    def pg_url(self) -> str:
        """The project's cluster's server URL (while it runs)."""
        state = services.cluster_state(self.run / "postgres")
        assert state is not None, "the project's PostgreSQL is not running"
        return services.local_server_url(state[1])

    def services(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """`python -m tasks.services ARGS` for this home, from the checkout, as make runs it."""
        done = subprocess.run([PYTHON, "-m", "tasks.services", *args], env=self.env,
                              cwd=services.checkout(), capture_output=True, text=True,
                              timeout=300)
        if check:
            assert done.returncode == 0, f"tasks.services {' '.join(args)}:\n" \
                                         f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done


def team_env(home: Path) -> dict[str, str]:
    env = {**os.environ, "PREFECT_HOME": str(home)}
    for name in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", services.URL_VAR, "PG_PORT"):
        env.pop(name, None)
    return env


def start_team_servers(home: Path, *args: str, **env: str) -> TeamServers:
    """Start the team's servers for PREFECT_HOME=home on free ports (more start arguments:
    args; more environment: env)."""
    prefect_port, mlflow_port = services.free_port(), services.free_port()
    artifacts = home / "artifacts"
    servers = TeamServers(home, f"http://127.0.0.1:{prefect_port}/api",
                          f"http://127.0.0.1:{mlflow_port}", artifacts, {**team_env(home), **env})
    done = servers.services("start", "--db", "postgres", "--prefect-port", str(prefect_port),
                            "--mlflow-port", str(mlflow_port), "--artifacts-destination",
                            str(artifacts), *args, check=False)
    if done.returncode != 0:
        servers.services("stop", check=False)
        pytest.fail(f"tasks.services start:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return TeamServers(**{**servers.__dict__, "started": done.stdout + done.stderr})


@pytest.fixture(scope="module")
def team_servers() -> Iterator[TeamServers]:
    home = Path(tempfile.mkdtemp(prefix="reprolab-team-"))
    try:
        yield start_team_servers(home)
    finally:  # (a test may have stopped them already: stopping again is no error)
        subprocess.run([PYTHON, "-m", "tasks.services", "stop"], env=team_env(home),
                       cwd=services.checkout(), capture_output=True, timeout=120)
        shutil.rmtree(home, ignore_errors=True)
