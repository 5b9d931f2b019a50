"""What every pipeline's flows share: settings from params.yaml, the CLI, driving DVC."""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import prefect
import yaml

from tasks.config import Params, load_params
from tasks.errors import ReproLabError
from tasks.logs import get_logger
from tasks.parallel import shared_prefect_api

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")


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


def dvc_repro(targets: list[str], force: bool = False, single_item: bool = False) -> list[str]:
    """`dvc repro` the targets (DVC decides what is stale); returns the stages that ran.
    `single_item`: only the targets themselves (`dvc repro -s`)."""
    from dvc.repo import Repo

    log = get_logger()
    with shared_prefect_api(), Repo(".") as repo:
        stages = repo.reproduce(targets=targets, force=force, single_item=single_item)
    names = [getattr(s, "addressing", str(s)) for s in stages]
    log.info("dvc repro %s: %s", " ".join(targets), ", ".join(names) or "nothing to reproduce")
    return names


def in_dvc_repo() -> bool:
    return Path(".dvc").is_dir() and Path("dvc.yaml").exists()


def run_tags() -> list[str]:
    """Tags for the stage's flow run from REPROLAB_RUN_TAGS (comma-separated; may be unset)."""
    return [t.strip() for t in os.environ.get("REPROLAB_RUN_TAGS", "").split(",") if t.strip()]


def main(pipeline: str, stages: dict[str, Callable[..., Any]], argv: list[str] | None = None
         ) -> int:
    """CLI: `python -m flows.<pipeline> <stage> [--set key=value ...]`."""
    parser = argparse.ArgumentParser(prog=f"python -m flows.{pipeline}")
    parser.add_argument("stage", choices=list(stages))
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a params.yaml value (dotted key)")
    args = parser.parse_args(argv)
    try:
        overrides = parse_overrides(args.overrides) or None
        settings(overrides)  # fail fast on a bad params.yaml, before any flow starts
        with prefect.tags(*run_tags()):  # the caller's tags, e.g. a test finding its own runs
            stages[args.stage](overrides=overrides)
    except ReproLabError as exc:
        print(f"error: {pipeline} {args.stage}: {exc}", file=sys.stderr)
        return 2
    return 0
