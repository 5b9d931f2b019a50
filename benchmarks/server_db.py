"""Prefect's server on SQLite against PostgreSQL: the same concurrent load on each, side by side.

The benchmark starts each server itself, one after the other, on this machine, each in a
temporary PREFECT_HOME on a free port: on SQLite (Prefect's default, `make server`) and on
PostgreSQL (a throwaway cluster made by tasks/services.py, as `make server DB=postgres`). The
same two loads then run against each, from client processes of their own (PREFECT_API_URL set):
- `mapped`: one flow maps --tasks task runs that all start at once and each take a slot of a
  tag limited to 2 at once (`prefect concurrency-limit create TAG 2`), holding it --hold
  seconds: the shape of the Kinetics frames stage that hit "database is locked" on SQLite;
- `flows`: --flows flow runs at once, one process each, each a small flow of --steps tasks.
Clients import Prefect first and start together (a barrier), so the seconds are the load's
own: from the start to the last client's end. Also per database and load: "database is
locked" errors, the log records that name it in the server's log (PREFECT_SERVER_LOG_RETRYABLE_
ERRORS=true, else it hides them; uvicorn's copy of a request's error not counted again) and in
the clients' output; the clients' requests retried after a 503, and all retried requests
(Prefect's client logs each at debug level: a handler counts them); failed runs (a client that
failed, or a flow run the API does not hold as COMPLETED). One run of each: a busy machine
shows in both columns, not evenly; read the counts before the seconds.

    python -m benchmarks.server_db [--tasks 32] [--hold 0.2] [--flows 8] [--steps 4] [--keep]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tasks import services

TAG = "bench-slot"
LOCKED = "database is locked"
SUMMARY = "BENCH "
RECORD = re.compile(r"\n(?=\d\d:\d\d:\d\d\.\d+ \| )")  # a Prefect log record starts so


@dataclass
class Load:
    seconds: float = 0.0
    locked: int = 0
    retried_503: int = 0
    retried: int = 0
    failed: int = 0


# -- the clients (run as `python -m benchmarks.server_db --client ...`) -------------------------

class RetryCounter(logging.Handler):
    """Counts the requests Prefect's client retries (it logs each at debug level)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.retried = self.retried_503 = 0

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "Another attempt will be made" in message:
            self.retried += 1
            self.retried_503 += "status code 503" in message


def client(kind: str, size: int, hold: float, barrier: Path) -> None:
    from prefect import flow, task, unmapped
    from prefect.task_runners import ThreadPoolTaskRunner

    counter = RetryCounter()
    client_logger = logging.getLogger("prefect.client")
    client_logger.addHandler(counter)
    client_logger.setLevel(logging.DEBUG)

    @task(tags=[TAG])
    def hold_slot(i: int, seconds: float) -> int:
        time.sleep(seconds)
        return i

    @task
    def step(i: int) -> int:
        time.sleep(0.05)
        return i

    @flow(name="bench-mapped", task_runner=ThreadPoolTaskRunner(max_workers=size))
    def mapped() -> int:
        return sum(f.result() for f in hold_slot.map(range(size), unmapped(hold)))

    @flow(name="bench-flow")
    def small() -> int:
        return sum(f.result() for f in step.map(range(size)))

    (barrier / f"ready-{os.getpid()}").touch()
    while not (barrier / "go").exists():
        time.sleep(0.01)
    begun = time.monotonic()
    total = mapped() if kind == "mapped" else small()
    assert total == size * (size - 1) // 2, total
    print(SUMMARY + json.dumps({"seconds": time.monotonic() - begun, "retried": counter.retried,
                                "retried_503": counter.retried_503}), flush=True)


# -- the servers and the loads -----------------------------------------------------------------

def locked_errors(log_text: str) -> int:
    """Log records (with their tracebacks) that name "database is locked"; a request's error is
    logged by prefect.server and again by uvicorn.error: counted once."""
    return sum(LOCKED in record and "uvicorn.error" not in record.split("\n", 1)[0]
               for record in RECORD.split(log_text))


def start_server(db: str, home: Path, work: Path) -> tuple[str, int, float]:
    """A Prefect server on db in home: its API URL, PID (its process group) and start seconds."""
    database = None
    if db == "postgres":
        cluster = home / "postgres"
        services.init_cluster(cluster, work)
        server = services.local_server_url(services.start_cluster(cluster, services.free_port()))
        services.create_databases(server, ("prefect",))
        database = services.database_url(server, "prefect", "asyncpg")
    port = services.free_port()
    env = {**services.prefect_env(port, database), "PREFECT_HOME": str(home),
           "PREFECT_SERVER_LOG_RETRYABLE_ERRORS": "true"}
    begun = time.monotonic()
    pid = services.spawn(home, "server", [services.program("prefect"), "server", "start"], env)
    api = f"http://127.0.0.1:{port}/api"
    services.wait_healthy(f"Prefect server on {db}", f"{api}/health", pid, home / "server.log")
    return api, pid, time.monotonic() - begun


def client_env(home: Path, api: str) -> dict[str, str]:
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": api,
           "PREFECT_LOGGING_LEVEL": "WARNING"}
    env.pop("PREFECT_API_DATABASE_CONNECTION_URL", None)
    return env


def run_load(kind: str, clients: int, size: int, hold: float, home: Path, api: str) -> Load:
    """clients processes of kind at once; the server log's new lines are read for errors."""
    log = home / "server.log"
    log_from = log.stat().st_size
    barrier = Path(tempfile.mkdtemp(dir=home, prefix=f"{kind}-"))
    outputs = [barrier / f"client-{i}.log" for i in range(clients)]
    procs = []
    for output in outputs:
        with open(output, "w") as out:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "benchmarks.server_db", "--client", kind, "--size",
                 str(size), "--hold", str(hold), "--barrier", str(barrier)],
                env=client_env(home, api), stdout=out, stderr=subprocess.STDOUT,
                cwd=services.checkout()))
    while len(list(barrier.glob("ready-*"))) < clients:
        if any(p.poll() is not None for p in procs):
            break
        time.sleep(0.05)
    begun = time.monotonic()
    (barrier / "go").touch()
    codes = [p.wait(timeout=600) for p in procs]
    load = Load(seconds=time.monotonic() - begun, failed=sum(code != 0 for code in codes))
    with open(log, errors="replace") as server_log:
        server_log.seek(log_from)
        load.locked = locked_errors(server_log.read())
    for output in outputs:
        text = output.read_text(errors="replace")
        load.locked += locked_errors(text)
        for line in text.splitlines():
            if line.startswith(SUMMARY):
                summary = json.loads(line[len(SUMMARY):])
                load.retried += summary["retried"]
                load.retried_503 += summary["retried_503"]
    flow_name = "bench-mapped" if kind == "mapped" else "bench-flow"
    load.failed = max(load.failed, not_completed(api, flow_name, clients))
    return load


def not_completed(api: str, flow_name: str, expected: int) -> int:
    """Runs of flow_name the API does not hold as COMPLETED (missing ones count as failed)."""
    import httpx

    runs = httpx.post(f"{api}/flow_runs/filter", json={
        "flows": {"name": {"any_": [flow_name]}}, "limit": 200}, timeout=30).json()
    completed = sum(r["state_type"] == "COMPLETED" for r in runs)
    return max(expected - completed, len(runs) - completed)


def measure(db: str, args: argparse.Namespace, work: Path) -> dict[str, object]:
    home = work / db
    home.mkdir()
    api, pid, start_s = start_server(db, home, work)
    try:
        subprocess.run([services.program("prefect"), "concurrency-limit", "create", TAG, "2"],
                       env=client_env(home, api), check=True, capture_output=True)
        return {"start": start_s,
                "mapped": run_load("mapped", 1, args.tasks, args.hold, home, api),
                "flows": run_load("flows", args.flows, args.steps, 0.0, home, api)}
    finally:
        services.stop_group(pid, 10)
        services.stop_cluster(home / "postgres")


def print_table(args: argparse.Namespace, results: dict[str, dict[str, object]]) -> None:
    sqlite, postgres = results["sqlite"], results["postgres"]

    def row(label: str, a: float, b: float, digits: int = 0, ratio: bool = False) -> None:
        cells = f"{a:>12.{digits}f}{b:>12.{digits}f}"
        print(f"  {label:36}{cells}" + (f"{b / a:>11.2f}x" if ratio and a else ""))

    print(f"{'Prefect server, one run each':38}{'SQLite':>12}{'PostgreSQL':>12}{'PG/SQLite':>12}")
    row("server start to healthy, s", sqlite["start"], postgres["start"], 1, ratio=True)
    for key, title in (("mapped", f"1 flow, {args.tasks} mapped tasks holding a slot of a "
                                  f"tag limited to 2, {args.hold:g} s each"),
                       ("flows", f"{args.flows} flow runs at once (a process each), "
                                 f"{args.steps} tasks each")):
        a, b = sqlite[key], postgres[key]
        print(title)
        row("seconds", a.seconds, b.seconds, 1, ratio=True)
        row("'database is locked' errors", a.locked, b.locked)
        row("requests retried after a 503", a.retried_503, b.retried_503)
        row("requests retried (all)", a.retried, b.retried)
        row("failed runs", a.failed, b.failed)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=32)
    parser.add_argument("--hold", type=float, default=0.2)
    parser.add_argument("--flows", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--keep", action="store_true", help="keep the servers' and clients' logs")
    parser.add_argument("--client", choices=("mapped", "flows"), help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--barrier", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        client(args.client, args.size, args.hold, args.barrier)
        return 0
    work = Path(tempfile.mkdtemp(prefix="reprolab-server-db-"))
    try:
        results = {db: measure(db, args, work) for db in ("sqlite", "postgres")}
    finally:
        if args.keep:
            print(f"logs: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print_table(args, results)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
