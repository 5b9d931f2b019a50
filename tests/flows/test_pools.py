"""Stages on their declared work pool (flows/pools.py): the grouping, and that outside a team's
clone every stage runs where the pipeline runs. (The hand-off itself, a flow run of
run-stages/<pool> on another worker: tests/flows/test_team.py.)"""
import uuid

import pytest

from flows.common import StageFailed
from flows.pools import WAIT_VAR, changed_stages, on_pool, pool_groups, repro_pipeline
from tasks.pipeline import declaration


def test_kinetics_training_is_declared_on_the_gpu_pool():
    assert pool_groups(declaration("kinetics")) == [
        (None, ["kinetics_download", "kinetics_frames", "kinetics_index", "kinetics_split"]),
        ("gpu", ["kinetics_train", "kinetics_baseline"]),
        (None, ["kinetics_evaluate"])]
    assert pool_groups(declaration("crypto")) == [
        (None, [stage.name for stage in declaration("crypto").stages])]


def test_outside_a_team_clone_the_whole_pipeline_runs_here():
    calls = []
    ran = repro_pipeline(declaration("kinetics"), None, "kinetics pipeline",
                         repro=lambda targets: calls.append(targets) or ["kinetics_evaluate"])
    assert calls == [["kinetics_evaluate"]] and ran == ["kinetics_evaluate"]


def test_the_stages_a_hand_off_ran_are_those_whose_lock_entry_changed():
    before = "stages:\n  a: {outs: [{md5: '1'}]}\n  b: {outs: [{md5: '1'}]}\n"
    after = "stages:\n  a: {outs: [{md5: '1'}]}\n  b: {outs: [{md5: '2'}]}\n  c: {}\n"
    assert changed_stages(before, after) == ["b", "c"]


class Published:
    """A team run's record of what the hand-off asked of it (its git and DVC side is
    tests/tasks/test_workspace.py's and tests/flows/test_team.py's)."""

    def __init__(self, root):
        self.root, self.calls = root, []
        (root / "dvc.lock").write_text("stages: {}\n")

    def finish(self, message):
        self.calls.append(("finish", message))

    def restart(self):
        self.calls.append(("restart",))


def test_a_hand_off_no_worker_takes_fails_naming_the_pool_and_is_cancelled(
        prefect_api, tmp_path, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.client.schemas.filters import WorkPoolFilter, WorkPoolFilterName

    pool = f"nowhere-{uuid.uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        flow_id = client.create_flow_from_name("run-stages")
        client.create_deployment(flow_id=flow_id, name=pool, work_pool_name=pool,
                                 entrypoint="flows/pools.py:run_stages")
    monkeypatch.setenv(WAIT_VAR, "3")
    run = Published(tmp_path)
    with pytest.raises(StageFailed, match=f"work pool {pool} .* did not finish within 3 s"):
        on_pool(pool, ["kinetics_train"], run, "kinetics pipeline")
    assert run.calls == [("finish", f"kinetics pipeline: before kinetics_train on pool {pool}")]
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(work_pool_filter=WorkPoolFilter(
            name=WorkPoolFilterName(any_=[pool])))
    assert [r.parameters for r in runs] == [{"targets": ["kinetics_train"]}]
    assert runs[0].state.type.value in ("CANCELLING", "CANCELLED")


def test_a_pool_without_its_deployment_is_an_error_saying_what_to_deploy(prefect_api,
                                                                         tmp_path):
    run = Published(tmp_path)
    with pytest.raises(StageFailed, match="no deployment run-stages/nodeploy: deploy "
                                          "prefect.team.yaml"):
        on_pool("nodeploy", ["kinetics_train"], run, "kinetics pipeline")
