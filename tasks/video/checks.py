"""The rows the night's data checks read (tasks/datachecks.py): every manifest clip that
kinetics_download has on disk, with its annotated duration and the size of its file.

The manifest already rejects rows with a bad youtube_id, a time that is not a finite number, a
negative start, start >= end, an unknown split, a missing or unknown label and duplicate clip ids;
a download lands only after it probes as a video of the annotated length (failures go to the
ledger, and such clips are not here). What gets past that (an edited manifest, a file emptied or
replaced later, a different encoding) shows here as a duration or size out of range, or as drift.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tasks.datachecks import POSITIVE, Column, Table
from tasks.storage import read_parquet
from tasks.video.download import clip_path
from tasks.video.paths import KineticsPaths

MAX_CLIP_SECONDS = 60.0  # Kinetics sections are 10 s; anything past a minute is not a clip
COLUMNS = (
    Column("duration", low=POSITIVE, high=MAX_CLIP_SECONDS),  # time_end - time_start
    Column("file_bytes", low=1.0, drift=False),
    Column("kbit_per_s", low=POSITIVE),  # file size over duration: the encoding the model sees
)


def table(params, root: Path = Path(".")) -> Table:
    """Clips of data/kinetics/manifest that are in data/kinetics/clips; key clip_id (youtube id,
    start and end); label the class name (none for unlabelled test clips)."""
    paths = KineticsPaths(Path(root))
    manifest = read_parquet(paths.manifest / "manifest.parquet")
    return clip_table(manifest, paths.clips)


def clip_table(manifest: pd.DataFrame, clips_dir: Path) -> Table:
    """The checks' table of the manifest rows whose clip file exists under `clips_dir`."""
    sizes = np.array([_size(clip_path(row, clips_dir)) for row in
                      manifest[["clip_id", "label_dir"]].to_dict("records")], dtype="float64")
    present = ~np.isnan(sizes)
    clips = manifest[present].reset_index(drop=True)
    duration = (clips["time_end"] - clips["time_start"]).astype("float64")
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = sizes[present] * 8 / 1000 / duration.to_numpy()
    frame = pd.DataFrame({
        "clip_id": clips["clip_id"], "duration": duration, "file_bytes": sizes[present],
        "kbit_per_s": rate, "label": clips["label"].where(clips["label"] != "", None),
    })
    return Table(frame, COLUMNS, "label", "clip_id")


def _size(path: Path) -> float:
    """The file's size in bytes, NaN when there is no file."""
    try:
        return float(path.stat().st_size)
    except FileNotFoundError:
        return float("nan")
