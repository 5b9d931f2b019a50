"""2D ResNet-18/34/50 with torchvision's state-dict keys, a width multiplier, EraseReLU and
residual scaling: (B, 3, H, W) -> logits."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

BASE_WIDTH = 64


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1, no bias."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution, no bias."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


def scaled_width(width_multiplier: float, base: int = BASE_WIDTH) -> int:
    """The stem width `base * width_multiplier` rounded to an int >= 1; stages use 1, 2, 4, 8x it."""
    if width_multiplier <= 0:
        raise ValueError(f"width_multiplier must be > 0, got {width_multiplier}")
    return max(1, round(base * width_multiplier))


class BasicBlock(nn.Module):
    """Two 3x3 convs: out = relu(shortcut + residual_scale * branch); erase_relu drops that relu."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, erase_relu: bool = False,
                 residual_scale: float = 1.0) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.residual_scale = residual_scale
        # EraseReLU: the activation after the addition is removed
        self.relu_out = nn.Identity() if erase_relu else nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu_out(add_residual(identity, out, self.residual_scale))


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride here, as torchvision's v1.5) -> 1x1 (4x planes), residual as BasicBlock."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, erase_relu: bool = False,
                 residual_scale: float = 1.0) -> None:
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.residual_scale = residual_scale
        self.relu_out = nn.Identity() if erase_relu else nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu_out(add_residual(identity, out, self.residual_scale))


def add_residual(shortcut: torch.Tensor, branch: torch.Tensor, scale: float) -> torch.Tensor:
    """shortcut + scale * branch, without the multiply when scale is 1."""
    return shortcut + branch if scale == 1.0 else torch.add(shortcut, branch, alpha=scale)


class ResNet(nn.Module):
    """torchvision's ResNet layout (conv1, bn1, layer1..4, fc) with width, EraseReLU, scaling."""

    def __init__(self, block: type[BasicBlock | Bottleneck], layers: Sequence[int],
                 num_classes: int = 1000, width_multiplier: float = 1.0,
                 erase_relu: bool = False, residual_scale: float = 1.0,
                 zero_init_residual: bool = False) -> None:
        super().__init__()
        if len(layers) != 4 or any(n < 1 for n in layers):
            raise ValueError(f"layers must be 4 block counts >= 1, got {layers!r}")
        width = scaled_width(width_multiplier)
        self.erase_relu, self.residual_scale = erase_relu, residual_scale
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.feature_dim = width * 8 * block.expansion
        self.fc = nn.Linear(self.feature_dim, num_classes)
        self._init_weights(zero_init_residual)

    def _make_layer(self, block: type[BasicBlock | Bottleneck], planes: int, blocks: int,
                    stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample, self.erase_relu,
                        self.residual_scale)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, erase_relu=self.erase_relu,
                         residual_scale=self.residual_scale) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            # each block starts as the identity (Goyal et al.)
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> globally average-pooled (B, feature_dim)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def _resnet(block: type[BasicBlock | Bottleneck], default_layers: Sequence[int],
            num_classes: int, width_multiplier: float, layers: Sequence[int] | None,
            **kwargs) -> ResNet:
    layers = default_layers if layers is None else layers
    return ResNet(block, layers, num_classes, width_multiplier, **kwargs)


def resnet18(num_classes: int = 1000, width_multiplier: float = 1.0,
             layers: Sequence[int] | None = None, **kwargs) -> ResNet:
    """ResNet-18 (BasicBlock, 2-2-2-2 unless `layers` overrides); kwargs go to ResNet."""
    return _resnet(BasicBlock, (2, 2, 2, 2), num_classes, width_multiplier, layers, **kwargs)


def resnet34(num_classes: int = 1000, width_multiplier: float = 1.0,
             layers: Sequence[int] | None = None, **kwargs) -> ResNet:
    """ResNet-34 (BasicBlock, 3-4-6-3 unless `layers` overrides); kwargs go to ResNet."""
    return _resnet(BasicBlock, (3, 4, 6, 3), num_classes, width_multiplier, layers, **kwargs)


def resnet50(num_classes: int = 1000, width_multiplier: float = 1.0,
             layers: Sequence[int] | None = None, **kwargs) -> ResNet:
    """ResNet-50 (Bottleneck, 3-4-6-3 unless `layers` overrides); kwargs go to ResNet."""
    return _resnet(Bottleneck, (3, 4, 6, 3), num_classes, width_multiplier, layers, **kwargs)


RESNETS = {18: resnet18, 34: resnet34, 50: resnet50}
