"""Gradient diagnostics (opt-in, `train.diagnostics_every: N` steps) and the measures behind them.

- Shattered gradients (Balduzzi et al., 2017): walk a line of slightly perturbed inputs
  x(t) = x0 + t * step * u, take the gradient of the summed output with respect to the input
  at each point, project it on u, and measure how correlated neighbouring gradients are. A
  network whose gradients are smooth in its input has lag-1 autocorrelation near 1; shattered
  gradients look like white noise (near 0).
- Co-activation: for every ReLU/SELU-like activation module, the share of its units that are
  active (> 0) per example, averaged over the batch. Near 0 or 1 everywhere means units that
  no longer separate examples.
Both are measured in eval mode on a fixed probe batch, under a forked RNG, so a run with
diagnostics trains exactly as one without.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.SELU, nn.GELU)


def autocorrelation(values: np.ndarray, max_lag: int) -> np.ndarray:
    """Normalised autocorrelation r(0..max_lag) of a 1-D sequence; a constant sequence (the
    gradient of a linear map) counts as perfectly correlated, r = 1 at every lag."""
    x = np.asarray(values, dtype=np.float64) - np.mean(values)
    denom = float(np.dot(x, x))
    if denom <= 1e-12 * max(float(np.dot(values, values)), 1e-300):
        return np.ones(max_lag + 1)
    return np.array([np.dot(x[: len(x) - k], x[k:]) / denom for k in range(max_lag + 1)])


def line_gradients(model: nn.Module, inputs: Sequence[torch.Tensor], points: int = 128,
                   step: float = 1e-2, seed: int = 0) -> np.ndarray:
    """Directional derivative of the summed output along a random unit direction, at `points`
    copies of the first example's first input spaced `step` apart (its other inputs, e.g. the
    second question of a pair, held fixed)."""
    x0 = inputs[0][0]
    gen = torch.Generator().manual_seed(seed)
    direction = torch.randn(x0.shape, generator=gen).to(x0.device, x0.dtype)
    direction /= direction.norm()
    offsets = torch.arange(points, device=x0.device, dtype=x0.dtype) * step
    line = x0.unsqueeze(0) + offsets.view(-1, *[1] * x0.dim()) * direction
    line.requires_grad_(True)
    others = [t[:1].expand(points, *t.shape[1:]) for t in inputs[1:]]
    (grad,) = torch.autograd.grad(model(line, *others).float().sum(), line)
    return (grad * direction).flatten(1).sum(dim=1).detach().cpu().numpy()


def shattering(model: nn.Module, inputs: Sequence[torch.Tensor], points: int = 128,
               step: float = 1e-2, seed: int = 0) -> dict[str, float]:
    """Lag-1 autocorrelation of the gradients along the line and the correlation length (first
    lag where it falls below 1/e; `points` if never). {} when the first input is not real-valued
    (token ids have no input gradient)."""
    if not inputs[0].is_floating_point():
        return {}
    r = autocorrelation(line_gradients(model, inputs, points, step, seed), points // 4)
    below = np.flatnonzero(r < np.exp(-1))
    return {"grad_autocorr_lag1": float(r[1]),
            "grad_corr_length": float(below[0] if len(below) else points)}


@contextmanager
def activation_rates(model: nn.Module) -> Iterator[dict[str, list[float]]]:
    """Within the block, every forward records each activation module's share of active units
    per example (mean over the batch), keyed by module name."""
    rates: dict[str, list[float]] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, ACTIVATIONS):
            def hook(_mod: nn.Module, _inp: Any, out: torch.Tensor, name: str = name) -> None:
                active = (out.detach() > 0).flatten(1).float().mean(dim=1)
                rates.setdefault(name, []).append(float(active.mean()))
            handles.append(module.register_forward_hook(hook))
    try:
        yield rates
    finally:
        for handle in handles:
            handle.remove()


def coactivation(model: nn.Module, inputs: Sequence[torch.Tensor]) -> dict[str, float]:
    """{layer: share of units active per example} on one batch (no gradients)."""
    with torch.no_grad(), activation_rates(model) as rates:
        model(*inputs)
    return {name: float(np.mean(values)) for name, values in rates.items()}


@contextmanager
def probing(model: nn.Module) -> Iterator[None]:
    """Eval mode and a forked RNG for the measurement; the training state is left as it was."""
    was_training = model.training
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        model.eval()
        try:
            yield
        finally:
            model.train(was_training)


class GradientDiagnostics:
    """The training callback: every `every` optimiser steps, shattering and co-activation on a
    fixed probe batch; kept in `history`, logged to the active MLflow run (metrics `diag.*`,
    and at `finish` a plot)."""

    def __init__(self, every: int, probe: Sequence[torch.Tensor], points: int = 64) -> None:
        if every < 1:
            raise ValueError(f"diagnostics every {every} steps: must be >= 1")
        self.every, self.probe, self.points = every, list(probe), points
        self.history: list[dict[str, float]] = []

    def __call__(self, step: int, model: nn.Module) -> None:
        if step % self.every:
            return
        with probing(model):
            row = {"step": float(step), **shattering(model, self.probe, self.points)}
            rates = coactivation(model, self.probe)
        row.update({f"coactivation.{name}": value for name, value in rates.items()})
        if rates:
            row["coactivation_mean"] = float(np.mean(list(rates.values())))
        self.history.append(row)
        log_to_mlflow(row, step)

    def finish(self) -> None:
        """The plot of the whole history into the active MLflow run (if any)."""
        import tempfile

        import mlflow

        if not self.history or mlflow.active_run() is None:
            return
        with tempfile.TemporaryDirectory() as tmp:
            mlflow.log_artifact(str(plot_history(self.history, Path(tmp) / "gradients.png")),
                                artifact_path="diagnostics")


def log_to_mlflow(row: dict[str, float], step: int) -> None:
    import mlflow

    if mlflow.active_run() is not None:
        mlflow.log_metrics({f"diag.{k}": v for k, v in row.items() if k != "step"}, step=step)


def plot_history(history: list[dict[str, float]], dest: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tasks.storage import save_figure

    steps = [row["step"] for row in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(steps, [row.get("grad_autocorr_lag1", np.nan) for row in history], marker="o")
    left.set(xlabel="step", ylabel="lag-1 autocorrelation", ylim=(-1.05, 1.05),
             title="input-gradient autocorrelation (1 = smooth, 0 = shattered)")
    layers = [k for k in history[0] if k.startswith("coactivation.")]
    for key in layers:
        right.plot(steps, [row.get(key, np.nan) for row in history], label=key.split(".", 1)[1])
    right.set(xlabel="step", ylabel="share of units active per example", ylim=(0, 1),
              title="co-activation per layer")
    if 0 < len(layers) <= 12:
        right.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, dest)
