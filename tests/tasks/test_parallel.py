"""Mapping over batches: batch sizes, and task tags kept only where they cap something."""
from __future__ import annotations

from uuid import uuid4

from prefect import task

from tasks.parallel import batch_size_for, batched, map_batches, tags_with_limits


def test_batches_shrink_so_every_worker_gets_several():
    assert batch_size_for(200, 32, 2) == 25  # 8 batches, 4 for each worker
    assert batch_size_for(10_000, 32, 2) == 32
    assert batch_size_for(3, 32, 2) == 1
    assert [len(b) for b in batched(list(range(5)), 2)] == [2, 2, 1]


def test_tags_without_a_concurrency_limit_are_left_off(prefect_api):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    capped, free = f"capped-{uuid4().hex[:8]}", f"free-{uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        client.create_concurrency_limit(tag=capped, concurrency_limit=2)

    @task(name=f"tagged-{capped}", tags=[capped, free])
    def tagged(batch: list[int]) -> list[int]:
        return batch

    assert tags_with_limits(tagged).tags == {capped}
    only_capped = tagged.with_options(tags=[capped])
    assert tags_with_limits(only_capped) is only_capped
    assert tags_with_limits(tagged.with_options(tags=[free])).tags == set()
    results = [r for _, r in map_batches(tagged, [1, 2, 3, 4], 2, 2)]
    assert sorted(x for r in results for x in r) == [1, 2, 3, 4]
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(task_run_filter=TaskRunFilter(
            name=TaskRunFilterName(like_=f"tagged-{capped}")))
    assert len(runs) == 4 and all(set(run.tags) == {capped} for run in runs)
