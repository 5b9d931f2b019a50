"""Start, stop and show this checkout's servers: Prefect, MLflow and their PostgreSQL.

    python -m tasks.services start [--db sqlite|postgres] [--database-url postgresql://...]
        [--prefect-port 4200] [--mlflow] [--mlflow-port 5000]
        [--artifacts-destination DIR_OR_S3_URI] [--pg-port N]
    python -m tasks.services stop      # the worker, the Prefect and MLflow servers, PostgreSQL
    python -m tasks.services status    # what runs, where, on which database

`make server [DB=postgres] [DATABASE_URL=...] [MLFLOW_PORT=...]` and `make stop` call these.
Everything listens on 127.0.0.1 (the Prefect and MLflow servers on --host when given) and runs in its own session, with a PID file and a log in the
run folder, $PREFECT_HOME/run (PREFECT_HOME is <checkout>/.prefect unless set, as the Makefile
exports it):
- `--db sqlite` (the default): a Prefect server on its SQLite database in PREFECT_HOME, as
  `make server` always did, and no MLflow server unless `--mlflow` asks for one: it then
  serves the checkout's own store (runs in mlflow.db, artifacts in mlartifacts/).
- `--db postgres`: the Prefect server on PostgreSQL (database `prefect`, driver asyncpg) and
  an MLflow tracking server on PostgreSQL (database `mlflow`, driver psycopg) that proxies
  artifacts (`--serve-artifacts`) to --artifacts-destination: by default
  $PREFECT_HOME/run/mlflow-artifacts, next to the cluster that holds their runs (`make clean`
  removes both); an s3://bucket/prefix takes MLFLOW_S3_ENDPOINT_URL and the AWS_* credentials
  from the environment only. The PostgreSQL server is
  - without a database URL, the project's own cluster in $PREFECT_HOME/run/postgres: made
    once (initdb; trust authentication for local connections only, listening on 127.0.0.1
    only, its socket in that folder), started on --pg-port, PG_PORT or a free port. As root
    (PostgreSQL refuses root) it runs as the system user `postgres`, and the folders above it
    in PREFECT_HOME let that user's group search them (g+x).
  - with --database-url (or $REPROLAB_DATABASE_URL) postgresql://user[:password]@host[:port]
    [/db][?options], that server: the databases are still `prefect` and `mlflow` (the URL's own
    database is only where they are created from, `postgres` if it names none). Options go to
    MLflow's psycopg; Prefect's asyncpg gets the URL without them (TLS for it: Prefect's
    PREFECT_SERVER_DATABASE_SQLALCHEMY_CONNECT_ARGS_TLS_* settings). `stop` leaves it running.
  Missing databases are created (the user needs CREATEDB there, or a DBA makes them).
A password is never printed or logged: URLs are shown masked, and reach the servers through
their environment, not their command lines (`ps` shows those). PGPASSWORD or ~/.pgpass, which
both drivers read, keep it out of the URL altogether.

Once up (health checked: Prefect's /api/health, MLflow's /health; else an error naming the log),
the Prefect API URL goes into this checkout's Prefect profile (`prefect config set
PREFECT_API_URL=...`), so its CLI and flow runs use the server until `stop` takes it out. The
stages log to the MLflow server once params.yaml says `common.mlflow.tracking_uri:
http://127.0.0.1:5000` and `common.mlflow.artifact_dir: null` (printed, never written here).
"""
from __future__ import annotations

import argparse
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tasks.environment import project_root
from tasks.errors import ReproLabError

PREFECT_PORT, MLFLOW_PORT = 4200, 5000
DATABASES = ("prefect", "mlflow")
PG_USER = "postgres"  # the cluster's superuser and, as root, the system user that runs it
URL_VAR = "REPROLAB_DATABASE_URL"
HEALTH_TIMEOUT_S = 120
# (run-folder file stem, what it is, what `stop` calls it, seconds from SIGTERM to SIGKILL), in
# the order `stop` ends them (`make stop` always said "stopped worker", "stopped server")
SERVICES = (("worker", "worker", "worker", 2), ("server", "Prefect server", "server", 10),
            ("mlflow", "MLflow server", "MLflow server", 10))


class ServiceError(ReproLabError):
    """A server did not start or stop; names its log or folder."""


LOOPBACK = "127.0.0.1"
ANY_HOST = ("0.0.0.0", "::", "")

def checkout() -> Path:
    return Path(project_root() or os.getcwd())


def prefect_home() -> Path:
    return Path(os.environ.get("PREFECT_HOME") or checkout() / ".prefect").expanduser()


def run_folder() -> Path:
    return prefect_home() / "run"


def program(name: str) -> str:
    """The venv's own `prefect`/`mlflow` (next to this interpreter), else the one on PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else shutil.which(name) or name


def masked(text: str) -> str:
    """Every URL password in text as ***: postgresql://me:pw@db/x -> postgresql://me:***@db/x
    (up to the URL's last @, so an unescaped @ or / in a password is hidden too)."""
    return re.sub(r"(\b[\w+.-]+://[^/:@\s'\"]*:)[^\s'\"]*@", r"\1***@", text)


# -- processes ---------------------------------------------------------------------------------

def alive(pid: int) -> bool:
    """The process runs (a zombie, ended but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        return True


def read_pid(run: Path, name: str) -> int | None:
    """The PID in run/<name>.pid while that process runs."""
    try:
        pid = int((run / f"{name}.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if alive(pid) else None


def spawn(run: Path, name: str, argv: list[str], env: dict[str, str]) -> int:
    """Start argv in a session of its own (setsid), output to run/<name>.log, PID in
    run/<name>.pid; returns the PID (also its process group's)."""
    with open(run / f"{name}.log", "w") as log:
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, cwd=checkout())
    (run / f"{name}.pid").write_text(f"{proc.pid}\n")
    return proc.pid


def group_alive(pgid: int) -> bool:
    """Some process of the group runs (zombies, ended but not yet reaped, do not count)."""
    try:
        os.waitpid(pgid, os.WNOHANG)  # reap the leader if it is this process's child
    except ChildProcessError:
        pass
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    if not os.path.isdir("/proc"):
        return True
    return any(alive(pid) for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
               if group_of(pid) == pgid)


def group_of(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def stop_group(pgid: int, grace_s: float) -> None:
    """SIGTERM to the process group, SIGKILL to what is left of it after grace_s."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not group_alive(pgid):
                return
            time.sleep(0.1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def advertised(host: str) -> str:
    """The name others reach a server by that listens on `host` (all interfaces: this
    machine's name)."""
    return socket.getfqdn() if host in ANY_HOST else host


def port_free(port: int, host: str = LOOPBACK) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind
        try:
            sock.bind(("" if host in ANY_HOST else host, port))
        except OSError:
            return False
        return True


def healthy(url: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy
    try:
        with opener.open(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def wait_healthy(what: str, url: str, pid: int, log: Path,
                 timeout_s: float = HEALTH_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not healthy(url):
        if not alive(pid):
            raise ServiceError(f"{what} exited while starting: see {log}")
        if time.monotonic() > deadline:
            raise ServiceError(f"{what} not healthy at {url} after {timeout_s:.0f} s: see {log}")
        time.sleep(0.5)


# -- PostgreSQL --------------------------------------------------------------------------------

def pg_program(name: str) -> str:
    """PostgreSQL's `initdb`, `pg_ctl`, ...: on PATH, else Debian's newest
    /usr/lib/postgresql/<version>/bin (the package does not put them on PATH)."""
    found = shutil.which(name) or next(
        (str(path) for path in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
                                      key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit()
                                      else 0, reverse=True)), None)
    if found is None:
        raise ServiceError(f"PostgreSQL's {name} is not installed: `apt-get install postgresql` "
                           "(Debian), or put its bin folder on PATH, or give a server with "
                           "DATABASE_URL")
    return found


def pg_command(argv: list[str]) -> list[str]:
    """argv (a PostgreSQL program), run as the system user `postgres` when this is root
    (PostgreSQL refuses root)."""
    argv = [pg_program(argv[0]), *argv[1:]]
    if os.geteuid() != 0:
        return argv
    return ["setpriv", f"--reuid={PG_USER}", f"--regid={PG_USER}", "--init-groups", *argv]


def run_pg(argv: list[str], log: Path | None = None) -> None:
    proc = subprocess.run(pg_command(argv), capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        where = f"; see {log}" if log else ""
        raise ServiceError(f"{argv[0]} {argv[-1]} failed ({proc.returncode}): "
                           f"{(proc.stderr or proc.stdout).strip()}{where}")


def own_folder(folder: Path, top: Path) -> None:
    """Make folder; as root, hand it to PostgreSQL's user and let that user reach it: folders
    from `top` down that give their group nothing get group `postgres` and search (g+x)."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return
    try:
        user = pwd.getpwnam(PG_USER)
    except KeyError:
        raise ServiceError(f"PostgreSQL refuses to run as root and there is no user {PG_USER!r} "
                           "to run it as: run as another user, or give --database-url") from None
    os.chown(folder, user.pw_uid, user.pw_gid)
    os.chmod(folder, 0o700)
    for path in folder.parents:
        info = path.stat()
        if info.st_mode & stat.S_IXOTH or (info.st_gid == user.pw_gid
                                          and info.st_mode & stat.S_IXGRP):
            continue
        if not path.is_relative_to(top) or info.st_mode & 0o070:
            raise ServiceError(f"PostgreSQL runs as user {PG_USER} and cannot reach {folder}: "
                               f"let it search {path} (chmod o+x)")
        os.chown(path, -1, user.pw_gid)
        os.chmod(path, stat.S_IMODE(info.st_mode) | stat.S_IXGRP)


def init_cluster(folder: Path, top: Path) -> None:
    """initdb once in folder/data: superuser `postgres`, trust authentication for local
    connections only, listening on 127.0.0.1 only, the socket in folder."""
    data = folder / "data"
    if (data / "PG_VERSION").exists():
        return
    own_folder(folder, top)
    run_pg(["initdb", "-D", str(data), "-U", PG_USER, "-E", "UTF8", "--no-locale",
            "--auth=trust"])
    (data / "pg_hba.conf").write_text("# tasks/services.py: this machine only\n"
                                      "local all all trust\nhost all all 127.0.0.1/32 trust\n")
    with open(data / "postgresql.conf", "a") as conf:
        conf.write(f"\n# tasks/services.py\nlisten_addresses = '127.0.0.1'\n"
                   f"unix_socket_directories = '{folder}'\n")


def cluster_state(folder: Path) -> tuple[int, int] | None:
    """(PID, port) of the cluster's running postmaster; None when it is not running."""
    try:
        lines = (folder / "data" / "postmaster.pid").read_text().splitlines()
        pid, port = int(lines[0]), int(lines[3])
    except (OSError, ValueError, IndexError):
        return None
    return (pid, port) if alive(pid) else None


def start_cluster(folder: Path, port: int) -> int:
    """`pg_ctl start` on port; returns the port it listens on (its own if already running)."""
    running = cluster_state(folder)
    if running is not None:
        return running[1]
    log = folder / "postgres.log"
    run_pg(["pg_ctl", "-D", str(folder / "data"), "-l", str(log), "-o", f"-p {port}",
            "-w", "-t", "60", "start"], log)
    return port


def stop_cluster(folder: Path) -> int | None:
    """`pg_ctl stop -m fast`, waiting until the postmaster is gone; returns its PID (None: it
    was not running)."""
    running = cluster_state(folder)
    if running is None:
        return None
    run_pg(["pg_ctl", "-D", str(folder / "data"), "-m", "fast", "-w", "-t", "60", "stop"],
           folder / "postgres.log")
    deadline = time.monotonic() + 10
    while alive(running[0]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return running[0]


def local_server_url(port: int) -> str:
    return f"postgresql://{PG_USER}@127.0.0.1:{port}/postgres"


def parsed(url: str):
    """SQLAlchemy's URL object for url; a bad one is named masked (SQLAlchemy's own message
    holds it in clear)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url)
    except ArgumentError:
        raise ServiceError(f"not a database URL: {masked(url)}") from None


def database_url(server_url: str, database: str, driver: str = "",
                 options: bool = True) -> str:
    """server_url on another database (and SQLAlchemy driver; "" for libpq's plain form)."""
    url = parsed(server_url).set(drivername=f"postgresql+{driver}" if driver else "postgresql",
                                 database=database)
    return (url if options else url.set(query={})).render_as_string(hide_password=False)


def create_databases(server_url: str, names: tuple[str, ...] = DATABASES) -> list[str]:
    """Create those of the databases that are missing on the server; returns their names."""
    import psycopg
    from psycopg import sql

    created = []
    maintenance = database_url(server_url, parsed(server_url).database or "postgres")
    try:
        with psycopg.connect(maintenance, autocommit=True, connect_timeout=10) as conn:
            for name in names:
                if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                (name,)).fetchone() is None:
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                    created.append(name)
    except psycopg.Error as exc:
        raise ServiceError(f"{masked(server_url)}: {masked(str(exc)).strip()}") from None
    return created


def own_cluster(run: Path, port: int | None) -> str:
    """The project's cluster in run/postgres, made and started if need be: its server URL."""
    folder = run / "postgres"
    init_cluster(folder, run.parent)
    running = cluster_state(folder)
    return local_server_url(start_cluster(folder, running[1] if running else port
                                          or free_port()))


# -- Prefect and MLflow ------------------------------------------------------------------------

def prefect_env(port: int, database_url: str | None, host: str = LOOPBACK) -> dict[str, str]:
    """`prefect server start`'s environment (as `make server` always set it: the UI finds its API
    through PREFECT_UI_API_URL, not --port), on database_url when given, else SQLite."""
    env = {**os.environ, "PREFECT_API_URL": "", "PREFECT_SERVER_API_HOST": host,
           "PREFECT_SERVER_API_PORT": str(port),
           "PREFECT_UI_API_URL": f"http://{advertised(host)}:{port}/api"}
    if database_url:  # (Prefect reads both names: one left from the shell would win)
        for name in ("PREFECT_API_DATABASE_CONNECTION_URL",
                     "PREFECT_SERVER_DATABASE_CONNECTION_URL"):
            env[name] = database_url
    return env


def start_prefect(run: Path, port: int, database_url: str | None, host: str = LOOPBACK) -> int:
    return spawn(run, "server", [program("prefect"), "server", "start"],
                 prefect_env(port, database_url, host))


def start_mlflow(run: Path, port: int, store_uri: str, destination: str,
                 host: str = LOOPBACK) -> int:
    """An MLflow tracking server whose artifacts it proxies to destination; the store's URI
    travels in the environment (MLFLOW_BACKEND_STORE_URI), never on the command line."""
    env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": store_uri}
    return spawn(run, "mlflow", [program("mlflow"), "server", "--serve-artifacts",
                                 "--artifacts-destination", destination,
                                 "--host", host, "--port", str(port)], env)


def running_or_free(run: Path, name: str, what: str, database: str, port: int,
                    port_var: str, host: str = LOOPBACK) -> int | None:
    """The PID of name if it already runs on this database (an error if on another), else
    None once port is known to be free for it."""
    pid = read_pid(run, name)
    if pid is not None:
        was = (run / f"{name}.database").read_text().strip() \
            if (run / f"{name}.database").exists() else "?"
        if was != database:
            raise ServiceError(f"{what} already runs (PID {pid}) on {was}, not {database}: "
                               "stop it first (make stop)")
        print(f"{what} already running (PID {pid})")
        return pid
    if not port_free(port, host):
        raise ServiceError(f"port {port} on {host} is taken: pick another for the {what} "
                           f"({port_var}=...)")
    return None


def artifacts_destination(given: str | None, db: str, run: Path) -> str:
    """Where the MLflow server keeps artifacts: given (folder or URI), else the checkout's
    mlartifacts/ on SQLite, the run folder's mlflow-artifacts/ on PostgreSQL."""
    if given and "://" in given:
        return given
    folder = Path(given) if given else (checkout() / "mlartifacts" if db == "sqlite"
                                        else run / "mlflow-artifacts")
    folder = folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder)


def set_profile(api_url: str) -> None:
    """The API URL into this checkout's Prefect profile, as `make server` always did."""
    done = subprocess.run([program("prefect"), "config", "set", f"PREFECT_API_URL={api_url}"],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise ServiceError(f"prefect config set failed: {done.stderr.strip()}")


def postgres_urls(run: Path, server_url: str | None, pg_port: int | None
                  ) -> tuple[str, str, str]:
    """Prefect's and MLflow's database URLs on server_url (None: the project's own cluster),
    their databases created if missing, and a line saying so."""
    if server_url and not parsed(server_url).drivername.startswith("postgres"):
        raise ServiceError(f"not a PostgreSQL URL: {masked(server_url)}")
    server = server_url or own_cluster(run, pg_port)
    created = create_databases(server)
    where = "an existing server" if server_url else f"the project's cluster {run / 'postgres'}"
    line = (f"PostgreSQL: {masked(server)} ({where}); databases {', '.join(DATABASES)}"
            + (f" (created {', '.join(created)})" if created else ""))
    return (database_url(server, "prefect", "asyncpg", options=False),
            database_url(server, "mlflow", "psycopg"), line)


def ensure_prefect(run: Path, port: int, database_url: str | None, host: str = LOOPBACK) -> int:
    """The PID of the Prefect server on database_url (None: SQLite): running, else started."""
    shown = masked(database_url) if database_url else "sqlite"
    pid = running_or_free(run, "server", "Prefect server", shown, port, "PREFECT_PORT", host)
    if pid is None:
        pid = start_prefect(run, port, database_url, host)
        (run / "server.database").write_text(shown + "\n")
    return pid


def ensure_mlflow(run: Path, port: int, store: str, destination: str,
                  host: str = LOOPBACK) -> tuple[int, str]:
    """The PID and URL of the MLflow server on store: running, else started."""
    pid = running_or_free(run, "mlflow", "MLflow server", masked(store), port, "MLFLOW_PORT",
                          host)
    if pid is None:
        pid = start_mlflow(run, port, store, destination, host)
        (run / "mlflow.database").write_text(masked(store) + "\n")
        (run / "mlflow.url").write_text(f"http://{advertised(host)}:{port}\n")
    return pid, (run / "mlflow.url").read_text().strip()


def start(db: str, prefect_port: int = PREFECT_PORT, mlflow: bool = False,
          mlflow_port: int = MLFLOW_PORT, server_url: str | None = None,
          artifacts: str | None = None, pg_port: int | None = None,
          host: str = LOOPBACK) -> None:
    """Start what `db` asks for (see the module's docstring) and print where it is. `host`: the
    address the Prefect and MLflow servers listen on (the project's PostgreSQL stays on
    loopback: only they use it)."""
    if server_url and db != "postgres":
        raise ServiceError("a database URL is for --db postgres")
    mlflow = mlflow or db == "postgres"
    if artifacts and not mlflow:
        raise ServiceError("--artifacts-destination is for the MLflow server: add --mlflow")
    run = run_folder()
    run.mkdir(parents=True, exist_ok=True)
    prefect_db = store = None
    lines = []
    if db == "postgres":
        prefect_db, store, line = postgres_urls(run, server_url, pg_port)
        lines.append(line)
    elif mlflow:
        store = f"sqlite:///{checkout() / 'mlflow.db'}"
    prefect_pid = ensure_prefect(run, prefect_port, prefect_db, host)
    if store:  # started before Prefect is waited for: the two start side by side
        destination = artifacts_destination(artifacts, db, run)
        mlflow_pid, mlflow_url = ensure_mlflow(run, mlflow_port, store, destination, host)
    api = f"http://{advertised(host)}:{prefect_port}/api"
    wait_healthy("Prefect server", f"{api}/health", prefect_pid, run / "server.log")
    set_profile(api)
    (run / "server.url").write_text(api + "\n")
    on = f", database {masked(prefect_db)}" if prefect_db else ""
    lines.insert(0, f"Prefect server: {api.removesuffix('/api')} (UI){on}, log "
                    f"{run / 'server.log'}; this checkout's Prefect CLI and flow runs now use it "
                    f"(PREFECT_API_URL in {prefect_home() / 'profiles.toml'})")
    if store:
        wait_healthy("MLflow server", f"{mlflow_url}/health", mlflow_pid, run / "mlflow.log")
        lines.insert(1, f"MLflow server: {mlflow_url} (UI and tracking), runs in "
                        f"{masked(store)}, artifacts in {masked(destination)} (proxied by the "
                        f"server), log {run / 'mlflow.log'}; every stage logs to it with, in "
                        f"params.yaml (not changed here):\n"
                        f"    common.mlflow.tracking_uri: {mlflow_url}\n"
                        "    common.mlflow.artifact_dir: null")
    print("\n".join(lines))


def stop() -> None:
    """Stop the worker, the Prefect and MLflow servers, then the project's PostgreSQL cluster;
    take the server out of the Prefect profile. Stopping what is not running is no error."""
    run = run_folder()
    stopped = False
    for name, _, called, grace_s in SERVICES:
        pid = read_pid(run, name)
        if pid is not None:
            stop_group(pid, grace_s)
            print(f"stopped {called} (PID {pid})")
            stopped = True
        for suffix in ("pid", "settings", "database"):
            (run / f"{name}.{suffix}").unlink(missing_ok=True)
    (run / "mlflow.url").unlink(missing_ok=True)
    pid = stop_cluster(run / "postgres")
    if pid is not None:
        print(f"stopped PostgreSQL (PID {pid}, cluster {run / 'postgres'})")
        stopped = True
    if (run / "server.url").exists():
        subprocess.run([program("prefect"), "config", "unset", "PREFECT_API_URL"],
                       capture_output=True, stdin=subprocess.DEVNULL)
        (run / "server.url").unlink()
        print("this checkout's Prefect CLI and flow runs are back on an ephemeral server")
    elif not stopped:
        print("nothing to stop")


def status() -> None:
    """One line for each server of this checkout: running (where, on what) or not."""
    run = run_folder()
    for name, what, _, _ in SERVICES:
        pid = read_pid(run, name)
        if pid is None:
            print(f"{what}: not running")
            continue
        details = [f"{kind} {(run / f'{name}.{suffix}').read_text().strip()}"
                   for kind, suffix in (("at", "url"), ("on", "database"), ("with", "settings"))
                   if (run / f"{name}.{suffix}").exists()]
        print(f"{what}: running (PID {pid}) {', '.join(details)}; log {run / f'{name}.log'}")
    folder = run / "postgres"
    state = cluster_state(folder)
    if state is not None:
        print(f"PostgreSQL: running (PID {state[0]}) on 127.0.0.1:{state[1]}, cluster {folder}")
    else:
        print(f"PostgreSQL: not running (cluster {folder}"
              f"{'' if (folder / 'data').exists() else ': none yet'})")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.services",
                                     description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    begin = commands.add_parser("start", help="start the servers (see the module's docstring)")
    begin.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    begin.add_argument("--database-url", help=f"an existing PostgreSQL server (default: "
                       f"${URL_VAR}, else the project's own cluster)")
    begin.add_argument("--prefect-port", type=int, default=PREFECT_PORT)
    begin.add_argument("--mlflow", action="store_true", help="an MLflow server on SQLite too")
    begin.add_argument("--mlflow-port", type=int, default=MLFLOW_PORT)
    begin.add_argument("--artifacts-destination", help="a folder or s3://bucket/prefix")
    begin.add_argument("--host", default=os.environ.get("SERVER_HOST") or LOOPBACK,
                       help="where the Prefect and MLflow servers listen: 0.0.0.0 for a team's "
                            "other machines (default: $SERVER_HOST, else 127.0.0.1; they have no "
                            "login of their own: keep them inside your network)")
    begin.add_argument("--pg-port", type=int, help="the project's cluster's port (default: "
                       "$PG_PORT, else a free one)")
    commands.add_parser("stop", help="stop everything this checkout started")
    commands.add_parser("status", help="what runs")
    args = parser.parse_args(argv)
    try:
        if args.command == "start":
            url = args.database_url or (os.environ.get(URL_VAR) if args.db == "postgres"
                                        else None)
            pg_port = args.pg_port or (int(os.environ["PG_PORT"]) if os.environ.get("PG_PORT")
                                       else None)
            start(args.db, args.prefect_port, args.mlflow, args.mlflow_port, url or None,
                  args.artifacts_destination, pg_port, args.host)
        elif args.command == "stop":
            stop()
        else:
            status()
    except ReproLabError as exc:
        print(f"error: {masked(str(exc))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
