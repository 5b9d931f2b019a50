"""The nightly scores any registered version on tonight's rows through its pyfunc
(tasks/rescore.py and each pipeline's rescorer module): a model must get the very number its
evaluate stage wrote for it, and the rows' digest must follow the test rows. The pipelines run
small in tests/tasks/conftest.py."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks import rescore, tracking
from tasks.errors import DataError
from tasks.evaluate import choose_threshold, metric_value
from tasks.rescore import Predictions, Rows
from tasks.storage import read_json


def scored_version(run: dict, spec, rows: Rows) -> rescore.Scored:
    tracking.configure(run["common"])
    return rescore.score_version(spec, f"models:/{run['name']}/{run['version']}", rows)


def scores_as_evaluate(run: dict, spec) -> tuple[Rows, dict]:
    """Tonight's rows of a run, and its results file, once the registered version scored on
    those rows as evaluate scored it (value and threshold)."""
    rows = rescore.tonight(spec, run["params"], run["paths"].root)
    results = read_json(run["paths"].results)
    scored = scored_version(run, spec, rows)
    assert scored.value == pytest.approx(metric_value(results, spec.headline), abs=1e-9)
    assert scored.threshold == pytest.approx(results["test"]["threshold"], abs=1e-9)
    return rows, results


# ---------------------------------------------------------------- the rule, without a model
def test_binary_rows_are_scored_at_the_threshold_chosen_on_dev():
    dev_labels, dev_prob = np.array([0, 0, 1, 1, 1]), np.array([0.1, 0.6, 0.65, 0.7, 0.9])
    rows = Rows("binary", test_labels=np.array([1, 0, 1, 0]), inputs=None, digest="d",
                dev_labels=dev_labels)
    scored = rescore.scored(Predictions(np.array([0.64, 0.61, 0.3, 0.55]), dev_prob), rows)
    # every dev row right at 0.625 (midway between 0.6 and 0.65), not at 0.5
    assert scored.threshold == pytest.approx(0.625) == choose_threshold(dev_labels, dev_prob)
    assert scored.correct.tolist() == [True, True, False, True] and scored.value == 0.75
    with pytest.raises(DataError, match="dev predictions"):
        rescore.scored(Predictions(np.array([0.64, 0.61, 0.3, 0.55])), rows)
    with pytest.raises(DataError, match="3 predictions for 4 test rows"):
        rescore.scored(Predictions(np.array([0.6, 0.6, 0.6]), dev_prob), rows)


def test_top1_rows_are_scored_by_class_name():
    rows = Rows("top1", test_labels=np.array(["jump", "run", "wave"], dtype=object), inputs=None,
                digest="d")
    scored = rescore.scored(Predictions(np.array(["jump", "wave", "wave"])), rows)
    assert scored.correct.tolist() == [True, False, True] and scored.threshold is None
    assert scored.value == pytest.approx(2 / 3)


def test_a_crypto_row_without_p_up_is_named():
    from tasks.crypto.rescore import at_rows

    stamps = pd.date_range("2024-01-01", periods=3, freq="h").to_numpy()
    p_up = pd.Series([0.2, 0.7], index=stamps[:2])
    assert at_rows(p_up, stamps[:2], "val").tolist() == [0.2, 0.7]
    with pytest.raises(DataError, match=r"row 1.*no P\(up\) for the test row at 2024-01-01 02:00"):
        at_rows(p_up, stamps[[0, 2]], "test")


# ---------------------------------------------------------------- crypto
def test_crypto_version_scores_as_crypto_evaluate(crypto, tmp_path):
    from tasks.crypto.paths import CryptoPaths
    from tasks.crypto.pipeline import PIPELINE
    from tasks.crypto.rescore import fed_candles, history_needed

    paths, params = crypto["paths"], crypto["params"]
    rows, results = scores_as_evaluate(crypto, PIPELINE)
    assert len(rows.test_labels) == results["test"]["n"]
    assert rows.block_length == results["bootstrap"]["block_length"]
    # the pyfunc is fed its history before the first val row, up to the last test row
    candles = fed_candles(rows.inputs, history_needed(tracking.load_model(
        f"models:/{crypto['name']}/{crypto['version']}")))
    stamps = candles["timestamp"].to_numpy()
    assert stamps[-1] == rows.inputs.test[-1] and stamps[0] < rows.inputs.dev[0]
    assert len(candles) < len(rows.inputs.candles)

    assert rescore.tonight(PIPELINE, params, paths.root).digest == rows.digest
    other = CryptoPaths(tmp_path)
    samples = pd.read_parquet(paths.splits / "samples.parquet")
    last = samples.index[samples["segment"] == "test"][-1]
    samples.loc[last, "target"] = 1 - samples.loc[last, "target"]
    other.splits.mkdir(parents=True)
    samples.to_parquet(other.splits / "samples.parquet")
    other.raw.mkdir(parents=True)
    shutil.copy(paths.partitions, other.partitions)  # it names the candles by absolute path
    assert rescore.tonight(PIPELINE, params, tmp_path).digest != rows.digest


# ---------------------------------------------------------------- quora
def test_quora_version_scores_as_quora_evaluate(quora, tmp_path):
    from tasks.quora.paths import QuoraPaths
    from tasks.quora.pipeline import PIPELINE

    paths, params = quora["paths"], quora["params"]
    rows, results = scores_as_evaluate(quora, PIPELINE)
    assert len(rows.test_labels) == results["test"]["n"] and rows.block_length is None

    pairs = pd.read_parquet(paths.split / "pairs.parquet")
    first = pairs.index[pairs["split"] == "test"][0]
    pairs.loc[first, "question2"] = pairs.loc[first, "question2"] + " really?"
    other = QuoraPaths(tmp_path)
    other.split.mkdir(parents=True)
    pairs.to_parquet(other.split / "pairs.parquet")
    assert rescore.tonight(PIPELINE, params, tmp_path).digest != rows.digest


# ---------------------------------------------------------------- kinetics
def evaluated_classes(run: dict) -> list[str]:
    """The class kinetics_evaluate predicts for each test clip (its frames, its test views)."""
    import torch

    from models.layers import ViewAverage
    from tasks.train import predict
    from tasks.video.modeling import clip_loader
    from tasks.video.preprocess import normalize_clips
    from tasks.video.report import load_trained
    from tasks.video.splits import read_splits

    paths, settings, classes = run["paths"], run["settings"], run["classes"]
    model = load_trained("besnet", settings, len(classes), paths.artifacts)
    loader = clip_loader(read_splits(paths.split).test, settings, run["common"].seed,
                         train=False, root=paths.root)
    log_probs = predict(ViewAverage(model), loader, torch.device("cpu"), normalize_clips)
    return [classes[i] for i in log_probs.argmax(axis=1)]


def test_kinetics_version_scores_as_kinetics_evaluate(kinetics, tmp_path):
    from tasks.video.paths import KineticsPaths
    from tasks.video.pipeline import PIPELINE
    from tasks.video.rescore import predict
    from tasks.video.splits import CLIPS_FILE

    paths, params = kinetics["paths"], kinetics["params"]
    rows = rescore.tonight(PIPELINE, params, paths.root)
    results = read_json(paths.results)
    assert sorted(rows.inputs["path"]) == sorted(str(Path(c).resolve()) for c in kinetics["clips"])
    assert set(rows.test_labels) <= set(kinetics["classes"])
    scored = scored_version(kinetics, PIPELINE, rows)
    assert scored.value == pytest.approx(metric_value(results, PIPELINE.headline), abs=1e-9)
    assert len(rows.test_labels) == results["clips"] and rows.block_length is None
    # an untrained model's top-1 is 0 either way: its class per clip must be evaluate's too
    served = predict(tracking.load_model(f"models:/{kinetics['name']}/{kinetics['version']}"),
                     rows)
    assert served.test.tolist() == evaluated_classes(kinetics)

    other = KineticsPaths(tmp_path)
    other.split.mkdir(parents=True)
    other.clips.symlink_to(paths.clips)
    other.manifest.symlink_to(paths.manifest)
    shutil.copy(paths.split / "split.json", other.split / "split.json")
    clips = pd.read_parquet(paths.split / CLIPS_FILE)
    first = clips.index[clips["part"] == "test"][0]
    clips.loc[first, "class_index"] = (clips.loc[first, "class_index"] + 1) % len(
        kinetics["classes"])
    clips.to_parquet(other.split / CLIPS_FILE)
    assert rescore.tonight(PIPELINE, params, tmp_path).digest != rows.digest
