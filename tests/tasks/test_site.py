"""The results site from files laid out as the pipelines write them: every page self-contained,
numbers marked with their metrics key, missing results said plainly, data escaped."""
import re
import shutil
from pathlib import Path

import pytest
import yaml

from tasks.pipeline import declaration
from tasks.site import build_site, site_deps
from tasks.storage import write_json

ROOT = Path(__file__).resolve().parents[2]
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")


def quora_metrics() -> dict:
    row = {"accuracy": 0.8, "accuracy_ci": {"low": 0.77, "high": 0.83}, "f1": 0.7,
           "roc_auc": 0.85, "log_loss": 0.4, "threshold": 0.5}
    return {
        "config": "gensim + tf-idf + fc_head", "test": row,
        "baselines": {"majority": {"accuracy": 0.63}, "logistic": {**row, "accuracy": 0.75}},
        "verdict": {"metric": "accuracy", "strongest_baseline": "logistic",
                    "strongest_value": 0.75, "beats_strongest_baseline": True,
                    "beats": {"majority": True, "logistic": True},
                    "text": "skill: 95% CI lower bound 0.770 > logistic 0.750"},
        "table": [{"key": "tfidf_fc_head", "config": "gensim + tf-idf + fc_head",
                   "vectors": "gensim_tfidf", "variant": "fc_head", "main": True, **row}],
        "diagnosis": {"errors": {"train": 0.1, "dev": 0.2, "test": 0.21},
                      "reference_error": None, "avoidable_bias": None, "variance": 0.1,
                      "data_mismatch": None, "dev_overfitting": 0.01, "largest": "variance",
                      "next_step": "reduce variance: more data"},
        "references": [{"label": "TF-IDF + FC head", "theirs": 0.84, "measured_on": "the dump",
                        "ours": 0.8, "ours_key": "table.tfidf_fc_head.accuracy",
                        "why_not": ""}],
    }


@pytest.fixture
def results(tmp_path):
    spec = declaration("quora")
    write_json(quora_metrics(), tmp_path / spec.results_file)
    write_json({"source": "live", "rows_in": 10, "rows_kept": 9,
                "quarantined": {"bad <quote>": 1},
                "download": {"url": "https://example.org/quora_duplicate_questions.tsv"}},
               tmp_path / "data/quora/raw/ingest.json")
    (tmp_path / "plots/quora").mkdir(parents=True)
    (tmp_path / "plots/quora/roc.png").write_bytes(PNG)
    return tmp_path


def test_pages_are_self_contained_and_mark_every_headline_number(results):
    pages = build_site(results, results / "reports/site")
    assert [p.name for p in pages] == ["index.html", "crypto.html", "quora.html",
                                       "kinetics.html"]
    for page in pages:
        html = page.read_text()
        assert not re.search(r"(?i)\b(?:https?|wss?|ftp)://", html), page.name
        assert "<script" not in html and "<link" not in html, page.name
    quora = (results / "reports/site/quora.html").read_text()
    assert '<img src="data:image/png;base64,' in quora and "roc" in quora
    metrics = quora_metrics()
    marked = dict(re.findall(r'data-metric="([^"]+)" data-value="([^"]+)"', quora))
    assert float(marked["test.accuracy"]) == metrics["test"]["accuracy"]
    assert float(marked["baselines.logistic.accuracy"]) == 0.75
    assert float(marked["table.tfidf_fc_head.accuracy"]) == 0.8
    assert "skill: 95% CI lower bound 0.770" in quora
    assert "example.org/quora_duplicate_questions.tsv" in quora  # shown, never linked
    assert "bad &lt;quote&gt;" in quora  # data is escaped


def test_a_pipeline_that_has_not_run_is_said_so(results):
    build_site(results, results / "reports/site")
    crypto = (results / "reports/site/crypto.html").read_text()
    assert "Not run yet" in crypto and "reports/crypto/results.json" in crypto
    assert "not run yet" in (results / "reports/site/index.html").read_text()


def test_the_nightly_history_and_ablations_appear_when_they_exist(results):
    night = {"night": "2026-12-01T02:00:00Z", "pushed": 3, "pipelines": [
        {"pipeline": "quora", "data": {"changed": True, "bytes_added": 100, "files_added": 1},
         "stages_run": ["quora_train"],
         "verdict": {"old": 0.70, "new": 0.80, "promoted": True, "reason": "beats by 0.1"}}]}
    write_json(night, results / "reports/nightly/nights/2026-12-01T02-00-00Z.json")
    write_json({"erase_relu": {"seeds": [0, 1], "rows": [
        {"config": "erase", "metric": "test.accuracy", "mean": 0.8, "std": 0.01,
         "ci_low": 0.78, "ci_high": 0.82, "diff": 0.01, "diff_low": -0.01, "diff_high": 0.03,
         "excludes_zero": False}]}}, results / "reports/ablations/quora.json")
    build_site(results, results / "reports/site")
    quora = (results / "reports/site/quora.html").read_text()
    assert "Nightly retraining" in quora and "beats by 0.1" in quora
    assert "Ablations" in quora and "erase_relu" in quora and "[-0.0100, +0.0300]" in quora
    assert "Last night (2026-12-01T02:00:00Z)" in (results / "reports/site/index.html").read_text()


def test_a_rebuild_replaces_the_site_whole(results):
    build_site(results, results / "reports/site")
    (results / "reports/site/stale.html").write_text("old")
    build_site(results, results / "reports/site")
    assert not (results / "reports/site/stale.html").exists()


def test_the_stage_reads_what_it_shows():
    deps = set(site_deps())
    for name in ("crypto", "quora", "kinetics"):
        spec = declaration(name)
        assert spec.results_file in deps and set(spec.data_reports) <= deps
        assert all(f in deps for s in spec.stages for f in s.plots)
    assert {"reports/ablations", "reports/nightly"} <= deps
    for folder in ("reports/ablations", "reports/nightly"):  # in git, so they always exist
        assert (ROOT / folder / "README.md").exists()
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["report"]
    assert stage["cmd"] == "python -m flows.report build" and stage["outs"] == ["reports/site"]
    for module in ("tasks/site.py", "flows/report.py", "tasks/crypto/pipeline.py",
                   "tasks/quora/pipeline.py", "tasks/video/pipeline.py"):
        assert module in stage["deps"]


def test_a_rebuilt_site_is_byte_identical(results, tmp_path_factory):
    first = build_site(results, results / "reports/site")
    before = {p.name: p.read_bytes() for p in first}
    copy = tmp_path_factory.mktemp("again")
    shutil.copytree(results, copy, dirs_exist_ok=True)
    after = {p.name: p.read_bytes() for p in build_site(copy, copy / "reports/site2")}
    assert before == after
