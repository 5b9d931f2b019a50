"""The shared training loop: learning, early stopping, determinism and exact checkpoint resume."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from models.sequence import build_sequence_model
from tasks import train as train_module
from tasks.config import TrainSettings
from tasks.errors import ConfigError, DataError
from tasks.train import (
    FitConfig,
    _channels_last,
    _split_batch,
    _to_device,
    compiles,
    fit,
    predict,
    resolve_device,
    seed_everything,
    tensor_loader,
)

WINDOW, N_FEATURES = 8, 3
CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _data(n: int, seed: int, signal: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, WINDOW, N_FEATURES)).astype(np.float32)
    if signal:
        y = (X[:, -1, 0] + 0.5 * X[:, -2, 1] > 0).astype(np.float32)
    else:
        y = rng.integers(0, 2, size=n).astype(np.float32)
    return X, y


def _loaders(signal: bool = True, n_train: int = 512, seed: int = 0):
    X, y = _data(n_train, 1, signal)
    Xv, yv = _data(256, 2, signal)
    return (tensor_loader(X, y, 64, shuffle=True, seed=seed),
            tensor_loader(Xv, yv, 128, shuffle=False, seed=seed), yv)


def _model(kind: str = "mlp", seed: int = 0, dropout: float = 0.1, hidden: int = 32) -> nn.Module:
    torch.manual_seed(seed)
    return build_sequence_model(kind, N_FEATURES, WINDOW, hidden=hidden, layers=2, kernel_size=2,
                                dilations=[1, 2, 4], dropout=dropout, activation="relu",
                                erase_relu=False, residual_scale=1.0)


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ---------------------------------------------------------------- helpers
def test_resolve_device():
    assert resolve_device("cpu") == CPU
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="common.device"):
            resolve_device("cuda")
    with pytest.raises(ConfigError, match="common.device"):
        resolve_device("tpu")


def test_seed_everything_repeats_every_generator():
    import random

    def draw():
        return random.random(), np.random.rand(), torch.rand(1).item()

    seed_everything(3)
    first = draw()
    seed_everything(3)
    assert draw() == first


def test_tensor_loader_dtypes_order_and_checks():
    X = np.arange(20, dtype=np.float64).reshape(10, 2)
    y = np.arange(10)
    xb, yb = next(iter(tensor_loader(X, y, 4, shuffle=False, seed=0)))
    assert xb.dtype == torch.float32 and yb.dtype == torch.float32
    assert yb.tolist() == [0, 1, 2, 3]
    _, yb = next(iter(tensor_loader(X, y, 4, shuffle=False, seed=0, y_dtype=torch.int64)))
    assert yb.dtype == torch.int64

    def order(seed):
        return torch.cat([b[1] for b in tensor_loader(X, y, 4, shuffle=True, seed=seed)]).tolist()

    assert order(5) == order(5)
    assert order(5) != order(6)
    # 9 rows in batches of 4 would leave one sample: BatchNorm cannot train on it
    assert len(tensor_loader(X[:9], y[:9], 4, shuffle=True, seed=0)) == 2
    with pytest.raises(DataError, match="y has 9"):
        tensor_loader(X, y[:9], 4, shuffle=False, seed=0)


def test_fit_config_from_settings_and_validation():
    settings = TrainSettings(epochs=7, batch_size=32, lr=0.01, weight_decay=0.1, patience=2)
    config = FitConfig.from_settings(settings, seed=11)
    assert (config.epochs, config.lr, config.weight_decay, config.patience, config.seed) == \
        (7, 0.01, 0.1, 2, 11)
    assert config.optimizer == "adamw" and config.grad_accum == 1
    with pytest.raises(ConfigError, match="train.optimizer"):
        FitConfig(epochs=1, lr=0.1, optimizer="adam")
    with pytest.raises(ConfigError, match="train.grad_accum"):
        FitConfig(epochs=1, lr=0.1, grad_accum=0)
    with pytest.raises(ConfigError, match="train.compile"):
        FitConfig(epochs=1, lr=0.1, compile="sometimes")


def test_compile_auto_means_cuda_only_and_fit_compiles_when_told(monkeypatch):
    cuda = torch.device("cuda")
    assert compiles("auto", cuda) and not compiles("auto", CPU)
    assert compiles(True, CPU) and not compiles(False, cuda)
    train, val, _ = _loaders(signal=True, n_train=64)
    for setting, expected in (("auto", 0), (False, 0), (True, 1)):
        model, calls = _model("mlp"), []
        monkeypatch.setattr(model, "compile", lambda *a, calls=calls, **k: calls.append(k))
        fit(model, train, val, nn.BCEWithLogitsLoss(),
            FitConfig(epochs=1, lr=1e-3, compile=setting, seed=0), CPU)
        assert len(calls) == expected, setting
    assert calls == [{"fullgraph": False}]  # no test proves this model one graph
    model, calls = _model("mlp"), []
    model.one_graph = True  # as BesNet says: a graph break must then fail, not slow down
    monkeypatch.setattr(model, "compile", lambda *a, **k: calls.append(k))
    fit(model, train, val, nn.BCEWithLogitsLoss(),
        FitConfig(epochs=1, lr=1e-3, compile=True, seed=0), CPU)
    assert calls == [{"fullgraph": True}]


def test_the_models_their_tests_prove_one_graph_say_so():
    from models.besnet import BesNet
    from models.frame_baseline import FrameBaseline
    from models.layers import ViewAverage

    assert ViewAverage(BesNet(num_classes=3, layers=(1, 1, 1, 1))).one_graph
    assert not ViewAverage(FrameBaseline(num_classes=3)).one_graph


def test_channels_last_layout_for_4d_and_5d_tensors_only():
    clip, image, window = torch.randn(2, 3, 4, 5, 6), torch.randn(2, 3, 5, 6), torch.randn(2, 8, 3)
    assert _channels_last(clip).is_contiguous(memory_format=torch.channels_last_3d)
    assert _channels_last(image).is_contiguous(memory_format=torch.channels_last)
    assert _channels_last(window) is window
    assert torch.equal(_channels_last(clip), clip)
    # on the CPU nothing changes layout
    conv = _to_device(nn.Conv3d(3, 4, 3), CPU)
    assert conv.weight.is_contiguous()
    assert _split_batch([clip, torch.zeros(2)], CPU)[0][0].is_contiguous()


@pytest.mark.cuda
def test_on_cuda_conv_kernels_and_clip_batches_take_channels_last():
    cuda = torch.device("cuda")
    model = _to_device(nn.ModuleDict({"clip": nn.Conv3d(3, 4, 3), "frame": nn.Conv2d(3, 4, 3),
                                      "head": nn.Linear(4, 2)}), cuda)
    assert model["clip"].weight.is_contiguous(memory_format=torch.channels_last_3d)
    assert model["frame"].weight.is_contiguous(memory_format=torch.channels_last)
    inputs, target = _split_batch([torch.randn(2, 3, 4, 5, 6), torch.zeros(2)], cuda)
    assert inputs[0].is_contiguous(memory_format=torch.channels_last_3d)
    assert target.is_cuda and target.is_contiguous()


# ---------------------------------------------------------------- learning and stopping
@pytest.mark.parametrize("kind", ["mlp", "tcn"])
def test_fit_learns_a_separable_problem(kind):
    train, val, yv = _loaders(signal=True)
    rows = []
    config = FitConfig(epochs=12, lr=3e-3, weight_decay=1e-4, patience=4, warmup_epochs=1,
                       seed=0)
    result = fit(_model(kind), train, val, nn.BCEWithLogitsLoss(), config, CPU,
                 on_epoch=rows.append)
    accuracy = ((predict(result.model, val, CPU) > 0) == yv).mean()
    assert accuracy > 0.85
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in rows] == result.history
    assert set(rows[0]) == {"epoch", "train_loss", "val_loss", "lr", "seconds"}
    assert set(result.history[0]) == {"epoch", "train_loss", "val_loss", "lr"}  # no wall clock
    assert result.best_val_loss == min(r["val_loss"] for r in rows)
    assert rows[result.best_epoch - 1]["val_loss"] == result.best_val_loss
    # warm-up: the first epoch's LR ramps up towards the base LR; cosine ends near zero
    assert rows[0]["lr"] == pytest.approx(3e-3)
    assert rows[-1]["lr"] < rows[1]["lr"]


def test_fit_restores_the_best_weights_and_stops_early_without_signal():
    train, val, _ = _loaders(signal=False, n_train=256)
    config = FitConfig(epochs=40, lr=1e-2, patience=2, seed=0)
    result = fit(_model(hidden=64, dropout=0.0), train, val, nn.BCEWithLogitsLoss(), config, CPU)
    assert result.stopped_early
    assert len(result.history) < 40
    assert len(result.history) == result.best_epoch + config.patience
    # the returned model carries the best epoch's weights, not the last epoch's
    val_loss = nn.BCEWithLogitsLoss()(torch.from_numpy(predict(result.model, val, CPU)),
                                      torch.cat([b[1] for b in val]))
    assert val_loss.item() == pytest.approx(result.best_val_loss, rel=1e-5)
    assert result.history[-1]["val_loss"] > result.best_val_loss


def test_fit_is_deterministic_for_a_seed():
    def run(seed, other_draws):
        train, val, _ = _loaders(seed=seed)
        model = _model("tcn", seed=seed)
        torch.rand(other_draws)  # whatever ran before fit must not matter: fit seeds itself
        config = FitConfig(epochs=3, lr=1e-2, patience=5, seed=seed, grad_accum=2,
                           max_grad_norm=1.0)
        return fit(model, train, val, nn.BCEWithLogitsLoss(), config, CPU).model

    first, second, other = run(0, 1), run(0, 7), run(1, 1)
    assert _same_weights(first, second)
    assert not _same_weights(first, other)


def test_grad_accum_matches_one_big_batch():
    X, y = _data(512, 1, signal=True)

    def run(batch_size, grad_accum):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(WINDOW * N_FEATURES, 1), nn.Flatten(0))
        config = FitConfig(epochs=2, lr=0.1, weight_decay=0.01, optimizer="sgd",
                           grad_accum=grad_accum, warmup_epochs=1, max_grad_norm=5.0, seed=0)
        train = tensor_loader(X, y, batch_size, shuffle=True, seed=0)
        val = tensor_loader(X[:64], y[:64], 64, shuffle=False, seed=0)
        return fit(model, train, val, nn.BCEWithLogitsLoss(), config, CPU)

    big, accumulated = run(64, 1), run(32, 2)
    for a, b in zip(big.model.parameters(), accumulated.model.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    assert [r["lr"] for r in big.history] == [r["lr"] for r in accumulated.history]


def test_sgd_and_multiclass_targets():
    X, y = _data(256, 1, signal=True)
    classes = (X[:, -1, 0] > 0).astype(np.int64) + (X[:, -1, 1] > 0).astype(np.int64)
    train = tensor_loader(X, classes, 64, shuffle=True, seed=0, y_dtype=torch.int64)
    val = tensor_loader(X[:64], classes[:64], 64, shuffle=False, seed=0, y_dtype=torch.int64)
    torch.manual_seed(0)
    model = build_sequence_model("mlp", N_FEATURES, WINDOW, hidden=32, layers=1, kernel_size=2,
                                 dilations=[1], dropout=0.0, activation="selu", erase_relu=True,
                                 residual_scale=0.5, n_outputs=3)
    config = FitConfig(epochs=3, lr=0.05, optimizer="sgd", cosine=False, seed=0)
    result = fit(model, train, val, nn.CrossEntropyLoss(), config, CPU)
    assert predict(result.model, val, CPU).shape == (64, 3)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert all(r["lr"] == 0.05 for r in result.history)


# ---------------------------------------------------------------- checkpoint and resume
def _checkpoint_config(epochs: int, cosine: bool = True, lr: float = 5e-3) -> FitConfig:
    return FitConfig(epochs=epochs, lr=lr, weight_decay=1e-3, patience=10, seed=0,
                     warmup_epochs=1, cosine=cosine)


def _fit_with_checkpoint(epochs: int, path, on_epoch=None, cosine: bool = True,
                         model: nn.Module | None = None, identity: str = "", lr: float = 5e-3):
    train, val, _ = _loaders()
    model = model if model is not None else _model("tcn", seed=0, dropout=0.2)
    return fit(model, train, val, nn.BCEWithLogitsLoss(), _checkpoint_config(epochs, cosine, lr),
               CPU, on_epoch=on_epoch, checkpoint_path=path, checkpoint_identity=identity)


def _crash_after_epoch(epochs: int, crash_at: int, path) -> None:
    """A run of `epochs` killed right after epoch `crash_at` is checkpointed."""
    def crash(row):
        if row["epoch"] == crash_at:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _fit_with_checkpoint(epochs, path, on_epoch=crash)


def _last_weights(path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


def test_resume_with_more_epochs_continues_and_matches_an_uninterrupted_run(tmp_path):
    # a flat schedule does not depend on the epoch count, so 2 + 2 epochs == 4 epochs
    ckpt = tmp_path / "ckpt" / "resume.pt"
    first = _fit_with_checkpoint(2, ckpt, cosine=False)
    assert [r["epoch"] for r in first.history] == [1, 2]
    rows = []
    resumed = _fit_with_checkpoint(4, ckpt, on_epoch=rows.append, cosine=False)
    assert [r["epoch"] for r in rows] == [3, 4]
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3, 4]

    straight = _fit_with_checkpoint(4, tmp_path / "straight.pt", cosine=False)
    assert _same_weights(resumed.model, straight.model)
    resumed_last, straight_last = _last_weights(ckpt), _last_weights(tmp_path / "straight.pt")
    assert all(torch.equal(resumed_last[k], straight_last[k]) for k in straight_last)
    assert [r["val_loss"] for r in resumed.history] == [r["val_loss"] for r in straight.history]
    assert not list(ckpt.parent.glob(".*.tmp"))


def test_resume_after_a_crash_matches_an_uninterrupted_run(tmp_path):
    ckpt = tmp_path / "crash.pt"

    def crash_after_epoch_2(row):
        if row["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _fit_with_checkpoint(4, ckpt, on_epoch=crash_after_epoch_2)
    torch.manual_seed(123)  # a resumed process starts with other global RNG states
    np.random.seed(123)
    resumed = _fit_with_checkpoint(4, ckpt)
    straight = _fit_with_checkpoint(4, tmp_path / "straight.pt")
    assert _same_weights(resumed.model, straight.model)
    assert [r["lr"] for r in resumed.history] == [r["lr"] for r in straight.history]
    assert _last_weights(ckpt).keys() == _last_weights(tmp_path / "straight.pt").keys()
    assert all(torch.equal(v, _last_weights(tmp_path / "straight.pt")[k])
               for k, v in _last_weights(ckpt).items())


def test_a_finished_checkpoint_is_not_trained_again_and_a_wrong_one_is_named(tmp_path):
    ckpt = tmp_path / "done.pt"
    done = _fit_with_checkpoint(2, ckpt)
    again = _fit_with_checkpoint(2, ckpt, on_epoch=lambda row: pytest.fail("trained again"))
    assert _same_weights(done.model, again.model)
    assert again.history == done.history

    train, val, _ = _loaders()
    with pytest.raises(DataError, match="done.pt"):  # same code and settings, other shapes
        fit(_model("tcn", hidden=16), train, val, nn.BCEWithLogitsLoss(), _checkpoint_config(3),
            CPU, checkpoint_path=ckpt)
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="bad.pt"):
        fit(_model("mlp"), train, val, nn.BCEWithLogitsLoss(), FitConfig(epochs=3, lr=1e-3),
            CPU, checkpoint_path=tmp_path / "bad.pt")


# ---------------------------------------------------------------- what is resumed, and how much
BATCHES_PER_EPOCH = 512 // 64  # _loaders(): 512 training rows in batches of 64


def test_a_resumed_run_trains_only_the_remaining_steps_to_the_uninterrupted_weights(tmp_path):
    ckpt = tmp_path / "crash.pt"
    _crash_after_epoch(5, 2, ckpt)
    model = _model("tcn", seed=0, dropout=0.2)
    batches = []
    model.register_forward_pre_hook(lambda m, args: batches.append(1) if m.training else None)
    resumed = _fit_with_checkpoint(5, ckpt, model=model)
    assert resumed.resumed_from_epoch == 2
    assert len(batches) == resumed.steps_run == (5 - 2) * BATCHES_PER_EPOCH

    straight = _fit_with_checkpoint(5, tmp_path / "straight.pt")
    assert straight.resumed_from_epoch == 0 and straight.steps_run == 5 * BATCHES_PER_EPOCH
    assert _same_weights(resumed.model, straight.model)
    last, straight_last = _last_weights(ckpt), _last_weights(tmp_path / "straight.pt")
    assert all(torch.equal(last[k], straight_last[k]) for k in straight_last)


@pytest.mark.parametrize("edit", ["code", "caller identity", "settings"])
def test_a_checkpoint_of_other_code_or_settings_is_not_resumed(tmp_path, monkeypatch, caplog,
                                                               edit):
    ckpt = tmp_path / "crash.pt"
    _crash_after_epoch(4, 2, ckpt)
    stale = torch.load(ckpt, weights_only=True)["identity"]
    if edit == "code":  # the training code changed between the kill and the rerun
        monkeypatch.setattr(train_module, "code_digest", lambda modules: "edited")
    rows = []
    result = _fit_with_checkpoint(4, ckpt, on_epoch=rows.append,
                                  identity="other data" if edit == "caller identity" else "",
                                  lr=1e-2 if edit == "settings" else 5e-3)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert result.resumed_from_epoch == 0 and result.steps_run == 4 * BATCHES_PER_EPOCH
    assert "not resuming" in caplog.text and str(ckpt) in caplog.text
    assert torch.load(ckpt, weights_only=True)["identity"] not in ("", stale)  # overwritten


def test_a_checkpoint_without_an_identity_is_not_resumed(tmp_path):
    ckpt = tmp_path / "old.pt"
    _crash_after_epoch(4, 2, ckpt)
    old = torch.load(ckpt, weights_only=True)
    del old["identity"]  # written before checkpoints carried one
    torch.save(old, ckpt)
    assert _fit_with_checkpoint(4, ckpt).resumed_from_epoch == 0
