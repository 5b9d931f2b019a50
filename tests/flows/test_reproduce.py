"""`reprolab reproduce`: a registered model rebuilt from its recorded commit, lock and data in a
temporary worktree, and held byte for byte against what was recorded. The parts on their own
(URIs, refusals, packages, the plan, how far, where data comes from), then the crypto pipeline
end to end in a copy of the checkout."""
import math
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from flows.reproduce import (
    Check,
    Record,
    Report,
    ReproduceError,
    Store,
    column_differences,
    how_far,
    likely_reasons,
    local_store,
    lock_outputs,
    main,
    metric_differences,
    package_differences,
    parse_lock,
    parse_model_uri,
    plans,
    record_of,
    refusal,
    restore,
)
from tasks.pipeline import declaration

MODEL = "crypto-next-move"
COMMIT = "a" * 40
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def test_a_model_uri_names_a_version_or_an_alias():
    assert parse_model_uri("models:/crypto-next-move/3") == (MODEL, "3", None)
    assert parse_model_uri("models:/crypto-next-move/latest") == (MODEL, "latest", None)
    assert parse_model_uri("models:/crypto-next-move@champion") == (MODEL, None, "champion")
    for bad in ("crypto-next-move/3", "models:/", "models:/crypto-next-move",
                "models:/crypto-next-move/three", "models:/@champion", "runs:/abc/model"):
        with pytest.raises(ReproduceError, match="expected models:/<name>/<version>"):
            parse_model_uri(bad)


def test_a_bad_uri_exits_2_before_anything_opens(capsys):
    assert main(["models:/nope"]) == 2
    assert "expected models:/<name>/<version>" in capsys.readouterr().err


def record(**changes) -> Record:
    run_tags = {"reprolab.git_commit": COMMIT, "reprolab.git_dirty": "false",
                "reprolab.threads": "1", "reprolab.cores": "2",
                "reprolab.version.numpy": "2.0.0",
                "reprolab.input.data/crypto/raw": "r.dir",
                "reprolab.input.data/crypto/features.parquet": "f",
                "reprolab.input.data/crypto/splits": "s.dir"}
    version_tags = {"reprolab.git_commit": COMMIT, "reprolab.git_dirty": "false",
                    "reprolab.input.artifacts/crypto": "a.dir",
                    "reprolab.output.metrics/crypto.json": "m"}
    return replace(record_of(MODEL, "1", "run1", version_tags, run_tags, {"device": "cpu"}),
                   **changes)


def test_what_a_version_and_its_training_run_recorded():
    r = record()
    assert (r.commit, r.trained_at, r.dirty, r.threads) == (COMMIT, COMMIT, ("false", "false"), "1")
    assert r.inputs == {"data/crypto/raw": "r.dir", "data/crypto/features.parquet": "f",
                        "data/crypto/splits": "s.dir"}
    assert r.read == {"artifacts/crypto": "a.dir"} and r.written == {"metrics/crypto.json": "m"}
    assert r.versions == {"numpy": "2.0.0"}
    # a version registered before it recorded anything: the training run's commit
    old = record_of(MODEL, "1", "run1", {}, {"reprolab.git_commit": COMMIT,
                                             "reprolab.git_dirty": "false"}, {})
    assert (old.commit, old.threads, old.read, old.written) == (COMMIT, None, {}, {})


def test_a_version_from_a_dirty_tree_or_an_unknown_commit_is_refused():
    assert refusal(record(), in_repository=True) is None
    assert "uncommitted changes" in refusal(record(dirty=("false", "true")), True)
    assert "did not record" in refusal(record(dirty=("unknown",)), True)
    assert "no git commit" in refusal(record(commit="unknown"), True)
    assert f"git fetch origin {COMMIT}" in refusal(record(), in_repository=False)


def test_packages_that_differ_from_the_lock_or_the_run_are_named():
    lock = parse_lock('lock-version = "1.0"\n[[packages]]\nname = "NumPy"\nversion = "2.1.0"\n'
                      '[[packages]]\nname = "typing_extensions"\nversion = "4.0"\n')
    assert lock == {"numpy": "2.1.0", "typing-extensions": "4.0"}
    installed = {"numpy": "2.1.0", "typing-extensions": "4.0", "torch": "2.13.0+cpu"}
    assert package_differences(lock, {"torch": "2.13.0+cpu"}, installed) == []
    assert package_differences(lock, {"numpy": "0.0.1", "torch": "unknown"}, installed) == [
        "numpy: the run recorded 0.0.1; installed 2.1.0"]
    assert package_differences({"numpy": "2.2.0"}, {"numpy": "2.3.0"}, {}) == [
        "numpy: locked 2.2.0, the run recorded 2.3.0; installed none"]


def test_the_rebuild_starts_from_the_earliest_recorded_stage_outputs():
    crypto = declaration("crypto")
    [first, *_] = plans(crypto, record().inputs)
    assert first.restore == ("data/crypto/raw",)
    assert first.stages == ("crypto_features", "crypto_split", "crypto_train", "crypto_evaluate")
    # train reads the raw candles too: without them no start is possible
    assert plans(crypto, {"data/crypto/features.parquet": "f", "data/crypto/splits": "s"}) == []
    quora = declaration("quora")
    inputs = {"data/quora/split": "s.dir", "data/quora/embed": "e.dir", "inputs/none": "x"}
    assert [(p.restore, p.stages) for p in plans(quora, inputs)] == [
        (("data/quora/split",), ("quora_embed", "quora_train", "quora_evaluate")),
        (("data/quora/split", "data/quora/embed"), ("quora_train", "quora_evaluate"))]


def test_how_far_metrics_and_predictions_are():
    old = {"acc": 0.5, "ci": {"low": 0.4, "high": 0.6}, "n": 10, "skill": True, "rows": [1, 2]}
    new = {"acc": 0.5, "ci": {"low": 0.41, "high": 0.6}, "n": 10, "skill": True, "rows": [1, 3],
           "extra": 1.0}
    far = metric_differences(old, new)
    assert list(far) == ["extra", "rows.1", "ci.low"] and far["ci.low"] == pytest.approx(0.01)
    assert how_far({}) == "no value differs (the bytes do: formatting or order)"
    assert how_far({"a": 0.25, "b": 0.125}) == "max |difference| 0.25: a 0.25, b 0.125"
    a = pd.DataFrame({"segment": ["t", "t"], "p": [0.1, 0.2], "y": [0, 1]})
    b = a.assign(p=[0.1, 0.2005], segment=["t", "v"])
    assert column_differences(a, b) == {"segment": 0.5, "p": pytest.approx(0.0005)}
    assert column_differences(a, a) == {}
    assert math.isinf(next(iter(column_differences(a, a.iloc[:1]).values())))


def test_likely_reasons_name_threads_cuda_packages_and_data():
    r = record()
    assert likely_reasons(r, "1", "2", [], []) == [
        "no known cause: another CPU or BLAS build sums floats in another order"]
    reasons = likely_reasons(replace(r, device="cuda:0", threads="4"), "1", "2",
                             ["numpy: the run recorded 0.0.1; installed 2.1.0"],
                             [Check("data/crypto/splits", "data", False)])
    assert "trained on cuda:0" in reasons[0] and "the run had 4, the rebuild 1" in reasons[1]
    assert reasons[2] == "package versions differ: numpy"
    assert "data/crypto/splits" in reasons[3]
    assert "recorded no thread count" in likely_reasons(replace(r, threads=None), "1", "2",
                                                        [], [])[0]


def test_a_report_says_identical_or_how_far_with_its_exit_code():
    report = Report("models:/crypto-next-move/1", record(), "crypto", Path("/tmp/wt"), False,
                    threads="1", threads_note=", as the run recorded",
                    restored=[("data/crypto/raw", "cache", "this checkout's copy changed since")],
                    stages=["crypto_train", "crypto_evaluate"],
                    checks=[Check("artifacts/crypto/predictions.parquet", "predictions", True),
                            Check("metrics/crypto.json", "metrics", True)])
    text = report.text()
    assert report.exit_code == 0
    assert "verdict   byte-identical: the metrics and predictions are the recorded ones" in text
    assert ("data      data/crypto/raw: from the DVC cache (this checkout's copy changed since)"
            in text)
    report.checks[1] = Check("metrics/crypto.json", "metrics", False, "max |difference| 0.01")
    report.reasons = ["thread count: the run had 4, the rebuild 1"]
    assert report.exit_code == 1
    assert "DIFFERS    metrics/crypto.json (metrics): max |difference| 0.01" in report.text()
    assert "likely    thread count" in report.text()
    report.checks = [Check("predictions", "predictions", None, "not recorded")]
    assert report.exit_code == 2  # no metrics to hold the rebuild against


def test_outputs_from_a_dvc_lock_and_where_mlflow_logs():
    lock = ("schema: '2.0'\nstages:\n  s:\n    cmd: x\n    outs:\n    - path: a\n      md5: 1\n"
            "    - path: b\n      md5: 2.dir\n")
    assert lock_outputs(lock) == {"a": "1", "b": "2.dir"}
    assert local_store("common:\n  mlflow:\n    tracking_uri: sqlite:///mlflow.db\n")
    assert not local_store("common:\n  mlflow:\n    tracking_uri: http://mlflow:5000\n")
    assert not local_store("common:\n  mlflow:\n    tracking_uri: sqlite:////srv/m.db\n")
    assert not local_store("common:\n  mlflow:\n    artifact_dir: s3://bucket/x\n")


def test_recorded_data_comes_from_the_checkout_the_cache_or_the_remote(tmp_path):
    """A tiny DVC repo with a local remote: a copy that still hashes as recorded is taken
    from the checkout, a changed one from the cache, a lost cache from the remote."""
    from dvc.repo import Repo

    from tasks.provenance import dvc_hash

    root, remote, wt = tmp_path / "repo", tmp_path / "remote", tmp_path / "wt"
    root.mkdir()
    (root / "data").mkdir()
    (root / "data" / "a.csv").write_text("x\n1\n")
    (root / "data" / "b.csv").write_text("y\n2\n")
    with Repo.init(str(root), no_scm=True) as repo:
        with repo.config.edit() as conf:
            conf["remote"]["store"] = {"url": str(remote)}
            conf["core"]["remote"] = "store"
        repo.add(str(root / "data"))
        repo.push()
    md5 = dvc_hash(root / "data")
    store = Store(root)
    try:
        assert restore(store, root, wt, "data", md5) == ("checkout", "")
        assert (wt / "data" / "b.csv").read_text() == "y\n2\n"
        (root / "data" / "b.csv").write_text("changed\n")
        assert restore(store, root, wt / "2", "data", md5) == (
            "cache", "this checkout's copy changed since")
        shutil.rmtree(root / ".dvc" / "cache")
        source, note = restore(store, root, wt / "3", "data", md5)
        assert source == "remote" and "from remote 'store'" in note
        assert (wt / "3" / "data" / "b.csv").read_text() == "y\n2\n"
        shutil.rmtree(root / ".dvc" / "cache")
        shutil.rmtree(remote)
        assert restore(store, root, wt / "4", "data", md5) is None
    finally:
        store.close()


# (End to end, a champion rebuilt byte for byte from a clean clone of a team's results:
# tests/flows/test_team.py.)


def test_the_cli_has_the_command(capsys):
    from flows.cli import main as cli

    with pytest.raises(SystemExit):
        cli(["reproduce", "--help"])
    assert "models:/crypto-next-move@champion" in capsys.readouterr().out
    assert cli(["reproduce", "crypto-next-move"]) == 2
    assert "expected models:/" in capsys.readouterr().err
    assert sys.modules.get("flows.reproduce") is not None
