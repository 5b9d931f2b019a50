"""quora's rows for the nightly's comparison (tasks/rescore.py): tonight's dev and test pairs
of data/quora/split as the question text the registered pyfunc (tasks.quora.serving) reads."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tasks.config import Params
from tasks.errors import DataError
from tasks.quora.paths import QuoraPaths
from tasks.quora.serving import QUESTIONS
from tasks.rescore import Predictions, Rows, digest
from tasks.storage import read_parquet

SPLITS = ("dev", "test")  # evaluate chooses the threshold on dev


def rows(params: Params, root: Path = Path(".")) -> Rows:
    """Tonight's dev and test pairs (the split stage's text: the clean stage's normalisation,
    which the pyfunc applies again and leaves as it is), dev first."""
    path = QuoraPaths(root).split / "pairs.parquet"
    pairs = read_parquet(path, columns=["id", *QUESTIONS, "is_duplicate", "split"])
    parts = {name: pairs[pairs["split"] == name].reset_index(drop=True) for name in SPLITS}
    for name, part in parts.items():
        if part.empty:
            raise DataError(f"no {name} pairs", path=path, field="split")
    dev, test = parts["dev"], parts["test"]
    labels = test["is_duplicate"].to_numpy().astype(np.int64)
    return Rows(kind="binary", test_labels=labels,
                inputs=pd.concat([dev, test], ignore_index=True)[["split", *QUESTIONS]],
                digest=digest(test["id"], test["question1"], test["question2"], labels),
                dev_labels=dev["is_duplicate"].to_numpy().astype(np.int64))


def predict(model: Any, rows: Rows) -> Predictions:
    """The pyfunc's P(duplicate) for the dev and the test pairs, from one call."""
    pairs: pd.DataFrame = rows.inputs
    out = model.predict(pairs[list(QUESTIONS)])
    p = out["p_duplicate"].to_numpy(dtype=np.float64)
    if len(p) != len(pairs):
        raise DataError(f"{len(p)} probabilities for {len(pairs)} pairs", field="p_duplicate")
    split = pairs["split"].to_numpy()
    return Predictions(test=p[split == "test"], dev=p[split == "dev"])
