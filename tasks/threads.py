"""The thread budget: how many cores a process's torch, BLAS and OpenMP threads may use.

Processes that each start a thread per core slow each other down 20x or more when they run at
once (OpenMP threads spin against each other). So wherever the project runs heavy work in
several processes at once (Dask workers, torchrun ranks, the flow runs of one worker), each
gets its share: the budget of the process that starts them divided by how many run at once.

A process's budget is REPROLAB_THREADS (set by hand, or by the parent that gave it its share);
unset or `auto`, a lone process leaves torch and BLAS at their defaults and a split divides
every core the process may run on. The share is exported to child processes as
REPROLAB_THREADS, OMP_NUM_THREADS, MKL_NUM_THREADS and OPENBLAS_NUM_THREADS.

    python -m tasks.threads 2     # prints the share of each of 2 processes
"""
from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

from tasks.errors import ConfigError

BUDGET_VAR = "REPROLAB_THREADS"
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


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
    the number, or None when there is no budget (nothing is changed)."""
    threads = threads or budget()
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


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not argv[0].isdigit() or int(argv[0]) < 1:
        print("usage: python -m tasks.threads N_PROCESSES", file=sys.stderr)
        return 2
    print(share(int(argv[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
