"""Clip loader against the decode-only reference, per CPU core: train and test items and loaders.

Frames: a 10 s 340x256 synthetic clip (ffmpeg testsrc2) extracted by the frames stage's own code
(tasks/video/frames.extract_clip: 8 fps, short side 256) to JPEG frames and to a resized mp4, in
a temp dir. Items: ClipDataset with the full-scale views (crop 224 from short side 256, flip;
test: 3 clips x 3 crops), K = 8 and 16, one thread. The reference decodes the same frames and
nothing else: PIL decodes the JPEGs; PyAV decodes the mp4 up to the last wanted frame and
converts the wanted ones to RGB. Loaders: the project's clip_loader (batch 8 train, 4 test) with
0..N workers over whole epochs after a warm-up one that starts the workers (they persist). Per
core = clips per CPU-second: the CPU time of this process and of the loader's workers (Linux
/proc), which other load on a shared machine moves far less than wall time; the header says
how much of the time tasks waited for a CPU (Linux PSI). Measurements take turns (repeats
interleaved, the best kept).
Cores per GPU = the README's BesNet-50 step rate on one H200 (K = 8, 224 px) over clips/s per
core of the train loader with one worker. Last, where a JPEG train item's time goes (decode, the
resize plan and the box's pixels) and what the resize it hands to the device costs there (timed
on this CPU) beside PIL's box resize that the item ran before.

    python -m benchmarks.loader [--seconds 1.5] [--repeats 2] [--max-workers N] [--frames 8,16]
        [--storage jpeg,video]
"""
from __future__ import annotations

import argparse
import gc
import logging
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pandas as pd
import torch
from PIL import Image

from benchmarks.video_step import cpu_stall_seconds
from tasks.config import KineticsDataset, KineticsFrames, KineticsSettings, KineticsTrain
from tasks.media import ffmpeg_path
from tasks.video.dataset import (
    ClipDataset,
    frame_name,
    random_resized_box,
    train_indices,
    view_indices,
)
from tasks.video.frames import extract_clip
from tasks.video.modeling import available_cores, clip_loader
from tasks.video.resample import BoxPlan, collate_resize

# README "Benchmarks": BesNet-50 train step on one H200, batch 32 x 8 x 224 x 224, bf16
STEP_RATES = {"eager": 373.0, "compiled": 655.0}
SIZE, SECONDS, FPS, SHORT_SIDE, CROP = "340x256", 10, 8.0, 256, 224
TEST_CLIPS, TEST_CROPS, ROWS, BATCH, SEED = 3, 3, 16, 8, 0


@dataclass(frozen=True)
class Source:
    """One storage of the synthetic clip: where it is (relative to root) and its frame count."""

    storage: str
    path: str
    n_frames: int


@dataclass(frozen=True)
class Case:
    """One column of the table: a storage and a K."""

    source: Source
    k: int

    @property
    def label(self) -> str:
        return f"{self.source.storage} K={self.k}"


def make_sources(root: Path, storages: list[str]) -> dict[str, Source]:
    """The synthetic clip, extracted as kinetics_frames extracts it, in each storage."""
    clip = root / "source.mp4"
    subprocess.run([ffmpeg_path(), "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
                    f"testsrc2=size={SIZE}:rate=30:duration={SECONDS}", "-c:v", "libx264",
                    "-pix_fmt", "yuv420p", str(clip)], check=True)
    sources = {}
    for storage in storages:
        name = "frames.mp4" if storage == "video" else "frames"
        settings = KineticsFrames(storage=storage, fps=FPS, short_side=SHORT_SIDE)
        meta = extract_clip(clip, root / name, settings)
        sources[storage] = Source(storage, name, meta["n_frames"])
    return sources


def settings_for(case: Case, workers: int = 0) -> KineticsSettings:
    """Full-scale views (crop 224, short side 256, flip, 3 x 3 test views), K frames."""
    dataset = KineticsDataset(frames=case.k, crop=CROP, flip=True, test_clips=TEST_CLIPS,
                              test_crops=TEST_CROPS)
    frames = KineticsFrames(storage=case.source.storage, fps=FPS, short_side=SHORT_SIDE)
    train = KineticsTrain(epochs=1, batch_size=BATCH, num_workers=workers)
    return KineticsSettings(frames=frames, dataset=dataset, train=train)


def index_for(source: Source, rows: int = ROWS) -> pd.DataFrame:
    """`rows` index rows of the one clip: each row draws its own frames and crop."""
    return pd.DataFrame({"path": [source.path] * rows, "class_index": 0,
                         "n_frames": source.n_frames})


# ------------------------------------------------------------------ the decode-only reference
def decode_jpegs(folder: Path, indices: list[int]) -> None:
    """PIL: decode each named frame to RGB, nothing more."""
    for i in sorted(set(indices)):
        with Image.open(folder / frame_name(i)) as img:
            img.load()
            if img.mode != "RGB":
                img.convert("RGB")


def decode_video(path: Path, indices: list[int]) -> None:
    """PyAV: decode up to the last named frame, the named ones converted to RGB."""
    wanted, last = set(indices), max(indices)
    with av.open(str(path)) as container:
        for n, frame in enumerate(container.decode(video=0)):
            if n in wanted:
                frame.to_ndarray(format="rgb24")
            if n >= last:
                break


def decode(root: Path, source: Source, indices: list[int]) -> None:
    """The reference's work for one item: decode its frames."""
    if source.storage == "jpeg":
        decode_jpegs(root / source.path, indices)
    else:
        decode_video(root / source.path, indices)


def train_frames(n: int, k: int, turn: int) -> list[int]:
    """The frames the train item of `turn` decodes (row turn % ROWS, epoch turn // ROWS)."""
    rng = np.random.default_rng([SEED, turn // ROWS, turn % ROWS])
    return train_indices(n, k, "uniform", rng).tolist()


# ------------------------------------------------------------------ timing
def tree_cpu_seconds() -> float:
    """CPU seconds of this process (all its threads) and of its live children (the loader's
    workers), from Linux /proc."""
    total, tick = time.process_time(), os.sysconf("SC_CLK_TCK")
    for task in Path("/proc/self/task").iterdir():
        for pid in (task / "children").read_text().split():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # it has just exited
            total += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return total


def per_second(work: Callable[[int], object], seconds: float) -> float:
    """Calls of work(0), work(1), ... per CPU-second of this process, over at least `seconds`."""
    count, start = 0, time.process_time()
    while (spent := time.process_time() - start) < seconds or count < 3:
        work(count)
        count += 1
    return count / spent


def item_work(dataset: ClipDataset) -> Callable[[int], object]:
    def work(turn: int) -> object:
        dataset.set_epoch(turn // ROWS)
        return dataset[turn % ROWS]
    return work


def loader_rate(root: Path, case: Case, train: bool, workers: int, seconds: float) -> float:
    """Clips (test: items of 9 views) per CPU-second of clip_loader, the workers' included, over
    whole epochs (at least two and `seconds` of wall time) after a warm-up one."""
    loader = clip_loader(index_for(case.source), settings_for(case, workers), SEED, train,
                         root=root)
    sum(len(labels) for _, labels in loader)  # epoch 0 starts the workers
    start, wall = tree_cpu_seconds(), time.perf_counter()
    epoch, clips = 1, 0
    while epoch < 3 or time.perf_counter() - wall < seconds:
        loader.dataset.set_epoch(epoch)
        clips += sum(len(labels) for _, labels in loader)
        epoch += 1
    spent = tree_cpu_seconds() - start
    del loader  # the persistent workers end with it
    gc.collect()
    return clips / spent


def measurements(root: Path, case: Case, workers: list[int],
                 seconds: float) -> dict[str, Callable[[], float]]:
    """Each row of the table for one case: a call that measures it once."""
    source, n = case.source, case.source.n_frames
    dataset = settings_for(case).dataset
    train = ClipDataset(index_for(source), root, dataset, train=True, seed=SEED,
                        storage=source.storage)
    test = ClipDataset(index_for(source), root, dataset, train=False, seed=SEED,
                       storage=source.storage)
    views = view_indices(n, case.k, "uniform", TEST_CLIPS).ravel().tolist()
    rows: dict[str, Callable[[], float]] = {
        "decode train": lambda: per_second(
            lambda t: decode(root, source, train_frames(n, case.k, t)), seconds),
        "train item": lambda: per_second(item_work(train), seconds),
        "decode test": lambda: per_second(lambda t: decode(root, source, views), seconds),
        "test item": lambda: per_second(item_work(test), seconds)}
    for w in workers:
        rows[f"train loader {w}"] = lambda w=w: loader_rate(root, case, True, w, seconds)
        rows[f"test loader {w}"] = lambda w=w: loader_rate(root, case, False, w, seconds)
    return rows


def where_time_goes(root: Path, source: Source, k: int, seconds: float) -> dict[str, float]:
    """CPU ms per train clip (K frames, crop 224) of each part of the item: decode, and its share
    of the resize (the plan and the source pixels the box reads). Then, outside the item: the
    resize's weighted sums as the training loop runs them on the device (ResizeBatch.resize),
    timed here on this CPU with one thread, and PIL's box resize of the same frames, which the
    item ran before the resize moved (the same pixels, bit for bit)."""
    folder = root / source.path
    frames = {}
    for i in range(source.n_frames):
        with Image.open(folder / frame_name(i)) as img:
            frames[i] = img.convert("RGB")
    width, height = frames[0].size
    pixels = {i: np.asarray(img) for i, img in frames.items()}

    def draw(turn: int) -> tuple[list[int], BoxPlan, tuple[float, float, float, float]]:
        rng = np.random.default_rng([SEED, turn // ROWS, turn % ROWS])
        indices = train_indices(source.n_frames, k, "uniform", rng).tolist()
        box = random_resized_box(width, height, rng)
        return indices, BoxPlan.of(width, height, box, CROP), box

    def plan_and_pixels(turn: int) -> None:
        indices, plan, _ = draw(turn)
        np.stack([plan.source(pixels[i]) for i in indices])

    def pil_resize(turn: int) -> None:
        indices, _, box = draw(turn)
        for i in indices:
            frames[i].resize((CROP, CROP), Image.Resampling.BILINEAR, box=box)

    batches = []
    for turn in range(ROWS):
        indices, plan, _ = draw(turn)
        batches.append(collate_resize([(np.stack([plan.source(pixels[i]) for i in indices]),
                                        plan, 0)])[0])
    parts = {"decode": lambda t: decode(root, source, train_frames(source.n_frames, k, t)),
             "resize plan + the box's pixels": plan_and_pixels}
    ms = {name: 1e3 / per_second(work, seconds) for name, work in parts.items()}
    ms["device: resize (here on this CPU)"] = 1e3 / per_second(
        lambda t: batches[t % ROWS].resize(), seconds)
    ms["before: PIL box resize in the item"] = 1e3 / per_second(pil_resize, seconds)
    return ms


def run(cases: list[Case], root: Path, workers: list[int], seconds: float,
        repeats: int) -> dict[str, dict[str, float]]:
    """Best rate of every row and case over `repeats` interleaved rounds."""
    rows = {case.label: measurements(root, case, workers, seconds) for case in cases}
    best: dict[str, dict[str, float]] = {label: {} for label in rows}
    for _ in range(repeats):
        for label, row in rows.items():
            for key, measure in row.items():
                best[label][key] = max(best[label].get(key, 0.0), measure())
    return best


# ------------------------------------------------------------------ the table
def plural(workers: int) -> str:
    return f"{workers} worker" + ("" if workers == 1 else "s")


def print_table(best: dict[str, dict[str, float]], workers: list[int]) -> None:
    labels = list(best)
    width = 44

    def line(title: str, values: list[str]) -> None:
        print(f"{title:{width}}" + "".join(f"{v:>12}" for v in values))

    def rates(key: str) -> list[str]:
        return [f"{best[label][key]:.1f}" for label in labels]

    def ratios(key: str, ref: str) -> list[str]:
        return [f"{best[label][key] / best[label][ref]:.2f}" for label in labels]

    line("clips per CPU-second, 1 thread a process", labels)
    line("decode-only reference, train frames", rates("decode train"))
    line("train item", rates("train item"))
    line("  ratio to decode-only (target >= 0.6)", ratios("train item", "decode train"))
    for w in workers:
        line(f"train loader, {plural(w)}", rates(f"train loader {w}"))
        line("  ratio to decode-only", ratios(f"train loader {w}", "decode train"))
    line(f"decode-only reference, {TEST_CLIPS} test clips' frames", rates("decode test"))
    line(f"test item ({TEST_CLIPS * TEST_CROPS} views each)", rates("test item"))
    line("  ratio to decode-only", ratios("test item", "decode test"))
    for w in workers:
        line(f"test loader, {plural(w)}", rates(f"test loader {w}"))
        line("  ratio to decode-only", ratios(f"test loader {w}", "decode test"))
    loader_workers = 1 if 1 in workers else workers[0]
    loader_key = f"train loader {loader_workers}"
    print()
    print("cores per GPU to feed BesNet-50 on one H200 (README step rates, K = 8, 224 px): step "
          f"rate / clips per CPU-second of the train loader with {plural(loader_workers)}")
    line("", [label for label in labels if label.endswith("K=8")])
    for name, rate in STEP_RATES.items():
        for key, what in ((loader_key, "loader"), ("decode train", "decode-only")):
            line(f"{name} {rate:.0f} clips/s, {what}",
                 [f"{rate / best[label][key]:.1f}" for label in labels if label.endswith("K=8")])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.5, help="per measurement")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-workers", type=int, default=max(1, available_cores() - 1))
    parser.add_argument("--frames", default="8,16", help="K values, comma-separated")
    parser.add_argument("--storage", default="jpeg,video", help="jpeg, video or both")
    args = parser.parse_args()
    if not Path("/proc/self/task").is_dir():
        parser.error("needs Linux /proc (the loader workers' CPU time)")
    logging.disable(logging.INFO)
    torch.set_num_threads(1)
    storages, ks = args.storage.split(","), [int(k) for k in args.frames.split(",")]
    workers = list(range(args.max_workers + 1))
    with tempfile.TemporaryDirectory(prefix="bench-loader-") as tmp:
        root = Path(tmp)
        sources = make_sources(root, storages)
        cases = [Case(sources[s], k) for s in storages for k in ks]
        stall, start = cpu_stall_seconds(), time.perf_counter()
        best = run(cases, root, workers, args.seconds, args.repeats)
        wall = time.perf_counter() - start
        parts: dict[str, float] = {}
        for _ in range(args.repeats if "jpeg" in sources else 0):
            for name, ms in where_time_goes(root, sources["jpeg"], ks[0], args.seconds).items():
                parts[name] = min(parts.get(name, ms), ms)
        stall_after = cpu_stall_seconds()
    print(f"{SIZE} frames ({SECONDS} s testsrc2 clip at {FPS:g} fps), crop {CROP} from short "
          f"side {SHORT_SIDE}, {available_cores()} cores; best of {args.repeats}, "
          f">= {args.seconds:g} CPU-s each")
    if stall is not None and stall_after is not None:
        share = (stall_after - stall) / wall
        busy = (" (other processes competed: CPU time moves less than wall time, but rerun "
                "when quiet to be sure)") if share > 0.05 else ""
        print(f"tasks waiting for a CPU (PSI) during the measurements: {share:.0%} of the wall "
              f"time{busy}")
    print()
    print_table(best, workers)
    if parts:
        total = 1e3 / best[f"jpeg K={ks[0]}"]["train item"]
        device = parts.pop("device: resize (here on this CPU)")
        before = parts.pop("before: PIL box resize in the item")
        print()
        print(f"where a jpeg K={ks[0]} train item's time goes, CPU ms per clip (item "
              f"{total:.2f}):")
        for name, ms in parts.items():
            print(f"  {name:34}{ms:>8.2f}")
        print(f"  {'the rest':34}{total - sum(parts.values()):>8.2f}")
        print(f"not in the item: the resize's weighted sums, run by the training loop on the "
              f"device: {device:.2f} ms a clip on this CPU (1 thread); PIL's box resize of the "
              f"same frames, which the item ran before (same pixels): {before:.2f} ms")

if __name__ == "__main__":
    main()
