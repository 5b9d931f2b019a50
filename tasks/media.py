"""The one ffmpeg resolver: every caller (ffmpeg-python, yt-dlp, subprocess) gets the binary here.

Order: $REPROLAB_FFMPEG, an `ffmpeg` on PATH, then the static build shipped by imageio-ffmpeg.
There is no ffprobe in that build: probe with PyAV (`probe_video`).
"""
from __future__ import annotations

import functools
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tasks.errors import ConfigError, DataError


@functools.cache
def ffmpeg_path() -> str:
    """Absolute path of the ffmpeg binary to use."""
    explicit = os.environ.get("REPROLAB_FFMPEG")
    if explicit:
        if not Path(explicit).is_file():
            raise ConfigError(f"REPROLAB_FFMPEG={explicit}: no such file")
        return explicit
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg
    except ImportError as exc:  # pragma: no cover - a hard dependency
        raise ConfigError("no ffmpeg on PATH and imageio-ffmpeg is not installed") from exc
    return imageio_ffmpeg.get_ffmpeg_exe()


@functools.cache
def ffmpeg_dir() -> str:
    """A directory holding an executable named `ffmpeg` (a link to the resolved binary).

    yt-dlp's section downloads look ffmpeg up by name on PATH and ignore `ffmpeg_location`,
    so callers put this directory first on PATH (or pass it as yt-dlp's ffmpeg_location).
    """
    binary = Path(ffmpeg_path())
    if binary.name == "ffmpeg":
        return str(binary.parent)
    link_dir = Path(tempfile.gettempdir()) / f"reprolab-ffmpeg-{os.getuid()}"
    link_dir.mkdir(exist_ok=True)
    link = link_dir / "ffmpeg"
    if not link.exists() or link.resolve() != binary.resolve():
        tmp = link_dir / f".ffmpeg.{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(binary)
        os.replace(tmp, link)
    return str(link_dir)


def path_with_ffmpeg(env: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of `env` (default os.environ) whose PATH starts with ffmpeg_dir()."""
    env = dict(os.environ if env is None else env)
    env["PATH"] = os.pathsep.join([ffmpeg_dir(), env.get("PATH", "")])
    return env


@dataclass(frozen=True)
class VideoInfo:
    duration: float
    width: int
    height: int
    fps: float
    frames: int


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Duration, size, frame rate of the first video stream (PyAV); DataError if none."""
    import av

    path = Path(path)
    try:
        with av.open(str(path)) as container:
            streams = container.streams.video
            if not streams:
                raise DataError("no video stream", path=path)
            stream = streams[0]
            rate = float(stream.average_rate or stream.guessed_rate or 0)
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                duration = container.duration / 1_000_000
            else:
                duration = 0.0
            return VideoInfo(duration=duration, width=stream.codec_context.width,
                             height=stream.codec_context.height, fps=rate,
                             frames=int(stream.frames or round(duration * rate)))
    except av.error.FFmpegError as exc:
        raise DataError(f"not a readable video ({exc})", path=path) from None
