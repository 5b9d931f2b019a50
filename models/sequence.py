"""Sequence classifiers for windows of bar features: (B, window, n_features) -> logits."""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from models.layers import (
    CausalResidualBlock,
    ResidualLinearBlock,
    lecun_normal_,
)


def _logits(out: torch.Tensor, n_outputs: int) -> torch.Tensor:
    """(B, 1) -> (B,) for binary classification; (B, n_outputs) otherwise."""
    return out.squeeze(-1) if n_outputs == 1 else out


class WindowMLP(nn.Module):
    """Flattened window -> Linear -> `layers` residual MLP blocks -> Linear head."""

    def __init__(self, n_features: int, window: int, hidden: int, layers: int, dropout: float,
                 activation: str = "relu", erase_relu: bool = False,
                 residual_scale: float = 1.0, n_outputs: int = 1) -> None:
        super().__init__()
        self.n_features, self.window, self.n_outputs = n_features, window, n_outputs
        self.stem = nn.Linear(window * n_features, hidden)
        self.blocks = nn.Sequential(*[
            ResidualLinearBlock(hidden, dropout, activation, erase_relu, residual_scale)
            for _ in range(layers)
        ])
        self.head = nn.Linear(hidden, n_outputs)
        if activation == "selu":
            lecun_normal_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.stem(x.flatten(1)))
        return _logits(self.head(h), self.n_outputs)


class CausalTCN(nn.Module):
    """1x1 conv projection -> one causal residual block per dilation -> head on the last time step."""

    def __init__(self, n_features: int, window: int, channels: int, kernel_size: int,
                 dilations: list[int], dropout: float, activation: str = "relu",
                 erase_relu: bool = False, residual_scale: float = 1.0,
                 n_outputs: int = 1) -> None:
        super().__init__()
        self.n_features, self.window, self.n_outputs = n_features, window, n_outputs
        # each block has two convs, each looking (k-1)*d steps back
        self.receptive_field = 1 + sum(2 * (kernel_size - 1) * d for d in dilations)
        self.stem = nn.Conv1d(n_features, channels, kernel_size=1)
        self.blocks = nn.Sequential(*[
            CausalResidualBlock(channels, kernel_size, d, dropout, activation, erase_relu,
                                residual_scale)
            for d in dilations
        ])
        self.head = nn.Linear(channels, n_outputs)
        if activation == "selu":
            lecun_normal_(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, window, n_features) -> (B, channels, window); step t depends only on steps <= t."""
        return self.blocks(self.stem(x.transpose(1, 2)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _logits(self.head(self.features(x)[:, :, -1]), self.n_outputs)


def build_sequence_model(kind: Literal["mlp", "tcn"], n_features: int, window: int, *,
                         hidden: int, layers: int, kernel_size: int, dilations: list[int],
                         dropout: float, activation: str, erase_relu: bool,
                         residual_scale: float, n_outputs: int = 1) -> nn.Module:
    """The sequence model named by `kind`; selu models get LeCun-normal init."""
    if kind == "mlp":
        return WindowMLP(n_features, window, hidden, layers, dropout, activation, erase_relu,
                         residual_scale, n_outputs)
    if kind == "tcn":
        return CausalTCN(n_features, window, hidden, kernel_size, list(dilations), dropout,
                         activation, erase_relu, residual_scale, n_outputs)
    raise ValueError(f"model kind must be 'mlp' or 'tcn', got {kind!r}")
