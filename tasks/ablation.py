"""Ablations over seeds: the grid file, and the table of means, intervals and differences.

Is a difference real or a lucky shot? Every configuration runs for the same seeds; each metric
gets its mean, standard deviation and a 95% Student-t interval over seeds, and its difference
to the reference configuration is taken seed by seed (same seed, same data and initial draw
wherever the configurations allow), with the t interval of that paired difference and whether
it excludes zero. With 3 seeds the intervals are wide on purpose: t(2) = 4.30.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import Field, ValidationError, model_validator

from tasks.config import PIPELINE_NAMES, Section, load_params
from tasks.errors import ConfigError
from tasks.evaluate import metric_value


class AblationConfig(Section):
    """One configuration: params.yaml overrides (dotted keys), and where its metrics are read
    (`read: leak_audit.leaky` reads `leak_audit.leaky.<metric>` instead of `<metric>`)."""

    set: dict[str, Any] = {}
    read: str = ""


class Grid(Section):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    pipeline: str
    description: str = ""
    seeds: int = Field(3, ge=2, description="runs per configuration (2 at least: an interval)")
    metrics: list[str] = Field(min_length=1)
    reference: str
    configs: dict[str, AblationConfig] = Field(min_length=2)

    @model_validator(mode="after")
    def _reference_is_a_config(self) -> Grid:
        if self.reference not in self.configs:
            raise ValueError(f"reference {self.reference!r} is not one of the configs "
                             f"{list(self.configs)}")
        return self

    def metric_key(self, config: str, metric: str) -> str:
        read = self.configs[config].read
        return f"{read}.{metric}" if read else metric


def load_grid(text_or_path: str, params_path: str | Path = "params.yaml") -> Grid:
    """A grid from a YAML file or inline YAML/JSON, validated, every config's overrides too."""
    path = Path(text_or_path)
    source = str(path) if path.suffix in (".yaml", ".yml", ".json") else "inline grid"
    if source != "inline grid" and not path.exists():
        raise ConfigError(f"{path}: grid file not found")
    text = path.read_text() if source != "inline grid" else text_or_path
    try:
        raw = yaml.safe_load(text)
        grid = Grid.model_validate(raw)
    except (yaml.YAMLError, ValidationError) as exc:
        raise ConfigError(f"{source}: {exc}") from None
    if grid.pipeline not in PIPELINE_NAMES:
        raise ConfigError(f"{source}: unknown pipeline {grid.pipeline!r}")
    for name, config in grid.configs.items():
        try:
            load_params(params_path, config.set or None)
        except ConfigError as exc:
            raise ConfigError(f"{source}: config {name!r}: {exc}") from None
    return grid


def t_interval(values: np.ndarray, alpha: float = 0.05) -> tuple[float, float, float, float]:
    """(mean, sample std, low, high): the Student-t interval of the mean."""
    from scipy import stats

    values = np.asarray(values, dtype=np.float64)
    n, mean = len(values), float(np.mean(values))
    std = float(np.std(values, ddof=1)) if n > 1 else math.nan
    half = float(stats.t.ppf(1 - alpha / 2, n - 1)) * std / math.sqrt(n) if n > 1 else math.nan
    return mean, std, mean - half, mean + half


def summarize(grid: Grid, results: Mapping[str, Mapping[int, Mapping[str, Any]]]
              ) -> list[dict[str, Any]]:
    """One row per (config, metric): n, mean, std, interval; difference to the reference
    (paired by seed) with its interval and whether it excludes zero."""
    rows = []
    for metric in grid.metrics:
        ref = results[grid.reference]
        for config, by_seed in results.items():
            seeds = sorted(by_seed)
            values = np.array([metric_value(by_seed[s], grid.metric_key(config, metric))
                               for s in seeds])
            mean, std, low, high = t_interval(values)
            row = {"config": config, "metric": metric, "n": len(values), "mean": mean,
                   "std": std, "ci_low": low, "ci_high": high, "reference": config == grid.reference}
            if config != grid.reference:
                base = np.array([metric_value(ref[s], grid.metric_key(grid.reference, metric))
                                 for s in seeds])
                d_mean, _, d_low, d_high = t_interval(values - base)
                row.update(diff=d_mean, diff_low=d_low, diff_high=d_high,
                           excludes_zero=bool(d_low > 0 or d_high < 0))
            rows.append(row)
    return rows


def markdown(grid: Grid, rows: list[dict[str, Any]], seeds: list[int]) -> str:
    lines = [f"## {grid.name}", "", grid.description.strip(), "",
             f"{len(seeds)} seeds ({', '.join(map(str, seeds))}); 95% Student-t intervals; "
             f"differences to `{grid.reference}` paired by seed.", "",
             "| config | metric | mean | std | 95% CI | diff vs ref | 95% CI of diff | real? |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        diff = ("(reference)", "", "") if r["reference"] else (
            f"{r['diff']:+.4f}", f"[{r['diff_low']:+.4f}, {r['diff_high']:+.4f}]",
            "yes: excludes 0" if r["excludes_zero"] else "no: includes 0")
        lines.append(f"| {r['config']} | {r['metric']} | {r['mean']:.4f} | {r['std']:.4f} | "
                     f"[{r['ci_low']:.4f}, {r['ci_high']:.4f}] | {diff[0]} | {diff[1]} | "
                     f"{diff[2]} |")
    return "\n".join(lines) + "\n"


def update_report(directory: Path, grid: Grid, rows: list[dict], seeds: list[int]) -> Path:
    """reports/ablations/<pipeline>.md: one section per grid (this one replaced), from a JSON
    store beside it; both written atomically."""
    from tasks.storage import write_json, write_text

    store = directory / f"{grid.pipeline}.json"
    sections = json.loads(store.read_text()) if store.exists() else {}
    sections[grid.name] = {"markdown": markdown(grid, rows, seeds), "rows": rows,
                           "seeds": seeds, "configs": {k: v.set for k, v in grid.configs.items()}}
    write_json(sections, store)
    text = f"# Ablations: {grid.pipeline}\n\n" + "\n".join(
        sections[name]["markdown"] for name in sorted(sections))
    return write_text(text, directory / f"{grid.pipeline}.md")
