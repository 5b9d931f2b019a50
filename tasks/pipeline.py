"""One pipeline, one declaration: stages in order, and for each the callable, the params it
reads, the files it reads and writes. dvc.yaml is generated from the declarations
(`python -m tasks.pipeline write`), the stage flows, CLI, nightly, ablations and demo read them.

A stage's code dependencies are the first-party import closure of its module (tasks/fingerprint),
so they are complete by construction; its params are enforced at run time by `ParamsView`: a
stage that reads a key it does not declare fails, naming the key.
"""
from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tasks.errors import ConfigError

PIPELINES = {"crypto": "tasks.crypto.pipeline", "quora": "tasks.quora.pipeline",
             "kinetics": "tasks.video.pipeline"}
SITE_MODULE = "tasks.site"  # the report stage: the results site built from every pipeline
DVC_YAML = Path("dvc.yaml")


@dataclass(frozen=True)
class Out:
    """A stage output; `persist` keeps it between runs (incremental ingest, resumable work)."""

    path: str
    persist: bool = False
    cache: bool = True
    note: str = ""


# the file MLflow runs, by path, to load every logged model (tasks/tracking.py ships it in the
# model): the stages that log and register models declare it in `code_files`
MODEL_LOADER = "tasks/pyfunc_entry.py"
LOSSES = ("train_loss", "val_loss")  # the columns of a learning curve's CSV


@dataclass(frozen=True)
class Curve:
    """A data plot the stage writes (CSV): a DVC output and a top-level dvc.yaml plot, so
    `dvc plots diff` overlays it across experiments and commits."""

    path: str
    title: str
    x: str
    y: tuple[str, ...]
    y_label: str = ""


@dataclass(frozen=True)
class Stage:
    name: str                           # the DVC stage and Prefect flow name: <pipeline>_<step>
    run: str                            # "module:function", called with the params view
    doc: str                            # one line: what the stage does
    params: tuple[str, ...]             # params.yaml keys or sections it reads
    deps: tuple[str, ...] = ()          # files it reads (earlier stages' outputs)
    outs: tuple[Out | str, ...] = ()
    input_params: tuple[str, ...] = ()  # params whose value is a file or folder it reads
    metrics: tuple[str, ...] = ()
    plots: tuple[str, ...] = ()         # images (a folder of PNGs)
    curves: tuple[Curve, ...] = ()      # data plots (CSV) with their dvc.yaml plot definition
    cli: str = ""                       # a stage of no pipeline: `python -m <cli>` runs it
    code_files: tuple[str, ...] = ()    # code it runs by path, not by import (deps like modules)
    pool: str | None = None             # in a team's clone, runs on this work pool (flows/pools.py)

    @property
    def step(self) -> str:
        return self.name.split("_", 1)[-1]

    @property
    def module(self) -> str:
        return self.run.partition(":")[0]

    @property
    def out_paths(self) -> list[str]:
        return [o.path if isinstance(o, Out) else o for o in self.outs]

    def callable(self) -> Callable[..., dict]:
        module, _, name = self.run.partition(":")
        return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Reference:
    """A published (or field-noted) number to read ours against, with what it was measured on.
    `ours` is the dotted key of our comparable number in the metrics file (a list of rows is
    entered by a row's `key`); `when` holds (dotted key, value) conditions under which ours is
    comparable at all (e.g. the fixed dilation the note used)."""

    label: str
    value: float
    measured_on: str
    ours: str | None = None
    when: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class Pipeline:
    name: str
    stages: tuple[Stage, ...]
    model_name: str                     # the registered MLflow model
    metrics_file: str                   # DVC's metrics: the summary (tasks.evaluate.summary_metrics)
    results_file: str                   # everything evaluate found; the site reads it
    headline: str                       # dotted key in the results file
    baselines: tuple[str, ...]          # dotted keys of the naive baselines' headline metric
    test_data_stage: str                # the stage whose output holds the test split
    data_stages: tuple[str, ...] = ()  # run once per data setting by ablations
    ablation_skips: tuple[str, ...] = ()  # stages an ablation run leaves out (costly, unneeded)
    references: tuple[Reference, ...] = ()  # the research notes' numbers, beside ours
    title: str = ""                     # how the report site names it
    data_reports: tuple[str, ...] = ()  # JSON data reports (rows in/kept, quarantine, gaps)
    summary: tuple[tuple[str, str], ...] = ()  # extra (name, dotted key) in the metrics file
    rescorer: str = ""                  # module: tonight's rows for any version (tasks/rescore.py)
    checks: str = ""                    # module: the rows the night's data checks read
                                        # (tasks/datachecks.py)

    def stage(self, step_or_name: str) -> Stage:
        for stage in self.stages:
            if step_or_name in (stage.step, stage.name):
                return stage
        raise ConfigError(f"pipeline {self.name}: no stage {step_or_name!r} "
                          f"(stages: {', '.join(s.step for s in self.stages)})")

    @property
    def last(self) -> Stage:
        return self.stages[-1]

    def part(self, data: bool) -> list[Stage]:
        """The data stages (data=True: run once per data setting by ablations) or the rest."""
        return [s for s in self.stages if (s.name in self.data_stages) == data]


def declaration(name: str) -> Pipeline:
    """The declared pipeline `name` (crypto, quora, kinetics)."""
    if name not in PIPELINES:
        raise ConfigError(f"unknown pipeline {name!r} (known: {', '.join(PIPELINES)})")
    return importlib.import_module(PIPELINES[name]).PIPELINE


def declarations() -> list[Pipeline]:
    return [declaration(name) for name in PIPELINES]


def describe(pipeline: Pipeline) -> str:
    """The stages in order: step, what it does, its DVC stage name and the params it reads
    (the help of `python -m flows.<pipeline>` and `reprolab run`)."""
    lines = [f"stages of the {pipeline.name} pipeline, in order (dvc.yaml has the same):"]
    for stage in pipeline.stages:
        lines.append(f"  {stage.step:<10} {stage.doc}")
        lines.append(f"  {'':<10} stage {stage.name}; params: {', '.join(stage.params)}")
    lines.append("  pipeline   every stage: `dvc repro` decides what is stale")
    return "\n".join(lines)


# ---------------------------------------------------------------- params, enforced
def _allowed(key: str, declared: Iterable[str]) -> bool:
    return any(key == d or key.startswith(f"{d}.") for d in declared)


def _under(key: str, declared: Iterable[str]) -> bool:
    """`key` is a section holding a declared key (a view of it is fine, a dump is not)."""
    return _allowed(key, declared) or any(d.startswith(f"{key}.") for d in declared)


READS_LOG = "REPROLAB_PARAMS_READ"


class UndeclaredParam(ConfigError):
    """A stage read a params.yaml key its declaration does not list (dvc.yaml would miss it)."""


class ParamsView:
    """Read-only view of the settings that lets a stage read only its declared params and
    records what it read. Sections come back as views; leaves as their values."""

    def __init__(self, model: Any, declared: tuple[str, ...], stage: str, path: str = "",
                 read: set[str] | None = None) -> None:
        object.__setattr__(self, "_model", model)
        object.__setattr__(self, "_declared", declared)
        object.__setattr__(self, "_stage", stage)
        object.__setattr__(self, "_path", path)
        object.__setattr__(self, "_read", set() if read is None else read)

    def _child(self, name: str) -> str:
        return f"{self._path}.{name}" if self._path else name

    def _check(self, key: str) -> None:
        if not _allowed(key, self._declared):
            raise UndeclaredParam(
                f"stage {self._stage} read params key {key!r} but does not declare it "
                f"(add it to the stage's params in its pipeline declaration, then "
                f"`python -m tasks.pipeline write`)")
        self._read.add(key)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        kind = type(self._model)
        if name not in kind.model_fields:
            prop = getattr(kind, name, None)
            if isinstance(prop, property):
                return prop.fget(self)  # a computed value reads through the view
            raise AttributeError(f"{name!r} is not a setting of {self._path or 'params'}")
        key = self._child(name)
        value = getattr(self._model, name)
        if _is_section(value):  # checked at the leaf read, which names the exact key
            return ParamsView(value, self._declared, self._stage, key, self._read)
        self._check(key)
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("settings are read-only")

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        """(name, value) of the declared fields only: what a stage may log or hash. Not
        recorded as read: a key that is only logged or hashed is read by nothing."""
        for name in type(self._model).model_fields:
            key = self._child(name)
            if _under(key, self._declared):
                value = getattr(self._model, name)
                yield name, (ParamsView(value, self._declared, self._stage, key, set())
                             if _is_section(value) else value)

    def flat(self, prefix: str = "") -> dict[str, Any]:
        """Every declared leaf under this view as {prefix + dotted key: value}, each recorded
        as read: for code that uses them all (tasks.config.flat_params, for logging and
        hashing, records nothing)."""
        out: dict[str, Any] = {}
        for name, value in self:
            if isinstance(value, ParamsView):
                out.update(getattr(self, name).flat(f"{prefix}{name}."))
            else:
                out[f"{prefix}{name}"] = getattr(self, name)
        return out

    def model_copy(self, update: dict[str, Any] | None = None) -> Any:
        """A plain copy of a whole declared section (every field is read)."""
        self._check(self._path)
        return self._model.model_copy(update=update)

    def model_dump(self, **kwargs: Any) -> dict[str, Any]:
        self._check(self._path)
        return self._model.model_dump(**kwargs)

    @property
    def keys_read(self) -> set[str]:
        return set(self._read)

    def log_reads(self) -> None:
        """Append the keys this stage read to the file REPROLAB_PARAMS_READ names, if set
        (the end-to-end test checks that every params.yaml key is read by something)."""
        dest = os.environ.get(READS_LOG)
        if dest:
            line = json.dumps({"stage": self._stage, "read": sorted(self._read)}) + "\n"
            with open(dest, "a", encoding="utf-8") as fh:
                fh.write(line)

    def __repr__(self) -> str:
        return f"ParamsView({self._path or 'params'}, declared={list(self._declared)})"


def _is_section(value: Any) -> bool:
    from pydantic import BaseModel

    return isinstance(value, BaseModel | ParamsView)


# ---------------------------------------------------------------- dvc.yaml
def stage_modules(pipeline: Pipeline | None, stage: Stage) -> list[str]:
    """What the stage's command loads: its CLI and the stage's own module."""
    return [stage.cli.split()[0] if stage.cli else f"flows.{pipeline.name}", stage.module]


def stage_cmd(pipeline: Pipeline | None, stage: Stage) -> str:
    return f"python -m {stage.cli}" if stage.cli else \
        f"python -m flows.{pipeline.name} {stage.step}"


def code_deps(pipeline: Pipeline | None, stage: Stage) -> list[str]:
    """Every first-party module the stage's command imports, and the files it runs by path."""
    from tasks.fingerprint import module_closure, relative

    return sorted({*relative(module_closure(stage_modules(pipeline, stage))), *stage.code_files})


def _out(out: Out | str) -> str | dict:
    if isinstance(out, str):
        return out
    opts = {k: v for k, v in (("persist", out.persist), ("cache", out.cache))
            if v != Out.__dataclass_fields__[k].default}
    return {out.path: opts} if opts else out.path


def dvc_stage(pipeline: Pipeline | None, stage: Stage) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "desc": stage.doc,
        "cmd": stage_cmd(pipeline, stage),
        "deps": [*stage.deps, *(f"${{{p}}}" for p in stage.input_params),
                 *code_deps(pipeline, stage)],
    }
    if stage.params:
        entry["params"] = sorted(stage.params)
    if stage.outs:
        entry["outs"] = [_out(o) for o in stage.outs]
    if stage.metrics:
        entry["metrics"] = list(stage.metrics)
    if stage.curves:
        entry.setdefault("outs", []).extend(c.path for c in stage.curves)
    if stage.plots:
        entry["plots"] = list(stage.plots)
    return entry


def dvc_plot(curve: Curve) -> dict[str, Any]:
    """A top-level dvc.yaml plot: `dvc plots show/diff` draw it from the CSV (offline: use
    `dvc plots show --json`, or the report site, whose pages need no network)."""
    spec: dict[str, Any] = {"template": "linear", "x": curve.x,
                            "y": {curve.path: list(curve.y)}}
    if curve.y_label:
        spec["y_label"] = curve.y_label
    return {curve.title: spec}


HEADER = """\
# GENERATED from the pipeline declarations (tasks/<pipeline>/pipeline.py) by
# `python -m tasks.pipeline write`; a test fails when it is out of date. Do not edit by hand.
# deps: earlier stages' outputs, the files params.yaml names (${...}), and every first-party
# module the stage imports (its import closure); params: the keys the stage reads (enforced).
"""


def render() -> str:
    """dvc.yaml: every pipeline's stages, the report site built from their results, and the
    data plots (curves) they write."""
    site = importlib.import_module(SITE_MODULE).STAGE  # by name: not every stage's code dep
    specs = declarations()
    stages = {s.name: dvc_stage(p, s) for p in specs for s in p.stages}
    stages[site.name] = dvc_stage(None, site)
    doc: dict[str, Any] = {"stages": stages}
    curves = [c for p in specs for s in p.stages for c in s.curves]
    if curves:
        doc["plots"] = [dvc_plot(c) for c in curves]
    return HEADER + yaml.safe_dump(doc, sort_keys=False, width=100)


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    text = render()
    if args[:1] == ["write"]:
        DVC_YAML.write_text(text)
        print(f"wrote {DVC_YAML}")
        return 0
    if args[:1] == ["check"]:
        if DVC_YAML.read_text() != text:
            print(f"{DVC_YAML} is out of date: run `python -m tasks.pipeline write`",
                  file=sys.stderr)
            return 1
        print(f"{DVC_YAML} is up to date")
        return 0
    print("usage: python -m tasks.pipeline write|check", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
