"""The demo clips (tasks/video/demo.py) and ClipDataset (tasks/video/dataset.py)."""
import math
import re

import av
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from tasks.config import KineticsDataset, KineticsDemo
from tasks.errors import DataError
from tasks.media import probe_video
from tasks.video.dataset import (
    ClipDataset,
    frame_name,
    read_video_frames,
    train_indices,
    view_indices,
)
from tasks.video.demo import (
    MANIFEST_COLUMNS,
    demo_manifest,
    encode_mp4,
    object_alpha,
    render_demo_clips,
    render_frames,
    sample_params,
)
from tasks.video.preprocess import IMAGENET_MEAN, IMAGENET_STD, normalize_clips

CLASSES = ["approaching", "moving_left", "moving_right", "receding", "rotating_anticlockwise",
           "rotating_clockwise"]
PAIRS = [("moving_right", "moving_left"), ("rotating_clockwise", "rotating_anticlockwise"),
         ("approaching", "receding")]
TINY = KineticsDemo(clips_per_class=3, duration=1.0, fps=16, size=64)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    clips_dir = tmp_path_factory.mktemp("demo") / "clips"
    manifest, classes = render_demo_clips(clips_dir, TINY, seed=7)
    return clips_dir, manifest, classes


def clip_path(clips_dir, row):
    return clips_dir / row["label_dir"] / f"{row['clip_id']}.mp4"


def decode(path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def object_masks(frames: np.ndarray) -> np.ndarray:
    """Pixels far from each frame's background (its median colour)."""
    background = np.median(frames.reshape(len(frames), -1, 3), axis=1)[:, None, None, :]
    return np.abs(frames.astype(np.float32) - background).sum(-1) > 100


def orientation(mask: np.ndarray) -> float:
    """Principal-axis angle of a mask (y down, so + is clockwise on screen), in (-pi/2, pi/2]."""
    ys, xs = np.nonzero(mask)
    dx, dy = xs - xs.mean(), ys - ys.mean()
    return 0.5 * math.atan2(2 * (dx * dy).mean(), (dx * dx).mean() - (dy * dy).mean())


def turn(angles: list[float]) -> float:
    """Total signed change of a 180-periodic angle sequence."""
    steps = np.diff(angles)
    return float(((steps + np.pi / 2) % np.pi - np.pi / 2).sum())


# ============================================================== demo clips
def test_demo_files_and_manifest(demo):
    clips_dir, manifest, classes = demo
    assert classes == CLASSES
    assert list(manifest.columns) == MANIFEST_COLUMNS
    assert len(manifest) == 6 * TINY.clips_per_class and manifest["clip_id"].is_unique
    for row in manifest.to_dict("records"):
        assert len(row["youtube_id"]) == 11
        assert row["clip_id"] == f"{row['youtube_id']}_000000_000001"
        assert re.fullmatch(r"[a-z_]+", row["label_dir"])
        assert classes[row["class_index"]] == row["label"]
        assert (row["time_start"], row["time_end"]) == (0.0, 1.0)
        info = probe_video(clip_path(clips_dir, row))
        assert (info.width, info.height) == (64, 64)
        assert info.duration == pytest.approx(1.0, abs=0.1) and info.frames == 16
    assert manifest["class_index"].dtype == np.int64
    per_class = manifest.groupby("label")["split"].apply(sorted)
    assert all(splits == ["test", "train", "val"] for splits in per_class)


def test_demo_rerun_renders_nothing_and_repairs_a_bad_file(demo):
    clips_dir, manifest, _ = demo
    files = sorted(clips_dir.rglob("*.mp4"))
    before = {p: p.stat().st_mtime_ns for p in files}
    again, _ = render_demo_clips(clips_dir, TINY, seed=7)
    pd.testing.assert_frame_equal(again, manifest)
    assert {p: p.stat().st_mtime_ns for p in files} == before
    assert not list(clips_dir.rglob("*.tmp"))

    broken = files[0]
    good = broken.read_bytes()
    broken.write_text("not a video")
    render_demo_clips(clips_dir, TINY, seed=7)
    assert broken.read_bytes() == good  # re-rendered, byte for byte


def test_demo_is_deterministic(demo, tmp_path):
    clips_dir, manifest, _ = demo
    pd.testing.assert_frame_equal(demo_manifest(TINY, seed=7), manifest)
    assert not demo_manifest(TINY, seed=8)["split"].equals(manifest["split"])
    smaller = KineticsDemo(clips_per_class=2, duration=1.0, fps=16, size=64)
    other, _ = render_demo_clips(tmp_path, smaller, seed=7)
    for row in other.to_dict("records"):  # clip i of class c is the same whatever the count
        assert clip_path(tmp_path, row).read_bytes() == clip_path(clips_dir, row).read_bytes()


@pytest.mark.parametrize("forward, backward", PAIRS)
def test_pair_is_the_same_clip_played_backwards(forward, backward):
    for seed in range(5):
        a = sample_params(np.random.default_rng(seed), forward, 64)
        b = sample_params(np.random.default_rng(seed), backward, 64)
        frames_a = render_frames(a, 12, 64, np.random.default_rng(seed))
        frames_b = render_frames(b, 12, 64, np.random.default_rng(seed))
        np.testing.assert_array_equal(frames_b, frames_a[::-1])


def _frame_stats(label: str, n_clips: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame (x, y, area, orientation) pooled over clips, and per-clip change first->last."""
    per_frame, change = [], []
    for i in range(n_clips):
        params = sample_params(np.random.default_rng([seed, i]), label, 64)
        stats = []
        for progress in np.linspace(0, 1, 5):
            alpha = object_alpha(params, progress, 64)
            ys, xs = np.mgrid[:64, :64]
            area = alpha.sum()
            stats.append([(alpha * xs).sum() / area, (alpha * ys).sum() / area, area,
                          orientation(alpha > 0.5) % np.pi])
        stats = np.array(stats)
        per_frame.append(stats)
        change.append([stats[-1, 0] - stats[0, 0], stats[-1, 2] - stats[0, 2],
                       turn(list(stats[:, 3]))])
    return np.concatenate(per_frame), np.array(change)


def ks_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Largest gap between the two empirical CDFs (two-sample Kolmogorov-Smirnov statistic)."""
    values = np.concatenate([a, b])
    cdf_a = np.searchsorted(np.sort(a), values, side="right") / len(a)
    cdf_b = np.searchsorted(np.sort(b), values, side="right") / len(b)
    return float(np.abs(cdf_a - cdf_b).max())


@pytest.mark.parametrize("forward, backward", PAIRS)
def test_pair_looks_the_same_per_frame_and_differs_in_time(forward, backward):
    frames_a, change_a = _frame_stats(forward, 400, seed=1)
    frames_b, change_b = _frame_stats(backward, 400, seed=2)  # independent draws
    for column in range(4):  # x, y, area, orientation of single frames: same distribution
        assert ks_distance(frames_a[:, column], frames_b[:, column]) < 0.15, column
    column = {"moving_right": 0, "approaching": 1, "rotating_clockwise": 2}[forward]
    assert (change_a[:, column] > 0).all() and (change_b[:, column] < 0).all()


def test_decoded_demo_clips_move_the_right_way(demo):
    clips_dir, manifest, _ = demo
    for row in manifest.to_dict("records"):
        masks = object_masks(decode(clip_path(clips_dir, row)))
        assert masks.any(axis=(1, 2)).all()
        xs = [np.nonzero(m)[1].mean() for m in masks]
        areas = masks.sum(axis=(1, 2))
        label = row["label"]
        if label.startswith("moving"):
            assert np.sign(xs[-1] - xs[0]) == (1 if label == "moving_right" else -1)
        elif label in ("approaching", "receding"):
            assert np.sign(areas[-1] - areas[0]) == (1 if label == "approaching" else -1)
        else:
            angle = turn([orientation(m) for m in masks])
            assert np.sign(angle) == (1 if label == "rotating_clockwise" else -1)
            assert abs(angle) > np.pi / 4


# ============================================================== ClipDataset
JPEG_FRAMES = [10, 5, 3]  # frames per JPEG clip
VIDEO_FRAMES = 40
GREEN_STEP = {"jpeg": 20, "video": 6}


def _frame(index: int, step: int, width: int = 80, height: int = 60) -> np.ndarray:
    """Red left half, black right half (a flip shows), green = step * index (the frame id)."""
    img = np.zeros((height, width, 3), dtype=np.uint8)
    img[:, : width // 2, 0] = 255
    img[..., 1] = step * index
    img[..., 2] = 128
    return img


@pytest.fixture(scope="module")
def frames_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("frames")
    rows = []
    for c, n in enumerate(JPEG_FRAMES):
        folder = root / "frames" / f"class_{c}" / f"clip{c}"
        folder.mkdir(parents=True)
        for j in range(n):
            Image.fromarray(_frame(j, GREEN_STEP["jpeg"])).save(folder / frame_name(j),
                                                                quality=95)
        rows.append({"path": str(folder.relative_to(root)), "class_index": c,
                     "n_frames": n if c != 1 else None})  # one row counts its files
    video = root / "frames" / "class_9" / "clip9.mp4"
    video.parent.mkdir(parents=True)
    encode_mp4(np.stack([_frame(j, GREEN_STEP["video"]) for j in range(VIDEO_FRAMES)]), video,
               fps=8)
    jpeg_index = pd.DataFrame(rows)
    video_index = pd.DataFrame([{"path": "frames/class_9/clip9.mp4", "class_index": 9,
                                 "n_frames": VIDEO_FRAMES}])
    return root, jpeg_index, video_index


def _dataset(frames_root, storage="jpeg", train=True, seed=0, **settings):
    root, jpeg_index, video_index = frames_root
    index = jpeg_index if storage == "jpeg" else video_index
    return ClipDataset(index, root, KineticsDataset(crop=32, **settings), train=train, seed=seed,
                       storage=storage)


def _pixels(clip: torch.Tensor) -> torch.Tensor:
    """A uint8 (C, T, H, W) clip as 0..255 floats."""
    assert clip.dtype == torch.uint8
    return clip.float()


def _frame_ids(clip: torch.Tensor, step: int) -> list[int]:
    return (_pixels(clip)[1].mean(dim=(1, 2)) / step).round().int().tolist()


@pytest.mark.parametrize("storage", ["jpeg", "video"])
@pytest.mark.parametrize("k", [1, 4, 8, 13])
@pytest.mark.parametrize("sampling", ["uniform", "random_stride"])
def test_shapes_for_any_k(frames_root, one_torch_thread, storage, k, sampling):
    train = _dataset(frames_root, storage, train=True, frames=k, sampling=sampling)
    test = _dataset(frames_root, storage, train=False, frames=k, sampling=sampling,
                    test_clips=3)
    counts = JPEG_FRAMES if storage == "jpeg" else [VIDEO_FRAMES]
    for i, n in enumerate(counts):
        clip, label = train.clip(i)
        assert clip.shape == (3, k, 32, 32) and clip.dtype == torch.uint8
        assert label == train.labels[i]
        ids = _frame_ids(clip, GREEN_STEP[storage])
        assert all(0 <= j < n for j in ids)
        if sampling == "uniform":
            assert ids == sorted(ids)
        views, _ = test[i]
        assert views.shape == (3, 3, k, 32, 32) and views.dtype == torch.uint8
        expected = view_indices(n, k, sampling, 3)
        got = [_frame_ids(v, GREEN_STEP[storage]) for v in views]
        assert got == expected.tolist()


def test_video_reader_seeks_to_late_frames(frames_root):
    root, _, _ = frames_root
    wanted = [39, 20, 33, 20]
    frames = read_video_frames(root / "frames/class_9/clip9.mp4", wanted)
    assert sorted(frames) == [20, 33, 39]
    for j, img in frames.items():
        green = np.asarray(img)[..., 1].mean()
        assert round(green / GREEN_STEP["video"]) == j


def test_values_are_imagenet_normalised_on_the_device_side(frames_root):
    clips, _ = _dataset(frames_root, train=False)[0]
    pixels = _pixels(clips[0])
    assert pixels[2].mean().item() == pytest.approx(128, abs=3)  # blue is 128 everywhere
    clip = normalize_clips(clips)
    assert clip.dtype == torch.float32 and clip.shape == clips.shape
    low = (0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    high = (1 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    for c in range(3):
        assert low[c] - 0.05 <= clip[0, c].min() and clip[0, c].max() <= high[c] + 0.05


def _flipped(clip: torch.Tensor) -> bool:
    red = _pixels(clip)[0]
    half = red.shape[-1] // 2
    return bool(red[..., half:].mean() > red[..., :half].mean())


def test_no_flip_keeps_left_and_right(frames_root):
    plain = _dataset(frames_root, frames=4)
    flips = _dataset(frames_root, frames=4, flip=True)
    seen_plain, seen_flip = [], []
    for epoch in range(6):
        plain.set_epoch(epoch)
        flips.set_epoch(epoch)
        for i in range(len(plain)):
            seen_plain.append(_flipped(plain.clip(i)[0]))
            seen_flip.append(_flipped(flips.clip(i)[0]))
    assert not any(seen_plain)
    assert any(seen_flip) and not all(seen_flip)


def test_seeded_per_epoch_and_index(frames_root):
    a, b, c = (_dataset(frames_root, frames=4, seed=s) for s in (0, 0, 1))
    for i in range(len(a)):
        torch.testing.assert_close(a.clip(i)[0], b.clip(i)[0], rtol=0, atol=0)
    assert any(not torch.equal(a.clip(i)[0], c.clip(i)[0]) for i in range(len(a)))
    first = [a.clip(i)[0] for i in range(len(a))]
    a.set_epoch(1)
    assert any(not torch.equal(first[i], a.clip(i)[0]) for i in range(len(a)))
    a.set_epoch(0)
    assert all(torch.equal(first[i], a.clip(i)[0]) for i in range(len(a)))
    test_a, test_c = (_dataset(frames_root, train=False, seed=s) for s in (0, 1))
    test_a.set_epoch(3)
    assert torch.equal(test_a[0][0], test_c[0][0])  # test views do not depend on seed/epoch


def test_sampling_helpers_loop_short_clips():
    rng = np.random.default_rng(0)
    idx = train_indices(3, 8, "uniform", rng)
    assert len(idx) == 8 and set(idx.tolist()) == {0, 1, 2} and (np.diff(idx) >= 0).all()
    idx = train_indices(3, 8, "random_stride", rng)
    assert len(idx) == 8 and set(idx.tolist()) <= {0, 1, 2}
    views = view_indices(100, 4, "random_stride", 3)
    assert views[0, 0] == 0 and views[-1, -1] == 99


def test_missing_frames_are_a_data_error(frames_root, tmp_path):
    _, jpeg_index, _ = frames_root
    ds = ClipDataset(jpeg_index, tmp_path, KineticsDataset(crop=32), train=True, seed=0)
    with pytest.raises(DataError):
        ds[0]
    with pytest.raises(DataError):
        ds[1]  # no n_frames in the index and no folder to count
