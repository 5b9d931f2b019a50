"""The 2D ResNet: torchvision's key layout and sizes, EraseReLU, residual scaling, width, depth."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from models.resnet import BasicBlock, Bottleneck, ResNet, resnet18, resnet34, resnet50

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = dict(width_multiplier=0.125, layers=(1, 1, 1, 1))
BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _torchvision_keys(blocks: tuple[int, ...], convs_per_block: int) -> set[str]:
    """The state-dict keys of torchvision's resnet, written out from its naming rules."""
    keys = {"conv1.weight", "fc.weight", "fc.bias"} | {f"bn1.{k}" for k in BN_KEYS}
    for stage, n in enumerate(blocks, start=1):
        for b in range(n):
            prefix = f"layer{stage}.{b}"
            for i in range(1, convs_per_block + 1):
                keys.add(f"{prefix}.conv{i}.weight")
                keys |= {f"{prefix}.bn{i}.{k}" for k in BN_KEYS}
            # the first block of every stage projects, except ResNet-18/34's layer1
            if b == 0 and (convs_per_block == 3 or stage > 1):
                keys.add(f"{prefix}.downsample.0.weight")
                keys |= {f"{prefix}.downsample.1.{k}" for k in BN_KEYS}
    return keys


# ---------------------------------------------------------------- torchvision layout
def test_resnet50_state_dict_has_torchvision_keys_and_shapes():
    sd = resnet50().state_dict()
    # 53 convs + 53 BatchNorms x 5 entries + fc weight and bias
    assert len(sd) == 53 + 53 * 5 + 2 == 320
    assert len(list(resnet50().parameters())) == 53 + 53 * 2 + 2 == 161
    assert set(sd) == _torchvision_keys((3, 4, 6, 3), 3)
    for key in ("layer1.0.downsample.0.weight", "layer1.0.downsample.1.running_mean",
                "layer4.2.bn3.running_var", "layer3.5.conv2.weight", "fc.weight",
                "bn1.num_batches_tracked"):
        assert key in sd
    assert "layer1.1.downsample.0.weight" not in sd
    shapes = {"conv1.weight": (64, 3, 7, 7), "layer1.0.conv1.weight": (64, 64, 1, 1),
              "layer1.0.downsample.0.weight": (256, 64, 1, 1),
              "layer2.0.conv2.weight": (128, 128, 3, 3),
              "layer2.0.downsample.0.weight": (512, 256, 1, 1),
              "layer4.2.conv3.weight": (2048, 512, 1, 1), "fc.weight": (1000, 2048)}
    for key, shape in shapes.items():
        assert tuple(sd[key].shape) == shape, key


def test_resnet18_and_34_state_dicts_have_torchvision_keys():
    sd18 = resnet18().state_dict()
    assert set(sd18) == _torchvision_keys((2, 2, 2, 2), 2)
    assert len(sd18) == 122
    assert "layer1.0.downsample.0.weight" not in sd18
    assert tuple(sd18["layer2.0.downsample.0.weight"].shape) == (128, 64, 1, 1)
    assert set(resnet34().state_dict()) == _torchvision_keys((3, 4, 6, 3), 2)


@pytest.mark.parametrize("build,expected", [(resnet18, 11_689_512), (resnet34, 21_797_672),
                                            (resnet50, 25_557_032)])
def test_parameter_counts_match_torchvision(build, expected):
    assert sum(p.numel() for p in build().parameters()) == expected


def test_a_checkpoint_file_loads_strictly_and_reproduces_the_outputs(tmp_path):
    torch.manual_seed(0)
    source = resnet50().eval()
    path = tmp_path / "resnet50.pth"
    torch.save(source.state_dict(), path)
    target = resnet50()
    target.load_state_dict(torch.load(path, weights_only=True), strict=True)
    target.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x), rtol=0, atol=0)


# ---------------------------------------------------------------- forward, features, width, depth
def test_forward_and_features_shapes():
    model = resnet50(num_classes=7, **TINY)
    x = torch.randn(2, 3, 64, 64)
    assert model.feature_dim == 8 * 8 * 4
    assert model.features(x).shape == (2, model.feature_dim)
    assert model(x).shape == (2, 7)
    assert resnet18(num_classes=3, **TINY)(x).shape == (2, 3)


@pytest.mark.parametrize("multiplier,width", [(0.5, 32), (0.25, 16), (1.5, 96), (0.001, 1)])
def test_width_multiplier_scales_every_stage(multiplier, width):
    model = resnet50(width_multiplier=multiplier, layers=(1, 1, 1, 1))
    assert model.conv1.out_channels == width
    for stage in range(4):
        block = getattr(model, f"layer{stage + 1}")[0]
        assert block.conv2.out_channels == width * 2 ** stage
        assert block.conv3.out_channels == width * 2 ** stage * 4
    assert model.feature_dim == width * 32
    assert model.fc.in_features == width * 32
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 1000)


def test_layers_override_the_depth():
    model = resnet50(layers=(1, 2, 1, 3), width_multiplier=0.125)
    assert [len(getattr(model, f"layer{i}")) for i in range(1, 5)] == [1, 2, 1, 3]
    assert [len(getattr(resnet18(), f"layer{i}")) for i in range(1, 5)] == [2, 2, 2, 2]
    with pytest.raises(ValueError, match="layers"):
        resnet50(layers=(1, 1, 1))
    with pytest.raises(ValueError, match="width_multiplier"):
        resnet50(width_multiplier=0.0)


# ---------------------------------------------------------------- EraseReLU and residual scale
def _block(kind: type[nn.Module], erase_relu: bool = False, residual_scale: float = 1.0,
           project: bool = False) -> nn.Module:
    torch.manual_seed(0)
    width = 8
    inplanes = width * kind.expansion
    downsample = None
    if project:
        downsample = nn.Sequential(nn.Conv2d(inplanes, width * kind.expansion, 1, 2, bias=False),
                                   nn.BatchNorm2d(width * kind.expansion))
    block = kind(inplanes, width, 2 if project else 1, downsample, erase_relu, residual_scale)
    with torch.no_grad():  # BatchNorm shifts so that the block's sum is often negative
        for m in block.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.bias.normal_(-0.5, 1.0)
    return block.eval()


def _x(channels: int) -> torch.Tensor:
    return torch.randn(2, channels, 8, 8, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("kind", [BasicBlock, Bottleneck])
@pytest.mark.parametrize("project", [False, True])
def test_erase_relu_removes_exactly_the_relu_after_the_addition(kind, project):
    erased, kept = _block(kind, True, project=project), _block(kind, False, project=project)
    x = _x(8 * kind.expansion)
    with torch.no_grad():
        out_erased, out_kept = erased(x), kept(x)
    assert (out_erased < 0).any()
    assert (out_kept >= 0).all()
    # same weights: the only difference is one final ReLU (the inner ones are still there)
    torch.testing.assert_close(out_kept, torch.relu(out_erased))
    assert sum(isinstance(m, nn.ReLU) for m in erased.modules()) == 1
    assert isinstance(erased.relu_out, nn.Identity)


def test_erase_relu_reaches_every_block_of_the_network():
    model = resnet50(erase_relu=True, **TINY)
    blocks = [m for m in model.modules() if isinstance(m, Bottleneck)]
    assert len(blocks) == 4
    assert all(isinstance(b.relu_out, nn.Identity) for b in blocks)
    assert all(isinstance(b.relu_out, nn.ReLU)
               for b in resnet50(**TINY).modules() if isinstance(b, Bottleneck))


@pytest.mark.parametrize("kind", [BasicBlock, Bottleneck])
def test_residual_scale(kind):
    x = _x(8 * kind.expansion)
    with torch.no_grad():
        # scale 0: only the shortcut is left
        torch.testing.assert_close(_block(kind, False, 0.0)(x), torch.relu(x), rtol=0, atol=0)
        one, half = _block(kind, True, 1.0)(x), _block(kind, True, 0.5)(x)
        torch.testing.assert_close(half - x, 0.5 * (one - x))
    model = resnet50(residual_scale=0.3, **TINY)
    assert {b.residual_scale for b in model.modules() if isinstance(b, Bottleneck)} == {0.3}


def test_zero_init_residual_starts_every_block_as_its_shortcut():
    torch.manual_seed(0)
    model = ResNet(Bottleneck, (2, 1, 1, 1), width_multiplier=0.125,
                   zero_init_residual=True).eval()
    block = model.layer1[1]
    assert torch.count_nonzero(block.bn3.weight) == 0
    x = torch.randn(1, 32, 8, 8).relu()
    with torch.no_grad():
        torch.testing.assert_close(block(x), x, rtol=0, atol=0)
    assert torch.count_nonzero(resnet50(**TINY).layer1[0].bn3.weight) > 0
