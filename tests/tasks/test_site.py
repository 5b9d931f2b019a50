"""The results site from files laid out as the pipelines write them: every page self-contained,
numbers marked with their metrics key, missing results said plainly, data escaped."""
import html
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


# ---------------------------------------------------------------- the nightly's records
NIGHTS = "reports/nightly/nights"


def cells(page: str, anchor: str) -> list[list[str]]:
    """The rows of the tables in one section of a page, as plain text cells."""
    found = re.search(rf'<section id="{anchor}">(.*?)</section>', page, re.S)
    assert found, f"no section {anchor}"
    return [[html.unescape(re.sub(r"<[^>]+>", "", cell)).strip()
             for cell in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row, re.S)]
            for row in re.findall(r"<tr>(.*?)</tr>", found.group(1), re.S)]


def drift(ks: float, p: float, psi: float, drifted: bool = False) -> dict:
    return {"ks": ks, "p_value": p, "psi": psi, "drifted": drifted}


def checks(passed: bool, rows: int, drift_: dict, reasons=(), notes=()) -> dict:
    return {"passed": passed, "reasons": list(reasons), "notes": list(notes), "rows": rows,
            "reference": "the champion v1", "nulls": {"q1_len": 0.0}, "out_of_range": {},
            "label_shift": 0.012, "drift": drift_}


def verdict(champ, challenger, old, new, difference, promoted, reason) -> dict:
    return {"model": "quora", "challenger": challenger, "champion": champ,
            "promoted": promoted, "reason": reason, "new": new, "old": old,
            "metric": "test.accuracy", "difference": difference, "rule": "non_inferior",
            "margin": 0.01, "baseline": "logistic", "baseline_value": 0.7, "rows": 500,
            "digest": "abc", "by": "nightly", "at": "2026-12-03T02:00:00Z"}


@pytest.fixture
def nightly(results):
    """Four nights and a rollback by hand: an old-format record, a promotion, a champion
    kept, then a night the data checks stopped (with rows held back); crypto failed."""
    root = results
    write_json({"night": "2026-12-01T02:00:00Z", "pushed": 2, "pipelines": [
        {"pipeline": "quora", "data": {"changed": True, "bytes_added": 100, "files_added": 1},
         "stages_run": ["quora_train"],
         "verdict": {"old": 0.70, "new": 0.78, "champion": None, "challenger": "1",
                     "promoted": True, "reason": "first model version: no champion yet"}}]},
        root / NIGHTS / "2026-12-01T02-00-00Z.json")
    passing = checks(True, 120, {"q1_len": drift(0.081, 0.21, 0.034),
                                 "q2_len": drift(0.05, 0.6, 0.012)})
    write_json({"night": "2026-12-03T02:00:00Z", "pushed": 1, "pipelines": [
        {"pipeline": "quora", "data": {"changed": True, "bytes_added": 50, "files_added": 0},
         "checks": passing, "stages_run": ["quora_split", "quora_train"],
         "verdict": verdict("1", "3", 0.78, 0.80, {"mean": 0.02, "low": 0.005, "high": 0.035},
                            True, "beats the champion")}]},
        root / NIGHTS / "2026-12-03T02-00-00Z.json")
    write_json({"night": "2026-12-05T02:00:00Z", "pushed": 0, "pipelines": [
        {"pipeline": "quora", "data": {"changed": True, "bytes_added": 10, "files_added": 0},
         "checks": checks(True, 90, {"q1_len": drift(0.1, 0.1, 0.05),
                                     "q2_len": drift(0.06, 0.5, 0.02)}),
         "stages_run": ["quora_train"],
         "verdict": verdict("3", "4", 0.80, 0.785,
                            {"mean": -0.015, "low": -0.03, "high": 0.0}, False,
                            "lower bound <= -0.0100")}]},
        root / NIGHTS / "2026-12-05T02-00-00Z.json")
    write_json({"night": "2026-12-06T09:00:00Z", "by": "person", "pipelines": [
        {"pipeline": "quora", "verdict": {**verdict("3", "1", None, None, None, True,
                                                    "by hand: rollback: bad labels"),
                                          "by": "person", "rule": None, "margin": None}}]},
        root / NIGHTS / "2026-12-06T09-00-00Z-by-hand.json")
    stopped = ("quora: data checks failed, nothing retrained (the data is kept to look at): "
               "1 column(s) drifted from the reference")
    write_json({"night": "2026-12-07T02:00:00Z", "pushed": None, "pipelines": [
        {"pipeline": "crypto", "error": "crypto: stage crypto_ingest failed"},
        {"pipeline": "quora", "data": {"changed": True, "bytes_added": 70, "files_added": 0},
         "checks": checks(False, 80, {"q1_len": drift(0.4, 1e-9, 0.61, True),
                                      "q2_len": drift(0.05, 0.6, 0.01)},
                          reasons=["1 column(s) drifted from the reference"],
                          notes=["label balance: fine"]),
         "stopped": stopped}]},
        root / NIGHTS / "2026-12-07T02-00-00Z.json")
    write_json({"pipeline": "quora", "model": "quora", "champion": "1", "history": [
        {"seq": 1, "version": "1", "from": "2026-12-01T02:00:00Z",
         "until": "2026-12-03T02:00:00Z", "why": "first model version", "by": "nightly",
         "ended": "beats the champion"},
        {"seq": 2, "version": "3", "from": "2026-12-03T02:00:00Z",
         "until": "2026-12-06T09:00:00Z", "why": "beats the champion", "by": "nightly",
         "ended": "by hand: rollback: bad labels"},
        {"seq": 3, "version": "1", "from": "2026-12-06T09:00:00Z", "until": None,
         "why": "by hand: rollback: bad labels", "by": "person"}]},
        root / "reports/nightly/champions/quora.json")
    write_json({"pipeline": "quora", "reasons": ["1 column(s) drifted from the reference"],
                "keys": ["p1", "p2"]}, root / "reports/nightly/held/quora.json")
    build_site(root, root / "reports/site")
    return root / "reports/site"


def test_the_champion_timeline_lists_every_span_and_draws_it(nightly):
    quora = (nightly / "quora.html").read_text()
    rows = cells(quora, "timeline")
    assert rows[0] == ["version", "from", "until", "held for", "by", "why", "ended"]
    assert rows[1:] == [
        ["v1", "2026-12-01T02:00:00Z", "2026-12-03T02:00:00Z", "2d 0h", "nightly",
         "first model version", "beats the champion"],
        ["v3", "2026-12-03T02:00:00Z", "2026-12-06T09:00:00Z", "3d 7h", "nightly",
         "beats the champion", "by hand: rollback: bad labels"],
        ["v1", "2026-12-06T09:00:00Z", "now", "17h 0m", "person",
         "by hand: rollback: bad labels", ""]]
    timeline = re.search(r'<section id="timeline">(.*?)</section>', quora, re.S).group(1)
    assert timeline.count('<img src="data:image/png;base64,') == 1


def test_each_night_shows_its_difference_checks_and_a_stop(nightly):
    rows = {row[0]: row for row in cells((nightly / "quora.html").read_text(), "nightly")}
    header = rows.pop("night")
    assert header[:3] == ["night", "by", "new data"] and "difference [95% CI]" in header
    promoted = dict(zip(header, rows["2026-12-03T02:00:00Z"], strict=True))
    assert promoted["difference [95% CI]"] == "+0.0200 [+0.0050, +0.0350]"
    assert promoted["champion → challenger"] == "0.7800 (v1) → 0.8000 (v3)"
    assert promoted["data checks"] == "passed (120 new rows)"
    assert promoted["stages rerun"] == "quora_split, quora_train"
    assert promoted["promoted"] == "yes"
    stopped = dict(zip(header, rows["2026-12-07T02:00:00Z"], strict=True))
    assert stopped["why"].startswith("stopped: quora: data checks failed")
    assert stopped["data checks"] == "failed (80 new rows, drift: q1_len)"
    assert stopped["promoted"] == "no"
    assert dict(zip(header, rows["2026-12-06T09:00:00Z"], strict=True))["by"] == "person"


def test_drift_figures_show_on_a_night_that_passed(nightly):
    quora = (nightly / "quora.html").read_text()
    checks_html = re.search(r'<section id="checks">(.*?)</section>', quora, re.S).group(1)
    passed = checks_html.split("<h3>2026-12-03T02:00:00Z: passed")[1].split("<h3>")[0]
    rows = cells(f'<section id="x">{passed}</section>', "x")
    assert rows[0][:4] == ["column", "KS", "p-value", "PSI"]
    assert rows[1][:5] == ["q1_len", "0.081", "0.21", "0.034", "no"]
    assert "the champion v1" in passed and "label shift 0.012" in passed
    assert "2 row(s) held back" in checks_html and "label balance: fine" in checks_html
    assert checks_html.count('<img src="data:image/png;base64,') == 1  # PSI over nights


def test_the_overview_says_champion_age_last_verdict_and_staleness(nightly):
    rows = {row[0]: row[1:] for row in cells((nightly / "index.html").read_text(), "champions")}
    assert rows.pop("pipeline") == ["champion", "age", "last record", "last verdict", "stale"]
    champ, age, last, said, stale = rows["quora"]
    assert (champ, age, last) == ("v1", "17h 0m", "2026-12-07T02:00:00Z")
    assert said.startswith("stopped: quora: data checks failed")
    assert stale == ("yes: the last night was stopped by its data checks; 2 row(s) held back "
                     "by a failed check")
    assert rows["crypto"][0] == "none" and rows["crypto"][3].startswith("failed: crypto")
    assert rows["crypto"][4] == "yes: the last night failed"
    assert rows["kinetics"] == ["none", "", "never", "", "no"]


def test_old_night_records_still_render(results):
    write_json({"night": "2026-11-01T02:00:00Z", "pushed": None, "pipelines": [
        {"pipeline": "quora", "data": {"changed": False, "bytes_added": 0, "files_added": 0},
         "stages_run": [], "verdict": {"old": 0.7, "new": 0.69, "champion": "2",
                                       "challenger": "3", "promoted": False,
                                       "reason": "kept"}}]},
        results / NIGHTS / "2026-11-01T02-00-00Z.json")
    build_site(results, results / "reports/site")
    rows = cells((results / "reports/site/quora.html").read_text(), "nightly")
    assert rows[1] == ["2026-11-01T02:00:00Z", "nightly", "none", "", "none",
                       "0.7000 (v2) → 0.6900 (v3)", "", "no", "kept"]
    overview = {r[0]: r for r in cells((results / "reports/site/index.html").read_text(),
                                       "champions")}
    assert overview["quora"][4:] == ["kept: kept", "no"]


def test_missing_or_empty_nightly_files_still_build(results):
    for rel in (f"{NIGHTS}/2026-12-01T02-00-00Z.json", "reports/nightly/champions/quora.json",
                "reports/nightly/held/quora.json"):
        (results / rel).parent.mkdir(parents=True, exist_ok=True)
        (results / rel).write_text("")
    (results / NIGHTS / "2026-12-02T02-00-00Z.json").write_text("{not json")
    write_json({"night": "2026-12-03T02:00:00Z", "pipelines": [{"pipeline": "quora"}]},
               results / NIGHTS / "2026-12-03T02-00-00Z.json")
    build_site(results, results / "reports/site")
    overview = {r[0]: r for r in cells((results / "reports/site/index.html").read_text(),
                                       "champions")}
    assert overview["quora"][1:] == ["none", "", "2026-12-03T02:00:00Z", "", "no"]
