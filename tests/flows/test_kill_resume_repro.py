"""`dvc repro kinetics_train` killed (SIGKILL, the whole process group) after a checkpointed
epoch, then run again: it resumes from the persisted checkpoint, finishes, and leaves
`dvc status` clean."""
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from tests.flows.repo_copy import repo_env, run, small_repo

pytestmark = pytest.mark.slow
EPOCHS = 12  # room to kill it between two checkpoints, however fast an epoch is
RESUMABLE = {"kinetics": {"train": {"epochs": EPOCHS, "patience": EPOCHS, "warmup_epochs": 0},
                          "evaluate": {"ablation_dilation": False}}}


def checkpointed_epoch(folder: Path) -> int:
    """The last epoch BesNet's checkpoint holds (0 while there is none)."""
    for path in folder.glob("besnet-*.ckpt"):
        return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])
    return 0


def kill_after_first_checkpoint(proc: subprocess.Popen, folder: Path, timeout: float) -> int:
    """Wait for a checkpointed epoch, then SIGKILL the process group; the epoch it held."""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            epoch = checkpointed_epoch(folder)
            if epoch > 0:
                return epoch
            time.sleep(0.05)
        raise AssertionError(f"no checkpoint in {folder} (exit code {proc.poll()})")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)


def test_a_killed_kinetics_train_resumes_from_its_checkpoint(tmp_path, prefect_server):
    repo = small_repo(tmp_path / "repo", RESUMABLE)
    env = repo_env(prefect_server, PYTHONPATH=str(repo))
    run(["dvc", "repro", "kinetics_index"], repo, env)
    checkpoints = repo / "artifacts/checkpoints/kinetics_train"
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(["dvc", "repro", "kinetics_train"], cwd=repo, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        killed_at = kill_after_first_checkpoint(proc, checkpoints, timeout=150)
    assert 0 < killed_at < EPOCHS, "the first run finished before it could be killed"
    assert not (repo / "artifacts/kinetics/besnet/train.json").exists()

    run(["dvc", "repro", "kinetics_train"], repo, env)
    summary = json.loads((repo / "artifacts/kinetics/besnet/train.json").read_text())
    assert "resumed_from_epoch" not in summary  # a run-specific fact: MLflow's, not DVC's
    client = MlflowClient(tracking_uri=f"sqlite:///{repo}/mlflow.db")
    [besnet] = client.search_runs(
        [client.get_experiment_by_name("reprolab-kinetics").experiment_id],
        "attributes.run_name = 'besnet'", order_by=["attributes.start_time DESC"], max_results=1)
    assert besnet.data.metrics["resumed_from_epoch"] >= killed_at
    assert [row["epoch"] for row in summary["history"]] == list(range(1, EPOCHS + 1))
    assert checkpointed_epoch(checkpoints) == EPOCHS
    status = run(["dvc", "status", "--json", "kinetics_train"], repo, env)
    assert json.loads(status.stdout) == {}
