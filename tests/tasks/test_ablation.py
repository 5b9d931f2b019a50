"""Ablation tables: Student-t intervals over seeds, paired differences, grid validation."""
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from tasks.ablation import load_grid, summarize, t_interval, update_report
from tasks.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
PARAMS = ROOT / "params.yaml"
INLINE = """
name: demo
pipeline: crypto
seeds: 3
metrics: [test.accuracy]
reference: base
configs:
  base: {set: {crypto.model.erase_relu: false}}
  erase: {set: {crypto.model.erase_relu: true}}
"""


def test_t_interval_matches_the_textbook_formula():
    values = np.array([0.51, 0.55, 0.53])
    mean, std, low, high = t_interval(values)
    half = stats.t.ppf(0.975, 2) * np.std(values, ddof=1) / np.sqrt(3)
    assert mean == pytest.approx(0.53) and std == pytest.approx(0.02)
    assert (low, high) == pytest.approx((0.53 - half, 0.53 + half))
    assert half == pytest.approx(4.303 * 0.02 / np.sqrt(3), rel=1e-3)


def _results(offsets, noise):
    rng = np.random.default_rng(0)
    out = {}
    for config, offset in offsets.items():
        out[config] = {s: {"test": {"accuracy": 0.5 + 0.01 * s + offset + noise * rng.normal()}}
                       for s in range(5)}
    return out


def test_a_consistent_gain_excludes_zero_even_when_seeds_vary_a_lot():
    grid = load_grid(INLINE, PARAMS).model_copy(update={"seeds": 5})
    rows = summarize(grid, _results({"base": 0.0, "erase": 0.02}, noise=0.001))
    erase = next(r for r in rows if r["config"] == "erase")
    # the seeds move both configs by up to 0.04, the pairing removes that
    assert erase["diff"] == pytest.approx(0.02, abs=0.002) and erase["excludes_zero"]
    assert erase["ci_low"] < 0.5 + 0.02 + 0.02 < erase["ci_high"]  # seeds average +0.02
    base = next(r for r in rows if r["config"] == "base")
    assert base["reference"] and "diff" not in base


def test_noise_alone_is_not_called_real():
    grid = load_grid(INLINE, PARAMS).model_copy(update={"seeds": 5})
    rows = summarize(grid, _results({"base": 0.0, "erase": 0.0}, noise=0.02))
    erase = next(r for r in rows if r["config"] == "erase")
    assert erase["diff_low"] < 0 < erase["diff_high"] and not erase["excludes_zero"]


def test_grids_are_validated_with_the_config_named():
    with pytest.raises(ConfigError, match="config 'bad'.*crypto.model.erase_rleu"):
        load_grid(INLINE.replace("  erase: {set: {crypto.model.erase_relu: true}}",
                                 "  bad: {set: {crypto.model.erase_rleu: true}}"), PARAMS)
    with pytest.raises(ConfigError, match="reference 'nope'"):
        load_grid(INLINE.replace("reference: base", "reference: nope"), PARAMS)
    with pytest.raises(ConfigError, match="not found"):
        load_grid("grids/missing.yaml", PARAMS)


@pytest.mark.parametrize("path", sorted((ROOT / "grids").glob("*.yaml")))
def test_every_shipped_grid_is_valid(path):
    grid = load_grid(str(path), PARAMS)
    assert path.stem.startswith(grid.pipeline) and len(grid.configs) >= 2


def test_the_report_keeps_one_section_per_grid(tmp_path):
    grid = load_grid(INLINE, PARAMS).model_copy(update={"seeds": 5})
    rows = summarize(grid, _results({"base": 0.0, "erase": 0.02}, noise=0.001))
    update_report(tmp_path, grid, rows, list(range(5)))
    other = grid.model_copy(update={"name": "other"})
    path = update_report(tmp_path, other, rows, list(range(5)))
    text = path.read_text()
    assert text.count("## demo") == 1 and text.count("## other") == 1
    assert "| erase | test.accuracy |" in text and "yes: excludes 0" in text
