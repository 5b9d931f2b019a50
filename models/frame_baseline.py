"""The note's frame baseline: a 2D ResNet on every frame, features pooled over time, an MLP head:
(B, 3, K, H, W) -> logits for any number of frames K."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from models.resnet import RESNETS

POOLS = ("mean", "max")


class FrameBaseline(nn.Module):
    """2D ResNet per frame (`backbone`, ImageNet weights load into it) -> mean/max over time ->
    Linear-ReLU-Dropout-Linear."""

    def __init__(self, num_classes: int, depth: int = 50, width_multiplier: float = 1.0,
                 layers: Sequence[int] | None = None, pool: Literal["mean", "max"] = "mean",
                 hidden: int = 512, dropout: float = 0.5, freeze_backbone: bool = False) -> None:
        super().__init__()
        if depth not in RESNETS:
            raise ValueError(f"depth must be one of {sorted(RESNETS)}, got {depth!r}")
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        self.pool, self.freeze_backbone = pool, freeze_backbone
        # the backbone keeps its 1000-way fc so an ImageNet checkpoint loads with strict=True;
        # it is never used, so it gets no gradient (DDP would otherwise flag unused parameters)
        self.backbone = RESNETS[depth](1000, width_multiplier, layers)
        self.backbone.fc.requires_grad_(False)
        if freeze_backbone:
            self.backbone.requires_grad_(False)
        self.head = nn.Sequential(
            nn.Linear(self.backbone.feature_dim, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
        self.train()

    def train(self, mode: bool = True) -> FrameBaseline:
        """As nn.Module.train, but a frozen backbone stays in eval mode (BatchNorm stats fixed)."""
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) -> per-frame backbone features pooled over time: (B, feature_dim)."""
        b, c, t, h, w = x.shape
        frames = x.transpose(1, 2).reshape(b * t, c, h, w)
        per_frame = self.backbone.features(frames).view(b, t, -1)
        return per_frame.mean(dim=1) if self.pool == "mean" else per_frame.amax(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
