"""Stages on the work pool their declaration names: Kinetics training on a `gpu` pool while the
rest of the pipeline runs on `cpu`.

A stage declared with `pool="gpu"` (tasks/pipeline.py, `Stage.pool`) runs, in a team's clone
(a results branch is set: tasks/workspace.py), as a flow run of the deployment
`run-stages/<pool>` (prefect.team.yaml puts it on REPROLAB_GPU_POOL). The hand-off goes
through what the team shares anyway: the run publishes what it has done so far (outputs to the
DVC remote, dvc.lock on the results branch), starts the pool's flow run and waits for it; that
run, in a clone of its own on a machine of that pool, starts from those results, pulls what
the stages need, runs them, pushes and publishes; then this run takes the results again and
goes on; a hand-off no worker of the pool finishes within REPROLAB_POOL_WAIT seconds (6 h)
is cancelled and fails the run, naming the pool. Outside a team's clone (one checkout: `make demo`, `reprolab run`, the single-user
deployments) every stage runs where the pipeline runs.

    prefect deployment run 'run-stages/gpu' --param targets='["kinetics_train"]'
"""
from __future__ import annotations

import os
import sys
from typing import Any

from prefect import flow

from flows.common import StageFailed, checkout_lock, dvc_repro
from tasks import workspace
from tasks.logs import get_logger
from tasks.pipeline import Pipeline
from tasks.workspace import TeamRun

DEPLOYMENT = "run-stages/{pool}"
WAIT_VAR = "REPROLAB_POOL_WAIT"  # seconds a hand-off waits for its pool's run (default 6 h)
WAIT_SECONDS = 6 * 3600


def pool_wait() -> float:
    return float(os.environ.get(WAIT_VAR) or WAIT_SECONDS)


def pool_groups(pipeline: Pipeline) -> list[tuple[str | None, list[str]]]:
    """The pipeline's stages in order, in runs of one pool (None: where the pipeline runs)."""
    groups: list[tuple[str | None, list[str]]] = []
    for stage in pipeline.stages:
        if groups and groups[-1][0] == stage.pool:
            groups[-1][1].append(stage.name)
        else:
            groups.append((stage.pool, [stage.name]))
    return groups


def changed_stages(before: str, after: str) -> list[str]:
    old, new = workspace.stages_of(before), workspace.stages_of(after)
    return [name for name, entry in new.items() if old.get(name) != entry]


def on_pool(pool: str, targets: list[str], run: TeamRun, what: str) -> list[str]:
    """Publish what this run did so far, run `targets` on `pool` (a flow run of
    run-stages/<pool>, waited for), take its results; returns the stages it ran."""
    from prefect.deployments import run_deployment

    run.finish(f"{what}: before {', '.join(targets)} on pool {pool}")
    before = (run.root / "dvc.lock").read_text()  # what the pool's run starts from
    get_logger().info("%s: %s on work pool %s (deployment %s)", what, ", ".join(targets), pool,
                      DEPLOYMENT.format(pool=pool))
    from prefect.exceptions import ObjectNotFound

    try:
        flow_run = run_deployment(DEPLOYMENT.format(pool=pool),
                                  parameters={"targets": targets}, timeout=pool_wait())
    except ObjectNotFound as exc:
        raise StageFailed(f"{', '.join(targets)} go to work pool {pool}, but the server has no "
                          f"deployment {DEPLOYMENT.format(pool=pool)}: deploy prefect.team.yaml "
                          "(make deploy PREFECT_FILE=prefect.team.yaml)") from exc
    if not flow_run.state.is_final():  # no worker of that pool took it, or it ran too long
        cancel(flow_run.id)
        raise StageFailed(f"{', '.join(targets)}: the flow run on work pool {pool} "
                          f"({flow_run.name}) did not finish within {pool_wait():.0f} s "
                          f"({WAIT_VAR}); it was {flow_run.state.name}: is a worker of that "
                          "pool running? It is cancelled; the next run hands it off again")
    if not flow_run.state.is_completed():
        raise StageFailed(f"{', '.join(targets)} on work pool {pool} ended "
                          f"{flow_run.state.type.value}: {flow_run.state.message or ''} "
                          f"(flow run {flow_run.name})")
    run.restart()
    return changed_stages(before, run.started)


def pulling_repro(targets: list[str]) -> list[str]:
    """dvc_repro, pulling what the stages that run lack when REPROLAB_DVC_PULL is set."""
    return dvc_repro(targets, pull=workspace.pulls())


def cancel(flow_run_id: Any) -> None:
    """Cancel a flow run that is no longer waited for (nothing if it ended meanwhile)."""
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelling

    with get_client(sync_client=True) as client:
        client.set_flow_run_state(flow_run_id, Cancelling(), force=True)


def repro_pipeline(pipeline: Pipeline, run: TeamRun | None, what: str,
                   repro: Any = pulling_repro) -> list[str]:
    """`dvc repro` of the pipeline (through `repro`); in a team's clone, the stages whose
    declaration names a pool run there (`on_pool`). Returns the stages that ran."""
    groups = pool_groups(pipeline)
    if run is None or all(pool is None for pool, _ in groups):
        return repro([pipeline.last.name])
    ran: list[str] = []
    for pool, names in groups:
        if pool is None:
            ran += repro(names)
        elif stale(names):
            ran += on_pool(pool, names, run, what)
        else:
            get_logger().info("%s: %s up to date, not sent to pool %s", what, ", ".join(names),
                              pool)
    return ran


def stale(targets: list[str]) -> bool:
    """Whether `dvc repro` of the targets would run anything (their stages or those before)."""
    from dvc.repo import Repo

    with Repo(".") as repo:
        return bool(repo.status(targets=targets, with_deps=True))


def team_repro(pipeline: Pipeline) -> list[str]:
    """The pipeline's `dvc repro`; in a team's clone from the results its team published, with
    what it lacks pulled, stages on their pools, its own results pushed and published."""
    target = [pipeline.last.name]
    what = f"{pipeline.name} pipeline"
    with checkout_lock(what):
        run = workspace.start(target, pull_all=False)  # dvc repro --pull takes what it needs
        ran = repro_pipeline(pipeline, run, what)
        if run is not None:
            run.finish(f"{what}: {', '.join(ran) or 'nothing to reproduce'}")
    return ran


@flow(name="run-stages")
def run_stages(targets: list[str]) -> dict[str, Any]:
    """Stages handed to this work pool by a pipeline or a night (`on_pool`): in this worker's
    clone, from the published results, `dvc repro` of the targets, pushed and published."""
    what = f"{', '.join(targets)} on this pool"
    with checkout_lock(what):
        run = workspace.start(targets, pull_all=False)
        ran = pulling_repro(targets)
        if run is not None:
            run.finish(f"{what}: {', '.join(ran) or 'nothing to reproduce'}")
    return {"stages_run": ran}


if __name__ == "__main__":
    run_stages(sys.argv[1:])
