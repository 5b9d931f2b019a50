"""Compiled random dilation: BesNet.compile() draws the dilations before the graph and the graph
reads them as data, so it compiles without a break, once for every draw, and matches eager."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch._dynamo.testing import CompileCounterWithBackend

from models.besnet import BesNet
from models.layers import RandomDilationConv3d, ViewAverage, dilated_temporal_conv

SMALL = dict(num_classes=5, width_multiplier=0.125, layers=(1, 1, 1, 1))
DILATIONS = (1, 2, 4)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _small(**overrides) -> BesNet:
    torch.manual_seed(0)
    return BesNet(**{**SMALL, "dilations": DILATIONS, **overrides})


def _clip(k: int = 8, size: int = 32) -> torch.Tensor:
    return torch.randn(2, 3, k, size, size, generator=torch.Generator().manual_seed(k))


def _step(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Logits and every parameter's gradient of one training forward + backward."""
    model.zero_grad(set_to_none=True)
    out = model(x)
    out.square().sum().backward()
    return out.detach(), [p.grad.clone() for p in model.parameters()]


def _drawn(model: BesNet) -> list[int]:
    return [conv.last_dilation for conv in model.random_dilation_convs()]


@pytest.mark.usefixtures("one_torch_thread")
def test_draw_order_is_the_order_the_convs_run():
    model = _small(layers=(2, 1, 2, 1))
    ran: list[nn.Module] = []
    for m in model.modules():
        if isinstance(m, RandomDilationConv3d):
            m.register_forward_pre_hook(lambda module, _inp: ran.append(module))
    model(_clip())
    assert ran == model.random_dilation_convs()
    assert len(ran) == 6 * 2 + 4  # conv1 and conv3 of 6 blocks, 4 shortcuts


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("options", [{}, {"temporal_padding": "replicate", "activation": "selu"}])
def test_compiled_random_dilation_is_one_graph_without_breaks_and_matches_eager(options):
    eager, compiled = _small(**options), _small(**options)
    counter = CompileCounterWithBackend("aot_eager")  # aot: the op's fake and backward run too
    compiled.compile(backend=counter, fullgraph=True)  # fullgraph: a graph break would raise
    x = _clip()
    seen = set()
    for seed in range(3):
        torch.manual_seed(seed)
        want, want_grads = _step(eager, x)
        torch.manual_seed(seed)
        got, got_grads = _step(compiled, x)
        assert _drawn(compiled) == _drawn(eager)  # the same draws from the same RNG stream
        seen.update(_drawn(compiled))
        torch.testing.assert_close(got, want)
        for g, w in zip(got_grads, want_grads, strict=True):
            torch.testing.assert_close(g, w)
    assert seen == set(DILATIONS)
    assert counter.frame_count == 1  # no recompile for another draw

    eager.eval(), compiled.eval()  # test time: the mean over all dilations, one more graph
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), eager(x))
    assert counter.frame_count == 2


@pytest.mark.usefixtures("one_torch_thread")
def test_every_dilation_everywhere_runs_the_same_graph_as_eager(monkeypatch):
    eager, compiled = _small(), _small()
    counter = CompileCounterWithBackend("aot_eager")
    compiled.compile(backend=counter, fullgraph=True)
    x = _clip(6)
    for d in DILATIONS:
        for model in (eager, compiled):
            monkeypatch.setattr(model, "draw_dilations", lambda m=model, d=d: [
                conv.use_dilation(d) for conv in m.random_dilation_convs()])
        want, want_grads = _step(eager, x)
        got, got_grads = _step(compiled, x)
        assert set(_drawn(compiled)) == {d}
        torch.testing.assert_close(got, want)
        for g, w in zip(got_grads, want_grads, strict=True):
            torch.testing.assert_close(g, w)
    assert counter.frame_count == 1


@pytest.mark.usefixtures("one_torch_thread")
def test_view_average_compiles_the_model_with_its_draw_outside():
    model = _small()
    counter = CompileCounterWithBackend("eager")
    ViewAverage(model).compile(backend=counter, fullgraph=True)
    for seed in range(3):
        torch.manual_seed(seed)
        model(_clip())
    assert counter.frame_count == 1


@pytest.mark.parametrize("replicate", [False, True])
def test_the_dilation_as_data_op_passes_torchs_custom_op_checks(replicate):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 4, 4, dtype=torch.float64, generator=gen).contiguous(
        memory_format=torch.channels_last_3d).requires_grad_()
    weight = torch.randn(4, 3, 3, 1, 1, dtype=torch.float64, generator=gen, requires_grad=True)
    bias = torch.randn(4, dtype=torch.float64, generator=gen, requires_grad=True)
    # schema, fake tensor (shapes and strides), autograd registration; the tests above compile it
    torch.library.opcheck(dilated_temporal_conv, (x, weight, bias, torch.tensor(2), 2, replicate),
                          test_utils=("test_schema", "test_faketensor",
                                      "test_autograd_registration"))
    for d in DILATIONS:
        assert torch.autograd.gradcheck(
            lambda x, w, b, d=d: dilated_temporal_conv(x, w, b, torch.tensor(d), 2, replicate),
            (x, weight, bias))


@pytest.mark.usefixtures("one_torch_thread")
def test_inductor_compiles_the_conv_once_for_every_dilation():
    torch.manual_seed(0)
    conv = RandomDilationConv3d(4, 6, DILATIONS, bias=True, stride=2)
    conv.drawn_by_owner = True  # as in BesNet: the dilation is set before the compiled call
    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(conv, backend=counter, fullgraph=True)
    x = torch.randn(2, 4, 7, 6, 6, requires_grad=True)
    for d in DILATIONS:
        conv.use_dilation(d)
        got = compiled(x)
        (got_grad,) = torch.autograd.grad(got.square().sum(), x)
        want = conv(x)
        (want_grad,) = torch.autograd.grad(want.square().sum(), x)
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(got_grad, want_grad)
    assert counter.frame_count == 1


def test_a_conv_drawn_by_its_owner_refuses_to_train_before_a_draw():
    conv = RandomDilationConv3d(2, 2, DILATIONS)
    conv.drawn_by_owner = True
    with pytest.raises(RuntimeError, match="draw"):
        conv(torch.randn(1, 2, 4, 2, 2))
