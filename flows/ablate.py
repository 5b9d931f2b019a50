"""Ablations over seeds: every configuration of a grid, N seeds each, one table with intervals.

    python -m flows.ablate crypto --grid grids/crypto-erase-relu.yaml [--seeds 3]
    python -m flows.ablate quora --grid '{name: x, pipeline: quora, ...}'   # inline YAML

Each run is the pipeline's own stage flows (the code `dvc repro` runs), in its own directory
under artifacts/ablations/<pipeline>/<grid>/, with the configuration's params.yaml overrides
and the seed as `common.seed` for the model stages. The data stages (ingest, features, splits
or clips and frames) run once per distinct data setting with the workspace's seed, so every
configuration and seed sees the same data; a configuration that changes a data parameter
(by dvc.yaml's params lists) gets its own copy. Runs are resumable (a finished run is not
redone), never touch the workspace's DVC outputs and register no model. Every MLflow run is
tagged with its grid, configuration and seed, under a parent run that holds the table.
Each configuration is also reproducible as a full pipeline: `dvc exp run -S key=value ...`
with its overrides (listed in the report) and `-S common.seed=<seed>`.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prefect import flow

from flows import crypto, kinetics, quora
from flows.common import settings
from flows.report import refresh_site
from tasks import tracking
from tasks.ablation import Grid, load_grid, summarize, update_report
from tasks.config import CommonSettings
from tasks.errors import ReproLabError
from tasks.fingerprint import code_digest
from tasks.logs import get_logger
from tasks.pipeline import PIPELINES, declaration, stage_modules
from tasks.storage import read_json, write_json

REPORTS = Path("reports/ablations")
WORK = Path("artifacts/ablations")
DONE = "ablation-run.json"
FLOWS = {"crypto": crypto.FLOWS, "quora": quora.FLOWS, "kinetics": kinetics.FLOWS}



def stage_flows(pipeline: str, data: bool) -> list[Any]:
    """The pipeline's data stages (data=True) or the stages an ablation run trains and scores,
    as Prefect flows, from its declaration."""
    spec = declaration(pipeline)
    return [FLOWS[pipeline][s.step] for s in spec.part(data) if s.name not in spec.ablation_skips]


def data_links(pipeline: str) -> list[str]:
    """What the model stages read of the data stages' outputs (linked into every run)."""
    return [path for s in declaration(pipeline).part(data=True)
            for path in (*s.out_paths, *s.metrics)]


def data_params(pipeline: str) -> list[str]:
    """The params.yaml keys the pipeline's data stages depend on (their declarations)."""
    return [p for s in declaration(pipeline).part(data=True) for p in s.params]


def stages_code(pipeline: str, data: bool) -> str:
    """SHA-256 of the code these stages run (their import closure): a finished run is reused
    only while that code is unchanged."""
    spec = declaration(pipeline)
    modules = sorted({m for s in spec.part(data) for m in stage_modules(spec, s)})
    return code_digest(modules)


def data_overrides(overrides: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    """The overrides that change a data stage (a key at, above or below one of `keys`)."""
    def touches(key: str) -> bool:
        return any(key == k or key.startswith(f"{k}.") or k.startswith(f"{key}.") for k in keys)
    return {k: v for k, v in sorted(overrides.items()) if touches(k)}


def absolute_store(common: CommonSettings, root: Path) -> dict[str, Any]:
    """Overrides that keep every run's MLflow records in the workspace's store, unregistered."""
    uri = common.mlflow.tracking_uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = f"sqlite:///{(root / uri.removeprefix('sqlite:///')).resolve()}"
    artifacts = common.mlflow.artifact_dir
    if artifacts is not None and "://" not in artifacts:
        artifacts = str((root / artifacts).resolve())
    return {"common.mlflow.tracking_uri": uri, "common.mlflow.artifact_dir": artifacts,
            "common.mlflow.register_models": False}


@contextlib.contextmanager
def inside(directory: Path, params_file: Path) -> Iterator[None]:
    """Run stages in `directory`, reading the workspace's params.yaml."""
    previous = os.environ.get("REPROLAB_PARAMS")
    os.environ["REPROLAB_PARAMS"] = str(params_file)
    directory.mkdir(parents=True, exist_ok=True)
    try:
        with contextlib.chdir(directory):
            yield
    finally:
        if previous is None:
            os.environ.pop("REPROLAB_PARAMS", None)
        else:
            os.environ["REPROLAB_PARAMS"] = previous


def prepare_data(pipeline: str, overrides: dict[str, Any], work: Path, params_file: Path
                 ) -> Path:
    """The data stages once per distinct data setting (and code); returns their directory."""
    key = json.dumps([overrides, stages_code(pipeline, data=True)], sort_keys=True, default=str)
    directory = work / f"data-{hashlib.sha256(key.encode()).hexdigest()[:10]}"
    if (directory / DONE).exists():
        return directory
    with inside(directory, params_file):
        for stage in stage_flows(pipeline, data=True):
            stage(overrides=overrides)
    write_json({"overrides": overrides}, directory / DONE)
    return directory


def link_data(pipeline: str, data_dir: Path, run_dir: Path) -> None:
    for rel in data_links(pipeline):
        link, target = run_dir / rel, (data_dir / rel).resolve()
        if not target.exists():
            raise ReproLabError(f"{target}: the data stages did not write it")
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target, target_is_directory=target.is_dir())


def run_model(pipeline: str, overrides: dict[str, Any], run_dir: Path, params_file: Path
              ) -> dict[str, Any]:
    """The model stages in `run_dir`; their metrics. A finished run with the same overrides
    and code is read back, not redone."""
    done, code = run_dir / DONE, stages_code(pipeline, data=False)
    same = json.loads(json.dumps(overrides, default=str))
    if done.exists() and (read_json(done)["overrides"], read_json(done).get("code")) == (
            same, code):
        return read_json(done)["metrics"]
    with inside(run_dir, params_file):
        for stage in stage_flows(pipeline, data=False):
            stage(overrides=overrides)
        metrics = read_json(declaration(pipeline).results_file)
    write_json({"overrides": overrides, "code": code, "metrics": metrics}, done)
    return metrics


def tag_runs(common: CommonSettings, pipeline: str, since_ms: int, tags: dict[str, str],
             parent_id: str) -> int:
    """Tag the MLflow runs started since `since_ms`; top-level ones go under the parent."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    experiment = client.get_experiment_by_name(f"{common.mlflow.experiment_prefix}-{pipeline}")
    if experiment is None:
        return 0
    runs = client.search_runs([experiment.experiment_id],
                              filter_string=f"attributes.start_time >= {since_ms}")
    for run in runs:
        if run.info.run_id == parent_id:
            continue
        for key, value in tags.items():
            client.set_tag(run.info.run_id, key, value)
        if "mlflow.parentRunId" not in run.data.tags:
            client.set_tag(run.info.run_id, "mlflow.parentRunId", parent_id)
    return len(runs)


def parent_run(common: CommonSettings, grid: Grid, inputs: list[str]) -> str:
    """The MLflow run that will hold the table (not made active: the stages start their own),
    with the provenance every run has; `inputs`: the grid file and params.yaml."""
    from mlflow.tracking import MlflowClient

    run_id = tracking.create_run(common, grid.pipeline, f"ablation:{grid.name}",
                                 tags={"ablation": grid.name}, inputs=inputs)
    MlflowClient(common.mlflow.tracking_uri).log_param(run_id, "grid",
                                                       grid.model_dump_json()[:6000])
    return run_id


def finish_parent(run_id: str, report: Path, rows: list[dict]) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    client.log_artifact(run_id, str(report))
    client.log_artifact(run_id, str(report.with_suffix(".json")))
    for row in rows:
        prefix = f"{row['config']}.{row['metric']}"
        client.log_metric(run_id, f"{prefix}.mean", row["mean"])
        if "diff" in row:
            client.log_metric(run_id, f"{prefix}.diff", row["diff"])
    client.set_terminated(run_id)


@flow(name="ablate")
def ablate(pipeline: str, grid: str, seeds: int | None = None) -> dict[str, Any]:
    """Run every configuration of `grid` (a YAML file or inline YAML) for `seeds` seeds."""
    root, params_file = Path.cwd(), Path(os.environ.get("REPROLAB_PARAMS", "params.yaml"))
    params_file = params_file.resolve()
    spec = load_grid(grid, params_file)
    if spec.pipeline != pipeline:
        raise ReproLabError(f"grid {spec.name!r} is for the {spec.pipeline} pipeline, "
                            f"not {pipeline}")
    if seeds is not None:
        spec = spec.model_copy(update={"seeds": seeds})
    common = settings().common
    store = absolute_store(common, root)
    tracking.configure(settings(store).common)
    seed_list = [common.seed + i for i in range(spec.seeds)]
    work, keys, log = root / WORK / pipeline / spec.name, data_params(pipeline), get_logger()
    grid_file = [grid] if Path(grid).is_file() else []
    parent = parent_run(settings(store).common, spec, [*grid_file, str(params_file)])
    results: dict[str, dict[int, dict]] = {}
    for name, config in spec.configs.items():
        data_dir = prepare_data(pipeline, {**store, **data_overrides(config.set, keys)}, work,
                                params_file)
        for seed in seed_list:
            run_dir = work / f"{name}-seed{seed}"
            link_data(pipeline, data_dir, run_dir)
            started = int(time.time() * 1000)
            metrics = run_model(pipeline, {**store, **config.set, "common.seed": seed},
                                run_dir, params_file)
            tag_runs(settings(store).common, pipeline, started,
                     {"ablation": spec.name, "ablation.config": name,
                      "ablation.seed": str(seed)}, parent)
            results.setdefault(name, {})[seed] = metrics
            log.info("ablation %s: %s seed %d done", spec.name, name, seed)
    rows = summarize(spec, results)
    report = update_report(root / REPORTS, spec, rows, seed_list)
    publish(spec, rows)
    finish_parent(parent, report, rows)
    refresh_site()  # the results site shows the new table
    log.info("ablation %s: table in %s", spec.name, report)
    return {"grid": spec.name, "rows": rows, "report": str(report)}


def publish(spec: Grid, rows: list[dict]) -> None:
    from prefect.artifacts import create_table_artifact

    create_table_artifact(key=f"ablation-{spec.pipeline}-{spec.name}".replace("_", "-"),
                          table=[{k: (round(v, 4) if isinstance(v, float) else v)
                                  for k, v in row.items()} for row in rows],
                          description=spec.description or spec.name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.ablate")
    parser.add_argument("pipeline", choices=list(PIPELINES))
    parser.add_argument("--grid", required=True, help="a grid YAML file, or inline YAML")
    parser.add_argument("--seeds", type=int, help="runs per configuration (default: the grid's)")
    args = parser.parse_args(argv)
    try:
        result = ablate(args.pipeline, args.grid, args.seeds)
    except ReproLabError as exc:
        print(f"error: ablate {args.pipeline}: {exc}", file=sys.stderr)
        return 2
    print(Path(result["report"]).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
