"""BesNet: any K, T kept, random dilation (train draw, eval average), inflation from a 2D
ResNet-50 checkpoint file, SELU, EraseReLU, residual scaling, dropout; the I3D-R50."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models.besnet import (
    DEFAULT_DILATIONS,
    BesNet,
    Bottleneck3d,
    besnet50,
    i3d_resnet50,
    inflate,
)
from models.layers import RandomDilationConv3d
from models.resnet import resnet50

SMALL = dict(width_multiplier=0.125, layers=(1, 1, 1, 1))
BLOCKS_PER_NET = 16  # ResNet-50: 3 + 4 + 6 + 3
CONVS_3X1X1_PER_PATH = 2  # conv1 and conv3 of each block, in series


def _small(**overrides) -> BesNet:
    torch.manual_seed(0)
    return BesNet(num_classes=5, **{**SMALL, **overrides})


def _clip(k: int, size: int = 32, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, k, size, size, generator=torch.Generator().manual_seed(k))


def _dilated(x: torch.Tensor, conv: RandomDilationConv3d, d: int) -> torch.Tensor:
    """The 3x1x1 conv at dilation d, written out independently of the module's code."""
    if conv.temporal_padding == "replicate":
        x = F.pad(x, (0, 0, 0, 0, d, d), mode="replicate")
        return F.conv3d(x, conv.weight, conv.bias, conv.stride, 0, (d, 1, 1))
    return F.conv3d(x, conv.weight, conv.bias, conv.stride, (d, 0, 0), (d, 1, 1))


def _averaged(x: torch.Tensor, conv: nn.Module) -> torch.Tensor:
    """The mean over the conv's dilation set of the per-dilation outputs."""
    return torch.stack([_dilated(x, conv, d) for d in conv.dilations]).mean(dim=0)


def _set_mode(model: nn.Module, mode: str, fixed_dilation: int = 1) -> None:
    for m in model.modules():
        if isinstance(m, RandomDilationConv3d):
            m.mode, m.fixed_dilation = mode, fixed_dilation


# ---------------------------------------------------------------- shapes and T
@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("k", [4, 8, 16, 32])
def test_any_number_of_frames_gives_logits(k):
    model = _small()
    x = _clip(k)
    assert model(x).shape == (2, 5)
    assert model.features(x).shape == (2, model.feature_dim) == (2, 8 * 32)
    model.eval()
    with torch.no_grad():
        assert model.feature_maps(x).shape == (2, 8 * 32, k, 1, 1)
        assert torch.isfinite(model(x)).all()


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("padding", ["zeros", "replicate"])
def test_time_size_is_kept_through_every_block_for_every_dilation(padding):
    model = _small(layers=(2, 1, 2, 1), temporal_padding=padding)
    k = 5
    seen: list[tuple[str, int]] = []
    named = [(n, m) for n, m in model.named_modules()
             if isinstance(m, (Bottleneck3d, RandomDilationConv3d)) or n == "maxpool"]
    for name, module in named:
        module.register_forward_hook(
            lambda _m, _i, out, name=name: seen.append((name, out.shape[2])))
    settings = [("fixed", d, True) for d in (1, 2, 3, 4, 8)]
    settings += [("random", 1, True), ("random", 1, False), ("fixed", 2, False)]
    for mode, d, training in settings:
        _set_mode(model, mode, d)
        model.train(training)
        seen.clear()
        with torch.no_grad():
            model(_clip(k))
        assert len(seen) == len(named)
        assert all(t == k for _, t in seen), (mode, d, training, seen)
    blocks = [n for n, m in named if isinstance(m, Bottleneck3d)]
    assert blocks == ["layer1.0", "layer1.1", "layer2.0", "layer3.0", "layer3.1", "layer4.0"]


# ---------------------------------------------------------------- the random-dilation conv
@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("padding", ["zeros", "replicate"])
# (1, 2, 4) and (1, 2, 3) take the merged-kernel path, (2, 5) and (1, 8) the per-dilation convs
@pytest.mark.parametrize("dilations", [(1, 2, 4), (1, 2, 3), (2, 5), (1, 8)])
def test_eval_output_is_the_mean_of_every_dilation(padding, dilations):
    torch.manual_seed(0)
    conv = RandomDilationConv3d(4, 6, dilations, temporal_padding=padding, bias=True,
                                stride=2).eval()
    nn.init.normal_(conv.bias)
    for t in (3, 11):
        x = torch.randn(2, 4, t, 6, 6)
        with torch.no_grad():
            out = conv(x)
            per_dilation = [_dilated(x, conv, d) for d in dilations]
        assert out.shape == (2, 6, t, 3, 3)
        torch.testing.assert_close(out, torch.stack(per_dilation).mean(dim=0))
        if t > 2 * max(dilations):  # (shorter clips with replicated edges can tie dilations)
            # the average is not any single dilation's output
            assert all(not torch.allclose(out, p, atol=1e-4) for p in per_dilation)


@pytest.mark.usefixtures("one_torch_thread")
def test_training_uses_the_drawn_dilation_and_fixed_mode_one_dilation_everywhere():
    torch.manual_seed(0)
    conv = RandomDilationConv3d(3, 5, (1, 2, 4), bias=True)
    x = torch.randn(2, 3, 10, 4, 4)
    for _ in range(6):
        out = conv(x)
        torch.testing.assert_close(out, _dilated(x, conv, conv.last_dilation))
    conv.mode, conv.fixed_dilation = "fixed", 3
    for training in (True, False):
        conv.train(training)
        torch.testing.assert_close(conv(x), _dilated(x, conv, 3))


def test_random_mode_draws_different_dilations_reproducibly_under_a_seed():
    conv = RandomDilationConv3d(2, 2, (1, 2, 4))
    x = torch.randn(1, 2, 6, 2, 2)

    def draws(seed: int, n: int = 30) -> list[int]:
        torch.manual_seed(seed)
        out = []
        for _ in range(n):
            conv(x)
            out.append(conv.last_dilation)
        return out

    first = draws(0)
    assert set(first) == {1, 2, 4}
    assert draws(0) == first
    assert draws(1) != first


def test_each_layer_draws_its_own_dilation_and_a_seeded_network_repeats():
    model = _small()
    convs = [m for m in model.modules() if isinstance(m, RandomDilationConv3d)]
    assert len(convs) == 4 * 3  # conv1, conv3 and the shortcut of each block
    x = _clip(8)

    def run(seed: int) -> tuple[torch.Tensor, list[int]]:
        torch.manual_seed(seed)
        with torch.no_grad():
            return model(x), [c.last_dilation for c in convs]

    out, drawn = run(0)
    assert len(set(drawn)) > 1
    out_again, drawn_again = run(0)
    assert drawn_again == drawn
    torch.testing.assert_close(out_again, out, rtol=0, atol=0)
    _, other = run(1)
    assert other != drawn


def test_eval_mode_does_not_consume_the_random_generator():
    model = _small().eval()
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    with torch.no_grad():
        model(_clip(4))
    torch.testing.assert_close(torch.rand(3), expected, rtol=0, atol=0)


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("padding", ["zeros", "replicate"])
def test_a_blocks_eval_output_averages_every_conv_over_all_dilations(padding):
    model = _small(temporal_padding=padding).eval()
    _randomize_batchnorm(model)
    block = model.layer2[0]  # strided, with a 3x1x1 shortcut
    captured = {}
    block.register_forward_hook(lambda _m, inp, out: captured.update(x=inp[0], out=out))
    with torch.no_grad():
        model(_clip(7))
        x = captured["x"]
        out = block.act(block.bn1(_averaged(x, block.conv1)))
        out = block.act(block.bn2(block.conv2(out)))
        out = block.bn3(_averaged(out, block.conv3))
        shortcut = block.downsample[1](_averaged(x, block.downsample[0]))
        manual = torch.relu(shortcut + out)
    assert captured["out"].shape[2] == 7
    torch.testing.assert_close(captured["out"], manual)


def test_bad_options_fail_fast():
    with pytest.raises(ValueError, match="dilation_mode"):
        BesNet(dilation_mode="sometimes", **SMALL)
    with pytest.raises(ValueError, match="temporal_padding"):
        BesNet(temporal_padding="reflect", **SMALL)
    with pytest.raises(ValueError, match="dilations"):
        BesNet(dilations=(0, 1), **SMALL)
    with pytest.raises(ValueError, match="dilations"):
        BesNet(dilations=(), **SMALL)
    with pytest.raises(ValueError, match="activation"):
        BesNet(activation="gelu", **SMALL)
    with pytest.raises(ValueError, match="variant"):
        BesNet(variant="c3d", **SMALL)


# ---------------------------------------------------------------- inflation
def _randomize_batchnorm(model: nn.Module) -> None:
    """Running stats and affine params away from their defaults, so BN is not the identity."""
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.2)
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)


def test_inflate_transforms_each_key():
    torch.manual_seed(0)
    sd = resnet50(**SMALL).state_dict()
    sd["bn1.num_batches_tracked"].fill_(12)
    out = inflate(sd)
    assert set(out) == set(sd)
    w = sd["layer1.0.conv1.weight"]
    assert tuple(out["layer1.0.conv1.weight"].shape) == (*w.shape[:2], 3, 1, 1)
    for t in range(3):
        torch.testing.assert_close(out["layer1.0.conv1.weight"][:, :, t], w / 3)
    assert out["layer1.0.conv1.weight"].sum(dim=2).allclose(w)
    torch.testing.assert_close(out["layer2.0.downsample.0.weight"][:, :, 1],
                               sd["layer2.0.downsample.0.weight"] / 3)
    torch.testing.assert_close(out["layer1.0.conv2.weight"][:, :, 0], sd["layer1.0.conv2.weight"],
                               rtol=0, atol=0)
    assert out["layer1.0.conv2.weight"].shape[2] == 1
    assert tuple(out["conv1.weight"].shape) == (8, 3, 1, 7, 7)
    for key in ("bn1.running_var", "layer4.0.bn3.weight", "fc.weight", "fc.bias",
                "bn1.num_batches_tracked"):
        torch.testing.assert_close(out[key], sd[key], rtol=0, atol=0)
    # the 2D dict is left as it was
    assert sd["layer1.0.conv1.weight"].dim() == 4
    # the result loads strictly into BesNet
    BesNet(num_classes=1000, **SMALL).load_state_dict(out, strict=True)


def test_load_2d_skips_a_different_fc_unless_strict():
    torch.manual_seed(0)
    sd = resnet50(**SMALL).state_dict()
    model = BesNet(num_classes=5, **SMALL)
    fc_before = model.fc.weight.clone()
    assert model.load_2d(sd) == ["fc.weight", "fc.bias"]
    torch.testing.assert_close(model.fc.weight, fc_before, rtol=0, atol=0)
    torch.testing.assert_close(model.layer3[0].bn2.running_var, sd["layer3.0.bn2.running_var"])
    with pytest.raises(ValueError, match="fc shape"):
        model.load_2d(sd, strict_fc=True)
    same = BesNet(num_classes=1000, **SMALL)
    assert same.load_2d(sd, strict_fc=True) == []
    torch.testing.assert_close(same.fc.weight, sd["fc.weight"], rtol=0, atol=0)
    del sd["layer2.0.bn1.weight"]
    with pytest.raises(RuntimeError, match="layer2.0.bn1.weight"):
        same.load_2d(sd)


@pytest.fixture(scope="module")
def resnet50_checkpoint(tmp_path_factory):
    """A full-size, randomly initialised ResNet-50 (torchvision keys, BN randomised), as a file."""
    torch.manual_seed(0)
    model = resnet50()
    _randomize_batchnorm(model)
    path = tmp_path_factory.mktemp("ckpt") / "resnet50.pth"
    torch.save(model.state_dict(), path)
    return path


def _block_outputs(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The stem's (maxpool's) and every layer*.N block's output, by name."""
    names = ["maxpool"] + [f"layer{s}.{b}" for s, n in enumerate((3, 4, 6, 3), 1) for b in range(n)]
    modules = dict(model.named_modules())
    outputs: dict[str, torch.Tensor] = {}
    handles = [modules[n].register_forward_hook(
        lambda _m, _i, out, n=n: outputs.__setitem__(n, out.clone())) for n in names]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    assert len(outputs) == 17
    return outputs


def _assert_matches_2d(got: torch.Tensor, want: torch.Tensor, name: str) -> None:
    scale = want.abs().max().item()
    assert scale > 0.1, name
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * scale, msg=name)


@pytest.mark.parametrize("padding", ["zeros", "replicate"])
def test_inflated_resnet50_on_identical_frames_reproduces_the_2d_network(
        resnet50_checkpoint, padding):
    state_dict = torch.load(resnet50_checkpoint, weights_only=True)
    resnet = resnet50()
    resnet.load_state_dict(state_dict, strict=True)
    resnet.eval()
    model = besnet50(num_classes=1000, temporal_padding=padding)
    assert model.load_2d(state_dict, strict_fc=True) == []
    model.eval()
    frame = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    want = _block_outputs(resnet, frame)
    assert (want["layer4.2"] > 0).any()

    for mode, d in [("fixed", d) for d in DEFAULT_DILATIONS] + [("random", max(DEFAULT_DILATIONS))]:
        _set_mode(model, mode, d)
        if padding == "zeros":
            # zero padding changes the edge frames; the change travels d frames per 3x1x1 conv
            reach = BLOCKS_PER_NET * CONVS_3X1X1_PER_PATH * d
            t, steps = 2 * reach + 1, [reach]
        else:
            t = 5
            steps = list(range(t))
        clip = frame.unsqueeze(2).expand(-1, -1, t, -1, -1).contiguous()
        got = _block_outputs(model, clip)
        for name, want_out in want.items():
            assert got[name].shape[2] == t
            for step in steps:
                _assert_matches_2d(got[name][:, :, step], want_out, f"{mode} d={d} {name} t={step}")
        if padding == "zeros":
            # and the edges do differ, so the clip length above mattered
            assert not torch.allclose(got["layer4.2"][:, :, 0], want["layer4.2"], atol=1e-3)
        else:
            with torch.no_grad():
                torch.testing.assert_close(model(clip), resnet(frame), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- SELU, EraseReLU, scale, dropout
def test_selu_variant_has_no_batchnorm_and_lecun_init():
    torch.manual_seed(0)
    model = BesNet(num_classes=5, activation="selu", dropout=0.2, width_multiplier=0.25,
                   layers=(1, 1, 1, 1))
    modules = list(model.modules())
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in modules)
    assert isinstance(model.bn1, nn.Identity) and isinstance(model.layer1[0].bn2, nn.Identity)
    assert isinstance(model.layer2[0].downsample[1], nn.Identity)
    assert any(isinstance(m, nn.SELU) for m in modules)
    assert not any(isinstance(m, nn.ReLU) for m in modules)
    assert isinstance(model.dropout, nn.AlphaDropout) and model.dropout.p == 0.2
    checked = 0
    for m in modules:
        if isinstance(m, nn.Conv3d):
            assert m.bias is not None and torch.count_nonzero(m.bias) == 0
            if m.weight.numel() >= 2000:
                fan_in = m.weight[0].numel()
                assert m.weight.std().item() == pytest.approx(1 / math.sqrt(fan_in), rel=0.1)
                checked += 1
    assert checked >= 8
    out = model(_clip(8))
    assert out.shape == (2, 5) and torch.isfinite(out).all()


def _tiny_block(erase_relu: bool, residual_scale: float = 1.0) -> nn.Module:
    model = _small(erase_relu=erase_relu, residual_scale=residual_scale, layers=(2, 1, 1, 1),
                   dilation_mode="fixed", fixed_dilation=2)
    _randomize_batchnorm(model)
    with torch.no_grad():
        model.layer1[1].bn3.bias.sub_(0.5)  # so that the sum is often negative
    return model.layer1[1].eval()  # no downsample: the shortcut is x itself


def _block_input() -> torch.Tensor:
    return torch.randn(2, 32, 4, 6, 6, generator=torch.Generator().manual_seed(5))


def test_erase_relu_removes_only_the_relu_after_the_addition():
    x = _block_input()
    with torch.no_grad():
        erased, kept = _tiny_block(True)(x), _tiny_block(False)(x)
    assert (erased < 0).any() and (kept >= 0).all()
    torch.testing.assert_close(kept, torch.relu(erased))
    model = _small(erase_relu=True)
    assert all(isinstance(b.act_out, nn.Identity)
               for b in model.modules() if isinstance(b, Bottleneck3d))


def test_residual_scale_scales_the_branch():
    x = _block_input()
    with torch.no_grad():
        torch.testing.assert_close(_tiny_block(True, 0.0)(x), x, rtol=0, atol=0)
        one, half = _tiny_block(True, 1.0)(x), _tiny_block(True, 0.5)(x)
    torch.testing.assert_close(half - x, 0.5 * (one - x))


@pytest.mark.usefixtures("one_torch_thread")
def test_dropout_acts_before_the_fc_in_training_only():
    model = _small(dropout=0.5, dilation_mode="fixed")
    assert type(model.dropout) is nn.Dropout and model.dropout.p == 0.5
    seen = {}
    model.fc.register_forward_pre_hook(lambda _m, inp: seen.update(x=inp[0]))
    x = _clip(4)
    with torch.no_grad():
        a, b = model(x), model(x)
        assert not torch.allclose(a, b)
        assert (seen["x"] == 0).float().mean() > 0.2
        model.eval()
        torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)
        assert (seen["x"] == 0).float().mean() < 0.2
    assert type(_small().dropout) is nn.Dropout and _small().dropout.p == 0.0


# ---------------------------------------------------------------- I3D-R50 and the full sizes
@pytest.mark.usefixtures("one_torch_thread")
def test_i3d_has_the_same_keys_with_3x3x3_middle_convs():
    torch.manual_seed(0)
    i3d, bes = i3d_resnet50(5, **SMALL), besnet50(5, **SMALL)
    assert set(i3d.state_dict()) == set(bes.state_dict())
    assert tuple(i3d.layer1[0].conv2.kernel_size) == (3, 3, 3)
    assert tuple(i3d.layer1[0].conv1.kernel_size) == (1, 1, 1)
    assert tuple(i3d.layer2[0].downsample[0].kernel_size) == (1, 1, 1)
    assert tuple(bes.layer1[0].conv2.kernel_size) == (1, 3, 3)
    assert tuple(bes.conv1.kernel_size) == tuple(i3d.conv1.kernel_size) == (1, 7, 7)
    assert not any(isinstance(m, RandomDilationConv3d) for m in i3d.modules())
    for k in (4, 8):
        assert i3d(_clip(k)).shape == (2, 5)
    i3d.load_2d(resnet50(**SMALL).state_dict())  # inflates 3x3 -> 3x3x3 by its own shapes


def test_full_size_parameter_counts_match_the_note():
    # the note: BesNet-50 ~48.6M, I3D-R50 ~47.0M (400 classes); every 1x1, shortcut included,
    # becomes 3x1x1 in BesNet (a 1x1x1 shortcut would give 43.0M)
    def count(model: nn.Module) -> int:
        return sum(p.numel() for p in model.parameters())

    assert count(besnet50(400)) == 48_584_144
    assert count(i3d_resnet50(400)) == 46_962_128
    assert len(besnet50(1000).state_dict()) == len(resnet50().state_dict()) == 320


@pytest.mark.parametrize("padding", ["zeros", "replicate"])
@pytest.mark.parametrize(("dilation", "stride"), [(1, 1), (2, 1), (4, 2), (3, 2)])
def test_the_fast_temporal_conv_has_the_gradients_of_conv3d(padding, dilation, stride):
    from models.layers import RandomDilationConv3d

    torch.manual_seed(0)
    conv = RandomDilationConv3d(5, 7, dilations=(dilation,), mode="fixed",
                                fixed_dilation=dilation, temporal_padding=padding,
                                stride=stride, bias=True).double()
    x = torch.randn(2, 5, 6, 9, 9, dtype=torch.float64, requires_grad=True)
    grad_out = torch.randn_like(conv(x))
    (conv(x) * grad_out).sum().backward()
    fast = (x.grad.clone(), conv.weight.grad.clone(), conv.bias.grad.clone())

    x_ref = x.detach().clone().requires_grad_(True)
    w_ref = conv.weight.detach().clone().requires_grad_(True)
    b_ref = conv.bias.detach().clone().requires_grad_(True)
    pad = dilation
    inp = x_ref
    if padding == "replicate":
        inp, pad = torch.nn.functional.pad(x_ref, (0, 0, 0, 0, pad, pad), mode="replicate"), 0
    ref = torch.nn.functional.conv3d(inp, w_ref, b_ref, (1, stride, stride), (pad, 0, 0),
                                     (dilation, 1, 1))
    (ref * grad_out).sum().backward()
    for got, want in zip(fast, (x_ref.grad, w_ref.grad, b_ref.grad), strict=True):
        torch.testing.assert_close(got, want)
