"""A stage started by a pipeline or nightly run (in a process of its own, as DVC starts it) is a
subflow run of that run; its table says which stages ran and links their runs."""
import logging
import os
import subprocess
import sys
import uuid

import httpx
from prefect import flow
from prefect.client.schemas.objects import FlowRun
from prefect.settings import PREFECT_UI_URL, temporary_settings
from prefect.states import Completed

from flows.stage_runs import (
    PARENT_ENV,
    child_runs,
    current_flow_run_id,
    parent_of_stages,
    run_stage_flow,
    stages_markdown,
)
from tasks.crypto.pipeline import PIPELINE
from tasks.parallel import shared_prefect_api
from tests.conftest import ROOT

STAGE_SCRIPT = '''
from prefect import flow
from flows.stage_runs import run_stage_flow

@flow(name="tiny-stage")
def tiny_stage(overrides=None):
    return 42

assert run_stage_flow(tiny_stage, None) == 42
'''


@flow(name="tiny-stage")
def tiny_stage(overrides: dict | None = None) -> int:
    return 42


def test_the_stage_table_says_which_stages_ran_and_links_their_runs():
    run = FlowRun(id=uuid.uuid4(), name="brave-fox", flow_id=uuid.uuid4(), state=Completed(),
                  state_name="Completed")
    with temporary_settings(updates={PREFECT_UI_URL: "http://ui.test"}):
        text = stages_markdown(PIPELINE, ["crypto_ingest"], {"crypto_evaluate": run})
    assert "| crypto_ingest | ran |  |" in text
    assert "| crypto_train | skipped |  |" in text
    assert (f"| crypto_evaluate | ran | [brave-fox](http://ui.test/runs/flow-run/{run.id}) "
            "(Completed) |") in text


def test_a_stage_process_started_inside_a_flow_run_is_its_subflow_run(prefect_api, tmp_path):
    script = tmp_path / "stage.py"
    script.write_text(STAGE_SCRIPT)

    @flow(name="tiny-driver")
    def driver() -> str:
        # what dvc_repro does around DVC, which starts each stage as a process
        with shared_prefect_api(), parent_of_stages():
            subprocess.run([sys.executable, str(script)], cwd=ROOT, check=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
        return current_flow_run_id()

    parent = driver()
    assert PARENT_ENV not in os.environ  # exported for the stages only
    stage = child_runs(parent)["tiny-stage"]
    assert stage.state_name == "Completed"
    tracker = httpx.get(f"{prefect_api}/task_runs/{stage.parent_task_run_id}").json()
    assert tracker["flow_run_id"] == parent and tracker["state_type"] == "COMPLETED"
    assert tracker["state"]["state_details"]["child_flow_run_id"] == str(stage.id)


def test_a_stage_whose_parent_run_is_unknown_runs_on_its_own(prefect_api, monkeypatch, caplog):
    unknown = str(uuid.uuid4())
    monkeypatch.setenv(PARENT_ENV, unknown)
    with caplog.at_level(logging.WARNING, logger="reprolab"):
        assert run_stage_flow(tiny_stage, None) == 42
    assert f"not linked to the flow run {unknown}" in caplog.text
