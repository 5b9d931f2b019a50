"""Progress: a throttled Prefect progress artifact inside a flow run, nothing outside one."""
from __future__ import annotations

import numpy as np
import prefect.artifacts
import pytest
import torch
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.context import FlowRunContext
from prefect.logging.handlers import APILogHandler
from torch import nn

from tasks import progress
from tasks.progress import Progress, artifact_key
from tasks.train import FitConfig, fit, tensor_loader

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _tiny_fit(epochs: int = 3) -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 4)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.float32)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 1), nn.Flatten(0))
    fit(model, tensor_loader(X, y, 16, shuffle=True, seed=0),
        tensor_loader(X, y, 32, shuffle=False, seed=0), nn.BCEWithLogitsLoss(),
        FitConfig(epochs=epochs, lr=0.05, patience=10), torch.device("cpu"))


def test_artifact_keys_are_the_run_name_then_the_new_words():
    assert artifact_key("kinetics_frames", "kinetics frames") == "kinetics-frames"
    assert artifact_key("kinetics_download", "kinetics download (local)") == (
        "kinetics-download-local")
    assert artifact_key("crypto_train", "train") == "crypto-train"


class _FakeArtifacts:
    """Records create/update calls instead of reaching a Prefect API."""

    def __init__(self, monkeypatch):
        self.calls: list[tuple[str, float, str]] = []
        monkeypatch.setattr(prefect.artifacts, "create_progress_artifact", self.create)
        monkeypatch.setattr(prefect.artifacts, "update_progress_artifact", self.update)

    def create(self, value, key=None, description=None):
        self.calls.append(("create", value, key))
        return "artifact-id"

    def update(self, artifact_id, value, description=None):
        assert artifact_id == "artifact-id"
        self.calls.append(("update", value, description))
        return artifact_id


def test_updates_are_throttled_and_the_end_reports_100(monkeypatch):
    fake = _FakeArtifacts(monkeypatch)
    clock = iter(np.arange(0.0, 1000.0, 0.1))  # each look at the clock: 0.1 s later
    monkeypatch.setattr(progress.time, "monotonic", lambda: float(next(clock)))
    monkeypatch.setattr(progress, "prefect_run_name", lambda: "crypto_train")
    with Progress(400, "train", unit="batch", every=5.0) as bar:
        for _ in range(300):  # early stop: 300 of 400 batches
            bar.update(1, loss=0.5)
    assert fake.calls[0] == ("create", 0.0, "crypto-train")
    updates = [call for call in fake.calls if call[0] == "update"]
    assert 4 <= len(updates) <= 7  # ~30 s of work at most every 5 s, then the end
    assert updates[-2][1] <= 75.0 and updates[-1][1] == 100.0
    assert updates[-2][2].startswith("train: batch ") and "loss 0.5" in updates[-2][2]


def test_an_error_reports_how_far_it_got(monkeypatch):
    fake = _FakeArtifacts(monkeypatch)
    monkeypatch.setattr(progress, "prefect_run_name", lambda: "kinetics_frames")
    with pytest.raises(RuntimeError), Progress(10, "kinetics frames") as bar:
        bar.update(4)
        raise RuntimeError("ffmpeg died")
    assert fake.calls[-1][:2] == ("update", 40.0)


def test_a_failing_prefect_api_never_stops_the_work(monkeypatch, caplog):
    def refuse(*args, **kwargs):
        raise ConnectionError("API down")
    monkeypatch.setattr(prefect.artifacts, "create_progress_artifact", refuse)
    monkeypatch.setattr(progress, "prefect_run_name", lambda: "crypto_train")
    with Progress(3, "train") as bar:
        bar.update(3)
    assert bar.artifact is None and "not reported (API down)" in caplog.text


def test_training_outside_a_flow_creates_nothing(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("no artifact outside a flow run")
    monkeypatch.setattr(prefect.artifacts, "create_progress_artifact", refuse)
    monkeypatch.setattr(prefect.artifacts, "update_progress_artifact", refuse)
    assert progress.prefect_run_name() is None
    _tiny_fit()


def test_training_in_a_flow_reports_a_progress_artifact_reaching_100(prefect_api):
    @flow(name="crypto_train")
    def train_flow() -> str:
        _tiny_fit()
        return str(FlowRunContext.get().flow_run.id)

    run_id = train_flow()
    APILogHandler().flush()  # the run's logs reach the server before the session stops it
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
    [artifact] = [a for a in artifacts if a.type == "progress"]
    assert artifact.key == "crypto-train" and artifact.data == 100.0
    assert artifact.description.startswith("train: batch 12/12 (epoch 3/3, loss ")
