"""One run at a time per checkout: whatever ReproLab starts that changes the workspace (a
pipeline's `dvc repro`, a `--set` experiment, a stage run by hand, a night) takes the
checkout's run lock first, and a second run waits its turn instead of failing on DVC's lock
of a busy output.

The lock is an OS file lock (`flock`) on `.dvc/tmp/reprolab/run.lock`, so a run that dies
releases it with its process. The holder writes who it is beside it, so a waiting run can say
what it waits for. It is re-entrant in a process, and the processes a holder starts (DVC's
stage commands) inherit it through REPROLAB_RUN_LOCK instead of waiting for their parent; of
a torchrun job's ranks on one machine, the first (LOCAL_RANK 0) holds it for the others.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from tasks.errors import ReproLabError
from tasks.logs import get_logger

LOCK = Path(".dvc/tmp/reprolab/run.lock")
HELD = "REPROLAB_RUN_LOCK"  # set for the holder's children: the lock file they are inside
POLL_SECONDS = 0.5
_depth = 0


class Busy(ReproLabError):
    """Another run held the checkout for longer than this one would wait."""


def holder(lock: Path = LOCK) -> dict | None:
    """Who holds (or last held) the lock: pid, host, command, since; None if never held."""
    try:
        return json.loads(lock.with_suffix(".holder").read_text())
    except (OSError, ValueError):
        return None


def describe(who: dict | None) -> str:
    if not who:
        return "another run"
    return f"pid {who.get('pid')} on {who.get('host')} ({who.get('command')}, since {who.get('since')})"


def _inherited(lock: Path) -> bool:
    held = os.environ.get(HELD)
    return bool(held) and Path(held).resolve() == lock.resolve()


def _other_rank() -> bool:
    """A torchrun rank but the first on its machine: its siblings are not its children, and
    the first holds the lock for all of them (waiting for it would deadlock their start)."""
    return os.environ.get("LOCAL_RANK", "0") != "0"


@contextmanager
def run_lock(what: str, wait: float, lock: Path = LOCK) -> Iterator[None]:
    """Hold the checkout's run lock while the block runs, waiting up to `wait` seconds for
    another run to finish (a log line says which); Busy after that. Outside a DVC repo (no
    `.dvc/`: nothing shared to protect) it does nothing."""
    global _depth
    if _depth or _inherited(lock) or _other_rank() or not lock.parent.parent.parent.is_dir():
        _depth += 1
        try:
            yield
        finally:
            _depth -= 1
        return
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+") as handle:
        _acquire(handle, what, wait, lock)
        _depth += 1
        os.environ[HELD] = str(lock.resolve())
        try:
            yield
        finally:
            _depth -= 1
            os.environ.pop(HELD, None)
            fcntl.flock(handle, fcntl.LOCK_UN)


def _acquire(handle, what: str, wait: float, lock: Path) -> None:
    log = get_logger()
    deadline = time.monotonic() + wait
    told = False
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise Busy(f"{what}: the checkout is busy: {describe(holder(lock))} still runs "
                           f"after {wait:.0f} s of waiting (common.lock_wait)") from None
            if not told:
                log.info("%s waits for %s to finish (up to %.0f s)", what,
                         describe(holder(lock)), wait)
                told = True
            time.sleep(POLL_SECONDS)
    if told:
        log.info("%s: the checkout is free, going on", what)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "command": what,
          "argv": " ".join(sys.argv[:4]),
          "since": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
    lock.with_suffix(".holder").write_text(json.dumps(me))
