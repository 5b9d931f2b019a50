"""kinetics download: real yt-dlp and ffmpeg against a loopback file server, and a local folder."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pandas as pd
import pytest

from tasks.config import KineticsDownload
from tasks.media import ffmpeg_path, probe_video
from tasks.video.download import (
    NOT_FOUND_LOCALLY,
    ClipFailed,
    clip_path,
    download_all,
    download_clip,
    is_permanent,
    ydl_options,
)
from tasks.video.ledger import Ledger
from tests.fakes.http_server import FakeFileServer

LABEL_DIR = "arm_wrestling"
# downloads map Prefect tasks: report them to the session's real server
pytestmark = pytest.mark.usefixtures("prefect_api")
TOL = 0.5


@pytest.fixture(scope="module")
def source_mp4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 6 s 160x120 test pattern with a tone (index at the end, as ffmpeg writes by default)."""
    out = tmp_path_factory.mktemp("src") / "source.mp4"
    subprocess.run([ffmpeg_path(), "-nostdin", "-v", "error", "-y",
                    "-f", "lavfi", "-i", "testsrc=duration=6:size=160x120:rate=25",
                    "-f", "lavfi", "-i", "sine=duration=6", "-shortest",
                    "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
                    "-c:a", "aac", str(out)], check=True)
    return out


@pytest.fixture
def server(source_mp4: Path):
    data = source_mp4.read_bytes()
    files = {
        "v/-dash0000001.mp4": source_mp4,
        "v/okvideo0001.mp4": source_mp4,
        "v/truncated001.mp4": data[: int(len(data) * 0.3)],
        "v/textfile001.mp4": b"this is a text file, not a video\n" * 50,
    }
    with FakeFileServer(files) as srv:
        yield srv


def _row(youtube_id: str, start: float = 1.0, end: float = 4.0) -> dict:
    return {"clip_id": f"{youtube_id}_{int(start):06d}_{int(end):06d}", "youtube_id": youtube_id,
            "label": "arm wrestling", "label_dir": LABEL_DIR, "class_index": 0, "split": "val",
            "time_start": start, "time_end": end}


def _settings(server: FakeFileServer | None = None, **kw) -> KineticsDownload:
    url = f"{server.url}/v/{{youtube_id}}.mp4" if server else "http://127.0.0.1:9/{youtube_id}"
    base = {"url_template": url, "retries": 1, "backoff_seconds": 0.0,
            "duration_tolerance": TOL, "concurrency": 2, "batch_size": 2}
    return KineticsDownload(**{**base, **kw})


def _leftovers(clips_dir: Path) -> list[Path]:
    return [p for p in clips_dir.rglob("*")
            if p.name.startswith(".") or p.suffix in (".part", ".tmp") or ".part" in p.name]


def test_ydl_options_limit_the_section_and_the_height() -> None:
    settings = KineticsDownload(max_height=240, cookies_file="/tmp/cookies.txt")
    opts = ydl_options(settings, "/x/clip.%(section_start)s.%(ext)s", (2.0, 12.0))
    assert "[height<=?240]" in opts["format"] and opts["merge_output_format"] == "mp4"
    assert opts["force_keyframes_at_cuts"] and opts["noprogress"] and opts["quiet"]
    assert opts["cookiefile"] == "/tmp/cookies.txt" and opts["ffmpeg_location"]
    ranges = list(opts["download_ranges"]({}, None))
    assert ranges == [{"start_time": 2.0, "end_time": 12.0}]
    assert "download_ranges" not in ydl_options(KineticsDownload(), "o", None)


@pytest.mark.parametrize(("message", "permanent"), [
    ("ERROR: [youtube] abc: Video unavailable. This video is private", True),
    ("ERROR: [youtube] abc: Private video. Sign in if you've been granted access", True),
    ("The uploader has not made this video available in your country", True),
    ("ERROR: Unsupported URL: http://x", True),
    ("HTTP Error 404: Not Found", True), ("HTTP Error 410: Gone", True),
    ("HTTP Error 503: Service Unavailable", False), ("Read timed out.", False),
    ("[Errno 104] Connection reset by peer", False), ("HTTP Error 429: Too Many Requests", False),
])
def test_error_messages_are_classified(message: str, permanent: bool) -> None:
    assert is_permanent(message) is permanent


def test_section_download_cuts_the_section_even_for_an_id_starting_with_dash(
        server: FakeFileServer, tmp_path: Path) -> None:
    row = _row("-dash0000001", 1.0, 4.0)
    status = download_clip(row, _settings(server), tmp_path, f"{server.url}/v/-dash0000001.mp4",
                           source="http")
    dest = tmp_path / LABEL_DIR / f"{row['clip_id']}.mp4"
    assert status == "downloaded" and clip_path(row, tmp_path) == dest
    info = probe_video(dest)
    assert abs(info.duration - 3.0) <= TOL and (info.width, info.height) == (160, 120)
    assert _leftovers(tmp_path) == []
    # a section running past the end of a short file keeps what the file holds
    long_row = _row("okvideo0001", 3.0, 13.0)
    assert download_clip(long_row, _settings(server), tmp_path,
                         f"{server.url}/v/okvideo0001.mp4", source="http") == "downloaded"
    assert abs(probe_video(clip_path(long_row, tmp_path)).duration - 3.0) <= TOL


def test_failures_land_in_the_ledger_and_a_rerun_fetches_nothing_new(
        server: FakeFileServer, tmp_path: Path) -> None:
    clips, ledger = tmp_path / "clips", Ledger(tmp_path / "ledger.parquet")
    manifest = pd.DataFrame([_row("okvideo0001"), _row("-dash0000001"), _row("missing0001"),
                             _row("truncated001"), _row("textfile001")])
    counts = download_all(manifest, _settings(server), clips, ledger, source="http")
    assert counts["downloaded"] == 2 and counts["failed"] == 3 and counts["permanent"] == 3
    frame = Ledger(tmp_path / "ledger.parquet").frame.set_index("clip_id")  # saved to disk
    failed = {_row(y)["clip_id"] for y in ("missing0001", "truncated001", "textfile001")}
    assert set(frame.index) == failed and ledger.failed("download") == failed
    assert frame["permanent"].all() and (frame["stage"] == "download").all()
    assert "404" in frame.loc[_row("missing0001")["clip_id"], "reason"]
    assert all(frame["reason"].str.len() > 0)
    assert _leftovers(clips) == [] and len(list(clips.rglob("*.mp4"))) == 2
    by_reason = ledger.by_reason("download")  # what the data report shows
    assert sum(r["clips"] for r in by_reason.values()) == 3
    assert sum(r["permanent"] for r in by_reason.values()) == 3
    assert set(by_reason) == set(frame["reason"]) and ledger.by_reason("frames") == {}

    server.reset_requests()
    again = download_all(manifest, _settings(server), clips, Ledger(ledger.path), source="http")
    assert server.requests_for("GET") == []
    assert again["present"] == 2 and again["skipped"] == 3 and again["downloaded"] == 0

    retry = download_all(manifest, _settings(server, retry_failed=True), clips,
                            Ledger(ledger.path), source="http")
    asked = {r.path for r in server.requests_for("GET")}
    assert retry["failed"] == 3 and retry["present"] == 2
    assert "/v/okvideo0001.mp4" not in asked and "/v/missing0001.mp4" in asked
    assert Ledger(ledger.path).attempts(_row("missing0001")["clip_id"], "download") == 2


def test_a_server_error_once_is_retried(server: FakeFileServer, tmp_path: Path) -> None:
    server.fail(500, times=1, methods=("GET",))
    row = _row("okvideo0001")
    url = f"{server.url}/v/okvideo0001.mp4"
    assert download_clip(row, _settings(server), tmp_path, url, source="http") == "downloaded"
    assert len(server.requests_for("GET")) >= 2
    assert abs(probe_video(clip_path(row, tmp_path)).duration - 3.0) <= TOL


def test_a_server_error_that_lasts_is_recorded_as_transient(
        server: FakeFileServer, tmp_path: Path) -> None:
    server.fail(503, times=None)
    ledger = Ledger(tmp_path / "ledger.parquet")
    manifest = pd.DataFrame([_row("okvideo0001")])
    counts = download_all(manifest, _settings(server), tmp_path / "clips", ledger,
                             source="http")
    assert counts["failed"] == 1 and counts["permanent"] == 0
    assert ledger.failed("download") == set() and "503" in ledger.frame["reason"].iloc[0]
    assert len(server.requests_for("GET")) == 2  # one try and one retry
    server.clear_faults()
    assert download_all(manifest, _settings(server), tmp_path / "clips", ledger,
                           source="http")["downloaded"] == 1
    assert len(ledger) == 0  # the success cleared the entry


def test_local_source_copies_and_trims(source_mp4: Path, tmp_path: Path) -> None:
    local = tmp_path / "local"
    local.mkdir()
    whole, cut = _row("-wholevideo1", 2.0, 4.0), _row("precutclip1", 20.0, 26.0)
    (local / f"{whole['youtube_id']}.mp4").write_bytes(source_mp4.read_bytes())
    (local / f"{cut['clip_id']}.mp4").write_bytes(source_mp4.read_bytes())
    missing = _row("nowhere0001")
    clips, ledger = tmp_path / "clips", Ledger(tmp_path / "ledger.parquet")
    settings = _settings(local_dir=str(local))
    counts = download_all(pd.DataFrame([whole, cut, missing]), settings, clips, ledger,
                             source="local")
    assert counts["downloaded"] == 2 and counts["failed"] == 1
    assert abs(probe_video(clip_path(whole, clips)).duration - 2.0) <= TOL  # trimmed
    assert clip_path(cut, clips).read_bytes() == source_mp4.read_bytes()  # copied as is
    frame = ledger.frame
    assert frame["reason"].tolist() == [NOT_FOUND_LOCALLY] and frame["permanent"].all()
    assert _leftovers(clips) == []
    rerun = download_all(pd.DataFrame([whole, cut, missing]), settings, clips, ledger,
                            source="local")
    assert rerun["present"] == 2 and rerun["skipped"] == 1


def test_a_failed_clip_raises_with_its_permanence(server: FakeFileServer, tmp_path: Path) -> None:
    with pytest.raises(ClipFailed) as info:
        download_clip(_row("missing0001"), _settings(server), tmp_path,
                      f"{server.url}/v/missing0001.mp4", source="http")
    assert info.value.permanent and "404" in info.value.reason
    assert _leftovers(tmp_path) == []
