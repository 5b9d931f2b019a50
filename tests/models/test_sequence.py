"""Causality, EraseReLU, residual scaling and SELU init of the sequence models."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from models.layers import (
    CausalConv1d,
    CausalResidualBlock,
    ResidualLinearBlock,
    activation,
    dropout,
    lecun_normal_,
)
from models.sequence import CausalTCN, WindowMLP, build_sequence_model

N_FEATURES, WINDOW = 4, 16


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _build(kind: str, **overrides) -> nn.Module:
    kwargs = dict(hidden=32, layers=2, kernel_size=3, dilations=[1, 2, 4], dropout=0.1,
                  activation="relu", erase_relu=False, residual_scale=1.0)
    kwargs.update(overrides)
    return build_sequence_model(kind, N_FEATURES, WINDOW, **kwargs)


# ---------------------------------------------------------------- factories
def test_factories_pick_the_right_modules():
    assert isinstance(activation("relu"), nn.ReLU)
    assert isinstance(activation("selu"), nn.SELU)
    assert isinstance(dropout("selu", 0.1), nn.AlphaDropout)
    assert type(dropout("relu", 0.1)) is nn.Dropout
    with pytest.raises(ValueError, match="activation"):
        activation("gelu")
    with pytest.raises(ValueError, match="kind"):
        _build("rnn")


# ---------------------------------------------------------------- causality
@pytest.mark.parametrize("kernel_size", [2, 3])
@pytest.mark.parametrize("dilation", [1, 2, 4, 8])
def test_causal_conv_keeps_length_and_ignores_the_future(kernel_size, dilation):
    torch.manual_seed(0)
    conv = CausalConv1d(3, 5, kernel_size, dilation)
    x = torch.randn(2, 3, 20)
    y = conv(x)
    assert y.shape == (2, 5, 20)
    for t in (0, 7, 18):
        x2 = x.clone()
        x2[..., t + 1:] = torch.randn_like(x2[..., t + 1:]) * 10
        y2 = conv(x2)
        torch.testing.assert_close(y2[..., : t + 1], y[..., : t + 1], rtol=0, atol=0)
        assert not torch.allclose(y2[..., t + 1:], y[..., t + 1:])


def test_causal_conv_sees_exactly_its_receptive_field():
    conv = CausalConv1d(1, 1, kernel_size=3, dilation=2, bias=False)
    nn.init.ones_(conv.weight)
    x = torch.zeros(1, 1, 10)
    x[..., 5] = 1.0
    # an impulse at t=5 reaches t=5, 7, 9 (taps at t, t-2, t-4)
    assert conv(x)[0, 0].nonzero().flatten().tolist() == [5, 7, 9]


def test_tcn_features_are_causal_and_output_depends_on_last_step():
    torch.manual_seed(0)
    model = CausalTCN(N_FEATURES, WINDOW, channels=16, kernel_size=3, dilations=[1, 2, 4],
                      dropout=0.1).eval()
    x = torch.randn(3, WINDOW, N_FEATURES)
    with torch.no_grad():
        feats = model.features(x)
        assert feats.shape == (3, 16, WINDOW)
        t = 9
        x2 = x.clone()
        x2[:, t + 1:, :] += 5.0
        torch.testing.assert_close(model.features(x2)[..., : t + 1], feats[..., : t + 1],
                                   rtol=0, atol=0)
        x3 = x.clone()
        x3[:, -1, :] += 1.0
        assert not torch.allclose(model(x3), model(x))
        # the first step is inside the receptive field (1 + 2*2*(1+2+4) = 29 > 16)
        x4 = x.clone()
        x4[:, 0, :] += 1.0
        assert not torch.allclose(model(x4), model(x))
    assert model.receptive_field == 29


@pytest.mark.parametrize("kind", ["mlp", "tcn"])
@pytest.mark.parametrize("n_outputs,shape", [(1, (5,)), (3, (5, 3))])
def test_output_shapes(kind, n_outputs, shape):
    model = _build(kind, n_outputs=n_outputs)
    assert model(torch.randn(5, WINDOW, N_FEATURES)).shape == shape


# ---------------------------------------------------------------- EraseReLU and residual scale
def _blocks(erase_relu: bool, residual_scale: float = 1.0) -> list[nn.Module]:
    torch.manual_seed(0)
    return [
        CausalResidualBlock(8, 3, 2, 0.0, "relu", erase_relu, residual_scale, True).eval(),
        ResidualLinearBlock(8, 0.0, "relu", erase_relu, residual_scale).eval(),
    ]


def _input_for(block: nn.Module) -> torch.Tensor:
    shape = (4, 8, 12) if isinstance(block, CausalResidualBlock) else (4, 8)
    return torch.randn(*shape, generator=torch.Generator().manual_seed(1))


def test_erase_relu_lets_the_block_output_negative_values():
    with torch.no_grad():
        for block in _blocks(erase_relu=True):
            assert (block(_input_for(block)) < 0).any()
        for block in _blocks(erase_relu=False):
            assert (block(_input_for(block)) >= 0).all()


def test_residual_scale_zero_is_identity_then_activation():
    with torch.no_grad():
        for block in _blocks(erase_relu=False, residual_scale=0.0):
            x = _input_for(block)
            torch.testing.assert_close(block(x), torch.relu(x), rtol=0, atol=0)
        for block in _blocks(erase_relu=True, residual_scale=0.0):
            x = _input_for(block)
            torch.testing.assert_close(block(x), x, rtol=0, atol=0)


def test_residual_scale_scales_the_branch():
    with torch.no_grad():
        one, half = _blocks(True, 1.0), _blocks(True, 0.5)
        for b1, b05 in zip(one, half, strict=True):
            x = _input_for(b1)
            # same weights (same seed), so out - x is the branch times the scale
            torch.testing.assert_close(b05(x) - x, 0.5 * (b1(x) - x))


# ---------------------------------------------------------------- SELU
@pytest.mark.parametrize("kind", ["mlp", "tcn"])
def test_selu_model_has_lecun_init_alpha_dropout_and_no_batchnorm(kind):
    torch.manual_seed(0)
    model = _build(kind, activation="selu")
    modules = list(model.modules())
    assert not any(isinstance(m, nn.BatchNorm1d) for m in modules)
    assert any(isinstance(m, nn.AlphaDropout) for m in modules)
    assert any(isinstance(m, nn.SELU) for m in modules)
    assert not any(isinstance(m, nn.ReLU) for m in modules)
    checked = 0
    for m in modules:
        if isinstance(m, (nn.Linear, nn.Conv1d)) and m.weight.numel() >= 1000:
            fan_in = m.weight[0].numel()
            assert m.weight.std().item() == pytest.approx(1 / math.sqrt(fan_in), rel=0.1)
            assert torch.count_nonzero(m.bias) == 0
            checked += 1
    assert checked >= 2


def _selu_stack(init, depth: int = 50, width: int = 256) -> list[tuple[float, float]]:
    """(mean, variance) of the activations after each of `depth` SELU layers, inputs N(0, 1)."""
    torch.manual_seed(0)
    h, moments = torch.randn(4096, width), []
    with torch.no_grad():
        for _ in range(depth):
            layer = nn.Linear(width, width)
            init(layer)
            h = nn.functional.selu(layer(h))
            moments.append((h.mean().item(), h.var().item()))
    return moments


def test_selu_with_lecun_normal_init_stays_self_normalised_through_depth():
    for mean, var in _selu_stack(lecun_normal_):  # every one of the 50 layers
        assert abs(mean) < 0.1 and abs(var - 1) < 0.15
    # PyTorch's default init (std 1/sqrt(3 fan_in)) lets the variance collapse with depth...
    default = _selu_stack(lambda layer: layer.reset_parameters())
    assert default[-1][1] < 0.05 and default[-1][1] < default[9][1] < default[0][1]
    # ...and a too-wide init (std 2/sqrt(fan_in)) lets it run away from 1
    wide = _selu_stack(lambda layer: (nn.init.normal_(layer.weight, std=2 / 16),
                                      nn.init.zeros_(layer.bias)))
    assert wide[-1][1] > 1.5


def test_relu_model_keeps_default_init_and_uses_batchnorm():
    torch.manual_seed(0)
    model = _build("tcn")
    assert any(isinstance(m, nn.BatchNorm1d) for m in model.modules())
    assert not any(isinstance(m, nn.AlphaDropout) for m in model.modules())
    conv = model.blocks[0].conv1
    # PyTorch's default (kaiming-uniform, a=sqrt(5)) has std 1/sqrt(3*fan_in), well below LeCun
    assert conv.weight.std().item() < 0.75 / math.sqrt(conv.weight[0].numel())


def test_lecun_normal_returns_the_module_and_zeroes_biases():
    torch.manual_seed(0)
    layer = nn.Linear(400, 300)
    assert lecun_normal_(layer) is layer
    assert layer.weight.std().item() == pytest.approx(0.05, rel=0.05)
    assert torch.count_nonzero(layer.bias) == 0


def test_window_mlp_flattens_the_window():
    model = WindowMLP(N_FEATURES, WINDOW, hidden=8, layers=1, dropout=0.0)
    assert model.stem.in_features == WINDOW * N_FEATURES
    assert len(model.blocks) == 1
