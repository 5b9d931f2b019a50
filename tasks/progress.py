"""Progress of long work: a bar on a terminal, a Prefect progress artifact inside a flow run.

The bar is tqdm on stderr, disabled when stderr is not a terminal (CI, DVC, Prefect workers:
there log lines say how far the work is). Inside a Prefect flow or task run the same progress
goes to a progress artifact (0-100, shown on the run's page), updated at most every `every`
seconds and once at the end, so reporting costs nothing measurable. Outside Prefect nothing is
created and Prefect is not even imported.
"""
from __future__ import annotations

import re
import sys
import time
from types import TracebackType
from typing import Any
from uuid import UUID

from tqdm.auto import tqdm

from tasks.logs import get_logger

REPORT_EVERY_S = 5.0


def prefect_run_name() -> str | None:
    """The name of the Prefect flow (or task) this code runs in; None outside a run."""
    context = sys.modules.get("prefect.context")
    if context is None:  # Prefect was never imported: there can be no run
        return None
    flow_run = context.FlowRunContext.get()
    if flow_run is not None:
        return flow_run.flow.name
    task_run = context.TaskRunContext.get()
    return task_run.task.name if task_run is not None else None


def artifact_key(run_name: str, desc: str) -> str:
    """A Prefect artifact key (lowercase letters, digits, dashes): the run's name, then the
    words of `desc` it does not hold yet ("kinetics_frames" + "kinetics frames": kinetics-frames)."""
    words: list[str] = []
    for word in re.split(r"[^a-z0-9]+", f"{run_name} {desc}".lower()):
        if word and word not in words:
            words.append(word)
    return "-".join(words) or "progress"


class Progress:
    """`total` units of work: `update(n, **postfix)` moves the bar (the postfix shows beside it,
    e.g. loss) and, inside a Prefect run, the progress artifact. Use it as a context manager:
    leaving without an error reports 100 % (the work is done, even when it stopped early, as
    training does), leaving on an error reports how far it got."""

    def __init__(self, total: int, desc: str, unit: str = "clip", initial: int = 0,
                 quiet: bool = False, every: float = REPORT_EVERY_S) -> None:
        self.total, self.done, self.desc, self.unit = total, initial, desc, unit
        self.postfix: dict[str, Any] = {}
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit,
                        disable=True if quiet else None, dynamic_ncols=True, leave=True)
        self.every = every
        self.artifact: UUID | None = None
        self.last_report = -float("inf")
        run_name = None if quiet else prefect_run_name()
        if run_name is not None:
            self.key = artifact_key(run_name, desc)
            self._report(self.percent(), create=True)

    def percent(self) -> float:
        return min(100.0, 100.0 * self.done / self.total) if self.total > 0 else 100.0

    def update(self, n: int = 1, **postfix: Any) -> None:
        """`n` more units done; `postfix` values (loss=0.41) replace the shown ones."""
        if postfix:
            self.postfix.update(postfix)
            self.bar.set_postfix(self.postfix, refresh=False)
        self.done += n
        self.bar.update(n)
        if self.artifact is not None and time.monotonic() - self.last_report >= self.every:
            self._report(self.percent())

    def description(self) -> str:
        shown = ", ".join(f"{k} {_short(v)}" for k, v in self.postfix.items())
        return f"{self.desc}: {self.unit} {self.done}/{self.total}" + (f" ({shown})" if shown
                                                                        else "")

    def _report(self, percent: float, create: bool = False) -> None:
        """Create or update the artifact. A failing Prefect API stops the reporting (logged),
        never the work."""
        from prefect.artifacts import create_progress_artifact, update_progress_artifact

        self.last_report = time.monotonic()
        try:
            if create:
                self.artifact = create_progress_artifact(percent, key=self.key,
                                                         description=self.description())
            elif self.artifact is not None:
                update_progress_artifact(self.artifact, percent, description=self.description())
        except Exception as exc:  # the API is down or refuses: the work goes on without it
            get_logger().warning("progress artifact %s: not reported (%s)", self.key, exc)
            self.artifact = None

    def close(self, finished: bool = True) -> None:
        self.bar.close()
        if self.artifact is not None:
            self._report(100.0 if finished else self.percent())
            self.artifact = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close(finished=kind is None)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def progress_bar(total: int, desc: str, unit: str = "clip") -> Progress:
    """Progress over `total` units: a bar on a terminal, an artifact in a Prefect run."""
    return Progress(total, desc, unit)
