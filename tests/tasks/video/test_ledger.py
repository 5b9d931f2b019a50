"""The failure ledger: atomic saves, and saves only of what changed."""
from __future__ import annotations

import pandas as pd

from tasks.video.ledger import Ledger


def test_save_changes_writes_only_what_changed(tmp_path):
    path = tmp_path / "ledger.parquet"
    ledger = Ledger(path)
    assert not ledger.save_changes() and not path.exists()  # nothing to write
    ledger.clear("a", "frames")  # clearing what was never there changes nothing
    assert not ledger.save_changes() and not path.exists()

    ledger.record("a", "frames", "bad", permanent=True)
    assert ledger.save_changes() and Ledger(path).failed("frames") == {"a"}
    before = path.stat().st_mtime_ns
    assert not ledger.save_changes() and path.stat().st_mtime_ns == before

    ledger.clear("a", "frames")
    assert ledger.save_changes() and len(Ledger(path)) == 0
    assert list(tmp_path.iterdir()) == [path]  # no temp file left beside it


def test_load_and_save_leave_nothing_to_save(tmp_path):
    path = tmp_path / "ledger.parquet"
    ledger = Ledger(path)
    ledger.record("a", "download", "404", permanent=True)
    ledger.save()
    assert not ledger.save_changes()
    ledger.record("b", "download", "timeout", permanent=False)
    ledger.load()  # back to what is on disk: b was never saved
    assert not ledger.save_changes() and set(ledger.frame["clip_id"]) == {"a"}
    saved = pd.read_parquet(path)
    assert saved["clip_id"].tolist() == ["a"] and saved["attempts"].tolist() == [1]
