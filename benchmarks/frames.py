"""Frame extraction against the machine's decode ceiling: bare extraction and the kinetics_frames
stage itself, with 1 and 2 workers side by side.

The ceiling is ffmpeg decoding the same clips to null (`-threads 1` per process); bare
extraction is `extract_clip` in a thread pool. The stage runs as it does in the pipeline,
`python -m flows.kinetics frames` in a project folder of --clips clips, in its own
process with its own Prefect home (a fresh SQLite database, an ephemeral server). Its clips are
timed as they appear: the steady state is the pace after the first clip of every worker, the
start-up is the launch to that point less that pace (imports, Prefect's server, the flow run),
the finish is the last clip to the exit. Clips are the real samples in ../shared/data/kinetics
copied --clips times (a synthetic lavfi clip if absent). Repeats are interleaved and the best of
each is kept, so a busy machine hurts all columns alike.

    python -m benchmarks.frames [--clips 200] [--repeats 2] [--workers 1 2] [--storage jpeg] ...
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tasks.config import KineticsFrames
from tasks.media import ffmpeg_path
from tasks.storage import write_parquet
from tasks.video.frames import extract_clip
from tasks.video.paths import KineticsPaths

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "kinetics"
LABEL_DIR = "bench"
POLL_S = 0.05


def make_clips(folder: Path, n: int) -> list[Path]:
    """n clips in folder: copies of the shared real samples, else synthetic 10 s 340x256."""
    folder.mkdir(parents=True, exist_ok=True)
    sources = sorted(SHARED.glob("*.mp4"))
    if not sources:
        synth = folder.parent / "synthetic.mp4"
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


# ================================================================== the stage
@dataclass
class StageRun:
    steady: float  # clips/s after the first clip of every worker
    startup: float  # seconds from the launch to the steady pace
    finish: float  # seconds from the last clip to the exit


def make_project(root: Path, n_clips: int) -> list[Path]:
    """A project folder the stage runs in: the clips and their manifest where the stage reads
    them (KineticsPaths); returns the clips."""
    paths = KineticsPaths(root)
    clips = make_clips(paths.clips / LABEL_DIR, n_clips)
    manifest = pd.DataFrame({"clip_id": [c.stem for c in clips], "label_dir": LABEL_DIR,
                             "label": "bench", "class_index": 0, "split": "train"})
    write_parquet(manifest, paths.manifest / "manifest.parquet")
    return clips


def stage_env(prefect_home: Path) -> dict[str, str]:
    """The stage's environment: this checkout, its params.yaml, and a Prefect home of its own,
    so no other process's Prefect database is shared (nor locked)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
        str(ROOT), os.environ.get("PYTHONPATH")])),
           "REPROLAB_PARAMS": str(ROOT / "params.yaml"), "PREFECT_HOME": str(prefect_home),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "true",
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90"}
    env.pop("PREFECT_API_URL", None)  # an ephemeral server, as a plain stage run has
    return env


def stage_command(settings: KineticsFrames) -> list[str]:
    sets = {f"kinetics.frames.{key}": value for key, value in settings.model_dump().items()}
    return [sys.executable, "-m", "flows.kinetics", "frames",
            *[arg for key, value in sets.items() for arg in ("--set", f"{key}={value}")]]


def watch_clips(folder: Path, n_clips: int, proc: subprocess.Popen, start: float
                ) -> list[float]:
    """Seconds after `start` at which each complete clip appeared in `folder` (a clip appears
    at once: it is renamed into place), until `proc` exits."""
    times: list[float] = []
    while True:
        running = proc.poll() is None
        seen = sum(1 for e in os.scandir(folder) if not e.name.startswith(".")) \
            if folder.is_dir() else 0
        times += [time.perf_counter() - start] * (seen - len(times))
        if not running or len(times) >= n_clips:
            return times
        time.sleep(POLL_S)


def steady_state(times: list[float], workers: int, total: float) -> StageRun:
    """The pace after the first clip of every worker, and the time around it."""
    first = min(workers, len(times) - 1)
    steady = (len(times) - first) / (times[-1] - times[first - 1])
    return StageRun(steady, times[first - 1] - first / steady, total - times[-1])


def run_stage(project: Path, settings: KineticsFrames, prefect_home: Path) -> StageRun:
    """Run the kinetics_frames stage in `project` from nothing; its output goes to stage.log."""
    n_clips = len(list((KineticsPaths(project).clips / LABEL_DIR).glob("*.mp4")))
    frames = KineticsPaths(project).frames
    shutil.rmtree(frames, ignore_errors=True)
    log = project / "stage.log"
    with log.open("w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(stage_command(settings), cwd=project, env=stage_env(prefect_home),
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        times = watch_clips(frames / LABEL_DIR, n_clips, proc, start)
        proc.wait()
        total = time.perf_counter() - start
    text = log.read_text(errors="replace")
    if proc.returncode != 0 or len(times) != n_clips:
        sys.exit(f"kinetics_frames: exit {proc.returncode}, {len(times)}/{n_clips} clips; "
                 f"its output:\n{text[-4000:]}")
    if "Traceback" in text:
        print(f"note: the stage printed {text.count('Traceback')} traceback(s), the first:\n"
              + text[text.index("Traceback"):][:1500])
    return steady_state(times, settings.workers, total)


# ================================================================== the table
def run(n_clips: int, repeats: int, workers: list[int], settings: KineticsFrames
        ) -> tuple[dict[str, dict[int, float]], dict[int, StageRun]]:
    def extract(src: Path, dest: Path) -> None:
        extract_clip(src, dest.with_suffix(".mp4") if settings.storage == "video" else dest,
                     settings)

    jobs = {"decode-only": decode_null, "extract": extract}
    best = {name: dict.fromkeys(workers, 0.0) for name in jobs}
    stage: dict[int, StageRun] = {}
    with tempfile.TemporaryDirectory(prefix="bench-frames-") as tmp:
        project, prefect_home = Path(tmp) / "project", Path(tmp) / "prefect"
        clips = make_project(project, n_clips)
        for _ in range(repeats):
            for n in workers:
                for name, work in jobs.items():
                    speed = clips_per_second(work, clips, Path(tmp) / "out", n)
                    best[name][n] = max(best[name][n], speed)
                got = run_stage(project, settings.model_copy(update={"workers": n}),
                                prefect_home)
                stage[n] = StageRun(max(got.steady, stage[n].steady if n in stage else 0.0),
                                    min(got.startup, stage[n].startup if n in stage else 1e9),
                                    min(got.finish, stage[n].finish if n in stage else 1e9))
    return best, stage


def print_table(n_clips: int, repeats: int, workers: list[int], settings: KineticsFrames,
                best: dict[str, dict[int, float]], stage: dict[int, StageRun]) -> None:
    def row(label: str, values: list[float], note: str = "", digits: int = 2) -> None:
        cells = "".join(f"{v:>11.{digits}f}" for v in values)
        print(f"{label:54}{cells}{note}")

    def speed_up(values: dict[int, float]) -> str:
        return f"{values[workers[-1]] / values[workers[0]]:>9.2f}x" if len(workers) > 1 else ""

    ceiling, extract = best["decode-only"], best["extract"]
    steady = {n: stage[n].steady for n in workers}
    print(f"{n_clips} clips, best of {repeats}; clips/s")
    print(f"{'':54}" + "".join(f"{f'{n} worker' + ('s' if n > 1 else ''):>11}" for n in workers)
          + (f"{'speed-up':>10}" if len(workers) > 1 else ""))
    row("decode-only ceiling (ffmpeg -> null, -threads 1)", [ceiling[n] for n in workers],
        speed_up(ceiling))
    row(f"bare extraction ({settings.storage}, {settings.fps:g} fps, short side "
        f"{settings.short_side}, q:v {settings.jpeg_quality})", [extract[n] for n in workers],
        speed_up(extract))
    row("  ratio bare extraction / ceiling", [extract[n] / ceiling[n] for n in workers],
        "   (target >= 0.70 with 2 workers)")
    row("kinetics_frames stage, steady state", [steady[n] for n in workers], speed_up(steady))
    row("  ratio stage / ceiling", [steady[n] / ceiling[n] for n in workers],
        "   (target >= 0.65 with 2 workers)")
    row("kinetics_frames stage start-up, s", [stage[n].startup for n in workers],
        "   (launch to the steady pace)", digits=1)
    row("kinetics_frames stage finish, s", [stage[n].finish for n in workers],
        "   (last clip to exit)", digits=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    defaults = KineticsFrames()
    parser.add_argument("--storage", choices=["jpeg", "video"], default=defaults.storage)
    parser.add_argument("--fps", type=float, default=defaults.fps)
    parser.add_argument("--short-side", type=int, default=defaults.short_side)
    parser.add_argument("--quality", type=int, default=defaults.jpeg_quality)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    args = parser.parse_args()
    logging.disable(logging.INFO)
    settings = KineticsFrames(storage=args.storage, fps=args.fps, short_side=args.short_side,
                              jpeg_quality=args.quality, batch_size=args.batch_size)
    workers = sorted(set(args.workers))
    best, stage = run(args.clips, args.repeats, workers, settings)
    print_table(args.clips, args.repeats, workers, settings, best, stage)


if __name__ == "__main__":
    main()
