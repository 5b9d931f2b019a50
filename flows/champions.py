"""The champion alias by hand: its history, a promotion, a rollback (`reprolab champion`,
`reprolab promote`, `reprolab rollback`).

A move by hand is recorded as the nightly records its verdicts: a span on the version in the
registry (tasks/champion.py), a record in reports/nightly/nights/ and the exported history in
reports/nightly/champions/, and the report site is rebuilt to show it.
"""
from __future__ import annotations

from typing import Any

from flows.common import checkout_lock, settings
from flows.nightly import REPORT_DIR, export_history
from tasks import champion, tracking
from tasks.pipeline import declaration
from tasks.storage import write_json


def _client(params: Any) -> Any:
    tracking.configure(params.common)
    return champion.client()


def age(since: str, until: str | None = None) -> str:
    """'3d 4h' from one UTC time to another (until: now)."""
    from tasks.champion import now
    from tasks.site import duration

    return duration(since, until or now())


def history_text(pipeline: str) -> str:
    """The alias's history, one line a span, newest last, and the current champion."""
    spec = declaration(pipeline)
    mlflow_client = _client(settings())
    spans = champion.history(mlflow_client, spec.model_name)
    if not spans:
        return f"{spec.model_name}: no champion yet"
    lines = [f"{spec.model_name}: champion history (oldest first)",
             f"  {'version':<8} {'from':<21} {'until':<21} {'held':<8} {'by':<8} why"]
    for span in spans:
        until = span["until"] or "now"
        lines.append(f"  v{span['version']:<7} {span['from']:<21} {until:<21} "
                     f"{age(span['from'], span['until']):<8} {span['by']:<8} {span['why']}")
        if span.get("ended"):
            lines.append(f"  {'':<8} ended: {span['ended']}")
    current = champion.champion_version(mlflow_client, spec.model_name)
    if current is not None:
        lines.append(f"champion now: v{current.version}")
    return "\n".join(lines)


def move(pipeline: str, version: str | None, reason: str) -> champion.Verdict:
    """Promote `version` (None: roll back to the previous champion) and record it."""
    from flows.report import refresh_site

    spec = declaration(pipeline)
    with checkout_lock(f"{'promote' if version else 'rollback'} {pipeline}"):
        mlflow_client = _client(settings())
        verdict = (champion.promote(mlflow_client, spec.model_name, version, reason)
                   if version else champion.rollback(mlflow_client, spec.model_name, reason))
        record(pipeline, verdict)
        export_history(spec)
        refresh_site()
    return verdict


def record(pipeline: str, verdict: champion.Verdict) -> None:
    """The move as a night record (by a person), which the report site lists."""
    entry = {"night": verdict.at, "by": verdict.by,
             "pipelines": [{"pipeline": pipeline, "verdict": verdict.as_dict()}]}
    name = f"{verdict.at.replace(':', '-')}-{pipeline}-v{verdict.challenger}-by-hand.json"
    write_json(entry, REPORT_DIR / "nights" / name)
