"""Shared building blocks: activation/dropout choices, LeCun init for SELU, causal convs, residual blocks."""
from __future__ import annotations

import torch
from torch import nn

ACTIVATIONS = ("relu", "selu")


def activation(name: str) -> nn.Module:
    """A fresh activation module: "relu" or "selu"."""
    if name == "relu":
        return nn.ReLU()
    if name == "selu":
        return nn.SELU()
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")


def dropout(name: str, p: float) -> nn.Module:
    """AlphaDropout for SELU (keeps the self-normalising mean/variance), plain Dropout otherwise."""
    return nn.AlphaDropout(p) if name == "selu" else nn.Dropout(p)


# the blocks below take arguments named `activation` and `dropout`, which shadow these factories
_activation = activation
_dropout = dropout


def uses_norm(name: str, norm: bool = True) -> bool:
    """BatchNorm is used when asked for, except with SELU, which normalises itself."""
    return norm and name != "selu"


def lecun_normal_(module: nn.Module) -> nn.Module:
    """LeCun-normal init (std = 1/sqrt(fan_in)) for every Conv/Linear weight, zero bias; returns module."""
    for layer in module.modules():
        if isinstance(layer, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            # gain 1 with mode fan_in is exactly std = 1/sqrt(fan_in)
            nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="linear")
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
    return module


class CausalConv1d(nn.Conv1d):
    """Conv1d on (B, C, T) that left-pads by (k-1)*dilation: same length, output at t sees inputs <= t."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, dilation: int = 1,
                 bias: bool = True) -> None:
        super().__init__(in_ch, out_ch, kernel_size, dilation=dilation, padding=0, bias=bias)
        self.left_pad = (kernel_size - 1) * dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(nn.functional.pad(x, (self.left_pad, 0)))


class CausalResidualBlock(nn.Module):
    """out = act(x + residual_scale * branch(x)), branch = two causal convs; erase_relu drops the outer act."""

    def __init__(self, channels: int, kernel_size: int, dilation: int, dropout: float,
                 activation: str = "relu", erase_relu: bool = False,
                 residual_scale: float = 1.0, norm: bool = True) -> None:
        super().__init__()
        with_norm = uses_norm(activation, norm)
        self.residual_scale = residual_scale
        self.conv1 = CausalConv1d(channels, channels, kernel_size, dilation, bias=not with_norm)
        self.norm1 = nn.BatchNorm1d(channels) if with_norm else nn.Identity()
        self.act1 = _activation(activation)
        self.drop = _dropout(activation, dropout)
        self.conv2 = CausalConv1d(channels, channels, kernel_size, dilation, bias=not with_norm)
        self.norm2 = nn.BatchNorm1d(channels) if with_norm else nn.Identity()
        # EraseReLU: the activation after the addition is removed
        self.act_out = nn.Identity() if erase_relu else _activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.drop(self.act1(self.norm1(self.conv1(x))))
        branch = self.norm2(self.conv2(branch))
        return self.act_out(x + self.residual_scale * branch)


class ResidualLinearBlock(nn.Module):
    """out = act(x + residual_scale * branch(x)), branch = Linear, BatchNorm, act, dropout."""

    def __init__(self, width: int, dropout: float, activation: str = "relu",
                 erase_relu: bool = False, residual_scale: float = 1.0, norm: bool = True) -> None:
        super().__init__()
        with_norm = uses_norm(activation, norm)
        self.residual_scale = residual_scale
        self.linear = nn.Linear(width, width, bias=not with_norm)
        self.norm = nn.BatchNorm1d(width) if with_norm else nn.Identity()
        self.act = _activation(activation)
        self.drop = _dropout(activation, dropout)
        self.act_out = nn.Identity() if erase_relu else _activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.drop(self.act(self.norm(self.linear(x))))
        return self.act_out(x + self.residual_scale * branch)
