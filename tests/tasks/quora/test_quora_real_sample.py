"""The real Quora sample through every stage (source: file): the TF-IDF Siamese configuration
clears the majority baseline with its whole interval, and the disjoint split shares no text."""
from pathlib import Path

import pytest
import torch

from tasks.config import load_params
from tasks.quora.clean import check_disjoint, clean_questions, split_pairs
from tasks.quora.embed import embed_questions
from tasks.quora.ingest import ingest_pairs
from tasks.quora.paths import QuoraPaths
from tasks.quora.report import evaluate_models
from tasks.quora.training import train_models
from tasks.storage import read_json, read_parquet

ROOT = Path(__file__).resolve().parents[3]
SAMPLE = ROOT.parent / "shared" / "data" / "quora" / "quora_pairs_erogol_id100000-125999.tsv"

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not SAMPLE.exists(), reason=f"{SAMPLE} (shared sample) missing")]


def _run(tmp: Path, overrides: dict) -> tuple[QuoraPaths, dict]:
    params = load_params(ROOT / "params.yaml", {
        "quora.source": "file", "quora.file.path": str(SAMPLE), "quora.evaluate.table": False,
        "quora.evaluate.bootstrap": 300, "common.mlflow.tracking_uri": f"sqlite:///{tmp}/m.db",
        "common.mlflow.artifact_dir": str(tmp / "mlartifacts"), **overrides})
    paths, q, c = QuoraPaths(tmp), params.quora, params.common
    ingest_pairs.fn(q, paths.raw, c.seed)
    clean_questions.fn(q, paths.raw, paths.clean)
    split_pairs.fn(q, paths.clean, paths.split, c.seed)
    embed_questions.fn(q, paths.split, paths.embed, c.seed)
    paths.artifacts.mkdir(parents=True)
    train_models.fn(q, c, paths.split, paths.embed, paths.artifacts, torch.device("cpu"))
    return paths, evaluate_models.fn(q, c, paths.artifacts, paths.results, paths.metrics,
                                     paths.plots, paths.curves)


@pytest.fixture(scope="module", params=["siamese", "fc_head"])
def random_split(request, tmp_path_factory):
    return _run(tmp_path_factory.mktemp("quora"), {"quora.model.variant": request.param})


def test_tfidf_siamese_beats_majority_with_its_whole_interval(random_split):
    paths, metrics = random_split
    test, majority = metrics["test"], metrics["baselines"]["majority"]["accuracy"]
    assert metrics["config"].startswith("gensim + tf-idf + ")
    assert abs(majority - 0.63) < 0.02
    assert test["accuracy"] >= 0.70
    assert test["accuracy_ci"]["low"] > majority
    logistic = metrics["baselines"]["logistic"]
    assert logistic["accuracy"] > majority + 0.05  # the classical baseline is a real one
    assert metrics["verdict"]["strongest_baseline"] in ("majority", "logistic")
    for key in ("f1", "roc_auc", "log_loss", "accuracy_ci"):
        assert key in test
    saved = read_json(paths.results)
    assert saved["test"]["accuracy"] == test["accuracy"]
    assert {p.name for p in paths.plots.iterdir()} >= {"confusion.png", "roc.png"}


def test_clean_and_split_reports_count_the_empty_question_and_shared_questions(random_split):
    paths, _ = random_split
    report = read_json(paths.clean / "clean.json")
    assert report["pairs_in"] == 26000
    assert sum(report["dropped"].values()) == 26000 - report["pairs_kept"]
    assert report["dropped"]["missing question"] == 1
    report = read_json(paths.split / "split.json")
    random = report["splits"]["random"]["pairs_sharing_a_train_question"]["test"]
    disjoint = report["splits"]["question_disjoint"]["pairs_sharing_a_train_question"]["test"]
    assert disjoint == 0.0 and random > disjoint


def test_question_disjoint_split_has_no_shared_question_text(tmp_path):
    params = load_params(ROOT / "params.yaml", {
        "quora.source": "file", "quora.file.path": str(SAMPLE),
        "quora.split.kind": "question_disjoint"})
    paths = QuoraPaths(tmp_path)
    ingest_pairs.fn(params.quora, paths.raw, 0)
    clean_questions.fn(params.quora, paths.raw, paths.clean)
    split_pairs.fn(params.quora, paths.clean, paths.split, 0)
    pairs = read_parquet(paths.split / "pairs.parquet")
    check_disjoint(pairs, pairs["split"].to_numpy())
    assert set(pairs["split"]) == {"train", "train_dev", "dev", "test"}
