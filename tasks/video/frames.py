"""Frame extraction: each downloaded clip becomes JPEG frames (or a small H.264 mp4) at a fixed fps.

One ffmpeg process per clip (`-threads 1`, so `workers` processes keep `workers` cores busy),
resampled with the fps filter *before* scaling (only kept frames are scaled and encoded).
Output is written into a temp name beside the destination and renamed when complete, so a
clip directory that exists is a complete one; its `.meta.json` (written before the rename)
holds the frame count, fps and size that `build_index` reads.
"""
from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ffmpeg
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.config import CommonSettings, KineticsFrames
from tasks.errors import DataError
from tasks.logs import get_logger
from tasks.media import ffmpeg_path, probe_video
from tasks.parallel import map_batches
from tasks.progress import progress_bar
from tasks.storage import atomic_dir, atomic_path, write_parquet
from tasks.video.ledger import Ledger

STAGE = "frames"
META = ".meta.json"
FRAME_PATTERN = "img_%05d.jpg"
INDEX_COLUMNS = ["clip_id", "label", "class_index", "split", "n_frames", "fps", "width",
                 "height", "path", "status"]
# The cheapest scaler that still looks right for 256-px training crops (see benchmarks/frames.py).
SCALER = "bilinear"
MIN_FRAME_SHARE = 0.5  # fewer frames than this share of duration * fps means a truncated clip


# ================================================================== one clip
def frames_dest(row: Any, frames_dir: str | os.PathLike, storage: str) -> Path:
    """frames_dir / label_dir / clip_id (jpeg) or .../{clip_id}.mp4 (video), per the contract."""
    name = str(row["clip_id"]) + (".mp4" if storage == "video" else "")
    return Path(frames_dir) / str(row["label_dir"]) / name


def _count_frames(clip_dir: Path) -> int:
    with os.scandir(clip_dir) as entries:
        return sum(1 for e in entries if e.name.startswith("img_") and e.name.endswith(".jpg"))


def read_meta(dest: Path) -> dict | None:
    """The meta of a complete clip at `dest` (jpeg dir or mp4), else None."""
    try:
        if dest.suffix == ".mp4":
            if not dest.is_file() or dest.stat().st_size == 0:
                return None
            info = probe_video(dest)
            return {"n_frames": info.frames, "fps": info.fps, "width": info.width,
                    "height": info.height, "path": str(dest)}
        meta = json.loads((dest / META).read_text())
    except (OSError, ValueError, DataError):
        return None
    if meta.get("n_frames", 0) < 1 or _count_frames(dest) != meta["n_frames"]:
        return None
    return {**meta, "path": str(dest)}


def clear_stale(dest: Path) -> None:
    """Remove temp names left beside `dest` by a killed extraction (atomic_dir/atomic_path)."""
    if not dest.parent.is_dir():
        return
    for stale in [*dest.parent.glob(f".{dest.name}.*.tmp"), dest.with_name(f".{dest.name}.old")]:
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        elif stale.exists():
            stale.unlink(missing_ok=True)


def _scale_filter(stream: Any, short_side: int) -> Any:
    """Short side -> short_side, aspect kept, the other side even (rotation-proof expressions)."""
    s = short_side
    return stream.filter("scale", f"if(lt(iw,ih),{s},-2)", f"if(lt(iw,ih),-2,{s})", flags=SCALER)


def ffmpeg_args(src: Path, out: Path, settings: KineticsFrames) -> list[str]:
    """The ffmpeg command line for one clip (ffmpeg-python builds it)."""
    stream = ffmpeg.input(str(src), threads=1).video.filter("fps", fps=settings.fps)
    stream = _scale_filter(stream, settings.short_side)
    if settings.storage == "video":
        node = stream.output(str(out), format="mp4", vcodec="libx264", preset="ultrafast", crf=23,
                             pix_fmt="yuv420p", movflags="+faststart", threads=1, an=None)
    else:
        node = stream.output(str(out / FRAME_PATTERN), **{"q:v": settings.jpeg_quality},
                             threads=1, an=None)
    args = node.overwrite_output().compile(cmd=ffmpeg_path())
    return [args[0], "-nostdin", "-hide_banner", "-loglevel", "error", "-filter_threads", "1",
            *args[1:]]


# Linux: ffmpeg gets SIGKILL when the process that started it dies (no orphan writes on).
# setpriv sets that in the child and keeps the spawn a vfork; a preexec_fn makes it a full fork
# of this process, ~20 ms and 7 ms of CPU a clip once Prefect and torch are loaded.
SETPRIV = shutil.which("setpriv") if sys.platform == "linux" else None
_PRCTL = ctypes.CDLL(None).prctl if sys.platform == "linux" else None  # loaded before any fork


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    _PRCTL(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG


def dying_with_parent(args: list[str]) -> tuple[list[str], Callable[[], None] | None]:
    """`args` and a preexec_fn that make the process die with its parent where Linux can."""
    if SETPRIV is not None:
        return [SETPRIV, "--pdeathsig", "KILL", "--", *args], None
    return args, _die_with_parent if _PRCTL is not None else None


def run_ffmpeg(args: list[str], src: Path) -> None:
    """Run ffmpeg; a non-zero exit becomes a DataError with ffmpeg's last message."""
    args, preexec = dying_with_parent(args)
    proc = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, check=False,
                          preexec_fn=preexec)
    if proc.returncode != 0:
        lines = proc.stderr.decode(errors="replace").strip().splitlines()
        raise DataError(f"ffmpeg failed ({lines[-1] if lines else f'exit {proc.returncode}'})",
                        path=src)


def _check_count(n_frames: int, duration: float, settings: KineticsFrames, src: Path) -> None:
    expected = duration * settings.fps
    if n_frames == 0 or n_frames < MIN_FRAME_SHARE * expected:
        raise DataError(f"decoded {n_frames} frames, expected ~{expected:.0f} (truncated?)",
                        path=src)


def extract_clip(src: str | os.PathLike, dest: str | os.PathLike,
                 settings: KineticsFrames) -> dict:
    """Extract one clip to `dest`; returns {n_frames, fps, width, height, path, skipped}.

    DataError for a corrupt, empty or non-video source. An existing complete `dest` is kept.
    """
    src, dest = Path(src), Path(dest)
    done = read_meta(dest)
    if done is not None:
        return {**done, "skipped": True}
    clear_stale(dest)
    info = probe_video(src)
    if info.width <= 0 or info.height <= 0 or info.duration <= 0:
        raise DataError("empty video stream (no size or duration)", path=src)
    if settings.storage == "video":
        with atomic_path(dest) as tmp:
            run_ffmpeg(ffmpeg_args(src, tmp, settings), src)
            out = probe_video(tmp)
            _check_count(out.frames, info.duration, settings, src)
        meta = {"n_frames": out.frames, "fps": float(settings.fps), "width": out.width,
                "height": out.height}
        return {**meta, "path": str(dest), "skipped": False}
    with atomic_dir(dest) as tmp:
        run_ffmpeg(ffmpeg_args(src, tmp, settings), src)
        n_frames = _count_frames(tmp)
        _check_count(n_frames, info.duration, settings, src)
        from PIL import Image

        with Image.open(tmp / (FRAME_PATTERN % 1)) as first:
            width, height = first.size
        meta = {"n_frames": n_frames, "fps": float(settings.fps), "width": width,
                "height": height}
        (tmp / META).write_text(json.dumps(meta) + "\n")
    return {**meta, "path": str(dest), "skipped": False}


# ================================================================== the stage
def _clear_stale_dirs(frames_dir: Path, label_dirs: set[str]) -> None:
    for label_dir in label_dirs:
        folder = frames_dir / label_dir
        if folder.is_dir():
            for stale in [*folder.glob(".*.tmp"), *folder.glob(".*.old")]:
                if stale.is_dir():
                    shutil.rmtree(stale, ignore_errors=True)
                else:
                    stale.unlink(missing_ok=True)


def _extract_row(row: dict, clips_dir: Path, frames_dir: Path,
                 settings: KineticsFrames) -> tuple[str, str | None]:
    """('extracted'|'skipped'|'missing'|'failed', reason) for one manifest row."""
    dest = frames_dest(row, frames_dir, settings.storage)
    if read_meta(dest) is not None:
        return "skipped", None
    src = Path(clips_dir) / str(row["label_dir"]) / f"{row['clip_id']}.mp4"
    if not src.is_file():
        return "missing", "clip not downloaded"
    try:
        extract_clip(src, dest, settings)
    except DataError as exc:
        return "failed", str(exc)
    return "extracted", None


@task(name="kinetics-frames-batch", tags=["kinetics-frames"], cache_policy=NO_CACHE)
def extract_batch(batch: list[dict], clips_dir: str, frames_dir: str,
                  settings: KineticsFrames) -> list[tuple[str, str, str | None]]:
    """Extract one batch of manifest rows in turn: (clip_id, status, reason) each."""
    return [(str(row["clip_id"]), *_extract_row(row, Path(clips_dir), Path(frames_dir), settings))
            for row in batch]


def extract_all(manifest: pd.DataFrame, clips_dir: str | os.PathLike,
                frames_dir: str | os.PathLike, settings: KineticsFrames, ledger: Ledger,
                common: CommonSettings | None = None) -> dict:
    """Extract every manifest clip not done yet, `settings.workers` batches (ffmpeg processes)
    at a time under `common.task_runner`.

    Failures go to the ledger (stage "frames"; a missing source is transient, a bad one
    permanent), saved after every batch that changed it. Returns counts and clips/s.
    """
    log = get_logger()
    rows = manifest.to_dict("records")
    _clear_stale_dirs(Path(frames_dir), {str(r["label_dir"]) for r in rows})
    counts = {"total": len(rows), "extracted": 0, "skipped": 0, "missing": 0, "failed": 0}
    started, done = time.monotonic(), 0
    with progress_bar(len(rows), "kinetics frames") as bar:
        for _, results in map_batches(extract_batch, rows, settings.batch_size, settings.workers,
                                      common, clips_dir=str(clips_dir),
                                      frames_dir=str(frames_dir), settings=settings):
            for clip_id, status, reason in results:
                counts[status] += 1
                if status in ("extracted", "skipped"):
                    ledger.clear(clip_id, STAGE)
                else:
                    ledger.record(clip_id, STAGE, reason, permanent=status == "failed")
                    log.debug("%s: %s", clip_id, reason)
            ledger.save_changes()
            done += len(results)
            bar.update(len(results), failed=counts["failed"] + counts["missing"],
                       remaining=len(rows) - done)
            log.info("kinetics frames: %d/%d: %d extracted, %d skipped, %d missing, %d failed, "
                     "%.2f clips/s", done, len(rows), counts["extracted"], counts["skipped"],
                     counts["missing"], counts["failed"],
                     counts["extracted"] / max(time.monotonic() - started, 1e-9))
    ledger.save()
    seconds = time.monotonic() - started
    return {**counts, "seconds": seconds,
            "clips_per_second": counts["extracted"] / seconds if seconds > 0 else 0.0}


# ================================================================== the index
def build_index(manifest: pd.DataFrame, frames_dir: str | os.PathLike, storage: str,
                root: str | os.PathLike) -> pd.DataFrame:
    """One row per complete clip (INDEX_COLUMNS, status "ok"), path relative to `root`."""
    root = Path(root).resolve()
    records = []
    for row in manifest.to_dict("records"):
        dest = frames_dest(row, frames_dir, storage)
        meta = read_meta(dest)
        if meta is None:
            continue
        records.append({"clip_id": str(row["clip_id"]), "label": str(row["label"]),
                        "class_index": int(row["class_index"]), "split": str(row["split"]),
                        "n_frames": int(meta["n_frames"]), "fps": float(meta["fps"]),
                        "width": int(meta["width"]), "height": int(meta["height"]),
                        "path": os.path.relpath(dest.resolve(), root), "status": "ok"})
    index = pd.DataFrame(records, columns=INDEX_COLUMNS)
    return index.astype({"clip_id": "str", "label": "str", "class_index": "int64",
                         "split": "str", "n_frames": "int64", "fps": "float64",
                         "width": "int64", "height": "int64", "path": "str", "status": "str"})


def write_index(index: pd.DataFrame, dest: str | os.PathLike) -> Path:
    """Write the index parquet atomically."""
    return write_parquet(index, dest)


def frames_stage(params) -> dict:
    """kinetics_frames: frames (or resized video) of every downloaded clip."""
    from tasks.storage import read_parquet
    from tasks.video.paths import KineticsPaths

    paths = KineticsPaths()
    ledger = Ledger(paths.frames / "ledger.parquet")
    return extract_all(read_parquet(paths.manifest / "manifest.parquet"), paths.clips,
                       paths.frames, params.kinetics.frames, ledger, params.common)


def index_stage(params) -> dict:
    """kinetics_index: one row per usable clip, and the data report."""
    from tasks.storage import read_json, read_parquet, write_json
    from tasks.video.paths import KineticsPaths

    paths = KineticsPaths()
    manifest = read_parquet(paths.manifest / "manifest.parquet")
    table = build_index(manifest, paths.frames, params.kinetics.frames.storage, Path("."))
    write_index(table, paths.index)
    classes = read_json(paths.manifest / "classes.json")
    report = {"clips": len(table), "classes": len(classes),
              "per_split": {str(k): int(v) for k, v in table["split"].value_counts().items()},
              "frames_total": int(table["n_frames"].sum()),
              "missing": len(manifest) - len(table),
              "frame_failures_by_reason": Ledger(paths.frames / "ledger.parquet").by_reason(
                  "frames")}
    write_json(report, paths.report)
    return report
