"""`reprolab status`: per pipeline, which stages are stale or never ran (DVC), the champion in
the MLflow registry with its headline metric, and the last nightly run's verdict.

It says plainly what it cannot know here: not a DVC repo, no params.yaml, no MLflow store yet,
no nightly run yet. It only reads: no MLflow store is created, nothing is reproduced.
"""
from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from tasks.errors import ReproLabError
from tasks.pipeline import Pipeline, declarations

NEVER_RUN, UP_TO_DATE = "never run", "up to date"
NIGHTLY_SUMMARY = Path("reports/nightly/summary.json")  # written by flows/nightly.py


# ---------------------------------------------------------------- stages (DVC)
def locked_stages(lock: Path = Path("dvc.lock")) -> set[str]:
    """The stages dvc.lock records (they ran at least once)."""
    if not lock.exists():
        return set()
    return set((yaml.safe_load(lock.read_text()) or {}).get("stages", {}))


def what_changed(entries: list[Any]) -> str:
    """DVC's status of one stage, short: 'deps: tasks/train.py, params.yaml (+2); outs: ...'."""
    parts = []
    for entry in entries:
        if isinstance(entry, str):  # "changed command", "always changed"
            parts.append(entry)
            continue
        for kind, changes in entry.items():  # "changed deps": {path: "modified" | {param: ..}}
            names = [name for path, change in changes.items()
                     for name in (change if isinstance(change, dict) else [path])]
            parts.append(f"{kind.removeprefix('changed ')}: {few(names)}")
    return "; ".join(parts)


def few(names: list[str], shown: int = 3) -> str:
    more = f" (+{len(names) - shown})" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def stage_states() -> tuple[str, dict[str, str]]:
    """A line about DVC and {stage: never run | up to date | stale: what changed}; no states
    outside a DVC repo."""
    from flows.common import in_dvc_repo

    if not in_dvc_repo():
        return (f"DVC: {Path.cwd()} is not a DVC repo (no .dvc/ and dvc.yaml): stage status "
                "unknown; run `reprolab status` in the project checkout"), {}
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with Repo(".") as repo:
            changed = repo.status()
    except DvcException as exc:
        return f"DVC: `dvc status` failed ({exc})", {}
    locked = locked_stages()
    states = {}
    for pipeline in declarations():
        for stage in pipeline.stages:
            if stage.name not in locked:
                states[stage.name] = NEVER_RUN
            elif stage.name in changed:
                states[stage.name] = f"stale: {what_changed(changed[stage.name])}"
            else:
                states[stage.name] = UP_TO_DATE
    ran = sum(state != NEVER_RUN for state in states.values())
    return f"DVC: dvc.lock records {ran} of {len(states)} stages", states


# ---------------------------------------------------------------- champions (MLflow)
def sqlite_file(uri: str) -> Path | None:
    """The database file of a `sqlite:///` tracking URI; None for any other store."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def champions() -> tuple[str, dict[str, str]]:
    """A line about the MLflow store and {pipeline: its champion and headline metric, or why
    none}. A sqlite store that does not exist is not created."""
    from flows.common import settings

    names = [p.name for p in declarations()]
    try:
        common = settings().common
    except ReproLabError as exc:
        return f"MLflow: store unknown ({exc})", dict.fromkeys(names, "unknown (no settings)")
    uri = common.mlflow.tracking_uri
    store = sqlite_file(uri)
    if store is not None and not store.exists():
        return (f"MLflow: {uri}: no store yet ({store} does not exist)",
                dict.fromkeys(names, "none yet (no MLflow store)"))
    from tasks import champion, tracking

    tracking.configure(common)
    client = champion.client()
    return f"MLflow: {uri}", {p.name: champion_line(client, p) for p in declarations()}


def champion_line(client: Any, pipeline: Pipeline) -> str:
    """'crypto-next-move v3, test.accuracy 0.5312', or why there is none."""
    from tasks.champion import champion_version, newest_version

    version = champion_version(client, pipeline.model_name)
    if version is None:
        newest = newest_version(client, pipeline.model_name)
        registered = (f"newest registered version v{newest.version}" if newest is not None
                      else "no registered version")
        return (f"none yet ({pipeline.model_name}: {registered}; "
                "the nightly run promotes a champion)")
    tags = version.tags
    metric = tags.get("test_metric", pipeline.headline)
    value = f"{float(tags['test_value']):.4f}" if "test_value" in tags else "not recorded"
    return f"{pipeline.model_name} v{version.version}, {metric} {value}"


# ---------------------------------------------------------------- last night (flows/nightly.py)
def nightly_verdicts(summary: Path = NIGHTLY_SUMMARY) -> tuple[str, dict[str, str]]:
    """A line about the last nightly run and {pipeline: its verdict}."""
    if not summary.exists():
        return f"nightly: no run yet (no {summary})", {}
    try:
        rows = json.loads(summary.read_text())["pipelines"]
    except (OSError, ValueError, KeyError) as exc:
        return f"nightly: {summary} cannot be read ({exc})", {}
    when = datetime.fromtimestamp(summary.stat().st_mtime).strftime("%Y-%m-%d %H:%M")
    return (f"nightly: last run {when} ({summary})",
            {row["pipeline"]: verdict_line(row) for row in rows})


def verdict_line(row: dict[str, Any]) -> str:
    if "error" in row:
        return f"failed: {row['error']}"
    verdict = row["verdict"]
    if verdict["promoted"]:
        return f"promoted v{verdict['challenger']}: {verdict['reason']}"
    kept = f"v{verdict['champion']}" if verdict["champion"] else "no champion"
    return f"kept {kept}: {verdict['reason']}"


# ---------------------------------------------------------------- the report
def report() -> str:
    """The whole status as text: three lines about the stores, then one block per pipeline."""
    dvc_line, states = stage_states()
    mlflow_line, champs = champions()
    nightly_line, verdicts = nightly_verdicts()
    lines = [f"ReproLab status of {Path.cwd()}", f"  {dvc_line}", f"  {mlflow_line}",
             f"  {nightly_line}"]
    for pipeline in declarations():
        lines += ["", f"{pipeline.name} (model {pipeline.model_name}, "
                      f"headline {pipeline.headline})"]
        if states:
            width = max(len(s.name) for s in pipeline.stages)
            lines += [f"  {s.name:<{width}}  {states[s.name]}" for s in pipeline.stages]
        else:
            lines.append("  stages: unknown (see the DVC line above)")
        lines.append(f"  champion: {champs[pipeline.name]}")
        lines.append(f"  last nightly: {verdicts.get(pipeline.name, 'not run yet')}")
    if states and all(state == NEVER_RUN for state in states.values()):
        lines += ["", "Nothing has run here yet: `reprolab demo` (everything, offline) or "
                      "`reprolab run <pipeline> [<stage>]`."]
    return "\n".join(lines)
