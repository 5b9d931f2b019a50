"""The README's fresh clone: `make demo` run there from a plain shell, shared by the end-to-end
DVC checks (test_dvc_repro.py, which leave it as they found it) and the README walk
(test_readme.py, which goes on from there)."""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tasks.config import save_overrides
from tests.conftest import VENV_BIN, dotted
from tests.flows.readme import Shell, plain_env
from tests.flows.repo_copy import SMALL, copy_repo

CSV = "path/to/BTCUSDT-1h.csv"  # the README's placeholder, filled with a real-format file


@dataclass(frozen=True)
class Clone:
    path: Path
    shell: Shell
    tag: str          # every flow run of its `make demo` carries it (on the session's server)
    reads: Path       # the params keys each stage read during `make demo` (JSON lines)


def binance_export(dest: Path, n: int = 4000) -> None:
    """An hourly kline dump as data.binance.vision ships it (no header, ms epochs, 12
    columns), of a random walk."""
    rng = np.random.default_rng(7)
    close = 30000 * np.exp(np.cumsum(rng.normal(0, 0.004, n)))
    open_ = np.concatenate([[close[0]], close[:-1]])
    high = np.maximum(open_, close) * (1 + rng.uniform(0, 0.002, n))
    low = np.minimum(open_, close) * (1 - rng.uniform(0, 0.002, n))
    volume = rng.lognormal(3, 0.5, n)
    start = 1_672_531_200_000  # 2023-01-01 UTC
    rows = [f"{start + i * 3_600_000},{open_[i]:.2f},{high[i]:.2f},{low[i]:.2f},{close[i]:.2f},"
            f"{volume[i]:.5f},{start + (i + 1) * 3_600_000 - 1},{volume[i] * close[i]:.4f},"
            f"{100 + i % 50},{volume[i] / 2:.5f},{volume[i] * close[i] / 2:.4f},0"
            for i in range(n)]
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text("\n".join(rows) + "\n")


@pytest.fixture(scope="session")
def readme_clone(tmp_path_factory, prefect_server) -> Clone:
    """A fresh clone with CPU-small params committed and the test's venv linked in as its
    `.venv` (the Makefile finds it installed: same lock and project), then the README's first
    command, `make demo`, from a plain shell (its runs go to the session's Prefect server)."""
    root = tmp_path_factory.mktemp("readme")
    clone = copy_repo(root / "clone")
    save_overrides(clone / "params.yaml", dotted(SMALL))
    home = root / "home"
    home.mkdir()
    git = {"GIT_AUTHOR_NAME": "newcomer", "GIT_AUTHOR_EMAIL": "newcomer@example.org",
           "GIT_COMMITTER_NAME": "newcomer", "GIT_COMMITTER_EMAIL": "newcomer@example.org"}
    shell = Shell(clone, plain_env(home, PREFECT_WORKER_QUERY_SECONDS="2", **git),
                  root / "readme.log")
    shell.run("git commit -qam 'CPU-small params'")
    (clone / ".venv").symlink_to(VENV_BIN.parent)
    # never let `make` reinstall into the test's own venv from the clone
    assert shell.run("make -q venv", check=False).returncode == 0, \
        "the test venv is not up to date with pylock.toml / pyproject.toml: run `make venv`"
    binance_export(clone / CSV)
    tag, reads = f"test-{uuid.uuid4().hex}", root / "params-read.jsonl"
    shell.run("make demo", PREFECT_API_URL=prefect_server, REPROLAB_RUN_TAGS=tag,
              REPROLAB_PARAMS_READ=str(reads))
    return Clone(clone, shell, tag, reads)
