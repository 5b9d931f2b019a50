"""Frame extraction: real and synthetic clips, bad inputs into the ledger, kill-safety, the index."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from tasks.config import KineticsFrames
from tasks.errors import DataError
from tasks.media import ffmpeg_path, probe_video
from tasks.video.frames import INDEX_COLUMNS, build_index, extract_all, extract_clip, write_index
from tasks.video.ledger import Ledger

ROOT = Path(__file__).resolve().parents[3]
# extraction maps Prefect tasks: report them to the session's real server
pytestmark = pytest.mark.usefixtures("prefect_api")


def _jpegs(folder: Path) -> list[Path]:
    return sorted(folder.glob("img_*.jpg"))


def _leftovers(frames_dir: Path) -> list[Path]:
    return [p for p in frames_dir.rglob(".*") if p.name.endswith((".tmp", ".old"))]


@pytest.fixture(scope="module")
def portrait_clip(tmp_path_factory) -> Path:
    """A synthetic 3 s 240x320 (portrait) 25 fps H.264 clip from lavfi."""
    path = tmp_path_factory.mktemp("synth") / "portrait.mp4"
    subprocess.run([ffmpeg_path(), "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
                    "testsrc2=size=240x320:rate=25:duration=3", "-c:v", "libx264",
                    "-pix_fmt", "yuv420p", str(path)], check=True)
    return path


def _manifest(ids: list[str], label_dir: str = "arm_wrestling") -> pd.DataFrame:
    return pd.DataFrame({
        "clip_id": ids, "youtube_id": [i[:11] for i in ids], "label": "arm wrestling",
        "label_dir": label_dir, "class_index": 3, "split": "train",
        "time_start": 0.0, "time_end": 10.0})


def _place_clips(clips_dir: Path, ids: list[str], src: Path) -> None:
    (clips_dir / "arm_wrestling").mkdir(parents=True, exist_ok=True)
    for clip_id in ids:
        shutil.copyfile(src, clips_dir / "arm_wrestling" / f"{clip_id}.mp4")


# ================================================================== one clip
def test_a_clip_gives_fps_times_duration_jpegs_at_short_side(tmp_path, encoded_clip):
    settings = KineticsFrames(fps=8, short_side=128)
    out = extract_clip(encoded_clip, tmp_path / "clip", settings)
    frames = _jpegs(tmp_path / "clip")
    assert abs(len(frames) - 8 * 10) <= 2
    assert out["n_frames"] == len(frames) and out["fps"] == 8.0 and not out["skipped"]
    with Image.open(frames[0]) as img:
        assert min(img.size) == 128 and img.size == (out["width"], out["height"])
        assert img.size[0] % 2 == 0 and abs(img.size[0] / img.size[1] - 340 / 256) < 0.02
    assert _leftovers(tmp_path) == []
    again = extract_clip(encoded_clip, tmp_path / "clip", settings)
    assert again["skipped"] and again["n_frames"] == out["n_frames"]


def test_synthetic_portrait_clip_keeps_aspect(tmp_path, portrait_clip):
    out = extract_clip(portrait_clip, tmp_path / "p", KineticsFrames(fps=5, short_side=96))
    frames = _jpegs(tmp_path / "p")
    assert abs(len(frames) - 15) <= 1 and out["n_frames"] == len(frames)
    with Image.open(frames[-1]) as img:
        assert img.size == (96, 128)


def test_video_storage_gives_probeable_mp4_of_right_size(tmp_path, portrait_clip):
    dest = tmp_path / "p.mp4"
    out = extract_clip(portrait_clip, dest, KineticsFrames(storage="video", fps=10, short_side=64))
    info = probe_video(dest)
    assert (info.width, info.height) == (64, 86) == (out["width"], out["height"])
    assert abs(info.fps - 10) < 0.01 and abs(info.frames - 30) <= 1
    assert [p.name for p in tmp_path.iterdir()] == ["p.mp4"]


@pytest.mark.parametrize("kind", ["truncated", "empty", "text"])
def test_bad_inputs_raise_data_error(tmp_path, kind, encoded_clip):
    bad = tmp_path / "bad.mp4"
    if kind == "truncated":
        data = encoded_clip.read_bytes()
        bad.write_bytes(data[: len(data) // 3])
    elif kind == "empty":
        bad.write_bytes(b"")
    else:
        bad.write_text("not a video at all\n" * 50)
    with pytest.raises(DataError, match="bad.mp4"):
        extract_clip(bad, tmp_path / "out" / "bad", KineticsFrames())
    assert not (tmp_path / "out" / "bad").exists() and _leftovers(tmp_path) == []


# ================================================================== the stage
def test_extract_all_records_failures_and_rerun_skips_done(tmp_path, encoded_clip):
    clips, frames = tmp_path / "clips", tmp_path / "frames"
    ids = ["good0000000_000000_000010", "trunc000000_000000_000010",
           "empty000000_000000_000010", "text0000000_000000_000010",
           "missing0000_000000_000010"]
    _place_clips(clips, ids[:1], encoded_clip)
    folder = clips / "arm_wrestling"
    folder.joinpath(f"{ids[1]}.mp4").write_bytes(encoded_clip.read_bytes()[:200_000])
    folder.joinpath(f"{ids[2]}.mp4").write_bytes(b"")
    folder.joinpath(f"{ids[3]}.mp4").write_text("hello\n")
    ledger = Ledger(tmp_path / "ledger.parquet")
    settings = KineticsFrames(fps=4, short_side=64, workers=2)
    counts = extract_all(_manifest(ids), clips, frames, settings, ledger)
    assert {k: counts[k] for k in ("total", "extracted", "skipped", "missing", "failed")} == \
        {"total": 5, "extracted": 1, "skipped": 0, "missing": 1, "failed": 3}
    saved = pd.read_parquet(tmp_path / "ledger.parquet").set_index("clip_id")
    assert set(saved.index) == set(ids[1:]) and (saved["stage"] == "frames").all()
    assert saved.loc[ids[4], "reason"] == "clip not downloaded"
    assert not saved.loc[ids[4], "permanent"] and saved.loc[ids[1:4], "permanent"].all()
    assert all(saved.loc[i, "reason"] for i in ids[1:4])
    assert Ledger(tmp_path / "ledger.parquet").failed("frames") == set(ids[1:4])

    index = build_index(_manifest(ids), frames, "jpeg", tmp_path)
    assert list(index.columns) == INDEX_COLUMNS
    assert index["clip_id"].tolist() == ids[:1]
    row = index.iloc[0]
    assert row["path"] == f"frames/arm_wrestling/{ids[0]}" and row["status"] == "ok"
    assert (row["n_frames"], row["fps"], row["width"], row["height"]) == (40, 4.0, 86, 64)
    assert str(index["label"].dtype) in ("str", "string", "object")
    assert index["n_frames"].dtype == "int64" and index["class_index"].dtype == "int64"
    write_index(index, tmp_path / "index.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "index.parquet"), index,
                                  check_dtype=False)

    _place_clips(clips, ids[4:], encoded_clip)  # the missing clip arrives
    again = extract_all(_manifest(ids), clips, frames, settings, ledger)
    assert (again["skipped"], again["extracted"], again["failed"]) == (1, 1, 3)
    assert ids[4] not in set(ledger.frame["clip_id"])


def test_a_crash_mid_batch_keeps_what_was_recorded_and_a_rerun_redoes_nothing_done(
        tmp_path, portrait_clip, monkeypatch):
    import tasks.video.frames as frames_module

    clips, frames, ledger_path = tmp_path / "clips", tmp_path / "frames", tmp_path / "l.parquet"
    ids = [f"synth{i:06d}_000000_000003" for i in range(6)]
    _place_clips(clips, ids[1:], src=portrait_clip)
    (clips / "arm_wrestling" / f"{ids[0]}.mp4").write_text("not a video\n")
    # one worker, batches of two in order: [bad, good], [good, crash], [good, good]
    settings = KineticsFrames(fps=5, short_side=64, workers=1, batch_size=2)
    extract_row = frames_module._extract_row

    def crash_on_fourth(row, *args):
        if row["clip_id"] == ids[3]:
            raise RuntimeError("killed mid-batch")
        return extract_row(row, *args)

    monkeypatch.setattr(frames_module, "_extract_row", crash_on_fourth)
    with pytest.raises(RuntimeError, match="killed mid-batch"):
        extract_all(_manifest(ids), clips, frames, settings, Ledger(ledger_path))
    assert Ledger(ledger_path).failed("frames") == {ids[0]}  # the first batch was saved
    done = {d.name: (d / ".meta.json").stat().st_mtime_ns
            for d in (frames / "arm_wrestling").iterdir() if not d.name.startswith(".")}
    assert {ids[1], ids[2]} <= set(done) and ids[3] not in done

    monkeypatch.setattr(frames_module, "_extract_row", extract_row)
    again = extract_all(_manifest(ids), clips, frames, settings, Ledger(ledger_path))
    assert (again["skipped"], again["extracted"], again["failed"]) == (len(done), 5 - len(done), 1)
    assert all((frames / "arm_wrestling" / c / ".meta.json").stat().st_mtime_ns == t
               for c, t in done.items())  # nothing done was redone
    assert Ledger(ledger_path).attempts(ids[0], "frames") == 2 and _leftovers(frames) == []


_ORPHAN = """
import subprocess, sys, time
sys.path.insert(0, {root!r})
from tasks.video.frames import dying_with_parent
args, preexec = dying_with_parent(["sleep", "60"])
print(subprocess.Popen(args, preexec_fn=preexec).pid, flush=True)
time.sleep(60)
"""


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")
def test_a_spawned_ffmpeg_dies_with_the_process_that_started_it():
    parent = subprocess.Popen([sys.executable, "-c", _ORPHAN.format(root=str(ROOT))],
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        child = int(parent.stdout.readline())
        assert _running(child)
    finally:
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        parent.stdout.close()
    deadline = time.monotonic() + 10
    while _running(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _running(child)


_CHILD = """
import sys
sys.path.insert(0, {root!r})
import pandas as pd
from tasks.config import KineticsFrames
from tasks.video.frames import extract_all
from tasks.video.ledger import Ledger
extract_all(pd.read_parquet(sys.argv[1]), sys.argv[2], sys.argv[3],
            KineticsFrames(fps=25, short_side=128, workers=1), Ledger(sys.argv[4]))
"""


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, "the extraction finished before it could be killed"
        assert time.monotonic() < deadline, "timed out waiting for the extraction"
        time.sleep(0.005)


@pytest.mark.parametrize("moment", ["after_first_clip", "while_ffmpeg_runs"])
def test_killed_extraction_leaves_no_partial_clip_and_rerun_completes(tmp_path, moment,
                                                                    prefect_server,
                                                                    encoded_clip):
    clips, frames = tmp_path / "clips", tmp_path / "frames"
    ids = [f"clip{i:07d}_000000_000010" for i in range(5)]
    _place_clips(clips, ids, encoded_clip)
    manifest = _manifest(ids)
    manifest.to_parquet(tmp_path / "manifest.parquet")
    label = frames / "arm_wrestling"

    def first_done() -> bool:
        return (label / ids[0] / ".meta.json").exists()

    def ffmpeg_writing() -> bool:
        return label.is_dir() and any(
            any(d.glob("img_*.jpg")) for d in label.glob(".*.tmp") if d.is_dir())

    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD.format(root=str(ROOT)), str(tmp_path / "manifest.parquet"),
         str(clips), str(frames), str(tmp_path / "ledger.parquet")], start_new_session=True,
        env={**os.environ, "PREFECT_API_URL": prefect_server})  # no ephemeral server to orphan
    try:
        _wait_for(first_done if moment == "after_first_clip" else ffmpeg_writing, proc)
        if moment == "after_first_clip":
            _wait_for(ffmpeg_writing, proc)  # kill in the middle of the second clip
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
    time.sleep(0.2)  # ffmpeg dies with its parent (PR_SET_PDEATHSIG)

    before = build_index(manifest, frames, "jpeg", tmp_path)
    complete = [d.name for d in label.iterdir() if not d.name.startswith(".")]
    assert sorted(before["clip_id"]) == sorted(complete) and len(complete) < len(ids)
    assert _leftovers(frames), "the kill should have left a temp directory behind"
    assert (before["n_frames"] == before["clip_id"].map(
        lambda c: len(_jpegs(label / c)))).all()

    settings = KineticsFrames(fps=25, short_side=128, workers=2)
    counts = extract_all(manifest, clips, frames, settings, Ledger(tmp_path / "ledger.parquet"))
    assert counts["skipped"] == len(complete) and counts["failed"] == 0
    assert counts["extracted"] == len(ids) - len(complete)
    assert _leftovers(frames) == []
    index = build_index(manifest, frames, "jpeg", tmp_path)
    assert sorted(index["clip_id"]) == ids
    assert (abs(index["n_frames"] - 250) <= 2).all()
    assert all(len(_jpegs(label / c)) == n for c, n in zip(index["clip_id"], index["n_frames"],
                                                             strict=True))


# ================================================================== task runners
def _batch_runs(api_url: str) -> int:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    with get_client(sync_client=True) as client:
        assert str(client.api_url).rstrip("/") == api_url
        runs = client.read_task_runs(task_run_filter=TaskRunFilter(
            name=TaskRunFilterName(like_="kinetics-frames-batch")), limit=200)
    return sum(run.state is not None and run.state.is_completed() for run in runs)


def test_dask_cluster_of_two_workers_gives_the_same_index_as_threads(
        tmp_path, portrait_clip, prefect_api):
    from tasks.config import CommonSettings
    from tasks.parallel import batch_size_for, batched

    prefect_server = prefect_api

    ids = [f"synth{i:06d}_000000_000003" for i in range(6)]
    clips = tmp_path / "clips"
    _place_clips(clips, ids, src=portrait_clip)
    manifest = _manifest(ids)
    settings = KineticsFrames(fps=5, short_side=64, workers=2, batch_size=2)
    indexes, before = {}, _batch_runs(prefect_server)
    for runner in ("threads", "dask"):
        frames = tmp_path / runner / "frames"
        counts = extract_all(manifest, clips, frames, settings,
                             Ledger(tmp_path / runner / "ledger.parquet"),
                             CommonSettings(task_runner=runner))
        assert counts["extracted"] == 6 and counts["failed"] == 0
        indexes[runner] = build_index(manifest, frames, "jpeg", tmp_path / runner)
        after = _batch_runs(prefect_server)
        expected = len(batched(ids, batch_size_for(len(ids), 2, 2)))  # 6: few clips, 2 workers
        assert after - before == expected, f"{runner}: one task run per mapped batch"
        before = after
    pd.testing.assert_frame_equal(indexes["threads"], indexes["dask"])
    assert len(indexes["dask"]) == 6 and (indexes["dask"]["n_frames"] == 15).all()
    for clip_id in ids:
        a, b = (_jpegs(tmp_path / r / "frames" / "arm_wrestling" / clip_id)
                for r in ("threads", "dask"))
        assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
