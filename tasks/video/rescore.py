"""kinetics's rows for the nightly's comparison (tasks/rescore.py): tonight's test clips of
kinetics_split as the clip files kinetics_download stored, which the registered pyfunc
(tasks.video.serving) reads; its rank-1 class is the prediction (top-1, as evaluate scores)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tasks.config import Params
from tasks.errors import DataError
from tasks.rescore import Predictions, Rows, digest
from tasks.storage import read_json, read_parquet
from tasks.video.download import clip_path
from tasks.video.paths import KineticsPaths
from tasks.video.splits import read_splits


def class_names(class_index: np.ndarray, classes: list[str], path: Path) -> np.ndarray:
    """The class name of each index, as evaluate's classes file names them."""
    bad = np.flatnonzero((class_index < 0) | (class_index >= len(classes)))
    if len(bad):
        raise DataError(f"test clip has class index {class_index[bad[0]]}, outside the "
                        f"{len(classes)} classes", path=path, row=int(bad[0]),
                        field="class_index")
    return np.asarray(classes, dtype=object)[class_index]


def clip_files(test: pd.DataFrame, paths: KineticsPaths) -> list[str]:
    """The source file of each test clip (clips/label_dir/clip_id.mp4, by the manifest)."""
    manifest = read_parquet(paths.manifest / "manifest.parquet", columns=["clip_id", "label_dir"])
    label_dir = manifest.set_index("clip_id")["label_dir"]
    files = []
    for i, clip_id in enumerate(test["clip_id"].astype(str)):
        if clip_id not in label_dir.index:
            raise DataError(f"test clip {clip_id} is not in the manifest",
                            path=paths.manifest / "manifest.parquet", row=i, field="clip_id")
        file = clip_path({"clip_id": clip_id, "label_dir": label_dir[clip_id]}, paths.clips)
        if not file.is_file():
            raise DataError(f"test clip {clip_id} has no clip file", path=file, row=i)
        files.append(str(file.resolve()))
    return files


def rows(params: Params, root: Path = Path(".")) -> Rows:
    """Tonight's test clips (kinetics_split's, as evaluate reads them) and their class names."""
    paths = KineticsPaths(root)
    test = read_splits(paths.split).test
    if test.empty:
        raise DataError("no test clips", path=paths.split, field="part")
    classes_file = paths.manifest / "classes.json"
    labels = class_names(test["class_index"].to_numpy(), read_json(classes_file), classes_file)
    return Rows(kind="top1", test_labels=labels,
                inputs=pd.DataFrame({"path": clip_files(test, paths)}),
                digest=digest(test["clip_id"].astype(str), labels))


def predict(model: Any, rows: Rows) -> Predictions:
    """The pyfunc's rank-1 class name of each test clip, from one call on the clip files."""
    clips: pd.DataFrame = rows.inputs
    out = model.predict(clips)
    best = out[out["rank"] == 1].drop_duplicates("path").set_index("path")["label"]
    found = best.reindex(clips["path"].astype(str)).to_numpy()
    missing = np.flatnonzero(pd.isna(found))
    if len(missing):
        raise DataError("no prediction for the test clip", path=clips["path"].iloc[missing[0]],
                        row=int(missing[0]), field="path")
    return Predictions(test=found.astype(str))
