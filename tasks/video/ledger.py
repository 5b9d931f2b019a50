"""The failure ledger: which clips failed at which stage, why, how often, and whether for good.

One parquet file with LEDGER_COLUMNS, one row per (clip_id, stage). Downloads run in threads, so
every method takes a lock; `save()` writes atomically (a reader never sees half a file), and
`save_changes()` writes only when something changed since the last load or save (a stage saves
after every batch, and a batch that fails nothing changes nothing).
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

import pandas as pd

from tasks.errors import DataError
from tasks.storage import write_parquet

LEDGER_COLUMNS = ["clip_id", "stage", "reason", "permanent", "attempts", "last_try"]
STAGES = ("download", "frames")
_TIME_DTYPE = "datetime64[us, UTC]"


def empty_ledger() -> pd.DataFrame:
    """A ledger frame with no rows and the contract's columns and dtypes."""
    return pd.DataFrame({
        "clip_id": pd.Series(dtype="str"), "stage": pd.Series(dtype="str"),
        "reason": pd.Series(dtype="str"), "permanent": pd.Series(dtype="bool"),
        "attempts": pd.Series(dtype="int64"), "last_try": pd.Series(dtype=_TIME_DTYPE),
    })


class Ledger:
    """Failures per (clip_id, stage); loads `path` on creation if it exists."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._rows: dict[tuple[str, str], dict] = {}
        self._changed = False
        self.load()

    def load(self) -> Ledger:
        """(Re)read the file; a missing file gives an empty ledger."""
        rows: dict[tuple[str, str], dict] = {}
        if self.path.exists():
            try:
                frame = pd.read_parquet(self.path)
            except Exception as exc:  # pyarrow raises several types for a damaged file
                raise DataError(f"unreadable ledger ({exc})", path=self.path) from exc
            missing = [c for c in LEDGER_COLUMNS if c not in frame.columns]
            if missing:
                raise DataError(f"ledger lacks columns {missing}", path=self.path)
            frame["last_try"] = pd.to_datetime(frame["last_try"], utc=True).astype(_TIME_DTYPE)
            for rec in frame[LEDGER_COLUMNS].to_dict("records"):
                rec = {"clip_id": str(rec["clip_id"]), "stage": str(rec["stage"]),
                       "reason": str(rec["reason"]), "permanent": bool(rec["permanent"]),
                       "attempts": int(rec["attempts"]), "last_try": rec["last_try"]}
                rows[(rec["clip_id"], rec["stage"])] = rec
        with self._lock:
            self._rows, self._changed = rows, False
        return self

    def record(self, clip_id: str, stage: str, reason: str, permanent: bool) -> int:
        """Note a failure (attempts + 1, latest reason and permanence win); returns attempts."""
        _check_stage(stage)
        now = pd.Timestamp.now(tz="UTC")
        with self._lock:
            old = self._rows.get((clip_id, stage))
            attempts = (old["attempts"] if old else 0) + 1
            self._rows[(clip_id, stage)] = {
                "clip_id": str(clip_id), "stage": stage, "reason": str(reason),
                "permanent": bool(permanent), "attempts": attempts, "last_try": now}
            self._changed = True
        return attempts

    def clear(self, clip_id: str, stage: str) -> None:
        """Forget the failure of a clip at a stage (it has since succeeded)."""
        with self._lock:
            if self._rows.pop((clip_id, stage), None) is not None:
                self._changed = True

    def failed(self, stage: str) -> set[str]:
        """Clip ids that failed for good at `stage`."""
        _check_stage(stage)
        with self._lock:
            return {cid for (cid, st), rec in self._rows.items() if st == stage and rec["permanent"]}

    def attempts(self, clip_id: str, stage: str) -> int:
        """How many failures were recorded for a clip at a stage (0 if none)."""
        with self._lock:
            rec = self._rows.get((clip_id, stage))
            return rec["attempts"] if rec else 0

    def by_reason(self, stage: str) -> dict[str, dict[str, int]]:
        """{reason: {"clips": n, "permanent": m}} of the failures at `stage` (the data report)."""
        _check_stage(stage)
        out: dict[str, dict[str, int]] = {}
        with self._lock:
            for (_, st), rec in sorted(self._rows.items()):
                if st == stage:
                    row = out.setdefault(rec["reason"], {"clips": 0, "permanent": 0})
                    row["clips"] += 1
                    row["permanent"] += int(rec["permanent"])
        return out

    def save(self) -> Path:
        """Write the ledger atomically."""
        with self._lock:
            path = write_parquet(self._frame_unlocked(), self.path)
            self._changed = False
            return path

    def save_changes(self) -> bool:
        """Write the ledger atomically if it changed since the last load or save; True if so."""
        with self._lock:
            if not self._changed:
                return False
        self.save()
        return True

    @property
    def frame(self) -> pd.DataFrame:
        """A copy of the ledger as a DataFrame with LEDGER_COLUMNS."""
        with self._lock:
            return self._frame_unlocked()

    def __len__(self) -> int:
        with self._lock:
            return len(self._rows)

    def _frame_unlocked(self) -> pd.DataFrame:
        if not self._rows:
            return empty_ledger()
        frame = pd.DataFrame(list(self._rows.values()), columns=LEDGER_COLUMNS)
        return frame.astype({"clip_id": "str", "stage": "str", "reason": "str",
                             "permanent": "bool", "attempts": "int64", "last_try": _TIME_DTYPE})


def _check_stage(stage: str) -> None:
    if stage not in STAGES:
        raise ValueError(f"ledger stage must be one of {STAGES}, got {stage!r}")
