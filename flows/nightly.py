"""Nightly retraining: for each enabled pipeline look for new data, `dvc repro` what is stale,
judge the new model against the MLflow `champion`, `dvc push`; a Prefect artifact per night.

    python -m flows.nightly [--pipelines crypto,quora] [--set key.path=value ...]

Looking for new data is a forced run of the pipeline's ingest stage alone (`dvc repro -s -f`):
ingestion is incremental (new candles since the last one, manifest clips not yet downloaded and
not in the failure ledger, the Quora file only when its checksum changed), so on a night
without new data its outputs hash the same and `dvc repro` then finds nothing stale
downstream: no training, no new model version, `dvc status` clean. (`always_changed: true` in
dvc.yaml would do the looking too, but leaves `dvc status` never clean.) A failing stage fails
the run naming that stage; the stages before it are already in dvc.lock, so the next run
resumes at the failed one.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, task

from flows.common import StageFailed, checkout_lock, dvc_repro, parse_overrides, settings
from flows.pools import repro_pipeline
from flows.report import refresh_site
from flows.stage_runs import child_runs, stages_markdown
from tasks import champion, objectstore, tracking, workspace
from tasks.config import PIPELINE_NAMES, Params, save_overrides
from tasks.errors import ReproLabError
from tasks.logs import get_logger
from tasks.pipeline import Pipeline, declaration, declarations
from tasks.storage import read_json, write_json, write_text

PARAMS_FILE = "params.yaml"
REPORT_DIR = Path("reports/nightly")


def lock_outs(stage: str, lock: Path = Path("dvc.lock")) -> dict[str, dict]:
    """{path: {md5, size, nfiles}} of a stage's outputs as dvc.lock records them ({} if none)."""
    if not lock.exists():
        return {}
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    return {out["path"]: {k: out.get(k) for k in ("md5", "size", "nfiles")}
            for out in stages.get(stage, {}).get("outs", [])}


def consumed(outs: dict[str, dict]) -> dict[str, dict]:
    """The outputs some pipeline stage reads: data a model learns from. An ingest report with
    per-run counts is not new data, even though the report site shows it."""
    deps = {dep for spec in declarations() for stage in spec.stages for dep in stage.deps}
    return {path: out for path, out in outs.items() if path in deps}


def data_change(before: dict[str, dict], after: dict[str, dict]) -> dict[str, Any]:
    """Whether the ingested data changed, and by how many bytes / files."""
    def total(outs: dict[str, dict], key: str) -> int:
        return sum(out.get(key) or 0 for out in outs.values())
    return {"changed": before != after,
            "bytes_added": total(after, "size") - total(before, "size"),
            "files_added": total(after, "nfiles") - total(before, "nfiles")}


def repro(targets: list[str], pipeline: str, **kwargs: Any) -> list[str]:
    """dvc_repro, a failure named with its pipeline and where the next run resumes."""
    try:
        return dvc_repro(targets, **kwargs)
    except StageFailed as exc:
        raise StageFailed(f"{pipeline}: {exc}. The stages before it are recorded in dvc.lock: "
                          "the next run resumes there") from exc


@task(name="refresh-data")
def refresh(spec: Pipeline) -> dict[str, Any]:
    """Run the ingest stage alone, forced: it fetches only what is new."""
    before = consumed(lock_outs(spec.stages[0].name))
    repro([spec.stages[0].name], spec.name, force=True, single_item=True)
    change = data_change(before, consumed(lock_outs(spec.stages[0].name)))
    get_logger().info("%s: %s", spec.name, "new data" if change["changed"] else "no new data")
    return change


@task(name="dvc-repro")
def reproduce(spec: Pipeline, run: workspace.TeamRun | None = None) -> list[str]:
    """The pipeline's stale stages; in a team's clone, each on its declared pool."""
    return repro_pipeline(spec, run, f"nightly {spec.name}",
                          repro=lambda targets: repro(targets, spec.name))


# ---------------------------------------------------------------- data checks
HELD = REPORT_DIR / "held"  # per pipeline: rows a failed check holds back, checked again


def data_table(spec: Pipeline, params: Params) -> Any:
    """Every row the ingest stage holds now, as the pipeline's checks read it."""
    return importlib.import_module(spec.checks).table(params, Path("."))


def keys_now(spec: Pipeline, params: Params) -> set:
    """The row keys the ingest stage holds before tonight's refresh (none on a first night)."""
    try:
        table = data_table(spec, params)
    except (ReproLabError, OSError):
        return set()
    return set(table.frame[table.key].astype(str))


def held_keys(spec: Pipeline) -> set:
    path = HELD / f"{spec.name}.json"
    return set(read_json(path)["keys"]) if path.exists() else set()


def champion_profile(spec: Pipeline) -> tuple[dict | None, str]:
    """The data profile of what the champion was trained on (no champion yet: what the newest
    judged version was trained on), and where it came from."""
    mlflow_client = champion.client()
    current = champion.champion_version(mlflow_client, spec.model_name)
    if current is None:
        judged = [v for v in champion.versions(mlflow_client, spec.model_name)
                  if "decision" in v.tags]
        if not judged:
            return None, "no champion yet"
        current = judged[-1]
        whose = f"no champion yet: the data v{current.version} was trained on"
    else:
        whose = f"the champion v{current.version}"
    try:
        return _load_profile(current.run_id), whose
    except Exception as exc:  # noqa: BLE001 - an older version without a profile, a lost store
        return None, f"{whose} has no data profile ({exc})"


PROFILE = "data_profile.json"


def _load_profile(run_id: str) -> dict:
    import mlflow.artifacts

    return mlflow.artifacts.load_dict(f"runs:/{run_id}/{PROFILE}")


def save_profile(spec: Pipeline, params: Params, run_id: str) -> None:
    """The profile of the data a judged version was trained on, on its MLflow run: the
    reference the nightly checks new data against while it is champion."""
    from tasks.datachecks import profile

    champion.client().log_dict(run_id, profile(data_table(spec, params), params.nightly.checks,
                                               params.common.seed), PROFILE)


@task(name="check-data")
def check_data(spec: Pipeline, params: Params, before: set, accept: bool = False
               ) -> dict[str, Any]:
    """Tonight's new rows (and rows a failed night held back) against the champion's data:
    schema, nulls, ranges, label balance, drift. Logged to MLflow whatever the outcome.
    `accept`: a person looked and accepts rows that fail (recorded; nothing is held)."""
    from tasks.datachecks import check, summary_line

    settings = params.nightly.checks
    if not settings.enabled:
        return {"passed": True, "reasons": [], "notes": ["checks off (nightly.checks.enabled)"]}
    tracking.configure(params.common)
    table = data_table(spec, params)
    keys = table.frame[table.key].astype(str)  # as keys_now and the held file keep them
    new = table.rows((~keys.isin(before) | keys.isin(held_keys(spec))).to_numpy())
    reference, source = champion_profile(spec)
    result = {**check(new, reference, settings), "reference": source}
    if accept and not result["passed"]:
        result["accepted"] = True
        result["notes"] = [*result.get("notes", []), "failed, and accepted by a person "
                           "(--accept-data): trained on"]
    get_logger().info("%s: data checks: %s", spec.name, summary_line(result))
    log_checks(spec, params, result)
    hold(spec, new, result)
    return result


def hold(spec: Pipeline, new: Any, result: dict[str, Any]) -> None:
    """Keep the keys of rows that failed, so the next night checks them again (a person may
    fix them meanwhile); a passing night releases them."""
    path = HELD / f"{spec.name}.json"
    if result["passed"] or result.get("accepted"):
        path.unlink(missing_ok=True)
        return
    keys = sorted(new.frame[new.key].astype(str))
    write_json({"pipeline": spec.name, "reasons": result["reasons"], "keys": keys}, path)


def log_checks(spec: Pipeline, params: Params, result: dict[str, Any]) -> None:
    """The checks' figures (drift per column, nulls, ranges, label shift) as an MLflow run of
    the pipeline's experiment, with the whole result as a JSON artifact."""
    import mlflow

    figures = {"passed": float(result["passed"]), "rows": result.get("rows", 0)}
    if result.get("label_shift") is not None:
        figures["label_shift"] = result["label_shift"]
    for kind in ("nulls", "out_of_range"):
        figures.update({f"{kind}.{col}": v for col, v in (result.get(kind) or {}).items()})
    for col, d in (result.get("drift") or {}).items():
        figures.update({f"drift.{col}.{k}": d[k] for k in ("ks", "p_value", "psi")
                        if d.get(k) is not None})
    with tracking.run(params.common, spec.name, "nightly-checks",
                      tags={"reprolab.nightly": "checks"}):
        tracking.log_metrics(figures)
        mlflow.log_dict(result, "data_checks.json")


# ---------------------------------------------------------------- champion / challenger
def compare(spec: Pipeline, params: Params, challenger: Any, current: Any | None
            ) -> champion.Comparison:
    """Both versions through their registered pyfuncs on tonight's test rows; the paired
    difference of their per-row correctness with its bootstrap interval."""
    from tasks import rescore
    from tasks.evaluate import mean_ci

    rows = rescore.tonight(spec, params)
    new = rescore.score_version(spec, f"models:/{spec.model_name}/{challenger.version}", rows)
    strongest = read_json(spec.results_file)["verdict"]
    old = difference = error = None
    if current is not None:
        try:
            scored = rescore.score_version(
                spec, f"models:/{spec.model_name}/{current.version}", rows)
        except Exception as exc:  # noqa: BLE001 - whatever an old model does, it keeps the alias
            error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            get_logger().warning("%s v%s cannot be scored on tonight's rows: %s",
                                 spec.model_name, current.version, error)
        else:
            old = scored.value
            difference = mean_ci(new.correct.astype(float) - scored.correct.astype(float),
                                 n_resamples=params.nightly.bootstrap, seed=params.common.seed,
                                 block_length=rows.block_length)
    return champion.Comparison(spec.headline, len(rows.test_labels), rows.digest, new.value,
                               strongest["strongest_baseline"],
                               float(strongest["strongest_value"]), old, difference, error)


@task(name="judge-challenger")
def judge(spec: Pipeline, params: Params) -> dict[str, Any]:
    tracking.configure(params.common)
    mlflow_client = champion.client()
    challenger = champion.challenger_version(mlflow_client, spec.model_name)
    if challenger is None:
        verdict = champion.no_challenger(mlflow_client, spec.model_name)
    else:
        current = champion.champion_version(mlflow_client, spec.model_name)
        comparison = compare(spec, params, challenger, current)
        rule = champion.Rule(params.nightly.promote_if, params.nightly.margin)
        verdict = champion.judge(mlflow_client, spec.model_name, challenger, current,
                                 comparison, rule)
        save_profile(spec, params, challenger.run_id)
    get_logger().info("%s: %s", spec.model_name, verdict.reason)
    export_history(spec)
    return verdict.as_dict()


CHAMPIONS = REPORT_DIR / "champions"


def export_history(spec: Pipeline) -> dict[str, Any]:
    """The alias's history from the registry into reports/nightly/champions/<pipeline>.json,
    which the report site draws as a timeline."""
    mlflow_client = champion.client()
    current = champion.champion_version(mlflow_client, spec.model_name)
    record = {"pipeline": spec.name, "model": spec.model_name,
              "champion": None if current is None else str(current.version),
              "history": champion.history(mlflow_client, spec.model_name)}
    write_json(record, CHAMPIONS / f"{spec.name}.json")
    return record


@task(name="dvc-push")
def push(remote: str | None) -> int:
    from dvc.repo import Repo

    with objectstore.storage_credentials(), Repo(".") as repo:
        pushed = repo.push(remote=remote)
    get_logger().info("dvc push%s: %d files", f" -r {remote}" if remote else "", pushed)
    return pushed


def night_of(spec: Pipeline, params: Params, accept_data: bool = False,
             run: workspace.TeamRun | None = None) -> dict[str, Any]:
    """One pipeline's night; a failure is recorded, not raised, so the others still run. New
    data that fails its checks stops the night before any training, unless a person who
    looked at it accepts it (`accept_data`: the checks are recorded, the rows trained on)."""
    row: dict[str, Any] = {"pipeline": spec.name}
    try:
        before = keys_now(spec, params)
        row["data"] = refresh(spec)
        row["checks"] = check_data(spec, params, before, accept_data)
        if not row["checks"]["passed"] and not row["checks"].get("accepted"):
            row["stopped"] = (f"{spec.name}: data checks failed, nothing retrained (the data "
                              f"is kept to look at): " + "; ".join(row["checks"]["reasons"]))
            get_logger().error("%s", row["stopped"])
            return row
        row["stages_run"] = reproduce(spec, run)
        row["verdict"] = judge(spec, params)
    except ReproLabError as exc:
        row["error"] = str(exc)
        get_logger().error("%s", exc)
    return row


HEADER = ("| pipeline | new data | data checks | stages rerun | metric | champion | challenger "
          "| difference [95% CI] | promoted | why |")


def markdown(rows: list[dict[str, Any]], pushed: int | None,
             runs: Mapping[str, Any] | None = None) -> str:
    """The night's table, then each pipeline's stages with their runs (`runs`: by name)."""
    lines = ["# Nightly retraining", "", HEADER, "|---" * HEADER.count(" | ") + "|---|"]
    for row in rows:
        lines.append(markdown_row(row))
    lines += ["", f"DVC push: {'skipped' if pushed is None else f'{pushed} files'}"]
    for row in rows:
        spec = declaration(row["pipeline"])
        lines += ["", stages_markdown(spec, stages_ran(row), runs or {}).rstrip("\n")]
    return "\n".join(lines) + "\n"


def stages_ran(row: dict[str, Any]) -> list[str]:
    """A pipeline's stages that ran tonight: the forced ingest, then what DVC found stale."""
    if "data" not in row:
        return []
    return [declaration(row["pipeline"]).stages[0].name, *row.get("stages_run", [])]


def data_cell(data: dict[str, Any] | None) -> str:
    if not data:
        return ""
    return (f"yes (+{data['bytes_added']} bytes, +{data['files_added']} files)"
            if data["changed"] else "no")


def checks_cell(checks: dict[str, Any] | None) -> str:
    if not checks:
        return ""
    drifted = [col for col, d in (checks.get("drift") or {}).items() if d.get("drifted")]
    word = ("passed" if checks["passed"] else
            "failed, accepted by hand" if checks.get("accepted") else "**failed**")
    rows = f"{checks.get('rows', 0)} new rows"
    return f"{word} ({rows}{', drift: ' + ', '.join(drifted) if drifted else ''})"


def interval(difference: dict | None) -> str:
    if not difference:
        return ""
    return f"{difference['mean']:+.4f} [{difference['low']:+.4f}, {difference['high']:+.4f}]"


def version_value(value: float | None, version: str | None) -> str:
    return " ".join(part for part in (None if value is None else f"{value:.4f}",
                                      None if version is None else f"(v{version})") if part)


def markdown_row(row: dict[str, Any]) -> str:
    name = row["pipeline"]
    head = f"| {name} | {data_cell(row.get('data'))} | {checks_cell(row.get('checks'))} |"
    if "error" in row or "stopped" in row:
        why = f"**failed**: {row['error']}" if "error" in row else f"**stopped**: {row['stopped']}"
        return f"{head} | | | | | no | {why} |"
    verdict = row["verdict"]
    stages = ", ".join(row["stages_run"]) or "none"
    return (f"{head} {stages} | {declaration(name).headline} "
            f"| {version_value(verdict['old'], verdict['champion'])} "
            f"| {version_value(verdict['new'], verdict['challenger'])} "
            f"| {interval(verdict.get('difference'))} "
            f"| {'yes' if verdict['promoted'] else 'no'} | {verdict['reason']} |")


def one_line(rows: list[dict[str, Any]]) -> str:
    """The night in a line (the results commit's subject): each pipeline's outcome."""
    def outcome(row: dict[str, Any]) -> str:
        if "error" in row or "stopped" in row:
            return "failed" if "error" in row else "stopped by its data checks"
        verdict = row["verdict"]
        return (f"v{verdict['challenger']} promoted" if verdict["promoted"]
                else f"champion v{verdict['champion']} kept" if verdict.get("champion")
                else "nothing promoted")
    return "; ".join(f"{row['pipeline']} {outcome(row)}" for row in rows)


def publish(rows: list[dict[str, Any]], pushed: int | None) -> str:
    """The night's summary (markdown + JSON, the latest), its record in the history
    (reports/nightly/nights/<UTC time>.json, which the report site lists) and the artifact."""
    from datetime import UTC, datetime

    from prefect.artifacts import create_markdown_artifact

    text = markdown(rows, pushed, child_runs())
    night = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    record = {"night": night, "pipelines": rows, "pushed": pushed}
    write_text(text, REPORT_DIR / "summary.md")
    write_json(record, REPORT_DIR / "summary.json")
    write_json(record, REPORT_DIR / "nights" / f"{night.replace(':', '-')}.json")
    create_markdown_artifact(key="nightly-retrain", markdown=text,
                             description="data added, stages rerun, champion vs challenger")
    return text


class NightStopped(ReproLabError):
    """A pipeline's night failed or was stopped by its data checks."""


@flow(name="nightly-retrain")
def nightly(pipelines: list[str] | None = None, overrides: dict[str, Any] | None = None,
            accept_data: bool = False) -> dict[str, Any]:
    """Check new data, retrain what it made stale, promote better models, push the data.

    pipelines: which ones tonight (default params.yaml's nightly.pipelines).
    overrides: dotted params.yaml keys written into params.yaml first, as `dvc exp run -S`
    does, so DVC sees them (validated before anything is written).
    accept_data: new rows that fail the data checks are trained on all the same (a person
    looked at them: real drift, say); the checks are still run and recorded.
    A run started on this checkout meanwhile (a pipeline run, another night) waits its turn
    (tasks/runlock.py), and so does the night for it."""
    with checkout_lock("nightly"):
        if overrides:
            save_overrides(PARAMS_FILE, overrides)
        params = settings({"nightly.pipelines": pipelines} if pipelines else None)
        targets = [declaration(name).last.name for name in params.nightly.pipelines]
        team = workspace.start(targets)  # a team's clone: the last published results, pulled
        rows = [night_of(declaration(name), params, accept_data, team)
                for name in params.nightly.pipelines]
        # what did complete is pushed even on a night where a pipeline failed
        pushed = push(params.nightly.remote) if params.nightly.push or team else None
        text = publish(rows, pushed)
        site = refresh_site()  # the results site shows tonight
        if team is not None:  # the site too, then the night's lock and records
            if site:
                workspace.push_outputs(site, params.nightly.remote, with_deps=False)
            team.publish(f"nightly: {one_line(rows)}\n\n{text}", always=True)
    bad = [row.get("error") or row["stopped"] for row in rows
           if "error" in row or "stopped" in row]
    if bad:
        raise NightStopped("; ".join(bad))
    return {"pipelines": rows, "pushed": pushed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.nightly")
    parser.add_argument("--pipelines", help=f"comma-separated, from {','.join(PIPELINE_NAMES)}")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="write a params.yaml value first (dotted key)")
    parser.add_argument("--accept-data", action="store_true",
                        help="train on new rows that fail the data checks (after a look: "
                             "real drift); the checks are still recorded")
    args = parser.parse_args(argv)
    pipelines = args.pipelines.split(",") if args.pipelines else None
    try:
        nightly(pipelines=pipelines, overrides=parse_overrides(args.overrides) or None,
                accept_data=args.accept_data)
    except ReproLabError as exc:
        print(f"error: nightly: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
