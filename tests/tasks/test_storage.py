"""The one atomic writer: a reader sees the old file or the new one, never half of one, and
what it writes is a plain readable file (not the private mode of a temp file)."""
import stat

import pytest

from tasks.storage import atomic_dir, read_json, write_json, write_torch


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    dest = write_json({"v": 1}, tmp_path / "a.json")
    with pytest.raises(TypeError):
        write_json({"v": object()}, dest)
    assert read_json(dest) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_written_files_and_folders_are_readable_by_others(tmp_path):
    dest = write_json({"v": 1}, tmp_path / "a.json")
    assert stat.S_IMODE(dest.stat().st_mode) == 0o644
    with atomic_dir(tmp_path / "site") as tmp:
        (tmp / "index.html").write_text("x")
    assert stat.S_IMODE((tmp_path / "site").stat().st_mode) == 0o755


def test_a_failed_folder_write_keeps_the_old_folder(tmp_path):
    with atomic_dir(tmp_path / "site") as tmp:
        (tmp / "old.html").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "site") as tmp:
        (tmp / "new.html").write_text("new")
        raise RuntimeError("half way")
    assert [p.name for p in (tmp_path / "site").iterdir()] == ["old.html"]
    assert [p.name for p in tmp_path.iterdir()] == ["site"]


def test_saved_tensors_are_the_same_bytes_wherever_they_are_written(tmp_path):
    """A forced rerun that computes the same weights must leave the same bytes (DVC compares
    hashes): torch.save to a path would name the archive after the temporary file."""
    import torch

    weights = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.zeros(2)}
    first = write_torch(weights, tmp_path / "a" / "model.pt").read_bytes()
    second = write_torch(dict(weights), tmp_path / "b" / "other.pt").read_bytes()
    assert first == second
    assert torch.equal(torch.load(tmp_path / "b" / "other.pt", weights_only=True)["w"],
                       weights["w"])
