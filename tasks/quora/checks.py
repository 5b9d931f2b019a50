"""The rows the night's data checks read (tasks/datachecks.py): every pair quora_ingest kept, with
the question lengths and word overlap of the text the clean stage hands on.

Ingest already quarantines records it cannot parse (quoting, field count), non-integer ids and
an is_duplicate other than 0/1. It keeps missing questions: the clean stage drops them and those
shorter than quora.clean.min_chars (counted). Here a missing question counts as an empty one,
and `usable` (1 when clean keeps the pair) drifts when a night brings many unusable pairs.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tasks.datachecks import Column, Table
from tasks.quora.clean import normalise
from tasks.quora.paths import QuoraPaths
from tasks.quora.text import tokenize
from tasks.storage import read_parquet

LABEL = "is_duplicate"
COLUMNS = (
    Column("question1_chars", low=0.0), Column("question2_chars", low=0.0),
    Column("question1_words", low=0.0), Column("question2_words", low=0.0),
    Column("word_overlap", low=0.0, high=1.0),  # Jaccard of the two lowercased word sets
    Column("usable", low=0.0, high=1.0),
    Column(LABEL, low=0.0, high=1.0, drift=False),  # its balance is the label check's
)


def table(params, root: Path = Path(".")) -> Table:
    """Every ingested pair (data/quora/raw/pairs.parquet); key the pair id; label is_duplicate."""
    pairs = read_parquet(QuoraPaths(Path(root)).raw / "pairs.parquet")
    return pair_table(pairs, params.quora.clean.min_chars)


def pair_table(pairs: pd.DataFrame, min_chars: int) -> Table:
    """The checks' table of a pair frame (ingest's PAIR_COLUMNS)."""
    texts = {side: normalise(pairs[side]).fillna("") for side in ("question1", "question2")}
    words = {side: tokenize(text) for side, text in texts.items()}
    chars = {side: text.str.len().to_numpy(dtype="int64") for side, text in texts.items()}
    shortest = max(min_chars, 1)  # clean drops an empty question whatever min_chars says
    frame = pd.DataFrame({
        "id": pairs["id"],
        **{f"{side}_chars": chars[side] for side in texts},
        **{f"{side}_words": np.array([len(w) for w in words[side]], dtype="int64")
           for side in texts},
        "word_overlap": [_jaccard(a, b) for a, b in
                         zip(words["question1"], words["question2"], strict=True)],
        "usable": ((chars["question1"] >= shortest)
                   & (chars["question2"] >= shortest)).astype("int64"),
        LABEL: pairs[LABEL],
    })
    return Table(frame, COLUMNS, LABEL, "id")


def _jaccard(first: list[str], second: list[str]) -> float:
    """Shared words over all words of the two questions; 0 when both are empty."""
    a, b = set(first), set(second)
    return len(a & b) / len(a | b) if a or b else 0.0
