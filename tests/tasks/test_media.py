"""tasks/media.py: the ffmpeg resolver and the PyAV probe, on a clip encoded here."""
import os
import subprocess
from pathlib import Path

import pytest

from tasks.errors import DataError
from tasks.media import ffmpeg_dir, ffmpeg_path, path_with_ffmpeg, probe_video


def test_ffmpeg_path_is_executable_and_runs():
    path = ffmpeg_path()
    assert os.path.isabs(path) and os.access(path, os.X_OK)
    out = subprocess.run([path, "-hide_banner", "-version"], capture_output=True, text=True,
                         timeout=30, check=True)
    assert out.stdout.startswith("ffmpeg version")


def test_ffmpeg_dir_holds_an_executable_named_ffmpeg():
    binary = Path(ffmpeg_dir()) / "ffmpeg"
    assert binary.exists() and os.access(binary, os.X_OK)
    assert binary.resolve() == Path(ffmpeg_path()).resolve()
    env = path_with_ffmpeg({"PATH": "/usr/bin"})
    assert env["PATH"].split(os.pathsep)[0] == ffmpeg_dir()


def test_probe_encoded_clip(encoded_clip):
    info = probe_video(encoded_clip)
    assert info.duration == pytest.approx(10.0, abs=0.2)
    assert (info.width, info.height) == (340, 256)
    assert 20 < info.fps < 31
    assert info.frames == pytest.approx(info.duration * info.fps, abs=2)


def test_probe_text_file_is_a_data_error(tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    with pytest.raises(DataError, match="notes.mp4"):
        probe_video(text)


def test_probe_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError):
        probe_video(tmp_path / "absent.mp4")


def test_probe_truncated_clip_is_an_error_or_short(tmp_path, encoded_clip):
    data = encoded_clip.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])  # the clip keeps its index (moov) at the end
    try:
        info = probe_video(cut)
    except DataError:
        return
    assert info.duration < 8.0
