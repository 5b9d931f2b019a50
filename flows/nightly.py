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
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, task

from flows.common import StageFailed, dvc_repro, parse_overrides, settings
from flows.report import refresh_site
from flows.stage_runs import child_runs, stages_markdown
from tasks import champion, tracking
from tasks.config import PIPELINE_NAMES, Params, save_overrides
from tasks.errors import ReproLabError
from tasks.evaluate import metric_value
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
def reproduce(spec: Pipeline) -> list[str]:
    return repro([spec.last.name], spec.name)


def score(spec: Pipeline) -> champion.Score:
    """The pipeline's test metric, its naive baseline and the test data digest from dvc.lock."""
    metrics = read_json(spec.results_file)
    test_outs = lock_outs(spec.test_data_stage)
    digest = ",".join(f"{path}:{out['md5']}" for path, out in sorted(test_outs.items()))
    return champion.Score(spec.headline, metric_value(metrics, spec.headline), digest,
                          max(metric_value(metrics, key) for key in spec.baselines))


def registered_network(model_uri: str) -> Any:
    """The torch network of a registered crypto model version: its pyfunc's
    (tasks.crypto.serving.NextMoveModel), or the logged torch model itself for a version
    registered before the models were pyfuncs (a champion from an older store)."""
    import mlflow.models

    if "pytorch" in mlflow.models.Model.load(model_uri).flavors:
        import mlflow.pytorch

        return mlflow.pytorch.load_model(model_uri, map_location="cpu")
    return tracking.load_model(model_uri).unwrap_python_model().network


def rescore_crypto(params: Params, model: str) -> Callable[[str], float]:
    """A registered crypto model version's test.accuracy on tonight's split."""
    def rescore_version(version: str) -> float:
        import torch

        from tasks.crypto.paths import CryptoPaths
        from tasks.crypto.report import rescore

        net = registered_network(f"models:/{model}/{version}")
        return rescore(net, params.crypto, CryptoPaths().splits, torch.device("cpu"))
    return rescore_version


# pipelines whose champion can be scored on new test data (a Quora model reads word vectors
# trained on its own data, so it cannot read tonight's inputs)
RESCORERS: dict[str, Callable[[Params, str], Callable[[str], float]]] = {
    "crypto": rescore_crypto}


@task(name="judge-challenger")
def judge(spec: Pipeline, params: Params) -> dict[str, Any]:
    tracking.configure(params.common)
    rescorer = RESCORERS.get(spec.name)
    verdict = champion.judge(champion.client(), spec.model_name, score(spec), params.nightly.margin,
                             rescorer(params, spec.model_name) if rescorer else None)
    get_logger().info("%s: %s", spec.model_name, verdict.reason)
    return verdict.as_dict()


@task(name="dvc-push")
def push(remote: str | None) -> int:
    from dvc.repo import Repo

    with Repo(".") as repo:
        pushed = repo.push(remote=remote)
    get_logger().info("dvc push%s: %d files", f" -r {remote}" if remote else "", pushed)
    return pushed


def night_of(spec: Pipeline, params: Params) -> dict[str, Any]:
    """One pipeline's night; a failure is recorded, not raised, so the others still run."""
    row: dict[str, Any] = {"pipeline": spec.name}
    try:
        row["data"] = refresh(spec)
        row["stages_run"] = reproduce(spec)
        row["verdict"] = judge(spec, params)
    except ReproLabError as exc:
        row["error"] = str(exc)
        get_logger().error("%s", exc)
    return row


def markdown(rows: list[dict[str, Any]], pushed: int | None,
             runs: Mapping[str, Any] | None = None) -> str:
    """The night's table, then each pipeline's stages with their runs (`runs`: by name)."""
    lines = ["# Nightly retraining", "",
             "| pipeline | new data | stages rerun | metric | champion | challenger | promoted "
             "| why |", "|---|---|---|---|---|---|---|---|"]
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


def markdown_row(row: dict[str, Any]) -> str:
    if "error" in row:
        return f"| {row['pipeline']} | | | | | | no | **failed**: {row['error']} |"
    data, verdict = row["data"], row["verdict"]
    new_data = (f"yes (+{data['bytes_added']} bytes, +{data['files_added']} files)"
                if data["changed"] else "no")
    old = " ".join(part for part in (
        None if verdict["old"] is None else f"{verdict['old']:.4f}",
        None if verdict["champion"] is None else f"(v{verdict['champion']})") if part)
    new = "" if verdict["challenger"] is None else f"{verdict['new']:.4f} (v{verdict['challenger']})"
    stages = ", ".join(row["stages_run"]) or "none"
    promoted = "yes" if verdict["promoted"] else "no"
    return (f"| {row['pipeline']} | {new_data} | {stages} | {declaration(row['pipeline']).headline} "
            f"| {old} | {new} | {promoted} | {verdict['reason']} |")


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


@flow(name="nightly-retrain")
def nightly(pipelines: list[str] | None = None, overrides: dict[str, Any] | None = None
            ) -> dict[str, Any]:
    """Retrain what new data made stale, promote better models, push the data.

    pipelines: which ones tonight (default params.yaml's nightly.pipelines).
    overrides: dotted params.yaml keys written into params.yaml first, as `dvc exp run -S`
    does, so DVC sees them (validated before anything is written)."""
    if overrides:
        save_overrides(PARAMS_FILE, overrides)
    params = settings({"nightly.pipelines": pipelines} if pipelines else None)
    rows = [night_of(declaration(name), params) for name in params.nightly.pipelines]
    failed = [row for row in rows if "error" in row]
    # what did complete is pushed even on a night where a pipeline failed
    pushed = push(params.nightly.remote) if params.nightly.push else None
    publish(rows, pushed)
    refresh_site()  # the results site shows tonight
    if failed:
        raise StageFailed("; ".join(row["error"] for row in failed))
    return {"pipelines": rows, "pushed": pushed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.nightly")
    parser.add_argument("--pipelines", help=f"comma-separated, from {','.join(PIPELINE_NAMES)}")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="write a params.yaml value first (dotted key)")
    args = parser.parse_args(argv)
    pipelines = args.pipelines.split(",") if args.pipelines else None
    try:
        nightly(pipelines=pipelines, overrides=parse_overrides(args.overrides) or None)
    except ReproLabError as exc:
        print(f"error: nightly: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
