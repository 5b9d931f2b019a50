"""The kinetics_download stage: the annotated section of each manifest clip, by yt-dlp or a folder.

Sources: "live" (YouTube through yt-dlp), "http" (the same through yt-dlp's generic extractor from
any server named by `url_template`), "local" (copy or trim files from `local_dir`). A clip lands
at clips_dir/label_dir/{clip_id}.mp4 only after it probes as a video of the right length (it is
written in a temp directory beside it and renamed), so a file at that path is always complete.
Failures go to the ledger: permanent ones (gone, private, not a video) are not tried again unless
`retry_failed`; transient ones (timeouts, 5xx, resets) are retried with exponential backoff.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.config import CommonSettings, KineticsDownload
from tasks.errors import DataError, FetchError
from tasks.logs import get_logger
from tasks.media import ffmpeg_dir, ffmpeg_path, probe_video
from tasks.parallel import map_batches
from tasks.progress import progress_bar
from tasks.video.ledger import Ledger

STAGE = "download"
SOCKET_TIMEOUT_S = 30.0
NOT_FOUND_LOCALLY = "not found locally"

# yt-dlp / ffmpeg messages that will not change on another try
_PERMANENT = re.compile("|".join([
    r"HTTP Error (?:400|401|403|404|410|451)\b", r"Video unavailable", r"Private video",
    r"This video has been removed", r"This video is no longer available",
    r"account associated with this video has been terminated", r"copyright",
    r"available in your (?:country|region)", r"blocked it in your country",
    r"geo[- ]?restrict", r"Unsupported URL", r"Sign in to confirm your age",
    r"no video stream", r"not a readable video",
    # ffmpeg's exit status is its error code mod 256: 183 = AVERROR_INVALIDDATA (not a video,
    # a truncated mp4 without its index, an HTML page)
    r"ffmpeg exited with code 183\b",
]), re.IGNORECASE)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")

_path_lock = threading.Lock()
_path_ready = False


class ClipFailed(FetchError):
    """A clip could not be fetched; `permanent` says whether another try could help."""

    def __init__(self, reason: str, permanent: bool) -> None:
        super().__init__(reason)
        self.reason, self.permanent = reason, permanent


class _QuietLogger:
    """yt-dlp's messages go to our debug log; errors are reported once, by the caller."""

    def __init__(self) -> None:
        self._log = get_logger("reprolab.yt_dlp")

    def debug(self, msg: str) -> None:
        self._log.debug(msg)

    info = warning = error = debug


# ================================================================== yt-dlp
def _ffmpeg_on_path() -> None:
    """Make yt-dlp find our ffmpeg in section downloads, which ignore `ffmpeg_location`.

    The supported way is yt-dlp's ffmpeg-location context variable, set in each worker thread
    (context variables are per thread, so it is set on every call). If a future yt-dlp drops it,
    fall back to putting ffmpeg_dir() first on the process PATH — once, under a lock, because
    worker threads would otherwise race to rewrite os.environ (not thread safe).
    """
    global _path_ready
    from yt_dlp.postprocessor.ffmpeg import FFmpegPostProcessor

    location = getattr(FFmpegPostProcessor, "_ffmpeg_location", None)
    if location is not None:
        location.set(ffmpeg_dir())
        return
    with _path_lock:
        if not _path_ready:
            os.environ["PATH"] = os.pathsep.join([ffmpeg_dir(), os.environ.get("PATH", "")])
            _path_ready = True


def ydl_options(settings: KineticsDownload, out_template: str,
                section: tuple[float, float] | None, *,
                socket_timeout: float = SOCKET_TIMEOUT_S) -> dict:
    """yt-dlp API options: the section only (cut at exact frames), height <= max_height, mp4."""
    from yt_dlp.utils import download_range_func

    h = settings.max_height
    # `<=?` lets formats of unknown height through (a plain mp4 from the generic extractor)
    opts: dict[str, Any] = {
        "format": f"bv*[height<=?{h}]+ba/b[height<=?{h}]/bv*+ba/b",
        "merge_output_format": "mp4",
        "outtmpl": out_template,
        "noprogress": True, "quiet": True, "no_warnings": True, "noplaylist": True,
        "overwrites": True, "continuedl": False,
        "retries": settings.retries, "fragment_retries": settings.retries,
        "socket_timeout": socket_timeout,
        "ffmpeg_location": ffmpeg_dir(),
        "logger": _QuietLogger(),
    }
    if section is not None:
        opts["download_ranges"] = download_range_func([], [(float(section[0]), float(section[1]))])
        opts["force_keyframes_at_cuts"] = True
    if settings.cookies_file:
        opts["cookiefile"] = settings.cookies_file
    return opts


def clip_url(row: Mapping[str, Any], settings: KineticsDownload) -> str:
    """The clip's URL from url_template (an id is never a bare argv token: ids may start with -)."""
    return settings.url_template.format(youtube_id=row["youtube_id"], clip_id=row["clip_id"],
                                        time_start=row["time_start"], time_end=row["time_end"])


def clip_path(row: Mapping[str, Any], clips_dir: str | os.PathLike) -> Path:
    """clips_dir / label_dir / {clip_id}.mp4 (the data contract)."""
    return Path(clips_dir) / str(row["label_dir"]) / f"{row['clip_id']}.mp4"


def is_permanent(message: str) -> bool:
    """Whether a yt-dlp / ffmpeg error message means that another try cannot help."""
    return bool(_PERMANENT.search(message))


def _reason(exc: BaseException) -> str:
    text = _ANSI.sub("", str(exc)).strip()
    text = re.sub(r"^ERROR:\s*", "", text)
    text = re.sub(r"^\[[\w:]+\]\s+[^:]*:\s*", "", text)  # "[generic] some-id: " prefix
    if re.search(r"ffmpeg exited with code 183\b", text):
        text = f"not a video or truncated: {text} (invalid data)"
    return text.splitlines()[0][:300] if text else type(exc).__name__


# ================================================================== one clip
def clip_is_valid(path: Path, expected: float, tolerance: float, *,
                  shorter_ok: bool = False) -> bool:
    """A readable video whose duration is within tolerance of `expected` (or shorter, if ok)."""
    try:
        info = probe_video(path)
    except DataError:
        return False
    if info.duration <= 0 or info.duration > expected + tolerance:
        return False
    return shorter_ok or info.duration >= expected - tolerance


def _check_clip(path: Path, expected: float, tolerance: float) -> None:
    """Raise a permanent ClipFailed unless `path` is a video of about `expected` seconds."""
    try:
        info = probe_video(path)
    except DataError as exc:
        raise ClipFailed(str(exc).replace(str(path), "download"), permanent=True) from None
    if abs(info.duration - expected) > tolerance:
        raise ClipFailed(f"clip is {info.duration:.2f} s, expected {expected:.2f} s "
                         "(truncated source?)", permanent=True)


def _source_duration(url: str, timeout: float = SOCKET_TIMEOUT_S) -> float | None:
    """Duration of a media file at `url` (PyAV reads its header), None if it cannot tell."""
    import av

    try:
        with av.open(url, timeout=timeout) as container:
            if container.duration is None or not container.streams.video:
                return None
            return container.duration / 1_000_000
    except (av.error.FFmpegError, OSError):
        return None


def _expected(section: float, start: float, source_duration: float | None) -> float:
    if source_duration is None:
        return section
    return max(min(section, source_duration - start), 0.0)


def _fetch_once(url: str, row: Mapping[str, Any], settings: KineticsDownload, work: Path,
                source: str) -> Path:
    """One yt-dlp attempt into `work`; the checked mp4, or ClipFailed."""
    import yt_dlp

    start, end = float(row["time_start"]), float(row["time_end"])
    _ffmpeg_on_path()
    opts = ydl_options(settings, str(work / "clip.%(section_start)s.%(ext)s"), (start, end))
    try:
        with yt_dlp.YoutubeDL(opts) as ydl:
            info = ydl.extract_info(url, download=True) or {}
    except Exception as exc:  # yt-dlp raises DownloadError, but extractors leak others
        reason = _reason(exc)
        raise ClipFailed(reason, permanent=is_permanent(reason)) from None
    done = [Path(d["filepath"]) for d in info.get("requested_downloads") or []
            if d.get("filepath")]
    done = [p for p in done if p.exists()] or sorted(work.glob("clip.*.mp4"))
    if not done:
        raise ClipFailed("yt-dlp wrote no file", permanent=False)
    out = done[0]
    section = end - start
    duration = info.get("duration")
    if duration is None and source == "http":
        probe = probe_video_or_none(out)
        if probe is not None and probe < section - settings.duration_tolerance:
            duration = _source_duration(url)  # a short file: compare to what it holds
    _check_clip(out, _expected(section, start, duration), settings.duration_tolerance)
    return out


def probe_video_or_none(path: Path) -> float | None:
    """Duration of a video file, or None if it does not probe."""
    try:
        return probe_video(path).duration
    except DataError:
        return None


def download_clip(row: Mapping[str, Any], settings: KineticsDownload,
                  clips_dir: str | os.PathLike, url: str, *,
                  source: Literal["live", "http"] = "live") -> str:
    """Fetch one manifest row's section: "present" (a valid clip was there) or "downloaded".

    Transient failures are retried `settings.retries` times with exponential backoff; the last
    failure is raised as ClipFailed (with `.permanent`). Temp files never outlive the call.
    """
    dest = clip_path(row, clips_dir)
    section = float(row["time_end"]) - float(row["time_start"])
    # a clip at `dest` was checked before its rename; a shorter one is the end of a short file
    if dest.exists() and clip_is_valid(dest, section, settings.duration_tolerance,
                                       shorter_ok=source == "http"):
        return "present"
    dest.parent.mkdir(parents=True, exist_ok=True)
    attempt = 0
    while True:
        work = Path(tempfile.mkdtemp(prefix=f".{dest.stem}.", suffix=".tmp", dir=dest.parent))
        try:
            os.replace(_fetch_once(url, row, settings, work, source), dest)
            return "downloaded"
        except ClipFailed as exc:
            if exc.permanent or attempt >= settings.retries:
                raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
        time.sleep(settings.backoff_seconds * 2 ** attempt)
        attempt += 1


def _local_source(row: Mapping[str, Any], local_dir: Path) -> tuple[Path, bool] | None:
    """The local file for a row and whether it is a whole video ({youtube_id}.mp4)."""
    for name, whole in ((f"{row['clip_id']}.mp4", False), (f"{row['youtube_id']}.mp4", True)):
        if (local_dir / name).is_file():
            return local_dir / name, whole
    return None


def copy_local_clip(row: Mapping[str, Any], settings: KineticsDownload,
                    clips_dir: str | os.PathLike) -> str:
    """Copy (or trim with ffmpeg, if longer than the section) a clip from settings.local_dir."""
    if not settings.local_dir:
        raise ClipFailed("kinetics.download.local_dir is not set", permanent=True)
    dest = clip_path(row, clips_dir)
    found = _local_source(row, Path(settings.local_dir))
    if found is None:
        raise ClipFailed(NOT_FOUND_LOCALLY, permanent=True)
    src, whole = found
    try:
        total = probe_video(src).duration
    except DataError as exc:
        raise ClipFailed(str(exc), permanent=True) from None
    tol = settings.duration_tolerance
    start, section = float(row["time_start"]), float(row["time_end"]) - float(row["time_start"])
    # a {youtube_id}.mp4 no longer than its start is a clip already cut, not the whole video
    offset = start if whole and total > start + tol else 0.0
    expected = min(section, total - offset)
    if dest.exists() and clip_is_valid(dest, expected, tol):
        return "present"
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.stem}.", suffix=".tmp", dir=dest.parent))
    try:
        out = work / "clip.mp4"
        if offset > 0 or total - offset > section + tol:
            _trim(src, out, offset, expected)
        else:
            shutil.copyfile(src, out)
        _check_clip(out, expected, tol)
        os.replace(out, dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return "downloaded"


def _trim(src: Path, out: Path, start: float, duration: float) -> None:
    """Re-encode [start, start + duration) of `src` to `out` (frame-exact cut, mp4)."""
    cmd = [ffmpeg_path(), "-nostdin", "-v", "error", "-y", "-ss", f"{start:.3f}",
           "-i", str(src.resolve()), "-t", f"{duration:.3f}", "-map", "0:v:0", "-map", "0:a:0?",
           "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-c:a", "aac",
           "-movflags", "+faststart", str(out.resolve())]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ClipFailed(f"ffmpeg trim failed: {done.stderr.strip()[-300:]}", permanent=True)


# ================================================================== the stage
def download_one(row: Mapping[str, Any], settings: KineticsDownload, clips_dir: Path,
                 source: str) -> tuple[str, ClipFailed | None]:
    """(status, failure) for one row; never raises a ClipFailed (status "failed" instead)."""
    try:
        if source == "local":
            return copy_local_clip(row, settings, clips_dir), None
        status = download_clip(row, settings, clips_dir, clip_url(row, settings), source=source)
        if status == "downloaded" and settings.sleep_seconds:
            time.sleep(settings.sleep_seconds)  # be polite to the server between requests
        return status, None
    except ClipFailed as exc:
        return "failed", exc


@task(name="kinetics-download-batch", tags=["kinetics-download"], cache_policy=NO_CACHE)
def download_batch(batch: list[dict], settings: KineticsDownload, clips_dir: str,
                   source: str) -> list[tuple[str, str, str | None, bool]]:
    """Fetch one batch of manifest rows in turn: (clip_id, status, reason, permanent) each."""
    out = []
    for row in batch:
        status, failure = download_one(row, settings, Path(clips_dir), source)
        out.append((str(row["clip_id"]), status, failure and failure.reason,
                    bool(failure and failure.permanent)))
    return out


def download_all(manifest: pd.DataFrame, settings: KineticsDownload, clips_dir: str | os.PathLike,
                 ledger: Ledger, source: Literal["live", "http", "local"] = "live",
                 common: CommonSettings | None = None) -> dict:
    """Fetch every manifest clip not yet present; returns counts and saves the ledger.

    Batches of `batch_size` rows are Prefect task runs mapped under `common.task_runner`, at
    most `concurrency` at once; the ledger is updated and saved here as each batch completes,
    so an interrupted run keeps what it learnt.
    """
    if source not in ("live", "http", "local"):
        raise FetchError(f"kinetics.source: cannot download from {source!r}")
    log = get_logger()
    skip = set() if settings.retry_failed else ledger.failed(STAGE)
    rows = manifest.to_dict("records")
    todo = [r for r in rows if r["clip_id"] not in skip]
    counts = {"total": len(rows), "downloaded": 0, "present": 0, "failed": 0,
              "skipped": len(rows) - len(todo), "permanent": 0}
    done = 0
    with progress_bar(len(todo), f"kinetics download ({source})") as bar:
        for _, results in map_batches(download_batch, todo, settings.batch_size,
                                      settings.concurrency, common, settings=settings,
                                      clips_dir=str(clips_dir), source=source):
            for clip_id, status, reason, permanent in results:
                _record(ledger, counts, clip_id, status, reason, permanent)
            ledger.save()  # progress survives an interrupted run
            done += len(results)
            bar.update(len(results), failed=counts["failed"], remaining=len(todo) - done)
            log.info("kinetics download (%s): %d/%d done: %d downloaded, %d present, %d failed, "
                     "%d skipped, %d remaining", source, done, len(todo), counts["downloaded"],
                     counts["present"], counts["failed"], counts["skipped"], len(todo) - done)
    ledger.save()
    if counts["failed"]:
        log.warning("kinetics download: %d clip(s) failed (%d for good), see %s",
                    counts["failed"], counts["permanent"], ledger.path)
    return counts


def _record(ledger: Ledger, counts: dict, clip_id: str, status: str, reason: str | None,
            permanent: bool) -> None:
    if status != "failed":
        counts[status] += 1
        ledger.clear(clip_id, STAGE)
        return
    counts["failed"] += 1
    counts["permanent"] += permanent
    ledger.record(clip_id, STAGE, reason or "unknown", permanent)
    get_logger().debug("%s: %s (%s)", clip_id, reason, "permanent" if permanent else "transient")


def download_stage(params) -> dict:
    """kinetics_download: demo clips rendered, or the annotated sections fetched; the manifest."""
    import pandas as pd

    from tasks.storage import write_json
    from tasks.video.demo import render_demo_clips
    from tasks.video.manifest import build_manifest, write_manifest
    from tasks.video.paths import KineticsPaths

    paths, k = KineticsPaths(), params.kinetics
    if k.source == "demo":
        manifest, classes = render_demo_clips(paths.clips, k.demo, params.common.seed)
        rejects = pd.DataFrame(columns=["file", "line", "reason", "detail", "raw"])
        fetched = {"rendered": len(manifest)}
    else:
        annotations = {"train": k.annotations.train, "val": k.annotations.val,
                       "test": k.annotations.test}
        manifest, classes, rejects = build_manifest(annotations, k.annotations.classes, k.subset)
        ledger = Ledger(paths.clips / "ledger.parquet")
        fetched = download_all(manifest, k.download, paths.clips, ledger, k.source,
                               params.common)
        fetched["failures_by_reason"] = ledger.by_reason("download")
    summary = write_manifest(manifest, classes, rejects, paths.manifest)
    write_json({"manifest": summary, "download": fetched}, paths.manifest / "download.json")
    return {"manifest": summary, "download": fetched}
