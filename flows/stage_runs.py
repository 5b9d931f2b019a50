"""Stage runs under the run that caused them.

A pipeline or nightly flow run drives `dvc repro`; DVC runs each stale stage as its own process
(`python -m flows.<pipeline> <stage>`). The driving run exports its flow run id to those
processes (REPROLAB_PARENT_FLOW_RUN_ID); each stage then creates its flow run the way Prefect
creates a subflow run: a tracking task run in the parent flow run, and the stage's flow run
with that task run as `parent_task_run_id`. The server mirrors the stage run's state onto the
tracking task run, and the UI lists the stage runs under the driving run (its subflow runs,
its graph). The driving run also gets a markdown artifact: every stage, ran or skipped, with a
link to the stage's run.
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from uuid import UUID, uuid4

from tasks.logs import get_logger
from tasks.parallel import exported
from tasks.pipeline import Pipeline

PARENT_ENV = "REPROLAB_PARENT_FLOW_RUN_ID"


def current_flow_run_id() -> str | None:
    """The id of the flow run this code runs in (also inside its tasks), None outside one."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    return str(context.flow_run.id) if context and context.flow_run else None


@contextmanager
def parent_of_stages() -> Iterator[None]:
    """Stages started inside (DVC's subprocesses) become subflow runs of this flow run."""
    with exported(PARENT_ENV, current_flow_run_id()):
        yield


def run_stage_flow(stage_flow: Any, overrides: dict[str, Any] | None) -> Any:
    """Call a stage's flow; under a driving run (PARENT_ENV), as a subflow run of it."""
    from prefect.flow_engine import run_flow

    parameters = {"overrides": overrides}
    flow_run = linked_flow_run(stage_flow, parameters)
    if flow_run is None:
        return stage_flow(**parameters)
    return run_flow(stage_flow, flow_run=flow_run, parameters=parameters)


def linked_flow_run(stage_flow: Any, parameters: dict[str, Any]) -> Any:
    """A pending flow run of the stage under the parent flow run in PARENT_ENV (None without
    one, or when that run cannot be reached: the stage then runs on its own, with a warning)."""
    import httpx
    from prefect import Task
    from prefect.client.orchestration import get_client
    from prefect.context import TagsContext

    parent = os.environ.get(PARENT_ENV)
    if not parent:
        return None
    try:
        with get_client(sync_client=True) as client:
            tracker = client.create_task_run(
                Task(name=stage_flow.name, fn=stage_flow.fn), flow_run_id=UUID(parent),
                dynamic_key=uuid4().hex, name=stage_flow.name)
            return client.create_flow_run(
                stage_flow, parameters=stage_flow.serialize_parameters(parameters),
                parent_task_run_id=tracker.id, tags=TagsContext.get().current_tags)
    except (ValueError, httpx.HTTPError) as exc:
        get_logger().warning("%s: not linked to the flow run %s that started it (%s)",
                             stage_flow.name, parent, exc)
        return None


def child_runs(flow_run_id: str | None = None) -> dict[str, Any]:
    """{flow name: its latest subflow run} of a flow run (default: the current one)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterId,
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
    )
    from prefect.client.schemas.sorting import FlowRunSort

    flow_run_id = flow_run_id or current_flow_run_id()
    if flow_run_id is None:
        return {}
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[UUID(flow_run_id)])),
            sort=FlowRunSort.EXPECTED_START_TIME_ASC)
        if not runs:
            return {}
        flows = client.read_flows(flow_filter=FlowFilter(
            id=FlowFilterId(any_=list({r.flow_id for r in runs}))))
    names = {f.id: f.name for f in flows}
    return {names[r.flow_id]: r for r in runs}


def stages_markdown(pipeline: Pipeline, ran: list[str], runs: Mapping[str, Any]) -> str:
    """A table of the pipeline's stages in order: ran or skipped, and the stage's flow run."""
    lines = [f"## {pipeline.name} stages", "", "| stage | this run | stage flow run |",
             "|---|---|---|"]
    for stage in pipeline.stages:
        done = "ran" if stage.name in ran or stage.name in runs else "skipped"
        link = run_link(runs[stage.name]) if stage.name in runs else ""
        lines.append(f"| {stage.name} | {done} | {link} |")
    lines += ["", "skipped: DVC found the stage up to date, or an earlier stage failed."]
    return "\n".join(lines) + "\n"


def run_link(flow_run: Any) -> str:
    """`[name](UI url) (state)`, or the name and state where the UI address is unknown."""
    from prefect.utilities.urls import url_for

    url = url_for(flow_run)
    name = f"[{flow_run.name}]({url})" if url else flow_run.name
    return f"{name} ({flow_run.state_name})"


def publish_stages(pipeline: Pipeline, ran: list[str]) -> str:
    """The pipeline run's artifact `<pipeline>-stages`: stages_markdown of its stage runs."""
    from prefect.artifacts import create_markdown_artifact

    text = stages_markdown(pipeline, ran, child_runs())
    create_markdown_artifact(key=f"{pipeline.name}-stages", markdown=text,
                             description=f"the {pipeline.name} stages this run ran or skipped")
    return text
