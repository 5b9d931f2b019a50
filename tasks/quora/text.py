"""Question text to tokens, a frequency-ordered vocabulary, and padded token ids."""
from __future__ import annotations

import gc
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from itertools import chain

import numpy as np
import pandas as pd

PAD_ID = 0
UNKNOWN_ID = 1
FIRST_WORD_ID = 2

# A run of letters or digits (any script, no underscore) with apostrophes kept inside, so
# "don't" stays one word and quotes around a word are dropped; a trailing ".5" or ",000" of
# digits stays on, so "3.5" and "1,000" are one token. A typographic apostrophe is read as a
# plain one: "don’t" and "don't" are the same word.
TOKEN_PATTERN = re.compile(r"[^\W_]+(?:'[^\W_]+)*(?:[.,]\d+)*")


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic collector for a block, then leave it as it was: for code that builds or
    holds hundreds of thousands of lists of strings (they cannot form cycles).

    Every collection while such lists live traverses them; a block that frees them before it
    ends spares all of it.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def tokenize(texts: Iterable[str]) -> list[list[str]]:
    """Lowercase words and numbers of each text, one regex pass per text."""
    findall = TOKEN_PATTERN.findall
    # Building 100k+ lists with the collector on costs about a third more; a caller that keeps
    # them for long pauses it for their whole life (the embed stage does).
    with gc_paused():
        return [findall(text.lower().replace("\u2019", "'")) for text in texts]


def flatten(token_lists: Sequence[Sequence[str]]) -> tuple[np.ndarray, np.ndarray]:
    """(lengths int64 (N,), every token in order as one object array) for vectorised lookups."""
    lengths = np.fromiter(map(len, token_lists), dtype=np.int64, count=len(token_lists))
    flat = np.fromiter(chain.from_iterable(token_lists), dtype=object, count=int(lengths.sum()))
    return lengths, flat


def build_vocab(token_lists: Iterable[Sequence[str]], max_size: int,
                min_count: int = 1) -> list[str]:
    """The `max_size` most frequent words seen at least `min_count` times; ties alphabetical."""
    counts = Counter(chain.from_iterable(token_lists))
    kept = sorted((item for item in counts.items() if item[1] >= min_count),
                  key=lambda item: (-item[1], item[0]))
    return [word for word, _ in kept[:max_size]]


def token_ids(token_lists: Sequence[Sequence[str]], vocab: list[str],
              max_tokens: int) -> np.ndarray:
    """int32 (N, max_tokens): vocab word i -> i + 2, unknown -> 1, padding -> 0; longer lists
    are cut at max_tokens."""
    lengths, flat = flatten(token_lists)
    # One hashed lookup of every token in C; -1 (not in vocab) becomes UNKNOWN_ID.
    ids = pd.Index(vocab, dtype=object).get_indexer(flat) + FIRST_WORD_ID
    ids[ids < FIRST_WORD_ID] = UNKNOWN_ID
    rows = np.repeat(np.arange(len(token_lists)), lengths)
    starts = np.cumsum(lengths) - lengths
    positions = np.arange(len(flat)) - np.repeat(starts, lengths)
    keep = positions < max_tokens
    out = np.full((len(token_lists), max_tokens), PAD_ID, dtype=np.int32)
    out[rows[keep], positions[keep]] = ids[keep]
    return out
