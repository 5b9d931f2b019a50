"""The nightly retrain's parts: champion/challenger on a real MLflow registry (SQLite),
params.yaml overrides, new-data detection from dvc.lock; and a night with new candles."""
import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from flows.nightly import consumed, data_change, markdown
from tasks import champion
from tasks.config import save_overrides
from tasks.crypto.candles import demo_candles
from tasks.errors import ConfigError
from tasks.evaluate import metric_value
from tasks.pipeline import declaration
from tests.conftest import VENV_BIN
from tests.flows.repo_copy import repo_env, run, small_repo


def test_overrides_are_validated_then_written_into_params_keeping_comments(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("# top comment\ncrypto:\n  source: demo   # where candles come from\n"
                    "nightly:\n  margin: 0.0\n")
    params = save_overrides(path, {"crypto.source": "file", "crypto.file.path": "c.csv",
                                   "nightly.margin": 0.02})
    assert params.crypto.source == "file" and params.nightly.margin == 0.02
    text = path.read_text()
    assert "# top comment" in text and "# where candles come from" in text
    assert yaml.safe_load(text)["crypto"]["file"]["path"] == "c.csv"
    before = path.read_text()
    with pytest.raises(ConfigError, match="nightly.pipelines"):
        save_overrides(path, {"nightly.pipelines": ["forex"]})
    with pytest.raises(ConfigError, match="crypto.sourec"):
        save_overrides(path, {"crypto.sourec": "file"})
    assert path.read_text() == before  # nothing written when invalid


def test_new_data_is_a_change_of_what_downstream_stages_read():
    from tasks.site import site_deps

    raw, report = "data/crypto/raw", "reports/crypto/ingest.json"
    assert report in site_deps()  # the site shows the ingest report, a model never reads it
    before = {raw: {"md5": "a", "size": 100, "nfiles": 2},
              report: {"md5": "r1", "size": 10, "nfiles": None}}
    report_only = {**before, report: {"md5": "r2", "size": 12, "nfiles": None}}
    assert not data_change(consumed(before), consumed(report_only))["changed"]
    grown = {**before, raw: {"md5": "b", "size": 150, "nfiles": 3}}
    assert data_change(consumed(before), consumed(grown)) == {
        "changed": True, "bytes_added": 50, "files_added": 1}


def test_the_summary_table_names_failures_stops_and_verdicts():
    verdict = champion.Verdict("m", "2", "1", False, "lower bound <= -0.01", 0.5, 0.6,
                               difference={"mean": -0.1, "low": -0.15, "high": -0.05})
    checks = {"passed": True, "rows": 24, "drift": {}}
    text = markdown([{"pipeline": "crypto", "data": {"changed": False}, "checks": checks,
                      "stages_run": [], "verdict": verdict.as_dict()},
                     {"pipeline": "quora", "error": "quora: stage 'quora_embed' failed"},
                     {"pipeline": "kinetics", "data": {"changed": True, "bytes_added": 9,
                                                       "files_added": 1},
                      "checks": {"passed": False, "rows": 3,
                                 "drift": {"duration": {"drifted": True}}},
                      "stopped": "kinetics: data checks failed"}], 3)
    assert ("| crypto | no | passed (24 new rows) | none | test.accuracy | 0.6000 (v1) "
            "| 0.5000 (v2) | -0.1000 [-0.1500, -0.0500] | no | lower bound <= -0.01 |") in text
    assert "**failed**: quora: stage 'quora_embed' failed" in text
    assert "**failed** (3 new rows, drift: duration)" in text
    assert "**stopped**: kinetics: data checks failed" in text
    assert "DVC push: 3 files" in text


# ---------------------------------------------------------------- nights on one checkout
WORSE = {"crypto.train.lr": 1e-9, "quora.train.lr": 1e-9, "kinetics.train.lr": 1e-9}


def sources(dest: Path) -> tuple[Path, Path, dict]:
    """A Binance-style candle export and a Quora dump that grow night by night, and the
    params that read them (Kinetics stays on its demo clips)."""
    candles, pairs = dest / "BTCUSDT-1h.csv", dest / "quora.tsv"
    extra = {"crypto": {"source": "file", "file": {"path": str(candles), "format": "auto",
                                                   "exchange": "binance", "symbol": "BTC/USDT"}},
             "quora": {"source": "file", "file": {"path": str(pairs)}}}
    return candles, pairs, extra


def write_sources(candles_csv: Path, pairs_tsv: Path, bars: int, pairs: int,
                  spike: bool = False, empty_questions: int = 0) -> None:
    from tasks.quora.ingest import demo_pairs

    candles = demo_candles(3600, pd_start(), "1h", seed=7).iloc[:bars].copy()
    if spike:  # a broken feed: consistent candles, 1000x the price
        candles.iloc[-3:, 1:5] *= 1000.0
    candles.to_csv(candles_csv, index=False)
    frame = demo_pairs(2000, seed=3).iloc[:pairs].copy()
    if empty_questions:
        frame.iloc[-empty_questions:, frame.columns.get_loc("question2")] = ""
    frame.to_csv(pairs_tsv, sep="\t", index=False)


def nightly_cmd(*args: str) -> list[str]:
    return [str(VENV_BIN / "python"), "-m", "flows.nightly", *args]


def night_rows(repo: Path) -> dict[str, dict]:
    record = json.loads((repo / "reports/nightly/summary.json").read_text())
    return {row["pipeline"]: row for row in record["pipelines"]}


def dvc_stale(repo: Path, env: dict) -> set[str]:
    out = subprocess.run([str(VENV_BIN / "dvc"), "status", "--json"], cwd=repo, env=env,
                         capture_output=True, text=True, check=True).stdout
    return set(json.loads(out))


@pytest.mark.slow
def test_nights_check_new_data_judge_on_the_same_rows_and_wait_for_other_runs(
        tmp_path_factory, prefect_server):
    dest = tmp_path_factory.mktemp("nights")
    candles_csv, pairs_tsv, extra = sources(dest)
    repo = small_repo(dest / "repo", extra)
    env = repo_env(prefect_server)
    write_sources(candles_csv, pairs_tsv, 3000, 1200)

    # night 1, and a person's pipeline run started together on the same checkout: both
    # complete, one after the other, and DVC finds nothing stale after them
    person = subprocess.Popen([str(VENV_BIN / "reprolab"), "run", "crypto"], cwd=repo, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(3)
    night = subprocess.run(nightly_cmd(), cwd=repo, env=env, capture_output=True, text=True)
    person_out = person.communicate(timeout=900)[0]
    assert person.returncode == 0, person_out[-3000:]
    assert night.returncode == 0, (night.stdout + night.stderr)[-3000:]
    assert "waits for" in night.stdout + night.stderr + person_out
    assert dvc_stale(repo, env) == set()
    first = night_rows(repo)
    for name, row in first.items():
        assert row["checks"]["passed"] and row["verdict"]["challenger"] is not None, name
        spec = declaration(name)  # through its pyfunc, the challenger scores what evaluate did
        results = json.loads((repo / spec.results_file).read_text())
        assert row["verdict"]["new"] == metric_value(results, spec.headline), name
    # where night 1's model did not beat its strongest baseline, a person promotes it by hand
    for name, row in first.items():
        if not row["verdict"]["promoted"]:
            hand = run([str(VENV_BIN / "reprolab"), "promote", name,
                        row["verdict"]["challenger"], "--reason", "a champion to test"],
                       repo, env)
            assert f"-> v{row['verdict']['challenger']} (by hand: a champion" in hand.stdout
    champions = {name: row["verdict"]["challenger"] for name, row in first.items()}

    # night 2: new rows for every pipeline, and challengers made worse on purpose (a learning
    # rate that leaves them untrained): none is promoted; each champion was re-scored on
    # tonight's rows through its pyfunc (the rows moved), the difference below zero
    write_sources(candles_csv, pairs_tsv, 3300, 1500)
    sets = [arg for key, value in {**WORSE, "kinetics.demo.clips_per_class": 4}.items()
            for arg in ("--set", f"{key}={value}")]
    run(nightly_cmd(*sets), repo, env)
    second = night_rows(repo)
    for name, row in second.items():
        verdict = row["verdict"]
        assert row["data"]["changed"] and row["checks"]["rows"] > 0, name
        assert verdict["challenger"] is not None and not verdict["promoted"], (name, verdict)
        assert verdict["digest"] != first[name]["verdict"]["digest"], name
        assert verdict["champion"] == champions[name] and verdict["old"] is not None, name
        assert verdict["difference"]["mean"] <= 0, name
    assert dvc_stale(repo, env) == set()

    # night 3: a broken candle feed (1000x prices) and a Quora slice with empty questions:
    # both stop before any training, with their reasons on the record and the site; Kinetics,
    # with nothing new, goes on; the night fails naming them
    write_sources(candles_csv, pairs_tsv, 3324, 1550, spike=True, empty_questions=30)
    stopped = subprocess.run(nightly_cmd(), cwd=repo, env=env, capture_output=True, text=True)
    assert stopped.returncode == 2 and "data checks failed" in stopped.stderr
    third = night_rows(repo)
    for name in ("crypto", "quora"):
        row = third[name]
        assert not row["checks"]["passed"] and "stages_run" not in row and "verdict" not in row
        assert row["stopped"].startswith(f"{name}: data checks failed")
        assert (repo / f"reports/nightly/held/{name}.json").exists()
    assert "log_return" in third["crypto"]["stopped"]
    assert third["kinetics"]["stages_run"] == [] and "error" not in third["kinetics"]
    page = (repo / "reports/site/crypto.html").read_text()
    assert "data checks failed" in page
    assert {"crypto_features", "quora_clean"} <= dvc_stale(repo, env)  # held, not trained on


def pd_start():
    import pandas as pd

    return pd.Timestamp("2024-01-01", tz="UTC").to_pydatetime()
