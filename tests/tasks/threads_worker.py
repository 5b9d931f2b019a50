"""Run by test_distributed.py under torchrun (2 CPU processes, gloo); not a test itself.

    python -m torch.distributed.run --nproc-per-node 2 --standalone threads_worker.py OUT_DIR

Each rank joins the process group and writes the threads it was given to OUT_DIR/rank{r}.json.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tasks.distributed import cleanup, init_distributed  # noqa: E402
from tasks.threads import BUDGET_VAR, THREAD_VARS  # noqa: E402


def main(out: Path) -> None:
    info = init_distributed("cpu")
    try:
        seen = {"threads": torch.get_num_threads(),
                "env": {name: os.environ.get(name) for name in (BUDGET_VAR, *THREAD_VARS)}}
        (out / f"rank{info.rank}.json").write_text(json.dumps(seen))
    finally:
        cleanup()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
