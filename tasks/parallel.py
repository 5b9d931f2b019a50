"""Map a Prefect task over batches of work, under threads or a Dask cluster (`common.task_runner`).

Batches, not items, are the unit of a task run: Kinetics has ~650k clips, and one task run per
clip would drown the Prefect database. The runner's worker count is the concurrency limit;
across several flow runs, a Prefect tag concurrency limit on the task's tag caps it globally
(`prefect concurrency-limit create kinetics-download 4`); a tag with no limit is left off the
task runs, so they do not ask the server for slots. Each of the `max_workers` batches
running at once gets its share of this process's threads (tasks/threads.py).
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from prefect import Task, unmapped
from prefect.futures import as_completed
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from tasks.config import CommonSettings
from tasks.threads import thread_share

T = TypeVar("T")
BATCHES_PER_WORKER = 4


@contextmanager
def exported(name: str, value: str | None) -> Iterator[None]:
    """Set an environment variable for child processes while inside (left as it is when value
    is None), then restore what was there."""
    previous = os.environ.get(name)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


@contextmanager
def shared_prefect_api() -> Iterator[None]:
    """Export this run's Prefect API URL, so child processes (DVC stages, Dask workers) report
    to the same server instead of each starting an ephemeral one."""
    from prefect.client.orchestration import get_client

    url = None
    try:
        with get_client(sync_client=True) as client:
            url = str(client.api_url).rstrip("/")
    except Exception:  # noqa: BLE001 - no API reachable: children start their own
        pass
    with exported("PREFECT_API_URL", url):
        yield


def tags_with_limits(task: Task) -> Task:
    """`task` keeping only the tags that have a concurrency limit on the API server (as
    `prefect concurrency-limit create TAG N` makes). The engine asks the server for a slot for
    every tag of every task run; on SQLite two asks at once collide ("database is locked") and
    the client retries ~2 s later, with no limit to keep. A limit made during a run applies
    from the next run."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    kept = set()
    with get_client(sync_client=True) as client:
        for tag in task.tags:
            try:
                client.read_global_concurrency_limit_by_name(f"tag:{tag}")
            except ObjectNotFound:
                continue
            kept.add(tag)
    return task if kept == set(task.tags) else task.with_options(tags=kept)


def task_runner(common: CommonSettings | None, max_workers: int) -> TaskRunner:
    """Threads (default), a local Dask cluster of `max_workers` processes, or `dask_address`."""
    if common is None or common.task_runner == "threads":
        return ThreadPoolTaskRunner(max_workers=max_workers)
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError as exc:  # pragma: no cover - prefect-dask is a dependency
        raise ImportError("common.task_runner: 'dask' needs prefect-dask installed") from exc
    if common.dask_address:
        return DaskTaskRunner(address=common.dask_address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": max_workers, "threads_per_worker": 1,
                                          "processes": True, "dashboard_address": ":0"})


def batched(items: Sequence[T], size: int) -> list[list[T]]:
    """[a, b, c, d, e] with size 2 -> [[a, b], [c, d], [e]]."""
    if size < 1:
        raise ValueError(f"batch size must be >= 1, got {size}")
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


def batch_size_for(n_items: int, batch_size: int, max_workers: int) -> int:
    """`batch_size`, made smaller when there are too few items to keep every worker busy to the
    end (at least BATCHES_PER_WORKER batches each, so the last round is short)."""
    per_worker = math.ceil(n_items / (BATCHES_PER_WORKER * max_workers))
    return max(1, min(batch_size, per_worker))


def map_batches(task: Task, items: Sequence[T], batch_size: int, max_workers: int,
                common: CommonSettings | None = None, **fixed: Any
                ) -> Iterator[tuple[list[T], Any]]:
    """Run `task(batch=..., **fixed)` for every batch; yield (batch, result) as each completes.

    At most `max_workers` batches run at once. A batch whose task raises re-raises here, after
    the batches already yielded were handled by the caller (e.g. saved to a ledger).
    """
    batches = batched(items, batch_size_for(len(items), batch_size, max_workers))
    if not batches:
        return
    parameters = {"batch": batches, **{k: unmapped(v) for k, v in fixed.items()}}
    # each batch running at once gets its share: torch's threads here (thread pool), the
    # environment of a local Dask cluster's workers (it wins over Dask's one thread a worker)
    with shared_prefect_api(), thread_share(max_workers), \
            task_runner(common, max_workers) as runner:
        futures = runner.map(tags_with_limits(task), parameters=parameters)
        by_id = {future.task_run_id: batch for future, batch in zip(futures, batches, strict=True)}
        for future in as_completed(futures):
            yield by_id[future.task_run_id], future.result()
