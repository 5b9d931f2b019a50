"""ClipDataset: K frames of a clip as a uint8 (C, T, H, W) tensor, from JPEG folders or mp4.

Train: K frames by uniform segments with a random offset (TSN) or a random stride, one random
resized crop for the whole clip, a horizontal flip only if asked (the demo's left/right classes
would swap). Test: `test_clips` evenly spaced views of K frames, short side resize + centre crop (or
three crops along the long side), stacked as (n_crops * n_clips, C, K, H, W). Randomness comes from (seed, epoch, index) only.

The item path does the least work per clip: only the K frames are decoded (a JPEG by DCT scaling
at 1/2..1/8 size when every box is over twice the crop). A training item leaves its box's resize
to the device: it hands over the pixels the box reads and Pillow's plan for the resize
(tasks/video/resample.py). Test views are resized here, once per box, straight into colour
planes (a box of exactly the crop size is cut out: the bilinear resize is the identity there).
Clips leave as uint8; the float conversion and ImageNet normalisation run on the device
(tasks/video/preprocess.py).
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
from tasks.video.resample import BoxPlan, collate_resize

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
def open_jpeg_frames(folder: Path, indices: list[int]) -> dict[int, Image.Image]:
    """Open the frames named by `indices` (0-based) of a JPEG folder: headers read, pixels not
    yet decoded (decode_jpeg_frames does that, at the size the crops need)."""
    frames: dict[int, Image.Image] = {}
    for i in indices:
        path = folder / frame_name(i)
        try:
            frames[i] = Image.open(path)
        except (OSError, ValueError) as exc:
            close_frames(frames)
            raise DataError(f"cannot read frame ({exc})", path=path) from None
    return frames


def close_frames(frames: dict[int, Image.Image]) -> None:
    """Close opened frames (their files) that are not needed any more."""
    for img in frames.values():
        img.close()


def draft_shrink(boxes: list[Box], crop: int) -> int:
    """8, 4, 2 or 1: how many times smaller a JPEG may be decoded (DCT scaling) with every box
    still over `crop` pixels a side. DCT scaling is close to, not equal to, a bilinear resize,
    so it is used only where a box is more than twice the crop (never on the demo's frames)."""
    side = min(min(x1 - x0, y1 - y0) for x0, y0, x1, y1 in boxes)
    return next((s for s in (8, 4, 2) if side > s * crop), 1)


def decode_jpeg_frames(frames: dict[int, Image.Image], shrink: int
                       ) -> dict[int, tuple[Image.Image, int]]:
    """Decode opened JPEG frames to RGB, `shrink` times smaller where the decoder can (JPEG DCT
    scaling); each with the factor it was shrunk by (1 where it was not)."""
    decoded: dict[int, tuple[Image.Image, int]] = {}
    for i, img in frames.items():
        try:
            factor, full_width = 1, img.width
            if shrink > 1:
                drafted = img.draft("RGB", (img.width // shrink, img.height // shrink))
                if drafted:  # (mode, the full frame's box in the smaller image's pixels)
                    factor = round(full_width / drafted[1][2])
            img.load()
        except (OSError, ValueError) as exc:
            close_frames({j: f for j, f in frames.items() if j not in decoded})
            raise DataError(f"cannot read frame ({exc})", path=img.filename) from None
        decoded[i] = (img if img.mode == "RGB" else img.convert("RGB"), factor)
    return decoded


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


# ------------------------------------------------------------------ cropping
def rgb_planes(img: Image.Image) -> np.ndarray:
    """(3, H, W) uint8 colour planes of an RGB image: PIL writes each plane out (no transpose)."""
    width, height = img.size
    planes = np.empty((3, height, width), dtype=np.uint8)
    for c, band in enumerate("RGB"):
        planes[c] = np.frombuffer(img.tobytes("raw", band), dtype=np.uint8).reshape(height, width)
    return planes


def whole_pixel_crop(box: Box, crop: int) -> tuple[int, int, int, int] | None:
    """`box` as ints if it is exactly crop x crop at whole-pixel offsets (PIL's bilinear resize
    is the identity there), else None."""
    x0, y0, x1, y1 = box
    if x1 - x0 == crop and y1 - y0 == crop and all(float(v).is_integer() for v in box):
        return int(x0), int(y0), int(x1), int(y1)
    return None


def crop_views(img: Image.Image, boxes: list[Box], crop: int, shrink: int = 1
               ) -> list[np.ndarray]:
    """Each box (full-size frame pixels) of `img` (decoded `shrink` times smaller) resized to
    crop x crop, bilinear, as (3, crop, crop) uint8 planes. A box of exactly that size at
    whole-pixel offsets is cut out of the frame's planes: the same pixels, no resampling."""
    views, planes = [], None
    for box in boxes:
        box = (box[0] / shrink, box[1] / shrink, box[2] / shrink, box[3] / shrink)
        whole = whole_pixel_crop(box, crop)
        if whole is None:
            views.append(rgb_planes(img.resize((crop, crop), Image.Resampling.BILINEAR,
                                               box=box)))
            continue
        planes = rgb_planes(img) if planes is None else planes
        x0, y0, x1, y1 = whole
        views.append(planes[:, y0:y1, x0:x1])
    return views


def box_pixels(frames: list[Image.Image], plan: BoxPlan) -> np.ndarray:
    """(K, h, w, C) uint8: the pixels of each frame that `plan` reads, cut out by PIL (a row
    copy) and written once into the clip's array."""
    region = (plan.x.start, plan.y.start, plan.x.stop, plan.y.stop)
    out = np.empty((len(frames), plan.y.stop - plan.y.start, plan.x.stop - plan.x.start, 3),
                   dtype=np.uint8)
    for t, img in enumerate(frames):
        out[t] = np.frombuffer(img.crop(region).tobytes(), dtype=np.uint8).reshape(out.shape[1:])
    return out


# ------------------------------------------------------------------ dataset
class ClipDataset(Dataset):
    """Index rows (path relative to `root`) -> (uint8 clip tensor, class_index)."""

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
        # in shared memory: DataLoader workers that persist across epochs see set_epoch too
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def epoch(self) -> int:
        """The epoch whose random draws the items use."""
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose random draws the next items use (in every loader worker)."""
        self._epoch.fill_(int(epoch))

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

    def _open(self, i: int, indices: list[int]) -> dict[int, Image.Image]:
        """Item i's frames named by `indices`: JPEGs opened (decoded by `_decode`), video
        frames decoded."""
        path = self.root / self.paths[i]
        if self.storage == "jpeg":
            return open_jpeg_frames(path, sorted(set(indices)))
        return read_video_frames(path, indices)

    def _decode(self, frames: dict[int, Image.Image], boxes: list[Box]
                ) -> dict[int, tuple[Image.Image, int]]:
        """Opened frames decoded, each with how many times smaller than full size."""
        if self.storage == "jpeg":
            return decode_jpeg_frames(frames, draft_shrink(boxes, self.settings.crop))
        return {j: (img, 1) for j, img in frames.items()}

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int] | tuple[np.ndarray, BoxPlan, int]:
        """Test: (every view as uint8 (V, C, K, H, W), label). Train: (the source pixels of the
        random box in the K frames as (K, h, w, C) uint8, the plan of its resize, label), which
        `collate_resize` batches and `ResizeBatch.resize` finishes on the device."""
        if self.train:
            source, plan = self._train_clip(i)
            return source, plan, self.labels[i]
        return torch.from_numpy(self._test_views(i)), self.labels[i]

    def clip(self, i: int) -> tuple[torch.Tensor, int]:
        """Item i finished as the model's uint8 clip(s), with its label: a training item is
        resized here, on the CPU, exactly as `ResizeBatch.resize` does on the device."""
        if not self.train:
            return self[i]
        batch, labels = collate_resize([self[i]])
        return batch.resize()[0], int(labels[0])

    def _train_clip(self, i: int) -> tuple[np.ndarray, BoxPlan]:
        """K frames drawn for (seed, epoch, i), one random box, flipped or not: the pixels the
        box's resize reads, (K, h, w, C) uint8, and the plan of that resize."""
        s = self.settings
        rng = np.random.default_rng([self.seed, self.epoch, i])
        indices = train_indices(self.n_frames(i), s.frames, s.sampling, rng).tolist()
        frames = self._open(i, indices)
        width, height = next(iter(frames.values())).size
        box = random_resized_box(width, height, rng)
        flip = s.flip and rng.random() < 0.5
        decoded = self._decode(frames, [box])
        sizes = {img.size for img, _ in decoded.values()}
        if len(sizes) > 1:
            raise DataError(f"frames of different sizes {sorted(sizes)}",
                            path=self.root / self.paths[i])
        img, shrink = next(iter(decoded.values()))
        plan = BoxPlan.of(img.width, img.height, tuple(v / shrink for v in box), s.crop, flip)
        return box_pixels([decoded[j][0] for j in indices], plan), plan

    def _test_views(self, i: int) -> np.ndarray:
        """(n_crops * n_clips, C, K, H, W), crop-major: every test view of item i."""
        s = self.settings
        views = view_indices(self.n_frames(i), s.frames, s.sampling, s.test_clips).tolist()
        frames = self._open(i, [j for view in views for j in view])
        width, height = next(iter(frames.values())).size
        boxes = ([centre_box(width, height, s.crop, self.short_side)] if s.test_crops == 1
                 else three_crop_boxes(width, height, s.crop, self.short_side))
        crops = {j: crop_views(img, boxes, s.crop, shrink)
                 for j, (img, shrink) in self._decode(frames, boxes).items()}
        clips = np.empty((len(boxes) * len(views), 3, s.frames, s.crop, s.crop), dtype=np.uint8)
        for b in range(len(boxes)):
            for v, view in enumerate(views):
                np.stack([crops[j][b] for j in view], axis=1, out=clips[b * len(views) + v])
        return clips
