"""What every pipeline's flows share: settings from params.yaml, the stage runner built from a
pipeline declaration, the CLI, driving DVC."""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from flows.outputs import fail_as_stage, put_back, take_failure
from flows.stage_runs import parent_of_stages, publish_stages, run_stage_flow
from tasks import objectstore
from tasks.config import Params, load_params, save_overrides
from tasks.errors import ReproLabError
from tasks.logs import get_logger
from tasks.parallel import shared_prefect_api
from tasks.params_text import flow
from tasks.pipeline import ParamsView, Pipeline, Stage, describe
from tasks.runlock import run_lock
from tasks.storage import write_bytes
from tasks.threads import apply_thread_budget

# every flow process (a stage, a worker's flow run) keeps to its thread budget, REPROLAB_THREADS
# (a worker started by `make worker` sets it to its share), and passes it to its children
apply_thread_budget()


def settings(overrides: Mapping[str, Any] | None = None) -> Params:
    """params.yaml (from the working directory) with optional dotted overrides, validated."""
    return load_params(os.environ.get("REPROLAB_PARAMS", "params.yaml"), overrides)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """['crypto.source=file', 'crypto.split.window=48'] -> dict (values parsed as YAML)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ReproLabError(f"--set {item!r}: expected key.path=value")
        out[key.strip()] = yaml.safe_load(value)
    return out


def read_profile(path: Path) -> dict[str, Any]:
    """A profile: one dotted params.yaml key a line with its value (the keys --set takes)."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ReproLabError(f"{path}: cannot read the profile ({exc})") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise ReproLabError(f"{path}: a profile is a mapping of dotted keys to values")
    return data


@contextmanager
def checkout_lock(what: str) -> Iterator[None]:
    """The checkout's run lock (tasks/runlock.py), waiting up to common.lock_wait seconds."""
    from tasks.config import CommonSettings

    try:
        wait = settings().common.lock_wait
    except ReproLabError:  # a bad params.yaml fails where it is read, with its own message
        wait = CommonSettings().lock_wait
    with run_lock(what, wait):
        yield


class StageFailed(ReproLabError):
    """A DVC stage failed: the message names it and gives its own error line."""


PARAMS_FILE = "params.yaml"


def dvc_repro(targets: list[str], force: bool = False, single_item: bool = False,
              pull: bool = False) -> list[str]:
    """`dvc repro` the targets (DVC decides what is stale); returns the stages that ran.
    `single_item`: only the targets themselves (`dvc repro -s`). `pull` (a team's clone,
    tasks/workspace.py): `dvc repro --pull --allow-missing`, a stage whose only change is data
    this checkout lacks is skipped, and a stage that runs pulls the inputs it lacks from the
    DVC remote: nothing else is downloaded. Inside a flow run, the stages' flow runs are its
    subflow runs. A stage that fails leaves its outputs as they were (flows/outputs.py) and
    raises StageFailed naming it."""
    from dvc.repo import Repo

    remote = {"pull": True, "allow_missing": True} if pull else {}
    with checkout_lock(f"dvc repro {' '.join(targets)}"), _stage_failures():
        with shared_prefect_api(), parent_of_stages(), objectstore.storage_credentials(), \
                Repo(".") as repo:
            stages = repo.reproduce(targets=targets, force=force, single_item=single_item,
                                    **remote)
    names = [getattr(s, "addressing", str(s)) for s in stages]
    get_logger().info("dvc repro %s: %s", " ".join(targets),
                      ", ".join(names) or "nothing to reproduce")
    return names


def dvc_exp_run(overrides: Mapping[str, Any], targets: list[str]) -> list[str]:
    """Overrides go through DVC as an experiment (`dvc exp show`, `dvc exp diff`): the values
    are written into params.yaml in place (only they change: tasks/params_text.py), then
    `dvc exp run <targets>`, which leaves dvc.lock describing what is on disk. A run that
    fails is undone whole: params.yaml and dvc.lock byte for byte as they were, and every
    output the run changed back from the DVC cache."""
    with checkout_lock(f"dvc exp run {' '.join(targets)}"):
        return _exp_run(overrides, targets)


def _exp_run(overrides: Mapping[str, Any], targets: list[str]) -> list[str]:
    from dvc.repo import Repo

    kept = {path: path.read_bytes() for path in map(Path, (PARAMS_FILE, "dvc.lock"))
            if path.exists()}
    get_logger().info("overrides run as a DVC experiment: %s -> dvc exp run %s",
                      ", ".join(f"{k}={flow(v)}" for k, v in overrides.items()),
                      " ".join(targets))
    try:
        save_overrides(PARAMS_FILE, overrides)
        with _stage_failures():
            with shared_prefect_api(), parent_of_stages(), Repo(".") as repo:
                repo.experiments.run(targets=targets)
    except BaseException:
        _undo(kept)
        raise
    return targets


def _undo(kept: Mapping[Path, bytes]) -> None:
    """Put params.yaml and dvc.lock back, then every output whose lock entry this run moved."""
    lock = Path("dvc.lock")
    moved = _lock_stages(lock.read_bytes() if lock.exists() else b"")
    for path, data in kept.items():
        write_bytes(data, path)
    before = _lock_stages(kept.get(lock, b""))
    changed = [name for name in before if moved.get(name) != before[name]]
    if put_back(changed, persist=True):
        get_logger().warning("the run with overrides failed: params.yaml, dvc.lock and the "
                             "outputs are as before it")


def _lock_stages(data: bytes) -> dict[str, Any]:
    return (yaml.safe_load(data) or {}).get("stages", {}) if data else {}


@contextmanager
def _stage_failures() -> Iterator[None]:
    """DVC's ReproductionError as StageFailed naming the stage and its own error line; the
    stage's outputs put back (again: a stage killed before it could do it itself)."""
    from dvc.exceptions import ReproductionError

    try:
        yield
    except ReproductionError as exc:
        stage = failed_stage(exc)
        put_back([stage])
        own = take_failure(stage) or str(exc.__cause__ or exc)
        raise StageFailed(f"stage '{stage}' failed: {own}") from exc


def failed_stage(exc: Exception) -> str:
    """The stage DVC names in `failed to reproduce 'stage'`."""
    text = str(exc)
    return text.split("'")[1] if text.count("'") >= 2 else text


def in_dvc_repo() -> bool:
    return Path(".dvc").is_dir() and Path("dvc.yaml").exists()


def run_tags() -> list[str]:
    """Extra Prefect tags for every flow run of this process (REPROLAB_RUN_TAGS, comma-separated)."""
    return [t.strip() for t in os.environ.get("REPROLAB_RUN_TAGS", "").split(",") if t.strip()]


def run_stage(stage: Stage, overrides: Mapping[str, Any] | None = None) -> dict:
    """Run one declared stage: its callable gets a view of only the params it declares."""
    from tasks import tracking

    view = ParamsView(settings(overrides), stage.params, stage.name)
    tracking.set_stage_inputs([*stage.deps, *_input_paths(view, stage)])
    result = stage.callable()(view)
    view.log_reads()
    return result


def _input_paths(view: ParamsView, stage: Stage) -> list[str]:
    out = []
    for dotted in stage.input_params:
        node: Any = view
        for part in dotted.split("."):
            node = getattr(node, part)
        if node:
            out.append(str(node))
    return out


def stage_flows(pipeline: Pipeline) -> dict[str, Any]:
    """One Prefect flow per declared stage, named like its DVC stage: {step: flow}."""
    from prefect import flow

    def make(stage: Stage) -> Any:
        @flow(name=stage.name, description=stage.doc)
        def stage_flow(overrides: dict[str, Any] | None = None) -> dict:
            return run_stage(stage, overrides)
        return stage_flow

    return {stage.step: make(stage) for stage in pipeline.stages}


def pipeline_flow(pipeline: Pipeline, flows: dict[str, Any]) -> Any:
    """The whole pipeline as one flow. In a DVC repo DVC decides what is stale, and overrides
    run as a DVC experiment; elsewhere every stage runs here as a subflow. Either way the stage
    runs are this run's subflow runs, listed in its artifact `<pipeline>-stages`."""
    from prefect import flow

    @flow(name=f"{pipeline.name}-pipeline")
    def run_pipeline(overrides: dict[str, Any] | None = None, use_dvc: bool = True) -> dict:
        if not (use_dvc and in_dvc_repo()):
            for step_flow in flows.values():
                step_flow(overrides=overrides)
            result = {"stages_run": [s.name for s in pipeline.stages]}
        elif overrides:
            result = {"experiment": dvc_exp_run(overrides, [pipeline.last.name])}
        else:
            from flows.pools import team_repro  # stages on their pools in a team's clone

            result = {"stages_run": team_repro(pipeline)}
        # an experiment's stages are known by their runs, linked under this one
        publish_stages(pipeline, result.get("stages_run", []))
        return result

    return run_pipeline


def main(pipeline: Pipeline, flows: dict[str, Any], whole: Any,
         argv: list[str] | None = None, prog: str | None = None,
         default_stage: str | None = None) -> int:
    """CLI: `python -m flows.<pipeline> <stage>|pipeline [--set key=value ...]`; `reprolab run`
    calls it with its own `prog` and "pipeline" as the default stage."""
    parser = argparse.ArgumentParser(
        prog=prog or f"python -m flows.{pipeline.name}", epilog=describe(pipeline),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run one stage as a Prefect flow, or the whole pipeline through DVC. "
                    "With --set in a DVC repo, the run is a DVC experiment (dvc exp run -S).")
    parser.add_argument("stage", choices=[*flows, "pipeline"],
                        nargs="?" if default_stage else None, default=default_stage)
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a params.yaml value (dotted key)")
    parser.add_argument("--profile", metavar="FILE", help="a YAML file of dotted overrides, "
                        "e.g. profiles/kinetics-400.yaml (--set wins over it)")
    args = parser.parse_args(argv)
    stage = None if args.stage == "pipeline" else pipeline.stage(args.stage).name
    try:
        profile = read_profile(Path(args.profile)) if args.profile else {}
        overrides = {**profile, **parse_overrides(args.overrides)} or None
        settings(overrides)  # fail fast on a bad params.yaml, before any flow starts
        _dispatch(pipeline, flows, whole, args.stage, overrides)
    except ReproLabError as exc:
        if stage:
            fail_as_stage(stage, str(exc))
        print(f"error: {pipeline.name} {args.stage}: {exc}", file=sys.stderr)
        return 2
    except BaseException as exc:  # a bug, an interrupt: DVC's outputs are put back all the same
        if stage:
            fail_as_stage(stage, f"{type(exc).__name__}: {exc}")
        raise
    return 0


def _dispatch(pipeline: Pipeline, flows: dict[str, Any], whole: Any, step: str,
              overrides: dict[str, Any] | None) -> None:
    from prefect import tags

    with checkout_lock(f"{pipeline.name} {step}"), tags(*run_tags()):
        if step == "pipeline":
            whole(overrides=overrides)
        elif overrides and in_dvc_repo():
            dvc_exp_run(overrides, [pipeline.stage(step).name])
        else:
            run_stage_flow(flows[step], overrides)
