"""Progress bars for long work: shown on a terminal, silent in logs (where log lines say it)."""
from __future__ import annotations

from tqdm.auto import tqdm


def progress_bar(total: int, desc: str, unit: str = "clip") -> tqdm:
    """A tqdm bar on stderr; disabled when stderr is not a terminal (CI, DVC, Prefect workers)."""
    return tqdm(total=total, desc=desc, unit=unit, disable=None, dynamic_ncols=True, leave=True)
