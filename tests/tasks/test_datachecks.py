"""The night's data checks (tasks/datachecks.py) and the tables each pipeline gives them."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks.config import DataChecks, load_params
from tasks.datachecks import (
    POSITIVE,
    Column,
    Table,
    check,
    label_shift,
    population_stability,
    profile,
    summary_line,
)
from tasks.storage import read_json, write_parquet

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = DataChecks()
COLUMNS = (Column("ret", -1.0, 1.0), Column("size", low=0.0), Column("count"),
           Column("price", low=POSITIVE, drift=False))


def synthetic(n: int, seed: int, scale: float = 1.0, up: float = 0.4) -> Table:
    """Returns, sizes, counts and a price level, with a 0/1 label (`up` ones)."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "key": np.arange(n) + 1_000_000 * seed,
        "ret": np.clip(rng.standard_t(4, n) * 0.01 * scale, -1, 1),
        "size": rng.lognormal(0, 1, n), "count": rng.poisson(3, n).astype("int64"),
        "price": 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n))),
        "up": (rng.random(n) < up).astype("int64")})
    return Table(frame, COLUMNS, "up", "key")


@pytest.fixture(scope="module")
def reference() -> dict:
    return profile(synthetic(20_000, seed=10_000), SETTINGS, seed=0)


def edited(table: Table, **columns) -> Table:
    return Table(table.frame.assign(**columns), table.columns, table.label, table.key)


# ------------------------------------------------------------------ profile
def test_profile_is_json_small_and_seeded(reference):
    text = json.dumps(reference)
    assert json.loads(text) == reference
    assert reference["rows"] == 20_000
    assert reference["schema"] == {"ret": "f", "size": "f", "count": "i", "price": "f", "up": "i"}
    assert set(reference["samples"]) == {"ret", "size", "count"}  # price: drift=False
    assert all(len(s) == SETTINGS.reference_rows for s in reference["samples"].values())
    assert len(text) < 20 * 3 * SETTINGS.reference_rows  # ~7 significant digits a value
    assert sum(reference["label_shares"].values()) == pytest.approx(1)
    assert set(reference["label_shares"]) == {"0", "1"}
    again = profile(synthetic(20_000, seed=10_000), SETTINGS, seed=0)
    assert again == reference
    assert profile(synthetic(20_000, seed=10_000), SETTINGS, seed=1) != reference


def test_profile_keeps_every_value_of_a_small_table():
    small = synthetic(150, seed=3)
    kept = profile(small, SETTINGS, seed=0)["samples"]["ret"]
    assert len(kept) == 150
    assert np.allclose(sorted(kept), np.sort(small.frame["ret"]), rtol=1e-6)


# ------------------------------------------------------------------ check
def test_a_fresh_sample_of_the_same_distribution_passes(reference):
    results = [check(synthetic(24, seed), reference, SETTINGS) for seed in range(50)]
    failed = [summary_line(r) for r in results if not r["passed"]]
    assert failed == []
    assert all(set(r["drift"]) == {"ret", "size", "count"} for r in results)
    assert all(r["label_shift"] is not None for r in results)


def test_returns_scaled_tenfold_drift(reference):
    result = check(synthetic(24, seed=7, scale=10), reference, SETTINGS)
    assert not result["passed"]
    assert result["drift"]["ret"]["drifted"]
    assert not result["drift"]["size"]["drifted"]
    assert result["drift"]["ret"]["psi"] > 1
    assert len(result["reasons"]) == 1
    assert "ret (KS" in result["reasons"][0] and "1 column(s) drifted" in result["reasons"][0]


def test_one_drifted_column_is_allowed_when_settings_say_so(reference):
    lenient = SETTINGS.model_copy(update={"max_drifted_columns": 1})
    assert check(synthetic(24, seed=7, scale=10), reference, lenient)["passed"]


def test_nulls_fail_naming_the_column_and_share(reference):
    new = synthetic(40, seed=1)
    size = new.frame["size"].copy()
    size.iloc[[3, 9]] = [np.nan, np.inf]
    result = check(edited(new, size=size), reference, SETTINGS)
    assert not result["passed"]
    assert result["nulls"]["size"] == pytest.approx(2 / 40)
    assert result["reasons"] == [
        "column 'size' is null, NaN or infinite in 2 of 40 rows (5%), more than "
        "max_null_share 0"]
    assert check(edited(new, size=size), reference,
                 SETTINGS.model_copy(update={"max_null_share": 0.1}))["passed"]


def test_values_out_of_range_fail(reference):
    new = synthetic(30, seed=2)
    price = new.frame["price"].copy()
    price.iloc[5] = 0.0
    result = check(edited(new, price=price, size=new.frame["size"] * -1), reference, SETTINGS)
    assert result["out_of_range"] == {"ret": 0.0, "size": 1.0, "price": pytest.approx(1 / 30)}
    assert any(r.startswith("column 'price' is outside (0, inf) in 1 of 30 rows")
               for r in result["reasons"])
    assert any(r.startswith("column 'size' is outside [0, inf) in 30 of 30 rows")
               for r in result["reasons"])


def test_label_shift_fails_only_when_large_and_unlikely(reference):
    shifted = check(synthetic(60, seed=4, up=0.95), reference, SETTINGS)
    assert not shifted["passed"]
    assert shifted["label_shift"] > 0.4 and shifted["label_p_value"] < 1e-3
    assert shifted["reasons"][0].startswith("label 'up' shares moved by")
    # 24 rows from 40/60 shares: a TV of 0.2 or more happens a few nights in a hundred
    for ones in (15, 16):
        shift, p_value = label_shift({"0": 24 - ones, "1": ones}, {"0": 0.6, "1": 0.4})
        assert shift > SETTINGS.max_label_shift and p_value > SETTINGS.drift_p_value


def test_label_shift_counts_a_class_the_reference_never_had():
    shift, p_value = label_shift({"0": 10, "1": 10, "2": 10}, {"0": 0.5, "1": 0.5})
    assert shift == pytest.approx(1 / 3) and p_value < 1e-3


def test_too_few_rows_are_noted_and_still_range_checked(reference):
    result = check(synthetic(12, seed=5, scale=10, up=1.0), reference, SETTINGS)
    assert result["notes"] == ["12 new rows < min_rows 20: balance and drift not tested"]
    assert result["drift"] == {} and result["label_shift"] is None
    assert result["passed"]
    price = synthetic(12, seed=5).frame["price"].where(lambda p: p.index != 0, -1.0)
    assert not check(edited(synthetic(12, seed=5), price=price), reference, SETTINGS)["passed"]


def test_no_reference_is_noted(reference):
    result = check(synthetic(50, seed=6, scale=10, up=1.0), None, SETTINGS)
    assert result["passed"]
    assert result["notes"] == [
        "no reference profile (no champion yet): schema, nulls and ranges only"]
    assert result["nulls"]["ret"] == 0.0 and result["drift"] == {}


def test_no_new_rows_pass(reference):
    result = check(synthetic(0, seed=0), reference, SETTINGS)
    assert result["passed"] and result["notes"] == ["no new rows"] and result["rows"] == 0


def test_a_missing_column_fails_naming_it(reference):
    new = synthetic(30, seed=8)
    gone = Table(new.frame.drop(columns=["size"]), new.columns, "up", "key")
    result = check(gone, reference, SETTINGS)
    assert not result["passed"]
    assert "column 'size' is missing from the new rows" in result["reasons"]


def test_a_column_of_another_kind_fails(reference):
    new = synthetic(30, seed=8)
    result = check(edited(new, count=new.frame["count"].astype("float64"),
                          ret=new.frame["ret"].astype(str)), reference, SETTINGS)
    assert "column 'count' holds float values, the reference integer" in result["reasons"]
    assert any(r.startswith("column 'ret' is not numeric (dtype ") for r in result["reasons"])


def test_a_column_new_since_the_reference_is_noted(reference):
    new = synthetic(30, seed=8)
    wider = Table(new.frame.assign(extra=1.0), (*new.columns, Column("extra")), "up", "key")
    result = check(wider, reference, SETTINGS)
    assert result["passed"]
    assert "column 'extra' has no reference sample: drift not tested" in result["notes"]


def test_repeated_keys_fail(reference):
    new = synthetic(30, seed=9)
    keys = new.frame["key"].copy()
    keys.iloc[4] = keys.iloc[3]
    result = check(edited(new, key=keys), reference, SETTINGS)
    assert result["duplicate_keys"] == 1
    assert any(r.startswith("key 'key' repeats in 1 of 30 rows") for r in result["reasons"])


def test_summary_line_says_what_happened(reference):
    good = summary_line(check(synthetic(30, seed=11), reference, SETTINGS))
    assert good.startswith("data checks passed: 30 new rows, 0 of 3 column(s) drifted, label shift")
    bad = summary_line(check(synthetic(30, seed=11, scale=10), reference, SETTINGS))
    assert bad.startswith("data checks FAILED (1): 30 new rows, 1 of 3 column(s) drifted")
    assert "ret (KS" in bad


def test_population_stability_is_small_for_one_distribution_and_large_for_two():
    rng = np.random.default_rng(0)
    sample = rng.normal(size=5000)
    assert population_stability(rng.normal(size=5000), sample) < 0.02
    assert population_stability(rng.normal(3, 1, size=500), sample) > 2
    constant = np.full(100, 10.0)
    assert population_stability(constant, constant) == 0.0
    assert population_stability(np.full(30, 11.0), constant) > 5


# ------------------------------------------------------------------ the pipelines' tables
def run_stage(monkeypatch, tmp_path, module, stage: str, task: str, params) -> None:
    """Run a stage function in tmp_path, its Prefect task called as a plain function."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(module, task, getattr(module, task).fn)
    getattr(module, stage)(params)


def ingested(monkeypatch, tmp_path, pipeline: str, overrides: dict, task: str):
    """(params, the checks' table) after the pipeline's ingest stage ran on `overrides`."""
    import importlib

    params = load_params(ROOT / "params.yaml", overrides)
    run_stage(monkeypatch, tmp_path, importlib.import_module(f"tasks.{pipeline}.ingest"),
              "ingest_stage", task, params)
    return params, importlib.import_module(f"tasks.{pipeline}.checks").table(params, tmp_path)


def test_crypto_table_from_ingested_candles(monkeypatch, tmp_path):
    from tasks.crypto.checks import table
    from tasks.crypto.paths import CryptoPaths

    params, clean = ingested(monkeypatch, tmp_path, "crypto", {
        "crypto.source": "demo", "crypto.demo.n_bars": 3000}, "ingest_candles")
    frame = clean.frame
    assert clean.key == "timestamp" and clean.label == "next_bar_up"
    assert len(frame) == 2999  # the first candle has no previous close
    assert frame["timestamp"].is_unique and frame["timestamp"].is_monotonic_increasing
    assert [c.name for c in clean.columns if c.drift] == ["scaled_return", "log_volume_change"]
    assert set(frame["next_bar_up"].iloc[:-1]) == {0.0, 1.0}
    assert np.isnan(frame["next_bar_up"].iloc[-1])
    index = np.arange(len(frame))
    reference = profile(clean.rows(index < 2500), SETTINGS, seed=0)
    assert check(clean.rows(index >= 2500), reference, SETTINGS)["passed"]
    assert check(clean.rows(index >= 2976), reference, SETTINGS)["passed"]  # one night: 24 bars

    part = read_json(CryptoPaths(tmp_path).partitions)["partitions"][0]
    candles = pd.read_parquet(tmp_path / part["path"])
    spiked = candles.copy()
    spiked.loc[2800, ["high", "close"]] *= 1000  # a consistent candle: ingest would keep it
    write_parquet(spiked, tmp_path / part["path"])
    result = check(table(params, tmp_path).rows(index >= 2500), reference, SETTINGS)
    assert not result["passed"]
    assert any(r.startswith("column 'log_return' is outside [-2.30259, 2.30259] in 2 of 499")
               for r in result["reasons"])
    assert any(r.startswith("column 'log_range' is outside") for r in result["reasons"])

    zero = candles.copy()
    zero.loc[2900, "close"] = 0.0
    write_parquet(zero, tmp_path / part["path"])
    reasons = check(table(params, tmp_path).rows(index >= 2976 - 100), reference,
                    SETTINGS)["reasons"]
    assert any(r.startswith("column 'close' is outside (0, inf) in 1 of") for r in reasons)
    assert any(r.startswith("column 'log_return' is null, NaN or infinite") for r in reasons)


def candles_from(returns: np.ndarray, seed: int = 0) -> pd.DataFrame:
    """Consistent hourly candles whose closes move by `returns` (log)."""
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(returns))
    open_ = np.concatenate([[100.0], close[:-1]])
    return pd.DataFrame({
        "timestamp": pd.date_range("2024-01-01", periods=len(close), freq="h", tz="UTC"),
        "open": open_, "high": np.maximum(open_, close) * 1.001,
        "low": np.minimum(open_, close) * 0.999, "close": close,
        "volume": rng.lognormal(3, 0.5, len(close))})


def test_a_volatility_regime_is_not_drift_but_a_sudden_wild_day_is():
    from tasks.crypto.checks import candle_table

    rng = np.random.default_rng(3)
    calm, wild = rng.normal(0, 0.004, 2000), rng.normal(0, 0.012, 600)  # 3x, for 25 days
    table = candle_table(candles_from(np.concatenate([calm, wild])))
    index = np.arange(len(table.frame))
    reference = profile(table.rows(index < 1999), SETTINGS, seed=0)
    night = table.rows(index >= len(index) - 24)  # the 25th day of the wilder market
    result = check(night, reference, SETTINGS)
    assert result["passed"], summary_line(result)
    raw = Table(night.frame, (Column("log_return"),), None, "timestamp")
    raw_reference = profile(Table(table.rows(index < 1999).frame, (Column("log_return"),), None,
                                  "timestamp"), SETTINGS, seed=0)
    assert check(raw, raw_reference, SETTINGS)["drift"]["log_return"]["drifted"]  # raw would stop

    sudden = np.concatenate([calm, calm[:24] * 8])  # the day after the calm: 8x at once
    table = candle_table(candles_from(sudden))
    index = np.arange(len(table.frame))
    result = check(table.rows(index >= 1999), reference, SETTINGS)
    assert not result["passed"] and result["drift"]["scaled_return"]["drifted"]


def test_scaled_returns_of_a_flat_market_and_a_broken_price():
    from tasks.crypto.checks import scaled_returns

    flat = scaled_returns(pd.Series([0.0, 0.0, 0.0, 0.01, np.nan, 0.01]))
    assert flat.iloc[:3].tolist() == [0.0, 0.0, 0.0]
    assert flat.iloc[3] == 1.0  # the first move out of a flat market is its own scale
    assert np.isnan(flat.iloc[4])  # a broken price: the null check names it
    assert np.isfinite(flat.iloc[5])


def test_quora_table_from_ingested_pairs(monkeypatch, tmp_path):
    from tasks.quora.checks import table

    params, clean = ingested(monkeypatch, tmp_path, "quora", {
        "quora.source": "demo", "quora.demo.n_pairs": 1500}, "ingest_pairs")
    frame = clean.frame
    assert clean.key == "id" and clean.label == "is_duplicate" and frame["id"].is_unique
    assert len(frame) == 1500
    assert frame["word_overlap"].between(0, 1).all()
    assert frame["usable"].mean() == pytest.approx(0.99, abs=0.005)  # the demo's short ones
    assert (frame["question1_words"] <= frame["question1_chars"]).all()
    index = np.arange(len(frame))
    reference = profile(clean.rows(index < 1000), SETTINGS, seed=0)
    assert check(clean.rows(index >= 1000), reference, SETTINGS)["passed"]

    pairs_path = tmp_path / "data/quora/raw/pairs.parquet"
    pairs = pd.read_parquet(pairs_path)
    pairs.loc[1460, "is_duplicate"] = 2  # ingest quarantines this; a rewritten file does not
    pairs.loc[1470:, "question2"] = None  # ingest keeps missing questions (clean drops them)
    write_parquet(pairs, pairs_path)
    result = check(table(params, tmp_path).rows(index >= 1450), reference, SETTINGS)
    assert not result["passed"]
    assert any(r.startswith("column 'is_duplicate' is outside [0, 1] in 1 of 50 rows")
               for r in result["reasons"])
    assert result["drift"]["usable"]["drifted"] and result["drift"]["question2_chars"]["drifted"]


def test_video_table_from_downloaded_clips(monkeypatch, tmp_path):
    from tasks.video.checks import table
    from tasks.video.download import download_stage

    params = load_params(ROOT / "params.yaml", {
        "kinetics.source": "demo", "kinetics.demo.clips_per_class": 4,
        "kinetics.demo.duration": 1.0, "kinetics.demo.size": 32, "kinetics.demo.fps": 8})
    monkeypatch.chdir(tmp_path)
    download_stage(params)
    clean = table(params, tmp_path)
    frame = clean.frame
    manifest = pd.read_parquet(tmp_path / "data/kinetics/manifest/manifest.parquet")
    assert clean.key == "clip_id" and clean.label == "label"
    assert list(frame["clip_id"]) == list(manifest["clip_id"]) and frame["clip_id"].is_unique
    assert (frame["duration"] == 1.0).all() and (frame["file_bytes"] > 0).all()
    assert frame["label"].nunique() == 6
    reference = profile(clean, SETTINGS, seed=0)
    assert check(clean, reference, SETTINGS)["passed"]

    victim = tmp_path / "data/kinetics/clips" / manifest.at[3, "label_dir"] / \
        f"{manifest.at[3, 'clip_id']}.mp4"
    victim.write_bytes(b"")
    gone = tmp_path / "data/kinetics/clips" / manifest.at[5, "label_dir"] / \
        f"{manifest.at[5, 'clip_id']}.mp4"
    gone.unlink()  # a clip that failed to download is not a row
    manifest.loc[7, "time_end"] = 600.0
    write_parquet(manifest, tmp_path / "data/kinetics/manifest/manifest.parquet")
    broken = table(params, tmp_path)
    assert len(broken.frame) == len(manifest) - 1
    result = check(broken, reference, SETTINGS)
    assert not result["passed"]
    assert any(r.startswith("column 'file_bytes' is outside [1, inf) in 1 of 23 rows")
               for r in result["reasons"])
    assert any(r.startswith("column 'duration' is outside (0, 60] in 1 of 23 rows")
               for r in result["reasons"])
