"""Quora pair models as the train stage builds, scores and calibrates them, and as the served
model (tasks.quora.serving) does the same: one copy of each step."""
from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from models.siamese import build_pair_model, pair_scores
from tasks.config import QuoraModel
from tasks.train import predict


def build_model(variant: str, settings: QuoraModel, in_dim: int | None = None,
                embeddings: torch.Tensor | None = None) -> nn.Module:
    """The pair model `variant` of quora.model's shape: the towers read question vectors of
    `in_dim`; birnn_conv reads token ids into `embeddings` (its initial word vectors)."""
    m = settings
    shape = dict(hidden=m.hidden, dropout=m.dropout, activation=m.activation,
                 erase_relu=m.erase_relu, residual_scale=m.residual_scale, rnn=m.rnn,
                 rnn_hidden=m.rnn_hidden, conv_channels=m.conv_channels,
                 kernel_size=m.kernel_size)
    if variant == "birnn_conv":
        return build_pair_model("birnn_conv", vocab_size=embeddings.shape[0],
                                emb_dim=embeddings.shape[1], embeddings=embeddings, **shape)
    return build_pair_model(variant, in_dim=in_dim, **shape)


def pair_loader(a: np.ndarray, b: np.ndarray, y: np.ndarray, batch_size: int, shuffle: bool,
                seed: int) -> DataLoader:
    """Batches of (question 1 inputs, question 2 inputs, label)."""
    data = TensorDataset(torch.from_numpy(a), torch.from_numpy(b),
                         torch.from_numpy(y.astype(np.float32)))
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle,
                      drop_last=shuffle and len(y) % batch_size == 1,
                      generator=torch.Generator().manual_seed(seed))


def duplicate_scores(model: nn.Module, variant: str, a: np.ndarray, b: np.ndarray,
                     device: torch.device) -> np.ndarray:
    """float64 scores, higher = more likely duplicate (the logit, or minus the distance)."""
    loader = pair_loader(a, b, np.zeros(len(a)), 1024, False, 0)
    output = torch.from_numpy(predict(model, loader, device))
    return pair_scores(variant, output).numpy().astype(np.float64)


def calibrate(variant: str, scores: np.ndarray, dev_mask: np.ndarray,
              y: np.ndarray) -> dict | None:
    """The distance model's logistic calibration of its scores, fitted on dev (never test), as
    plain numbers; None for the other variants, whose scores are logits already."""
    if variant != "siamese":
        return None
    fitted = LogisticRegression().fit(scores[dev_mask, None], y[dev_mask])
    return {"coef": fitted.coef_.tolist(), "intercept": fitted.intercept_.tolist(),
            "classes": fitted.classes_.tolist()}


def probabilities(variant: str, scores: np.ndarray, calibration: dict | None) -> np.ndarray:
    """P(duplicate): the sigmoid of the logit, or the calibration applied to the distance."""
    if variant != "siamese":
        return 1.0 / (1.0 + np.exp(-scores))
    fitted = LogisticRegression()
    fitted.coef_ = np.asarray(calibration["coef"], dtype=np.float64)
    fitted.intercept_ = np.asarray(calibration["intercept"], dtype=np.float64)
    fitted.classes_ = np.asarray(calibration["classes"])
    return fitted.predict_proba(scores[:, None])[:, 1]
