"""The clip item path and loader: uint8 clips, normalisation on the device side (the same values
as before it moved), decode at size, whole-pixel crops, workers and their defaults."""
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from tasks.config import KineticsDataset, KineticsSettings, KineticsTrain, load_params
from tasks.errors import DataError
from tasks.train import predict
from tasks.video import modeling
from tasks.video.dataset import (
    ClipDataset,
    centre_box,
    crop_views,
    decode_jpeg_frames,
    draft_shrink,
    frame_name,
    open_jpeg_frames,
    random_resized_box,
    three_crop_boxes,
    train_indices,
    view_indices,
)
from tasks.video.demo import demo_classes, render_frames, sample_params
from tasks.video.preprocess import IMAGENET_MEAN, IMAGENET_STD, normalize_clips
from tasks.video.resample import collate_resize
from tests.conftest import ROOT

DEMO = load_params(ROOT / "params.yaml").kinetics  # the demo's frames and views


# ------------------------------------------------------------------ the path before the move
def old_to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """The loader's float conversion before it moved to the device (verbatim)."""
    array = np.stack([np.asarray(img, dtype=np.uint8) for img in images])  # T, H, W, C
    clip = torch.from_numpy(array).permute(3, 0, 1, 2).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1, 1)
    return clip.sub_(mean).div_(std)


def old_read(folder, indices) -> dict[int, Image.Image]:
    frames = {}
    for i in sorted(set(indices)):
        with Image.open(folder / frame_name(i)) as img:
            frames[i] = img.convert("RGB")
    return frames


def old_item(ds: ClipDataset, i: int) -> torch.Tensor:
    """ClipDataset's item as it was: full decode, PIL box resize of every frame, float on CPU."""
    s, n, crop = ds.settings, ds.n_frames(i), (ds.settings.crop, ds.settings.crop)
    folder = ds.root / ds.paths[i]
    if ds.train:
        rng = np.random.default_rng([ds.seed, ds.epoch, i])
        indices = train_indices(n, s.frames, s.sampling, rng).tolist()
        images = old_read(folder, indices)
        box = random_resized_box(*images[indices[0]].size, rng)
        flip = s.flip and rng.random() < 0.5
        out = []
        for j in indices:
            img = images[j].resize(crop, Image.Resampling.BILINEAR, box=box)
            out.append(img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else img)
        return old_to_tensor(out)
    views = view_indices(n, s.frames, s.sampling, s.test_clips)
    images = old_read(folder, views.ravel().tolist())
    width, height = next(iter(images.values())).size
    boxes = ([centre_box(width, height, s.crop, ds.short_side)] if s.test_crops == 1
             else three_crop_boxes(width, height, s.crop, ds.short_side))
    clips = []
    for box in boxes:
        resized = {j: img.resize(crop, Image.Resampling.BILINEAR, box=box)
                   for j, img in images.items()}
        clips.extend(old_to_tensor([resized[j] for j in view]) for view in views.tolist())
    return torch.stack(clips)


def write_clip(folder, frames: np.ndarray, quality: int = 90) -> None:
    folder.mkdir(parents=True)
    for j, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / frame_name(j), quality=quality)


@pytest.fixture(scope="module")
def demo_frames(tmp_path_factory):
    """JPEG frame folders of demo clips at the demo's frame size, one per class."""
    root = tmp_path_factory.mktemp("demo-frames")
    rows = []
    for c, label in enumerate(demo_classes()):
        rng = np.random.default_rng([3, c])
        size = DEMO.frames.short_side
        frames = render_frames(sample_params(rng, label, size), 16, size, rng)
        write_clip(root / label, frames)
        rows.append({"path": label, "class_index": c, "n_frames": len(frames)})
    return root, pd.DataFrame(rows)


@pytest.mark.parametrize("views", [
    {}, {"test_crops": 3, "flip": True, "sampling": "random_stride", "frames": 5}])
def test_the_model_sees_the_values_it_saw_before_normalisation_moved(demo_frames, views,
                                                                     one_torch_thread):
    root, index = demo_frames
    settings = DEMO.dataset.model_copy(update=views)
    for train in (True, False):
        ds = ClipDataset(index, root, settings, train=train, seed=0)
        for epoch in range(3 if train else 1):
            ds.set_epoch(epoch)
            for i in range(len(ds)):
                clip, label = ds.clip(i)
                assert clip.dtype == torch.uint8 and label == index["class_index"][i]
                assert torch.equal(normalize_clips(clip), old_item(ds, i)), (train, epoch, i)


def test_normalize_clips_takes_uint8_batches_of_views_and_keeps_the_layout():
    clips = torch.randint(0, 256, (2, 4, 3, 2, 5, 5), dtype=torch.uint8)  # B, V, C, T, H, W
    out = normalize_clips(clips)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1, 1)
    assert out.dtype == torch.float32
    assert torch.equal(out, (clips.float() / 255 - mean) / std)
    last = clips[:, 0].contiguous(memory_format=torch.channels_last_3d)
    assert normalize_clips(last).is_contiguous(memory_format=torch.channels_last_3d)
    with pytest.raises(TypeError, match="uint8"):
        normalize_clips(out)


def test_predict_normalises_on_the_device_side_with_prepare():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 2 * 4 * 4, 3))
    clips = torch.randint(0, 256, (6, 3, 2, 4, 4), dtype=torch.uint8)
    labels = torch.zeros(6, dtype=torch.int64)
    raw = DataLoader(list(zip(clips, labels, strict=True)), batch_size=4)
    floats = DataLoader(list(zip(normalize_clips(clips), labels, strict=True)), batch_size=4)
    cpu = torch.device("cpu")
    np.testing.assert_array_equal(predict(net, raw, cpu, normalize_clips), predict(net, floats, cpu))


# ------------------------------------------------------------------ crops and decoding
def test_a_whole_pixel_box_of_the_crop_size_is_cut_out_with_the_pixels_pil_resizes_to(tmp_path):
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8))
    boxes = [(7, 3, 71, 67), (7.0, 3.0, 71.0, 67.0), (0, 0, 64, 64), (6.5, 3, 70.5, 67),
             (5, 2, 95, 80), (10, 10, 40, 40)]
    for box, planes in zip(boxes, crop_views(img, boxes, 64), strict=True):
        want = img.resize((64, 64), Image.Resampling.BILINEAR, box=box)
        np.testing.assert_array_equal(planes, np.asarray(want).transpose(2, 0, 1))
    shrunk = img.resize((60, 45))  # a frame decoded 2x smaller: boxes stay in full-size pixels
    np.testing.assert_array_equal(crop_views(shrunk, [(10, 10, 74, 74)], 32, shrink=2)[0],
                                  np.asarray(shrunk.crop((5, 5, 37, 37))).transpose(2, 0, 1))


def test_jpegs_are_decoded_smaller_only_where_every_box_is_over_twice_the_crop(tmp_path):
    assert draft_shrink([(0, 0, 128, 128)], 64) == 1  # the demo: frames at most 2x the crop
    assert draft_shrink([(0, 0, 129, 129)], 64) == 2
    assert draft_shrink([(0, 0, 129, 129), (0, 0, 200, 120)], 64) == 1
    assert draft_shrink([(0, 0, 300, 520)], 64) == 4
    assert draft_shrink([(0, 0, 600, 600)], 64) == 8
    y, x = np.mgrid[0:256, 0:320]
    smooth = np.stack([x * 0.7, y, (x + y) * 0.4], axis=-1).astype(np.uint8)
    write_clip(tmp_path / "clip", np.stack([smooth] * 4), quality=95)
    frames = decode_jpeg_frames(open_jpeg_frames(tmp_path / "clip", [0, 2]), shrink=2)
    assert {j: (img.size, factor) for j, (img, factor) in frames.items()} == {
        0: ((160, 128), 2), 2: ((160, 128), 2)}
    index = pd.DataFrame({"path": ["clip"], "class_index": [0], "n_frames": [4]})
    settings = KineticsDataset(frames=4, crop=64, test_clips=1)
    for train in (True, False):  # close to the full decode + bilinear resize, not equal
        ds = ClipDataset(index, tmp_path, settings, train=train, seed=0)
        diff = (normalize_clips(ds.clip(0)[0]) - old_item(ds, 0)).abs() * 255 * 0.226
        assert diff.mean() < 2.0


def test_a_corrupt_frame_is_a_data_error_naming_it(tmp_path):
    write_clip(tmp_path / "clip", np.zeros((3, 40, 40, 3), dtype=np.uint8))
    bad = tmp_path / "clip" / frame_name(1)
    bad.write_bytes(bad.read_bytes()[:200])  # truncated
    index = pd.DataFrame({"path": ["clip"], "class_index": [0], "n_frames": [3]})
    ds = ClipDataset(index, tmp_path, KineticsDataset(frames=3, crop=32), train=True, seed=0)
    with pytest.raises(DataError, match="img_00002.jpg"):
        ds[0]


# ------------------------------------------------------------------ the loader
def test_persistent_workers_follow_set_epoch(demo_frames):
    root, index = demo_frames
    ds = ClipDataset(index.head(3), root, DEMO.dataset, train=True, seed=0)
    loader = DataLoader(ds, batch_size=1, num_workers=1, persistent_workers=True,
                        collate_fn=collate_resize)
    for epoch in (0, 1, 2):
        ds.set_epoch(epoch)
        got = [batch.resize()[0] for batch, _ in loader]
        want = [ds.clip(i)[0] for i in range(len(ds))]
        assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True)), epoch
    assert not torch.equal(got[0], ClipDataset(index.head(3), root, DEMO.dataset, train=True,
                                                seed=0).clip(0)[0])  # epoch 2: other crops


def test_auto_workers_are_the_cores_but_one_on_cuda_and_none_on_cpu(monkeypatch):
    monkeypatch.setattr(modeling, "available_cores", lambda: 16)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert modeling.loader_workers("auto", cuda) == 15
    assert modeling.loader_workers("auto", cpu) == 0
    assert modeling.loader_workers(3, cpu) == 3 and modeling.loader_workers(0, cuda) == 0
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun: 4 processes share the machine
    assert modeling.loader_workers("auto", cuda) == 3
    monkeypatch.setattr(modeling, "available_cores", lambda: 1)
    assert modeling.loader_workers("auto", cuda) == 0


def test_clip_loader_pins_memory_for_cuda_and_keeps_its_workers(demo_frames, monkeypatch):
    root, index = demo_frames
    monkeypatch.setattr(modeling, "available_cores", lambda: 2)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    auto = KineticsSettings(dataset=DEMO.dataset)
    assert auto.train.num_workers == "auto"
    cpu = modeling.clip_loader(index, auto, 0, train=True, root=root)
    assert (cpu.num_workers, cpu.pin_memory, cpu.persistent_workers) == (0, False, False)
    cuda = modeling.clip_loader(index, auto, 0, train=True, root=root, device=torch.device("cuda"))
    assert (cuda.num_workers, cuda.pin_memory, cuda.persistent_workers) == (1, True, True)
    two = KineticsSettings(dataset=DEMO.dataset, train=KineticsTrain(num_workers=2))
    fixed = modeling.clip_loader(index, two, 0, train=False, root=root)
    assert (fixed.num_workers, fixed.pin_memory, fixed.persistent_workers) == (2, False, True)
    with pytest.raises(ValueError):
        KineticsTrain(num_workers=-1)
    with pytest.raises(ValueError):
        KineticsTrain(num_workers="many")
