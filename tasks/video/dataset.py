"""ClipDataset: K frames of a clip as a normalised (C, T, H, W) tensor, from JPEG folders or mp4.

Train: K frames by uniform segments with a random offset (TSN) or a random stride, one random
resized crop for the whole clip, a horizontal flip only if asked (the demo's left/right classes
would swap). Test: `test_clips` evenly spaced views of K frames, short side resize + centre crop (or
three crops along the long side), stacked as (n_crops * n_clips, C, K, H, W). Randomness comes from (seed, epoch, index) only.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset

from tasks.config import KineticsDataset
from tasks.errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_SCALE = (0.5, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
Box = tuple[float, float, float, float]


def frame_name(index: int) -> str:
    """The file name of 0-based frame `index` in a JPEG folder (img_00001.jpg is frame 0)."""
    return f"img_{index + 1:05d}.jpg"


# ------------------------------------------------------------------ sampling
def uniform_indices(n: int, k: int, offsets: np.ndarray) -> np.ndarray:
    """Frame k_i from segment i of k equal segments of [0, n), at offset offsets[i] in [0, 1)."""
    positions = (np.arange(k) + offsets) * n / k
    return np.minimum(positions.astype(np.int64), n - 1)


def stride_indices(n: int, k: int, start: int, stride: int) -> np.ndarray:
    """k frames from `start` every `stride`; they loop back to the start past the end."""
    return (start + stride * np.arange(k)) % n


def max_stride(n: int, k: int) -> int:
    """The largest stride that keeps k frames inside n (at least 1)."""
    return max(1, (n - 1) // (k - 1)) if k > 1 else 1


def train_indices(n: int, k: int, sampling: str, rng: np.random.Generator) -> np.ndarray:
    """One random draw of k frame indices out of n."""
    if sampling == "uniform":
        return uniform_indices(n, k, rng.random(k))
    stride = int(rng.integers(1, max_stride(n, k) + 1))
    span = (k - 1) * stride + 1
    start = int(rng.integers(0, max(1, n - span + 1)))
    return stride_indices(n, k, start, stride)


def view_indices(n: int, k: int, sampling: str, n_clips: int) -> np.ndarray:
    """(n_clips, k) frame indices of evenly spaced views, no randomness."""
    if sampling == "uniform":  # view j samples every segment at offset (j + 0.5) / n_clips
        return np.stack([uniform_indices(n, k, np.full(k, (j + 0.5) / n_clips))
                         for j in range(n_clips)])
    stride = max(1, (1 + max_stride(n, k)) // 2)  # the middle of the training range
    span = (k - 1) * stride + 1
    starts = np.linspace(0, max(0, n - span), n_clips).round().astype(np.int64)
    return np.stack([stride_indices(n, k, int(s), stride) for s in starts])


# ------------------------------------------------------------------ crops
def random_resized_box(width: int, height: int, rng: np.random.Generator) -> Box:
    """torchvision's RandomResizedCrop box (scale 0.5-1, aspect 3/4-4/3), as (x0, y0, x1, y1)."""
    area = width * height
    log_ratio = (math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]))
    for _ in range(10):
        target = area * rng.uniform(*CROP_SCALE)
        ratio = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * ratio))
        h = round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            x0 = int(rng.integers(0, width - w + 1))
            y0 = int(rng.integers(0, height - h + 1))
            return (x0, y0, x0 + w, y0 + h)
    side = min(width, height)  # fallback: the central square
    x0, y0 = (width - side) / 2, (height - side) / 2
    return (x0, y0, x0 + side, y0 + side)


def centre_box(width: int, height: int, crop: int, short_side: int) -> Box:
    """The source box that a resize to `short_side` then a centre crop of `crop` keeps."""
    scale = short_side / min(width, height)
    w, h = min(width, crop / scale), min(height, crop / scale)
    x0, y0 = (width - w) / 2, (height - h) / 2
    return (x0, y0, x0 + w, y0 + h)


def three_crop_boxes(width: int, height: int, crop: int, short_side: int) -> list[Box]:
    """MMAction2's ThreeCrop: start, centre and end squares along the long side (after resize)."""
    x0, y0, x1, y1 = centre_box(width, height, crop, short_side)
    w, h = x1 - x0, y1 - y0
    if width >= height:
        return [(x, y0, x + w, y1) for x in (0.0, x0, width - w)]
    return [(x0, y, x1, y + h) for y in (0.0, y0, height - h)]


# ------------------------------------------------------------------ reading
def read_jpeg_frames(folder: Path, indices: list[int]) -> dict[int, Image.Image]:
    """Decode only the frames named by `indices` (0-based) from a JPEG folder."""
    frames = {}
    for i in indices:
        path = folder / frame_name(i)
        try:
            with Image.open(path) as img:
                frames[i] = img.convert("RGB")
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read frame ({exc})", path=path) from None
    return frames


def read_video_frames(path: Path, indices: list[int]) -> dict[int, Image.Image]:
    """Decode the frames named by `indices` (0-based) from a video, seeking near the first one."""
    import av

    wanted = sorted(set(indices))
    wanted_set = set(wanted)
    frames: dict[int, Image.Image] = {}
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            rate = float(stream.average_rate or stream.guessed_rate or 0)
            base = stream.time_base
            origin = stream.start_time or 0
            if rate > 0 and base is not None and wanted[0] > 2 * rate:  # skip whole GOPs
                target = origin + int(wanted[0] / rate / base)
                container.seek(target, stream=stream, backward=True, any_frame=False)
            counter = -1
            for frame in container.decode(stream):
                if frame.pts is not None and rate > 0 and base is not None:
                    counter = round(float((frame.pts - origin) * base) * rate)
                else:
                    counter += 1
                if counter in wanted_set:
                    frames[counter] = frame.to_image()
                if counter >= wanted[-1]:
                    break
    except (av.error.FFmpegError, IndexError) as exc:
        raise DataError(f"cannot decode video ({exc})", path=path) from None
    if not frames:
        raise DataError(f"no frames decoded (wanted {wanted[:3]}...)", path=path)
    for i in wanted_set - frames.keys():  # a short file or a gap in timestamps: nearest frame
        frames[i] = frames[min(frames, key=lambda k, i=i: abs(k - i))]
    return frames


def video_frame_count(path: Path) -> int:
    """Number of frames in a video (PyAV header, else duration x frame rate)."""
    from tasks.media import probe_video

    info = probe_video(path)
    return info.frames


def to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """(C, T, H, W) float32, ImageNet-normalised, from T equally sized RGB images."""
    array = np.stack([np.asarray(img, dtype=np.uint8) for img in images])  # T, H, W, C
    clip = torch.from_numpy(array).permute(3, 0, 1, 2).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1, 1)
    return clip.sub_(mean).div_(std)


# ------------------------------------------------------------------ dataset
class ClipDataset(Dataset):
    """Index rows (path relative to `root`) -> (clip tensor, class_index)."""

    def __init__(self, index: pd.DataFrame, root: str | os.PathLike, settings: KineticsDataset,
                 train: bool, seed: int, storage: Literal["jpeg", "video"] = "jpeg",
                 short_side: int | None = None) -> None:
        if storage not in ("jpeg", "video"):
            raise DataError(f"storage must be 'jpeg' or 'video', not {storage!r}")
        missing = {"path", "class_index"} - set(index.columns)
        if missing:
            raise DataError(f"index lacks columns {sorted(missing)}")
        self.root = Path(root)
        self.settings = settings
        self.train = train
        self.seed = seed
        self.storage = storage
        # test resize: short side to crop * 8/7 (128 for 112, 256 for 224) unless given
        self.short_side = short_side or round(settings.crop * 8 / 7)
        self.paths = index["path"].astype(str).tolist()
        self.labels = index["class_index"].astype("int64").tolist()
        counts = index["n_frames"].tolist() if "n_frames" in index.columns else [None] * len(index)
        self._counts = [int(c) if c is not None and not pd.isna(c) and c > 0 else None
                        for c in counts]
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.paths)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose random draws the next items use."""
        self.epoch = int(epoch)

    def n_frames(self, i: int) -> int:
        """Frame count of item i: the index's n_frames, else counted from the files."""
        if self._counts[i] is None:
            path = self.root / self.paths[i]
            if self.storage == "jpeg":
                if not path.is_dir():
                    raise DataError("frame folder missing", path=path)
                self._counts[i] = sum(1 for p in path.iterdir() if p.suffix == ".jpg")
            else:
                self._counts[i] = video_frame_count(path)
            if self._counts[i] <= 0:
                raise DataError("no frames", path=path)
        return self._counts[i]

    def _read(self, i: int, indices: list[int]) -> dict[int, Image.Image]:
        path = self.root / self.paths[i]
        if self.storage == "jpeg":
            return read_jpeg_frames(path, sorted(set(indices)))
        return read_video_frames(path, indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        s = self.settings
        n = self.n_frames(i)
        crop = (s.crop, s.crop)
        if self.train:
            rng = np.random.default_rng([self.seed, self.epoch, i])
            indices = train_indices(n, s.frames, s.sampling, rng).tolist()
            images = self._read(i, indices)
            width, height = next(iter(images.values())).size
            box = random_resized_box(width, height, rng)
            flip = s.flip and rng.random() < 0.5
            out = []
            for j in indices:
                img = images[j].resize(crop, Image.Resampling.BILINEAR, box=box)
                out.append(img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else img)
            return to_tensor(out), self.labels[i]
        views = view_indices(n, s.frames, s.sampling, s.test_clips)
        images = self._read(i, views.ravel().tolist())
        width, height = next(iter(images.values())).size
        boxes = ([centre_box(width, height, s.crop, self.short_side)] if s.test_crops == 1
                 else three_crop_boxes(width, height, s.crop, self.short_side))
        clips = []
        for box in boxes:  # views ordered crop-major: (n_crops * n_clips, C, K, H, W)
            resized = {j: img.resize(crop, Image.Resampling.BILINEAR, box=box)
                       for j, img in images.items()}
            clips.extend(to_tensor([resized[j] for j in view]) for view in views.tolist())
        return torch.stack(clips), self.labels[i]
