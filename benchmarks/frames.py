"""Frame extraction against the machine's decode ceiling, 1 worker and 2 workers side by side.

The ceiling is ffmpeg decoding the same clips to null (`-threads 1` per process). Clips are
the real samples in ../shared/data/kinetics copied to --clips files (synthetic lavfi clips if
absent). Repeats are interleaved and the best of each is kept, so a busy machine hurts all
columns alike.

    python -m benchmarks.frames [--clips 24] [--repeats 2] [--storage jpeg] [--fps 8] ...
"""
from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

from tasks.config import KineticsFrames
from tasks.media import ffmpeg_path
from tasks.video.frames import extract_all, extract_clip
from tasks.video.ledger import Ledger

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "kinetics"


def make_clips(folder: Path, n: int) -> list[Path]:
    """n clips in folder: copies of the shared real samples, else synthetic 10 s 340x256."""
    sources = sorted(SHARED.glob("*.mp4"))
    if not sources:
        synth = folder / "synthetic.mp4"
        subprocess.run([ffmpeg_path(), "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
                        "testsrc2=size=340x256:rate=30:duration=10", "-c:v", "libx264",
                        "-pix_fmt", "yuv420p", str(synth)], check=True)
        sources = [synth]
    clips = []
    for i in range(n):
        clip = folder / f"clip_{i:03d}.mp4"
        shutil.copyfile(sources[i % len(sources)], clip)
        clips.append(clip)
    return clips


def decode_null(src: Path, _dest: Path) -> None:
    """The ceiling: decode every frame, write nothing."""
    subprocess.run([ffmpeg_path(), "-nostdin", "-loglevel", "error", "-threads", "1", "-i",
                    str(src), "-an", "-f", "null", "-"], check=True)


def clips_per_second(work: Callable[[Path, Path], None], clips: list[Path], out: Path,
                     workers: int) -> float:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda c: work(c, out / c.stem), clips))
    return len(clips) / (time.perf_counter() - start)


def stage_clips_per_second(clips: list[Path], out: Path, settings: KineticsFrames,
                           workers: int) -> float:
    """The kinetics_frames stage itself: Prefect task runs mapped over batches, ledger, logs."""
    shutil.rmtree(out, ignore_errors=True)
    manifest = pd.DataFrame({"clip_id": [c.stem for c in clips], "label_dir": "",
                             "label": "bench", "class_index": 0, "split": "train"})
    start = time.perf_counter()
    counts = extract_all(manifest, clips[0].parent, out, settings.model_copy(
        update={"workers": workers}), Ledger(out / "ledger.parquet"))
    assert counts["extracted"] == len(clips), counts
    return len(clips) / (time.perf_counter() - start)


def run(n_clips: int, repeats: int, settings: KineticsFrames) -> dict[str, dict[int, float]]:
    def extract(src: Path, dest: Path) -> None:
        extract_clip(src, dest.with_suffix(".mp4") if settings.storage == "video" else dest,
                     settings)

    jobs = {"decode-only": decode_null, "extract": extract}
    best: dict[str, dict[int, float]] = {name: {1: 0.0, 2: 0.0} for name in [*jobs, "stage"]}
    with tempfile.TemporaryDirectory(prefix="bench-frames-") as tmp:
        clips = make_clips(Path(tmp), n_clips)
        for _ in range(repeats):
            for workers in (1, 2):
                for name, work in jobs.items():
                    speed = clips_per_second(work, clips, Path(tmp) / "out", workers)
                    best[name][workers] = max(best[name][workers], speed)
                speed = stage_clips_per_second(clips, Path(tmp) / "stage", settings, workers)
                best["stage"][workers] = max(best["stage"][workers], speed)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=2)
    defaults = KineticsFrames()
    parser.add_argument("--storage", choices=["jpeg", "video"], default=defaults.storage)
    parser.add_argument("--fps", type=float, default=defaults.fps)
    parser.add_argument("--short-side", type=int, default=defaults.short_side)
    parser.add_argument("--quality", type=int, default=defaults.jpeg_quality)
    args = parser.parse_args()
    logging.disable(logging.INFO)
    settings = KineticsFrames(storage=args.storage, fps=args.fps, short_side=args.short_side,
                              jpeg_quality=args.quality)
    best = run(args.clips, args.repeats, settings)
    ceiling, extract = best["decode-only"], best["extract"]
    label = f"extract ({settings.storage}, {settings.fps:g} fps, short side " \
            f"{settings.short_side}, q:v {settings.jpeg_quality})"
    print(f"{args.clips} clips, best of {args.repeats}; clips/s")
    print(f"{'':54}{'1 worker':>10}{'2 workers':>11}{'speed-up':>10}")
    print(f"{'decode-only ceiling (ffmpeg -> null, -threads 1)':54}{ceiling[1]:>10.2f}"
          f"{ceiling[2]:>11.2f}{ceiling[2] / ceiling[1]:>9.2f}x")
    print(f"{label:54}{extract[1]:>10.2f}{extract[2]:>11.2f}{extract[2] / extract[1]:>9.2f}x")
    print(f"{'ratio extraction / ceiling':54}{extract[1] / ceiling[1]:>10.2f}"
          f"{extract[2] / ceiling[2]:>11.2f}   (target >= 0.70 with 2 workers)")
    stage = best["stage"]
    print(f"{'kinetics_frames stage (Prefect-mapped batches)':54}{stage[1]:>10.2f}"
          f"{stage[2]:>11.2f}{stage[2] / stage[1]:>9.2f}x")
    print(f"{'ratio stage / ceiling':54}{stage[1] / ceiling[1]:>10.2f}"
          f"{stage[2] / ceiling[2]:>11.2f}")


if __name__ == "__main__":
    main()
