"""The frame baseline: any K, mean/max pooling over time, a frozen backbone, ImageNet loading."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from models.frame_baseline import FrameBaseline
from models.resnet import ResNet, resnet18

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = dict(depth=18, width_multiplier=0.125, layers=(1, 1, 1, 1), hidden=16)


def _model(**overrides) -> FrameBaseline:
    torch.manual_seed(0)
    return FrameBaseline(num_classes=5, **{**TINY, **overrides})


def _clip(k: int, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, k, 32, 32, generator=torch.Generator().manual_seed(k))


@pytest.mark.parametrize("k", [1, 4, 8, 16])
@pytest.mark.parametrize("pool", ["mean", "max"])
def test_any_number_of_frames_gives_logits(k, pool):
    model = _model(pool=pool)
    assert model(_clip(k)).shape == (2, 5)
    assert model.features(_clip(k)).shape == (2, model.backbone.feature_dim) == (2, 64)


@pytest.mark.parametrize("pool,reduce", [("mean", torch.mean), ("max", torch.amax)])
def test_features_pool_the_per_frame_backbone_features_over_time(pool, reduce):
    model = _model(pool=pool).eval()
    x = _clip(5)
    with torch.no_grad():
        per_frame = torch.stack([model.backbone.features(x[:, :, t]) for t in range(5)], dim=1)
        torch.testing.assert_close(model.features(x), reduce(per_frame, dim=1))
        logits = model(x)
    assert not torch.allclose(_model(pool="max" if pool == "mean" else "mean").eval()(x), logits)


def test_frames_are_not_mixed_across_the_batch():
    model = _model().eval()
    x = _clip(3, batch=3)
    with torch.no_grad():
        together = model(x)
        alone = torch.cat([model(x[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(together, alone)


@pytest.mark.parametrize("pool", ["mean", "max"])
def test_a_repeated_frame_gives_the_same_output_for_any_k(pool):
    model = _model(pool=pool).eval()
    frame = _clip(1, batch=2)
    with torch.no_grad():
        outputs = [model(frame.expand(-1, -1, k, -1, -1)) for k in (1, 2, 5, 12)]
    for out in outputs[1:]:
        torch.testing.assert_close(out, outputs[0])


def test_head_is_linear_relu_dropout_linear():
    model = _model(hidden=24, dropout=0.3)
    kinds = [type(m) for m in model.head]
    assert kinds == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert (model.head[0].in_features, model.head[0].out_features) == (64, 24)
    assert model.head[2].p == 0.3 and model.head[3].out_features == 5


def _train_step(model: FrameBaseline) -> None:
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss = nn.functional.cross_entropy(model(_clip(3)), torch.tensor([0, 3]))
    loss.backward()
    optimizer.step()


def test_freeze_backbone_keeps_backbone_weights_and_stats_fixed():
    model = _model(freeze_backbone=True)
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    model.train()
    assert model.training and model.head.training and not model.backbone.training
    backbone_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    head_before = model.head[0].weight.clone()
    _train_step(model)
    for key, value in model.backbone.state_dict().items():
        torch.testing.assert_close(value, backbone_before[key], rtol=0, atol=0, msg=key)
    assert not torch.equal(model.head[0].weight, head_before)


def test_unfrozen_backbone_trains_and_only_its_unused_fc_is_fixed():
    model = _model().train()
    assert model.backbone.training
    assert not any(p.requires_grad for p in model.backbone.fc.parameters())
    conv_before = model.backbone.conv1.weight.clone()
    mean_before = model.backbone.bn1.running_mean.clone()
    _train_step(model)
    assert not torch.equal(model.backbone.conv1.weight, conv_before)
    assert not torch.equal(model.backbone.bn1.running_mean, mean_before)


def test_imagenet_style_weights_load_into_the_backbone():
    model = _model()
    assert isinstance(model.backbone, ResNet)
    torch.manual_seed(1)
    source = resnet18(1000, width_multiplier=0.125, layers=(1, 1, 1, 1))
    model.backbone.load_state_dict(source.state_dict(), strict=True)
    torch.testing.assert_close(model.backbone.conv1.weight, source.conv1.weight, rtol=0, atol=0)


@pytest.mark.parametrize("depth,feature_dim", [(18, 64), (34, 64), (50, 256)])
def test_depths(depth, feature_dim):
    model = _model(depth=depth)
    assert model.backbone.feature_dim == feature_dim
    assert model(_clip(2)).shape == (2, 5)


def test_bad_options_fail_fast():
    with pytest.raises(ValueError, match="depth"):
        _model(depth=101)
    with pytest.raises(ValueError, match="pool"):
        _model(pool="attention")
