"""The demo source: a small synthetic action dataset rendered offline with numpy and ffmpeg.

Six classes in three pairs (moving left/right, rotating clockwise/anticlockwise, approaching/
receding). The two classes of a pair draw the same random path and differ only in the
direction of time: a clip of one class played backwards is an equally likely clip of the
other, so no single frame can tell them apart and a model has to use motion. A frame-only
model can at best name the pair (1/2 of the 6-way accuracy); a temporal model can reach ~1.
Clips are H.264 mp4 (yuv420p), so the same frame-extraction path as real clips runs on them.
"""
from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.config import KineticsDemo
from tasks.errors import DataError
from tasks.logs import get_logger
from tasks.media import ffmpeg_path, probe_video
from tasks.storage import atomic_path

MANIFEST_COLUMNS = ["clip_id", "youtube_id", "label", "label_dir", "class_index", "split",
                    "time_start", "time_end"]
# label -> (pair, direction); the second class of a pair is the first one played backwards.
DEMO_CLASSES: dict[str, tuple[str, int]] = {
    "moving_right": ("moving", 1), "moving_left": ("moving", -1),
    "rotating_clockwise": ("rotating", 1), "rotating_anticlockwise": ("rotating", -1),
    "approaching": ("scaling", 1), "receding": ("scaling", -1),
}
SPLIT_FRACTIONS = {"val": 0.2, "test": 0.2}  # train takes the rest
WORKERS = 2


@dataclass(frozen=True)
class ClipParams:
    """Everything random about one clip; `start`/`end` are the path's (x, y, size, angle)."""

    pair: str
    start: tuple[float, float, float, float]
    end: tuple[float, float, float, float]
    width: float  # bar width (rotating only)
    foreground: tuple[int, int, int]
    background: tuple[int, int, int]
    noise: float  # std of the static background noise texture, 0-255 scale


def demo_classes() -> list[str]:
    """The demo class names, sorted (index = class id)."""
    return sorted(DEMO_CLASSES)


def _colours(rng: np.random.Generator) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """A (foreground, background) pair with enough contrast: one dark, one bright."""
    dark = tuple(int(v) for v in rng.integers(0, 90, 3))
    bright = tuple(int(v) for v in rng.integers(160, 256, 3))
    return (bright, dark) if rng.random() < 0.5 else (dark, bright)


def sample_params(rng: np.random.Generator, label: str, size: int) -> ClipParams:
    """Random clip parameters; both classes of a pair draw the same numbers, reversed in time."""
    pair, direction = DEMO_CLASSES[label]
    foreground, background = _colours(rng)
    noise = float(rng.uniform(0.0, 12.0))
    s = float(size)
    width = 0.0
    if pair == "moving":
        radius = rng.uniform(0.07, 0.14) * s
        lo, hi = radius + 1, s - radius - 1
        travel = rng.uniform(0.35, 0.6) * (hi - lo)
        x0 = rng.uniform(lo, hi - travel)
        y = rng.uniform(lo, hi)
        start, end = (x0, y, radius, 0.0), (x0 + travel, y, radius, 0.0)
    elif pair == "rotating":
        half = rng.uniform(0.2, 0.34) * s
        width = float(rng.uniform(0.04, 0.07) * s)
        lo, hi = half + 2, s - half - 2
        x, y = rng.uniform(lo, hi), rng.uniform(lo, hi)
        angle0 = rng.uniform(0.0, np.pi)
        turn = rng.uniform(0.5, 1.0) * np.pi  # 90-180 degrees a clip; the bar has period 180
        start, end = (x, y, half, angle0), (x, y, half, angle0 + turn)
    else:
        small = rng.uniform(0.06, 0.1) * s
        large = small * rng.uniform(2.0, 3.0)
        lo, hi = large + 1, s - large - 1
        x, y = rng.uniform(lo, hi), rng.uniform(lo, hi)
        start, end = (x, y, small, 0.0), (x, y, large, 0.0)
    start = tuple(float(v) for v in start)
    end = tuple(float(v) for v in end)
    if direction < 0:
        start, end = end, start
    return ClipParams(pair=pair, start=start, end=end, width=width, foreground=foreground,
                      background=background, noise=noise)


def object_alpha(params: ClipParams, progress: float, size: int) -> np.ndarray:
    """Soft (anti-aliased) coverage of the object, (size, size) in [0, 1], at progress 0..1."""
    x, y, extent, angle = (a + (b - a) * progress
                           for a, b in zip(params.start, params.end, strict=True))
    coords = np.arange(size, dtype=np.float32) + 0.5
    dx, dy = coords[None, :] - x, coords[:, None] - y
    if params.pair == "moving":  # a disk of radius `extent`
        inside = extent - np.hypot(dx, dy)
    elif params.pair == "rotating":  # a bar of half-length `extent`; y points down: +angle = cw
        along = dx * np.cos(angle) + dy * np.sin(angle)
        across = -dx * np.sin(angle) + dy * np.cos(angle)
        inside = np.minimum(extent - np.abs(along), params.width / 2 - np.abs(across))
    else:  # a square of half-side `extent`
        inside = extent - np.maximum(np.abs(dx), np.abs(dy))
    return np.clip(inside + 0.5, 0.0, 1.0)


def render_frames(params: ClipParams, n_frames: int, size: int,
                  rng: np.random.Generator | None = None) -> np.ndarray:
    """(n_frames, size, size, 3) uint8 RGB frames; `rng` draws the background's static noise."""
    fg = np.asarray(params.foreground, dtype=np.float32)
    back = np.broadcast_to(np.asarray(params.background, dtype=np.float32), (size, size, 3))
    if rng is not None and params.noise > 0:  # static texture: cheap for x264, same every frame
        back = back + params.noise * rng.standard_normal((size, size, 3), dtype=np.float32)
    frames = np.empty((n_frames, size, size, 3), dtype=np.uint8)
    for k in range(n_frames):
        progress = k / (n_frames - 1) if n_frames > 1 else 0.0
        alpha = object_alpha(params, progress, size)[..., None]
        frames[k] = np.clip(back + alpha * (fg - back) + 0.5, 0, 255).astype(np.uint8)
    return frames


def encode_mp4(frames: np.ndarray, dest: Path, fps: int) -> None:
    """Encode RGB frames to an H.264 yuv420p mp4 (one thread: deterministic bytes)."""
    n, height, width, _ = frames.shape
    cmd = [ffmpeg_path(), "-hide_banner", "-loglevel", "error", "-y",
           "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(fps),
           "-i", "pipe:0", "-c:v", "libx264", "-preset", "veryfast", "-crf", "18",
           "-pix_fmt", "yuv420p", "-threads", "1", "-g", str(max(1, fps)),
           "-fflags", "+bitexact", "-flags:v", "+bitexact", "-movflags", "+faststart",
           "-f", "mp4", str(dest)]
    proc = subprocess.run(cmd, input=frames.tobytes(), capture_output=True, check=False)
    if proc.returncode != 0:
        raise DataError(f"ffmpeg failed: {proc.stderr.decode(errors='replace')[-500:]}",
                        path=dest)


def _is_good(path: Path, settings: KineticsDemo) -> bool:
    """True if `path` is a readable clip of the expected size and roughly the duration."""
    if not path.is_file():
        return False
    try:
        info = probe_video(path)
    except DataError:
        return False
    return (info.width == info.height == settings.size
            and abs(info.duration - settings.duration) <= max(0.5, 2 / settings.fps))


def _splits(n: int, rng: np.random.Generator) -> list[str]:
    """Per-clip split names for n clips of one class (~60/20/20, at least one test clip)."""
    n_test = max(1, round(n * SPLIT_FRACTIONS["test"]))
    n_val = max(1, round(n * SPLIT_FRACTIONS["val"])) if n >= 3 else 0
    names = ["test"] * n_test + ["val"] * n_val
    names = ["train"] * (n - len(names)) + names
    return [names[j] for j in rng.permutation(n)]


def demo_manifest(settings: KineticsDemo, seed: int) -> pd.DataFrame:
    """The demo manifest (contract columns), one row per clip; no files touched."""
    rows = []
    end = int(round(settings.duration))
    for class_index, label in enumerate(demo_classes()):
        splits = _splits(settings.clips_per_class, np.random.default_rng([seed, class_index]))
        for i in range(settings.clips_per_class):
            youtube_id = f"demo{class_index:02d}_{i:04d}"  # 11 characters, like a real id
            rows.append({"clip_id": f"{youtube_id}_{0:06d}_{end:06d}", "youtube_id": youtube_id,
                         "label": label, "label_dir": label, "class_index": class_index,
                         "split": splits[i], "time_start": 0.0,
                         "time_end": float(settings.duration)})
    frame = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    return frame.astype({"class_index": "int64", "time_start": "float64", "time_end": "float64"})


def _render_one(row: dict, number: int, clips_dir: Path, settings: KineticsDemo,
                seed: int) -> bool:
    """Render clip `number` of its class unless a good file is there; True if it rendered."""
    dest = clips_dir / row["label_dir"] / f"{row['clip_id']}.mp4"
    if _is_good(dest, settings):
        return False
    rng = np.random.default_rng([seed, row["class_index"], number])
    params = sample_params(rng, row["label"], settings.size)
    n_frames = max(2, int(round(settings.duration * settings.fps)))
    frames = render_frames(params, n_frames, settings.size, rng)
    with atomic_path(dest) as tmp:
        encode_mp4(frames, tmp, settings.fps)
    return True


def render_demo_clips(clips_dir: Path, settings: KineticsDemo,
                      seed: int) -> tuple[pd.DataFrame, list[str]]:
    """Render the demo clips into clips_dir/label_dir/clip_id.mp4 (resumable); (manifest, classes)."""
    clips_dir = Path(clips_dir)
    manifest = demo_manifest(settings, seed)
    rows = manifest.to_dict("records")
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        numbers = [j % settings.clips_per_class for j in range(len(rows))]  # rows: class-major
        rendered = sum(pool.map(lambda r, i: _render_one(r, i, clips_dir, settings, seed),
                                rows, numbers))
    get_logger().info("demo clips: %d rendered, %d already there, in %s", rendered,
                      len(rows) - rendered, clips_dir)
    return manifest, demo_classes()
