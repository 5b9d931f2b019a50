"""Gradient diagnostics: the shattering and co-activation measures, the opt-in callback in the
shared training loop (which must not change what is trained), and its MLflow output."""
from __future__ import annotations

import mlflow
import numpy as np
import pytest
import torch
from torch import nn

from benchmarks.gradients import measure
from tasks.diagnostics import GradientDiagnostics, autocorrelation, coactivation, shattering
from tasks.train import FitConfig, fit
from tests.tasks.test_train import CPU, _loaders, _model, _same_weights

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_autocorrelation_of_noise_is_near_zero_and_of_a_smooth_curve_near_one():
    rng = np.random.default_rng(0)
    assert abs(autocorrelation(rng.normal(size=4000), 1)[1]) < 0.05
    assert autocorrelation(np.sin(np.linspace(0, 3, 200)), 3)[1] > 0.95
    assert autocorrelation(np.full(50, 2.0), 2).tolist() == [1.0, 1.0, 1.0]  # a linear map


def test_a_linear_model_has_perfectly_correlated_input_gradients():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 1))
    got = shattering(model, [torch.randn(4, 3, 4)], points=32)
    assert got == {"grad_autocorr_lag1": 1.0, "grad_corr_length": 32.0}


def test_token_ids_have_no_input_gradient_so_no_shattering_measure():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(12, 1))
    assert shattering(model, [torch.randint(10, (2, 3))]) == {}


def test_depth_shatters_plain_and_batchnorm_nets_more_than_scaled_residual_ones():
    r1 = {v: np.mean([measure(v, 50, 64, seed, 256)[0] for seed in range(3)])
          for v in ("plain", "batchnorm", "residual_scaled")}
    assert r1["residual_scaled"] > 0.95
    assert r1["plain"] < r1["residual_scaled"] - 0.1
    assert abs(r1["batchnorm"]) < 0.3  # close to white noise


def test_coactivation_is_the_share_of_active_units_per_layer():
    layer = nn.Linear(4, 6)
    nn.init.zeros_(layer.weight)
    with torch.no_grad():
        layer.bias.copy_(torch.tensor([1.0, 1.0, 1.0, -1.0, -1.0, -1.0]))
    model = nn.Sequential(layer, nn.ReLU(), nn.Linear(6, 2), nn.SELU())
    rates = coactivation(model, [torch.randn(5, 4)])
    assert set(rates) == {"1", "3"} and rates["1"] == pytest.approx(0.5)


def test_the_callback_leaves_training_exactly_as_without_it(tmp_path):
    train, val, _ = _loaders()
    config = FitConfig(epochs=3, lr=3e-3, seed=0)
    plain = fit(_model(), train, val, nn.BCEWithLogitsLoss(), config, CPU)
    train, val, _ = _loaders()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    with mlflow.start_run() as run:
        probed = fit(_model(), train, val, nn.BCEWithLogitsLoss(),
                     FitConfig(epochs=3, lr=3e-3, seed=0, diagnostics_every=4), CPU)
    assert _same_weights(plain.model, probed.model)  # dropout draws, shuffles: all unchanged
    assert [r["val_loss"] for r in plain.history] == [r["val_loss"] for r in probed.history]
    steps = [row["step"] for row in probed.diagnostics]
    assert steps == [4.0, 8.0, 12.0, 16.0, 20.0, 24.0]  # 8 batches an epoch, 3 epochs
    row = probed.diagnostics[-1]
    assert -1 <= row["grad_autocorr_lag1"] <= 1 and 0 <= row["coactivation_mean"] <= 1
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    history = client.get_metric_history(run.info.run_id, "diag.grad_autocorr_lag1")
    assert [m.step for m in history] == [4, 8, 12, 16, 20, 24]
    artifacts = client.list_artifacts(run.info.run_id, "diagnostics")
    assert [a.path for a in artifacts] == ["diagnostics/gradients.png"]


def test_diagnostics_every_must_be_positive():
    with pytest.raises(ValueError, match="must be >= 1"):
        GradientDiagnostics(0, [torch.zeros(1, 2)])
