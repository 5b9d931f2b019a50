"""The thread budget: how many cores a process's torch, BLAS and OpenMP threads may use.

Processes that each start a thread per core slow each other down 20x or more when they run at
once: every small op is a parallel region that ends when all its threads are done, so one
thread off its core stalls the others (spinning, by libgomp's default, for up to ~3 ms). So
wherever the project runs heavy work in several processes at once (Dask workers, torchrun
ranks, the flow runs of one worker), each gets its share: the budget of the process that
starts them divided by how many run at once.

A process's budget is REPROLAB_THREADS (set by hand, or by the parent that gave it its share);
unset or `auto`, a lone process leaves torch and BLAS at their defaults and a split divides
every core the process may run on. The share is exported to child processes as
REPROLAB_THREADS, OMP_NUM_THREADS, MKL_NUM_THREADS and OPENBLAS_NUM_THREADS.

Runs that know nothing of each other (two `dvc repro`, a demo beside a nightly) share the
machine too: every flow process that trains lists itself in a folder all of them read
(`runs_dir()`), and one that has no thread count of its own (no REPROLAB_THREADS or
OMP_NUM_THREADS) keeps, while others train, to its share of the cores: the cores divided by the
trainings listed (`MachineShare`, checked at optimizer steps). REPROLAB_SHARE_CORES=0 turns
this off. Its thread count, and so the last bits of what it computes (README, Determinism), then
depends on what else trains; give it a thread count to pin them. No OpenMP setting does this job:
threads that sleep sooner instead of spinning (OMP_WAIT_POLICY=PASSIVE, a small GOMP_SPINCOUNT)
still stall each other at two runs at once (3x and more) and make a run alone slower (up to 3x).

    python -m tasks.threads 2     # prints the share of each of 2 processes
    python -m tasks.threads runs  # the trainings listed on this machine now
"""
from __future__ import annotations

import contextlib
import fcntl
import importlib.abc
import importlib.util
import os
import secrets
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from tasks.errors import ConfigError

BUDGET_VAR = "REPROLAB_THREADS"
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
SHARE_VAR = "REPROLAB_SHARE_CORES"  # 0/off/false/no: each process keeps its own thread count
RUNS_VAR = "REPROLAB_RUNS_DIR"  # where the trainings on this machine list themselves
OFF = ("0", "off", "false", "no")
ACTIVE_SECONDS = 5.0  # a listed run that has not stepped for this long is not training
CHECK_SECONDS = 0.5  # how often a training looks at the list (at an optimizer step)


def cores() -> int:
    """The CPUs this process may run on (its affinity mask, which taskset and cgroups set)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def budget() -> int | None:
    """REPROLAB_THREADS as a number of threads; None when unset or `auto`."""
    value = os.environ.get(BUDGET_VAR, "").strip().lower()
    if value in ("", "auto"):
        return None
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"{BUDGET_VAR}: a positive number of threads or 'auto', "
                          f"got {value!r}")
    return int(value)


def share(n_processes: int, total: int | None = None) -> int:
    """Threads for each of `n_processes` running at once: `total` (default: this process's
    budget, else its cores) divided evenly, at least 1."""
    if n_processes < 1:
        raise ValueError(f"n_processes must be >= 1, got {n_processes}")
    return max(1, (total or budget() or cores()) // n_processes)


def thread_env(threads: int) -> dict[str, str]:
    """The environment variables that give a child process `threads` threads."""
    return {BUDGET_VAR: str(threads), **{name: str(threads) for name in THREAD_VARS}}


def set_torch_threads(threads: int) -> None:
    """torch's intra-op threads, and its inter-op threads where torch still allows it (once a
    process, before any inter-op work)."""
    import torch

    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # already set, or inter-op work has started
        torch.set_num_interop_threads(threads)


def apply_thread_budget(threads: int | None = None) -> int | None:
    """Give this process and its children `threads` threads (default: the budget); returns
    the number, or None when there is no budget (nothing is changed). Either way, its
    trainings share the machine with the project's others (`share_machine`)."""
    threads = threads or budget()
    share_machine()
    if threads is None:
        return None
    os.environ.update(thread_env(threads))
    set_torch_threads(threads)
    return threads


@contextlib.contextmanager
def thread_share(n_processes: int) -> Iterator[int]:
    """While inside, this process and the processes it starts use the share of each of
    `n_processes` running at once (torch threads here, the environment for children); both
    are restored on the way out. Yields the share."""
    import torch

    threads = share(n_processes)
    saved_env = {name: os.environ.get(name) for name in thread_env(threads)}
    saved_torch = torch.get_num_threads()
    os.environ.update(thread_env(threads))
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(saved_torch)
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# ---------------------------------------------------------------- runs that share the machine
def sharing() -> bool:
    """Whether this process shares the machine with the project's other trainings
    (REPROLAB_SHARE_CORES, on unless 0/off/false/no)."""
    return os.environ.get(SHARE_VAR, "").strip().lower() not in OFF


def runs_dir() -> Path:
    """The folder where the trainings on this machine list themselves: REPROLAB_RUNS_DIR, else
    one under the temporary folder that every checkout and user of the machine finds."""
    return Path(os.environ.get(RUNS_VAR) or Path(tempfile.gettempdir()) / "reprolab-runs")


def _alive(path: str) -> bool:
    """Whether the process that listed `path` still holds its lock (it is released at exit,
    however the process ends); a file this process may not read counts as alive."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except PermissionError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


class RunList:
    """The trainings on this machine: one file each, locked while its process lives and touched
    while it trains (at most every CHECK_SECONDS)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path: Path | None = None
        self._fd: int | None = None
        self._pid = os.getpid()

    def beat(self) -> None:
        """This process trains now (listed on its first call, and in a forked child anew)."""
        if self._pid != os.getpid():  # a fork: the parent's entry stays the parent's
            if self._fd is not None:
                os.close(self._fd)
            self.path, self._fd, self._pid = None, None, os.getpid()
        if self._fd is not None and os.fstat(self._fd).st_nlink == 0:  # removed (tmp cleaner)
            os.close(self._fd)
            self.path = self._fd = None
        if self._fd is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(OSError):  # one folder for every user, as /tmp is
                if self.folder.stat().st_uid == os.getuid():
                    self.folder.chmod(0o1777)
            path = self.folder / f"{os.getpid()}-{secrets.token_hex(4)}.run"
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)
            self.path, self._fd = path, fd
        os.utime(self._fd)

    def active(self) -> int:
        """Trainings listed that stepped in the last ACTIVE_SECONDS, this one included; files of
        processes that are gone are removed."""
        cutoff, count = time.time() - ACTIVE_SECONDS, 0
        with contextlib.suppress(FileNotFoundError), os.scandir(self.folder) as entries:
            for entry in entries:
                if not entry.name.endswith(".run"):
                    continue
                try:
                    recent = entry.stat().st_mtime >= cutoff
                    if self.path is not None and entry.name == self.path.name:
                        count += recent
                    elif _alive(entry.path):
                        count += recent
                    elif not recent:  # gone (an unlocked fresh file is being listed)
                        with contextlib.suppress(OSError):
                            os.unlink(entry.path)
                except FileNotFoundError:
                    continue
        return count

    def close(self) -> None:
        """Leave the list."""
        if self._fd is not None and self.path is not None and self._pid == os.getpid():
            with contextlib.suppress(OSError):
                self.path.unlink()
            os.close(self._fd)
            self.path = self._fd = None


def machine_share(active: int, total: int | None = None) -> int:
    """Threads for one of `active` trainings on this machine: its cores divided evenly."""
    return max(1, (total or cores()) // max(1, active))


class MachineShare:
    """Keeps this process's trainings to their share of the machine: at an optimizer step (at
    most every CHECK_SECONDS) it says it is training and, unless the process has a thread count
    of its own (REPROLAB_THREADS or OMP_NUM_THREADS: it is counted and keeps it), sets torch's
    threads in the training thread to the cores divided by the trainings listed, never above
    what that thread had before (its default, or what code set since)."""

    def __init__(self, runs: RunList) -> None:
        self.runs = runs
        self._local = threading.local()  # torch's thread count is per thread

    def on_step(self, *_: object) -> None:
        local, now = self._local, time.monotonic()
        if now < getattr(local, "next", 0.0):
            return None
        local.next = now + CHECK_SECONDS
        try:
            self.runs.beat()
            active = self.runs.active()
        except OSError as exc:  # no list (a full or read-only temp folder): train as before
            from tasks.logs import get_logger

            get_logger(__name__).warning("not sharing the cores with other runs: %s", exc)
            local.next = float("inf")
            return None
        if not fixed_threads():
            self.fit(active)
        return None

    def fit(self, active: int) -> int:
        """Set this thread's torch threads for `active` trainings; returns the count."""
        import torch

        local, current = self._local, torch.get_num_threads()
        if current != getattr(local, "set", None):  # this thread's own count, or code's since
            local.own = current
        target = min(local.own, machine_share(active))
        if target != current:
            torch.set_num_threads(target)
        local.set = target
        return target

    def close(self) -> None:
        self.runs.close()


_machine: MachineShare | None = None


def fixed_threads() -> bool:
    """Whether this process was given a thread count (REPROLAB_THREADS, OMP_NUM_THREADS)."""
    return budget() is not None or bool(os.environ.get("OMP_NUM_THREADS", "").strip())


def _install() -> None:
    global _machine
    if _machine is not None:
        return
    import atexit

    from torch.optim.optimizer import register_optimizer_step_pre_hook

    _machine = MachineShare(RunList(runs_dir()))
    register_optimizer_step_pre_hook(_machine.on_step)
    atexit.register(_machine.close)


class _WhenTorchLoads(importlib.abc.MetaPathFinder):
    """Installs the machine share right after torch is first imported."""

    def find_spec(self, name: str, path: object = None, target: object = None):
        if name != "torch":
            return None
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            load = spec.loader.exec_module

            def exec_module(module: object) -> None:
                load(module)
                _install()

            spec.loader.exec_module = exec_module  # this spec's own loader object
        return spec


def share_machine() -> None:
    """From its next optimizer step on, this process shares the machine's cores with the
    project's other trainings (see MachineShare); nothing when REPROLAB_SHARE_CORES is off.
    A process that has not imported torch does not import it for this: it is done when torch
    is imported."""
    if not sharing() or _machine is not None:
        return
    if "torch" in sys.modules:
        _install()
    elif not any(isinstance(finder, _WhenTorchLoads) for finder in sys.meta_path):
        sys.meta_path.insert(0, _WhenTorchLoads())


def main(argv: list[str]) -> int:
    if argv == ["runs"]:
        print(f"{RunList(runs_dir()).active()} trainings in {runs_dir()}")
        return 0
    if len(argv) != 1 or not argv[0].isdigit() or int(argv[0]) < 1:
        print("usage: python -m tasks.threads N_PROCESSES | runs", file=sys.stderr)
        return 2
    print(share(int(argv[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
