"""BesNet: ResNet-50 inflated with random-dilation 3x1x1 convs, plus an I3D-R50 for comparison:
(B, 3, K, H, W) -> logits for any number of frames K. Both keep the 2D ResNet-50 key names."""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Literal

import torch
from torch import nn

from models.layers import (
    RandomDilationConv3d,
    activation,
    dropout,
    lecun_normal_,
    uses_norm,
)
from models.resnet import add_residual, scaled_width

# the constructors below take arguments named `activation` and `dropout`, which shadow these
_activation = activation
_dropout = dropout

# Powers of two: with 8 frames the largest dilation still reaches half the clip from its centre.
DEFAULT_DILATIONS: tuple[int, ...] = (1, 2, 4)
VARIANTS = ("besnet", "i3d")
TEMPORAL_KERNEL = 3  # the time size of BesNet's inflated 1x1 kernels

# (in_channels, out_channels, spatial stride) -> conv module
ConvFactory = Callable[[int, int, int], nn.Module]


def _conv1x3x3(in_ch: int, out_ch: int, stride: int, bias: bool) -> nn.Conv3d:
    return nn.Conv3d(in_ch, out_ch, (1, 3, 3), (1, stride, stride), (0, 1, 1), bias=bias)


def _conv3x3x3(in_ch: int, out_ch: int, stride: int, bias: bool) -> nn.Conv3d:
    return nn.Conv3d(in_ch, out_ch, (3, 3, 3), (1, stride, stride), (1, 1, 1), bias=bias)


def _conv1x1x1(in_ch: int, out_ch: int, stride: int, bias: bool) -> nn.Conv3d:
    return nn.Conv3d(in_ch, out_ch, 1, (1, stride, stride), bias=bias)


def _norm(channels: int, with_norm: bool) -> nn.Module:
    return nn.BatchNorm3d(channels) if with_norm else nn.Identity()


class Bottleneck3d(nn.Module):
    """ResNet-50 bottleneck on (B, C, T, H, W) with pluggable convs; strides are spatial only."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None,
                 pointwise: ConvFactory, middle: ConvFactory, with_norm: bool = True,
                 activation: str = "relu", erase_relu: bool = False,
                 residual_scale: float = 1.0) -> None:
        super().__init__()
        self.conv1 = pointwise(inplanes, planes, 1)
        self.bn1 = _norm(planes, with_norm)
        self.conv2 = middle(planes, planes, stride)
        self.bn2 = _norm(planes, with_norm)
        self.conv3 = pointwise(planes, planes * self.expansion, 1)
        self.bn3 = _norm(planes * self.expansion, with_norm)
        self.act = _activation(activation)
        self.downsample = downsample
        self.residual_scale = residual_scale
        # EraseReLU: the activation after the addition is removed
        self.act_out = nn.Identity() if erase_relu else _activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.act_out(add_residual(identity, out, self.residual_scale))

    def random_dilation_convs(self) -> list[RandomDilationConv3d]:
        """The block's random-dilation convs in the order forward runs them (shortcut first)."""
        convs = [*(self.downsample or ()), self.conv1, self.conv2, self.conv3]
        return [c for c in convs if isinstance(c, RandomDilationConv3d) and c.mode == "random"]


class BesNet(nn.Module):
    """ResNet-50 with 1x1 -> 3x1x1 random-dilation convs and 3x3 -> 1x3x3; T kept to the end,
    then spatial mean, temporal max, dropout, fc. variant="i3d": 1x1x1 and 3x3x3 convs instead.

    In training, each public forward (forward, features, feature_maps) first draws every 3x1x1
    conv's dilation (draw_dilations), then runs the network; `compile()` compiles only the
    latter, which reads the drawn dilations as data: one graph, no break, for every draw."""

    def __init__(self, num_classes: int = 400, layers: Sequence[int] = (3, 4, 6, 3),
                 dilations: Sequence[int] = DEFAULT_DILATIONS,
                 dilation_mode: Literal["random", "fixed"] = "random", fixed_dilation: int = 1,
                 temporal_padding: Literal["zeros", "replicate"] = "zeros",
                 erase_relu: bool = False, activation: Literal["relu", "selu"] = "relu",
                 dropout: float = 0.0, residual_scale: float = 1.0,
                 width_multiplier: float = 1.0,
                 variant: Literal["besnet", "i3d"] = "besnet") -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        if len(layers) != 4 or any(n < 1 for n in layers):
            raise ValueError(f"layers must be 4 block counts >= 1, got {layers!r}")
        _activation(activation)  # fails fast on an unknown name
        with_norm = uses_norm(activation)
        bias = not with_norm  # without BatchNorm the convs carry their own bias
        if variant == "besnet":
            # Every 1x1 becomes 3x1x1, the downsample shortcut's too: that reading gives the
            # note's 48.6M parameters and 35 GFLOPs (2 x 17.5 GMACs, one dilation, 8x112x112,
            # 400 classes); a 1x1x1 shortcut would give 43.0M and 32 GFLOPs.
            pointwise: ConvFactory = partial(
                _random_dilation_conv, dilations=dilations, mode=dilation_mode,
                fixed_dilation=fixed_dilation, temporal_padding=temporal_padding, bias=bias)
            middle: ConvFactory = partial(_conv1x3x3, bias=bias)
        else:
            pointwise, middle = partial(_conv1x1x1, bias=bias), partial(_conv3x3x3, bias=bias)
        block = partial(Bottleneck3d, pointwise=pointwise, middle=middle, with_norm=with_norm,
                        activation=activation, erase_relu=erase_relu,
                        residual_scale=residual_scale)

        width = scaled_width(width_multiplier)
        self.variant = variant
        # On CPU oneDNN runs the 3x1x1 convs about 1.3x faster on channels-last 3D tensors; I3D
        # gains nothing there (its 3x3x3 weight gradients run slower), so it stays contiguous
        self.channels_last_on_cpu = variant == "besnet"
        self.conv1 = nn.Conv3d(3, width, (1, 7, 7), (1, 2, 2), (0, 3, 3), bias=bias)
        self.bn1 = _norm(width, with_norm)
        self.act = _activation(activation)
        self.maxpool = nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1))
        inplanes = width
        stages = []
        for i, blocks in enumerate(layers):
            planes, stride = width * 2 ** i, 1 if i == 0 else 2
            downsample = nn.Sequential(pointwise(inplanes, planes * Bottleneck3d.expansion,
                                                 stride),
                                       _norm(planes * Bottleneck3d.expansion, with_norm))
            stage = [block(inplanes, planes, stride, downsample)]
            inplanes = planes * Bottleneck3d.expansion
            stage += [block(inplanes, planes, 1, None) for _ in range(1, blocks)]
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.feature_dim = inplanes
        self.dropout = _dropout(activation, dropout)
        self.fc = nn.Linear(inplanes, num_classes)
        self._init_weights(activation)
        for conv in self.modules():
            if isinstance(conv, RandomDilationConv3d):
                conv.drawn_by_owner = True  # draw_dilations, outside any compiled region
        self._compiled_logits: Callable[[torch.Tensor], torch.Tensor] | None = None
        if self.channels_last_on_cpu:
            # weights in the activations' layout: the convs then copy none of them, and the
            # weight gradients come out in the weights' own layout
            self.to(memory_format=torch.channels_last_3d)

    def _init_weights(self, activation: str) -> None:
        if activation == "selu":
            lecun_normal_(self)
            return
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def random_dilation_convs(self) -> list[RandomDilationConv3d]:
        """The random-dilation convs in the order a forward runs them."""
        stages = (self.layer1, self.layer2, self.layer3, self.layer4)
        return [conv for stage in stages for block in stage
                for conv in block.random_dilation_convs()]

    def draw_dilations(self) -> list[int]:
        """In training, draw each random-dilation conv's dilation for the next forward, in the
        order the convs run (one torch.randint each, as when each conv drew its own)."""
        if not self.training:
            return []
        return [conv.draw() for conv in self.random_dilation_convs()]

    # one graph for every dilation draw (tests/models/test_besnet_compile.py): `fit` compiles
    # it with fullgraph=True, so a future graph break fails loudly instead of running slower
    one_graph = True

    def compile(self, *args, **kwargs) -> None:
        """torch.compile forward after its dilation draw (arguments as torch.compile's); the
        graph takes the drawn dilations as data, so no draw recompiles it."""
        self._compiled_logits = torch.compile(self._logits, *args, **kwargs)

    def feature_maps(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) -> layer4's (B, feature_dim, T, H/32, W/32); T is unchanged."""
        self.draw_dilations()
        return self._feature_maps(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) -> (B, feature_dim): spatial average, then temporal max."""
        self.draw_dilations()
        return self._features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.draw_dilations()
        return (self._compiled_logits or self._logits)(x)

    # the network proper, at the dilations drawn last
    def _feature_maps(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last_on_cpu and x.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last_3d)
        x = self.maxpool(self.act(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return self._feature_maps(x).mean(dim=(3, 4)).amax(dim=2)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self._features(x)))

    def load_2d(self, state_dict_2d: Mapping[str, torch.Tensor],
                strict_fc: bool = False) -> list[str]:
        """Inflate a 2D ResNet-50 state dict (torchvision keys) into this model; fc is skipped when
        its shape differs unless strict_fc. Returns the keys left at their init."""
        own = self.state_dict()
        time_sizes = {k: v.shape[2] for k, v in own.items() if v.dim() == 5}
        inflated = inflate(state_dict_2d, time_sizes)
        skipped = [k for k in ("fc.weight", "fc.bias")
                   if k in inflated and k in own and inflated[k].shape != own[k].shape]
        if skipped and strict_fc:
            raise ValueError(f"fc shape differs: checkpoint {tuple(inflated['fc.weight'].shape)}"
                             f", model {tuple(own['fc.weight'].shape)}")
        for k in skipped:
            del inflated[k]
        result = self.load_state_dict(inflated, strict=not skipped)
        if result.unexpected_keys or set(result.missing_keys) != set(skipped):
            raise RuntimeError(f"load_2d: missing {result.missing_keys}, "
                               f"unexpected {result.unexpected_keys}")
        return skipped


def _random_dilation_conv(in_ch: int, out_ch: int, stride: int, **kwargs) -> nn.Module:
    return RandomDilationConv3d(in_ch, out_ch, stride=stride, **kwargs)


def inflate_conv2d(weight: torch.Tensor, time_size: int) -> torch.Tensor:
    """(O, I, kh, kw) -> (O, I, time_size, kh, kw): repeated along time and divided by time_size,
    so a clip of identical frames gives the 2D response."""
    return weight.unsqueeze(2).repeat(1, 1, time_size, 1, 1) / time_size


def inflate(state_dict_2d: Mapping[str, torch.Tensor],
            time_sizes: Mapping[str, int] | None = None) -> dict[str, torch.Tensor]:
    """2D ResNet state dict -> 3D: 1x1 kernels become 3x1x1 (/3), kxk become 1xkxk, the rest
    (BatchNorm, fc) is copied; `time_sizes` (key -> kernel time size) overrides the rule."""
    inflated = {}
    for key, value in state_dict_2d.items():
        if value.dim() != 4:
            inflated[key] = value.clone()
            continue
        if time_sizes is not None and key in time_sizes:
            time_size = time_sizes[key]
        else:
            time_size = TEMPORAL_KERNEL if value.shape[2:] == (1, 1) else 1
        inflated[key] = inflate_conv2d(value, time_size)
    return inflated


def besnet50(num_classes: int = 400, **kwargs) -> BesNet:
    """BesNet-50 (3-4-6-3 bottlenecks); kwargs go to BesNet."""
    return BesNet(num_classes, **kwargs)


def i3d_resnet50(num_classes: int = 400, **kwargs) -> BesNet:
    """I3D-style ResNet-50: 3x3x3 middle convs, 1x1x1 elsewhere, BesNet's stem and pooling."""
    return BesNet(num_classes, variant="i3d", **kwargs)
