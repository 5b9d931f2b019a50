"""kinetics_train / kinetics_evaluate pieces: splits, checkpoint names, multi-view averaging,
three-crop testing, a killed BesNet run resuming to the same weights, scoring."""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from models.layers import ViewAverage
from tasks.config import KineticsDataset, KineticsSettings
from tasks.errors import DataError
from tasks.fingerprint import code_digest, module_closure, relative
from tasks.video.dataset import centre_box, three_crop_boxes
from tasks.video.modeling import build_baseline, build_besnet
from tasks.video.report import score
from tasks.video.splits import read_splits, split_index, write_splits
from tasks.video.training import checkpoint_identity, checkpoint_path, training_code_digest

ROOT = Path(__file__).resolve().parents[3]


def _index(splits: dict[str, int], classes: int = 3) -> pd.DataFrame:
    rows = []
    for split, per_class in splits.items():
        for c in range(classes):
            rows += [{"clip_id": f"{split}{c}{i}", "class_index": c, "split": split,
                      "path": f"x/{split}{c}{i}", "n_frames": 16} for i in range(per_class)]
    return pd.DataFrame(rows)


# ================================================================== splits
def test_the_split_stage_output_reads_back_as_the_same_splits(tmp_path):
    splits = split_index(_index({"train": 6, "test": 2}), seed=4, train_dev_fraction=0.2)
    report = write_splits(splits, tmp_path)
    back = read_splits(tmp_path)
    assert report["test_split"] == back.test_name == "test"
    for part in ("train", "train_dev", "val", "test"):
        pd.testing.assert_frame_equal(getattr(back, part), getattr(splits, part))
        assert report["sizes"][part] == len(getattr(splits, part)) > 0


def test_split_index_uses_the_named_splits():
    splits = split_index(_index({"train": 5, "val": 2, "test": 1}), seed=0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (15, 6, 3)
    assert splits.test_name == "test"


def test_without_val_a_seeded_tenth_of_each_class_is_held_out_and_val_stands_in_for_test():
    index = _index({"train": 20})
    a, b = split_index(index, seed=1), split_index(index, seed=1)
    assert len(a.val) == 6 and sorted(a.val["class_index"]) == [0, 0, 1, 1, 2, 2]
    assert len(a.train) == 54 and set(a.train["clip_id"]).isdisjoint(a.val["clip_id"])
    assert a.val["clip_id"].tolist() == b.val["clip_id"].tolist()
    assert a.test_name == "val" and a.test["clip_id"].tolist() == a.val["clip_id"].tolist()


def test_train_dev_is_held_out_of_each_class_of_train_seeded_and_disjoint():
    index = _index({"train": 20, "val": 2, "test": 2})
    a, b = (split_index(index, seed=3, train_dev_fraction=0.1) for _ in range(2))
    assert sorted(a.train_dev["class_index"]) == [0, 0, 1, 1, 2, 2]
    assert len(a.train) == 54 and set(a.train["clip_id"]).isdisjoint(a.train_dev["clip_id"])
    assert a.train_dev["clip_id"].tolist() == b.train_dev["clip_id"].tolist()
    tiny = split_index(_index({"train": 3, "val": 1}), seed=0, train_dev_fraction=0.05)
    assert len(tiny.train_dev) == 3  # at least one clip of each class
    assert split_index(index, seed=3).train_dev.empty  # fraction 0: no train-dev


def test_unknown_split_names_and_no_training_clips_are_errors():
    with pytest.raises(DataError, match="validate"):
        split_index(_index({"train": 2, "validate": 1}), seed=0)
    with pytest.raises(DataError, match="no training clips"):
        split_index(_index({"val": 2}), seed=0)


# ================================================================== checkpoint names
def test_checkpoint_identity_follows_what_decides_the_weights(tmp_path):
    base = KineticsSettings()
    identity = checkpoint_identity("besnet", base, 42, "abc", "code")
    assert identity == checkpoint_identity("besnet", KineticsSettings(), 42, "abc", "code")
    path = checkpoint_path(tmp_path, "besnet", identity)
    assert path == tmp_path / f"besnet-{identity[:12]}.ckpt"
    changed = [
        checkpoint_identity("besnet", base, 43, "abc", "code"),
        checkpoint_identity("besnet", base, 42, "abd", "code"),
        checkpoint_identity("besnet", base, 42, "abc", "edited code"),
        checkpoint_identity("besnet_fixed", base, 42, "abc", "code"),
        checkpoint_identity("besnet", base.model_copy(update={
            "model": base.model.model_copy(update={"erase_relu": True})}), 42, "abc", "code"),
        checkpoint_identity("besnet", base.model_copy(update={
            "train": base.train.model_copy(update={"lr": 0.5})}), 42, "abc", "code"),
    ]
    assert len({identity, *changed}) == 7
    assert len({checkpoint_path(tmp_path, "besnet", i) for i in (identity, *changed)}) == 7


def test_the_training_code_digest_covers_the_loop_the_models_and_the_dataset():
    files = relative(module_closure(["tasks.video.training"]))
    for name in ("tasks/train.py", "models/besnet.py", "models/frame_baseline.py",
                 "tasks/video/dataset.py", "tasks/video/training.py"):
        assert name in files
    assert training_code_digest() == code_digest(["tasks.video.training"])


def test_only_the_current_configurations_checkpoint_is_kept(tmp_path):
    from tasks.video.training import drop_stale_checkpoints

    for name in ("besnet-aaa.ckpt", "besnet-bbb.ckpt", "besnet_fixed-aaa.ckpt", "other.txt"):
        (tmp_path / name).write_text("x")
    drop_stale_checkpoints(tmp_path / "besnet-bbb.ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "besnet-bbb.ckpt", "besnet_fixed-aaa.ckpt", "other.txt"]


# ================================================================== models from settings
def test_models_follow_the_settings():
    k = KineticsSettings(model={"layers": [1, 1, 1, 1], "width_multiplier": 0.125,
                                "dilations": [1, 3], "erase_relu": True},
                         baseline={"layers": [1, 1, 1, 1], "width_multiplier": 0.125,
                                   "hidden": 16, "pool": "max"})
    besnet, fixed = build_besnet(k, 5), build_besnet(k, 5, "fixed")
    x = torch.randn(2, 3, 4, 32, 32)
    assert besnet(x).shape == (2, 5) and build_baseline(k, 5)(x).shape == (2, 5)
    assert besnet.state_dict().keys() == fixed.state_dict().keys()
    convs = [m for m in fixed.modules() if hasattr(m, "dilations")]
    assert convs and all(m.mode == "fixed" for m in convs)
    assert all(tuple(m.dilations) == (1, 3) for m in convs)


# ================================================================== multi-view testing
def test_view_average_is_the_log_of_the_mean_softmax_over_views():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 2 * 4 * 4, 5))
    model = ViewAverage(net)
    clips = torch.randn(2, 3, 3, 2, 4, 4)  # B=2, V=3 views
    out = model(clips)
    manual = torch.stack([net(clips[:, v]).softmax(-1) for v in range(3)]).mean(0).log()
    torch.testing.assert_close(out, manual)
    torch.testing.assert_close(model(clips[:, 0]), net(clips[:, 0]))  # 5-D: plain logits
    torch.testing.assert_close(out.exp().sum(-1), torch.ones(2))


@pytest.mark.parametrize("size", [(171, 128), (128, 171)])
def test_three_crops_lie_along_the_long_side_and_the_middle_one_is_the_centre(size):
    width, height = size
    boxes = three_crop_boxes(width, height, 112, 128)
    assert boxes[1] == pytest.approx(centre_box(width, height, 112, 128))
    long_axis = 0 if width >= height else 1
    starts = [b[long_axis] for b in boxes]
    assert starts[0] == 0 and starts[0] < starts[1] < starts[2]
    assert math.isclose(boxes[2][long_axis + 2], width if long_axis == 0 else height)
    sides = {(round(b[2] - b[0], 6), round(b[3] - b[1], 6)) for b in boxes}
    assert len(sides) == 1  # the same crop size each


def test_test_views_are_crops_times_clips(tmp_path):
    from PIL import Image

    from tasks.video.dataset import ClipDataset

    folder = tmp_path / "clip"
    folder.mkdir()
    for i in range(12):
        Image.new("RGB", (96, 64), (i * 20, 0, 0)).save(folder / f"img_{i + 1:05d}.jpg")
    index = pd.DataFrame({"path": ["clip"], "class_index": [2], "n_frames": [12]})
    for crops in (1, 3):
        settings = KineticsDataset(frames=4, crop=32, test_clips=2, test_crops=crops)
        clips, label = ClipDataset(index, tmp_path, settings, train=False, seed=0)[0]
        assert clips.shape == (2 * crops, 3, 4, 32, 32) and label == 2


# ================================================================== scoring
def test_score_reports_topk_interval_and_per_class():
    classes = ["a", "b", "c", "d", "e", "f"]
    labels = np.array([0, 1, 2, 3, 0, 1])
    log_probs = np.log(np.full((6, 6), 0.01))
    for i, pred in enumerate([0, 1, 2, 0, 0, 2]):  # 4 of 6 right; d and the last b wrong
        log_probs[i, pred] = 0.0
    log_probs[3, 3] = -0.5  # d's true class second best: inside the top 5
    out = score(log_probs, labels, classes, seed=0, n_resamples=500)
    assert out["top1"] == pytest.approx(4 / 6) and out["top5"] >= out["top1"]
    assert out["top1_ci"]["low"] < 4 / 6 < out["top1_ci"]["high"]
    assert out["per_class"] == {"a": 1.0, "b": 0.5, "c": 1.0, "d": 0.0, "e": None, "f": None}
    assert out["mean_class_accuracy"] == pytest.approx((1 + 0.5 + 1 + 0) / 4)


# ================================================================== kill and resume
_CHILD = """
import os, signal, sys
sys.path.insert(0, {root!r})
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from models.besnet import BesNet
from tasks.train import FitConfig, fit

torch.set_num_threads(1)
ckpt, out, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
g = torch.Generator().manual_seed(0)
x = torch.randn(24, 3, 4, 16, 16, generator=g)
y = torch.arange(24) % 3
x[y == 1] = x[y == 1].flip(2)  # a temporal difference to learn
train = DataLoader(TensorDataset(x, y), batch_size=6, shuffle=True,
                   generator=torch.Generator().manual_seed(1))
val = DataLoader(TensorDataset(x[:12], y[:12]), batch_size=6)
torch.manual_seed(0)
model = BesNet(num_classes=3, layers=(1, 1, 1, 1), width_multiplier=0.0625, dropout=0.2)
calls = [0]

def count(*_):
    calls[0] += 1
    if calls[0] == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)

model.register_forward_pre_hook(count)
result = fit(model, train, val, nn.CrossEntropyLoss(),
             FitConfig(epochs=4, lr=3e-3, warmup_epochs=1, seed=0), torch.device("cpu"),
             checkpoint_path=ckpt)
torch.save(result.model.state_dict(), out)
"""


def _run_child(tmp_path: Path, ckpt: Path, out: Path, kill_at: int) -> int:
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD.format(root=str(ROOT)), str(ckpt), str(out), str(kill_at)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(proc.stderr[-3000:])
    return proc.returncode


def test_a_besnet_run_killed_mid_epoch_resumes_to_the_uninterrupted_weights(tmp_path):
    straight = tmp_path / "straight.pt"
    assert _run_child(tmp_path, tmp_path / "a.ckpt", straight, kill_at=0) == 0
    # 4 train batches + 2 val batches an epoch: forward 9 is inside epoch 2's training
    ckpt, resumed = tmp_path / "b.ckpt", tmp_path / "resumed.pt"
    assert _run_child(tmp_path, ckpt, resumed, kill_at=9) == -signal.SIGKILL
    assert ckpt.exists() and not resumed.exists()
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1
    assert _run_child(tmp_path, ckpt, resumed, kill_at=0) == 0
    a, b = (torch.load(p, weights_only=True) for p in (straight, resumed))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
