"""The crypto classifier's initial weights follow the seed, whatever ran in the process before
(an ablation runs many trainings in one process)."""
import numpy as np
import torch

from tasks.config import CryptoModel, TrainSettings
from tasks.crypto.modeling import train_classifier

CPU = torch.device("cpu")


def _data(seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(96, 6, 3)).astype(np.float32)
    y = (x[:, -1, 0] > 0).astype(np.float32)
    return {"train": (x[:64], y[:64]), "val": (x[64:], y[64:])}


def _weights(seed: int, noise_before: bool) -> dict:
    if noise_before:  # someone else used the global generators first
        torch.rand(1000)
        np.random.rand(10)
    result = train_classifier(CryptoModel(kind="mlp", hidden=8, layers=1, dropout=0.0),
                              TrainSettings(epochs=1, batch_size=32), _data(), seed, CPU)
    return {k: v.clone() for k, v in result.model.state_dict().items()}


def test_same_seed_same_weights_whatever_ran_before_and_other_seeds_differ():
    a, b = _weights(5, noise_before=False), _weights(5, noise_before=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = _weights(6, noise_before=False)
    assert any(not torch.equal(a[k], c[k]) for k in a)
