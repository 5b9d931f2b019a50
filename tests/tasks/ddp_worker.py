"""Run by test_distributed.py under torchrun (2 CPU processes, gloo); not a test itself.

    python -m torch.distributed.run --nproc-per-node 2 --standalone ddp_worker.py OUT_DIR

Each rank trains a tiny Conv3d + BatchNorm net with `fit` and saves what it ends with to
OUT_DIR/rank{r}.pt: the initial and final weights, the history, the training samples it saw
(their first input values), a linear model to compare with one process, and a resumed vs an
uninterrupted run.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tasks.distributed import cleanup, init_distributed  # noqa: E402
from tasks.train import FitConfig, fit, predict, tensor_loader  # noqa: E402

N_TRAIN, N_VAL, BATCH = 256, 128, 16
CLIP = (1, 2, 4, 4)  # (C, T, H, W): 5-D batches


def clips(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random clips labelled by the sign of their mean: separable by conv + pooling."""
    X = np.random.default_rng(seed).normal(size=(n, *CLIP)).astype(np.float32)
    return X, (X.mean(axis=(1, 2, 3, 4)) > 0).astype(np.float32)


def loaders():
    X, y = clips(N_TRAIN, 1)
    Xv, yv = clips(N_VAL, 2)
    return (tensor_loader(X, y, BATCH, shuffle=True, seed=0),
            tensor_loader(Xv, yv, BATCH, shuffle=False, seed=0))


def build_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(1, 8, 3, padding=1), nn.BatchNorm3d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Dropout(0.1),
                         nn.Linear(8, 1), nn.Flatten(0))


def learn_config() -> FitConfig:
    return FitConfig(epochs=8, lr=5e-2, patience=10, warmup_epochs=1, grad_accum=2,
                     max_grad_norm=5.0, seed=0)


def linear_run(grad_accum: int, batch_size: int, device: torch.device) -> nn.Module:
    """A linear model, SGD, ordered batches: 2 ranks x 2 x 16 samples == 1 process x 64."""
    X, y = clips(N_TRAIN, 1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(X[0].size, 1), nn.Flatten(0))
    config = FitConfig(epochs=2, lr=0.1, weight_decay=0.01, optimizer="sgd", warmup_epochs=1,
                       grad_accum=grad_accum, max_grad_norm=5.0, seed=0)
    train = tensor_loader(X, y, batch_size, shuffle=False, seed=0)
    val = tensor_loader(X[:64], y[:64], 64, shuffle=False, seed=0)
    return fit(model, train, val, nn.BCEWithLogitsLoss(), config, device).model


def fingerprints(X: torch.Tensor) -> torch.Tensor:
    """The first two input values of each sample: enough to tell random samples apart."""
    return X.flatten(1)[:, :2].clone()


def main(out: Path) -> None:
    info = init_distributed("cpu")
    try:
        assert info.world_size == 2, info
        model = build_model()
        init = {k: v.clone() for k, v in model.state_dict().items()}
        seen: list[torch.Tensor] = []
        model.register_forward_pre_hook(
            lambda module, args: seen.append(fingerprints(args[0])) if module.training else None)
        train, val = loaders()
        result = fit(model, train, val, nn.BCEWithLogitsLoss(), learn_config(), info.device,
                     checkpoint_path=out / "learn.pt")
        yv = torch.cat([b[1] for b in val])
        accuracy = ((torch.from_numpy(predict(result.model, val, info.device)) > 0) == yv)

        # resume: 2 epochs, then the same call with 3 (a flat LR: the schedule does not change)
        def run(epochs: int, path: Path):
            config = FitConfig(epochs=epochs, lr=5e-3, patience=10, cosine=False, seed=0)
            train, val = loaders()
            return fit(build_model(), train, val, nn.BCEWithLogitsLoss(), config, info.device,
                       checkpoint_path=path)

        linear = linear_run(grad_accum=2, batch_size=BATCH, device=info.device)
        run(2, out / "resume.pt")
        resumed, straight = run(3, out / "resume.pt"), run(3, out / "straight.pt")
        torch.save({
            "rank": info.rank, "world_size": info.world_size, "is_main": info.is_main,
            "init": init, "final": result.model.state_dict(), "history": result.history,
            "seen": torch.cat(seen), "train": fingerprints(train.dataset.tensors[0]),
            "accuracy": accuracy.float().mean().item(), "linear": linear.state_dict(),
            "resumed": resumed.model.state_dict(), "resumed_history": resumed.history,
            "straight": straight.model.state_dict(), "straight_history": straight.history,
        }, out / f"rank{info.rank}.pt")
    finally:
        cleanup()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
