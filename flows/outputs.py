"""A failed run loses nothing.

DVC removes a stage's outputs before it runs the stage. When the stage fails, its outputs are
put back from the DVC cache as dvc.lock still describes them (the version before this run), so
results a user had stay, and `dvc status` says honestly that the stage is stale:
- by the stage process itself, when DVC ran it (`dvc repro` typed by hand included): it knows
  from DVC_STAGE and restores before it exits;
- by whatever drove DVC (`flows.common`), after a stage that could not (killed, out of memory).

An output that persists across runs (`persist: true`: the incremental stores, which keep what a
failed run fetched so the rerun resumes) is left as it is, except when a run with overrides is
rolled back whole. The stage's own error line is kept in `.dvc/tmp/reprolab/` for the driver,
whose error then names the stage and that line, not only DVC's "failed to reproduce".
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from tasks.logs import get_logger

FAILURES = Path(".dvc/tmp/reprolab")


def restore_outputs(stages: Iterable[str], persist: bool = False, root: str = ".") -> list[str]:
    """Put the outputs of `stages` back as dvc.lock records them, where they differ (missing
    or changed); `persist` outputs too only when asked. Returns the outputs restored."""
    from dvc.repo import Repo

    restored = []
    repo = Repo(root)  # no lock taken: the `dvc repro` that ran the stage holds it
    try:
        for name in stages:
            stage = repo.stage.load_one(name=name)
            for out in stage.outs:
                if (out.persist and not persist) or not out.hash_info or not out.use_cache:
                    continue
                if out.changed():
                    out.checkout(force=True)
                    restored.append(str(out))
    finally:
        repo.close()
    if restored:
        get_logger().warning("restored from the DVC cache, as dvc.lock records them: %s",
                             ", ".join(restored))
    return restored


def put_back(stages: list[str], persist: bool = False, root: str = ".") -> bool:
    """restore_outputs, never hiding the failure being handled: one that cannot be done (an
    output never cached) is logged, and `dvc status` says what is left."""
    try:
        restore_outputs(stages, persist=persist, root=root)
    except Exception as exc:  # noqa: BLE001 - the run's own error is the one to raise
        get_logger().error("could not put back the outputs of %s: %s", ", ".join(stages), exc)
        return False
    return True


def dvc_stage() -> str | None:
    """The DVC stage this process runs as (DVC sets DVC_STAGE for a stage's command)."""
    return os.environ.get("DVC_STAGE") or None


def record_failure(stage: str, error: str) -> None:
    """Keep the stage's own error line for the process that drove DVC."""
    root = Path(os.environ.get("DVC_ROOT", "."))
    folder = root / FAILURES
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stage}.json").write_text(json.dumps({"stage": stage, "error": error}))


def take_failure(stage: str) -> str | None:
    """The error line a failed stage recorded (read once), or None."""
    path = FAILURES / f"{stage}.json"
    try:
        error = json.loads(path.read_text())["error"]
    except (OSError, ValueError, KeyError):
        return None
    path.unlink(missing_ok=True)
    return error


def fail_as_stage(stage: str, error: str) -> None:
    """In a stage DVC runs: put the stage's outputs back and keep its error line."""
    if dvc_stage() != stage:
        return
    record_failure(stage, error)
    put_back([stage], root=os.environ.get("DVC_ROOT", "."))
