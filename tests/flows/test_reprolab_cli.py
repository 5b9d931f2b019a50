"""`reprolab`: the help of every command, `python -m flows.demo --help`, and `reprolab status`
where nothing has run, outside a DVC repo, and with a stale stage, a champion and a night."""
import json
import os
import subprocess
import sys
import time

import pytest
import yaml
from mlflow.tracking import MlflowClient

from flows.cli import main
from tasks.pipeline import declarations
from tests.conftest import ROOT
from tests.flows.repo_copy import copy_repo


def _help(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 0
    return capsys.readouterr().out


def test_pyproject_declares_the_console_script():
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"reprolab": "flows.cli:main"}


def test_help_lists_the_commands_and_the_pipelines(capsys):
    out = _help(["--help"], capsys)
    for word in ("run", "status", "demo", "report", "crypto", "quora", "kinetics",
                 "kinetics-besnet", "download -> frames -> index"):
        assert word in out


@pytest.mark.parametrize("argv", [["run", "--help"], ["run", "kinetics", "--help"]])
def test_run_help_says_what_every_stage_does_and_reads(argv, capsys):
    out = _help(argv, capsys)
    pipelines = declarations() if argv[1] == "--help" else [p for p in declarations()
                                                             if p.name == "kinetics"]
    for pipeline in pipelines:
        for stage in pipeline.stages:
            assert f"stage {stage.name}; params: {', '.join(stage.params)}" in out
            assert stage.doc in out
    assert "kinetics_train" in out and "kinetics.train" in out
    if argv[1] == "kinetics":
        assert out.startswith("usage: reprolab run kinetics")


@pytest.mark.parametrize("stage", [[], ["split"]])
def test_run_is_the_pipeline_cli_with_the_whole_pipeline_by_default(stage, tmp_path, monkeypatch,
                                                                     capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("REPROLAB_PARAMS", str(ROOT / "params.yaml"))
    code = main(["run", "crypto", *stage, "--set", "crypto.split.test_fraction=1.5"])
    err = capsys.readouterr().err
    assert code == 2  # fails fast on the bad value, before any flow starts
    assert err.startswith(f"error: crypto {stage[0] if stage else 'pipeline'}: ")
    assert "crypto.split.test_fraction: must be < 1" in err
    assert list(tmp_path.iterdir()) == []


def test_status_and_demo_help(capsys):
    assert "champion" in _help(["status", "--help"], capsys)
    out = _help(["demo", "--help"], capsys)
    assert out.startswith("usage: reprolab demo") and "crypto, quora, kinetics" in out


def test_help_imports_neither_prefect_nor_the_report(tmp_path):
    code = ("import sys\nfrom flows import cli\nfor argv in (['--help'], ['run', '--help'], "
            "['demo', '--help']):\n    try:\n        cli.main(argv)\n    except SystemExit as e:\n"
            "        assert e.code == 0\nheavy = [m for m in sys.modules if m.split('.')[0] in "
            "('prefect', 'dvc', 'mlflow', 'torch') or m == 'flows.report']\nassert not heavy, heavy")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr


def test_demo_module_help_prints_usage_and_runs_nothing(tmp_path):
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "flows.demo", "--help"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: python -m flows.demo")
    assert time.monotonic() - started < 30  # the demo itself takes minutes
    assert list(tmp_path.iterdir()) == []  # no metrics/, data/, mlflow.db, .prefect/


# ---------------------------------------------------------------- reprolab status
@pytest.fixture
def in_dir(monkeypatch):
    def enter(path):
        monkeypatch.chdir(path)
        monkeypatch.delenv("REPROLAB_PARAMS", raising=False)
        return path
    return enter


def _status(capsys) -> str:
    assert main(["status"]) == 0
    return capsys.readouterr().out


def test_status_outside_a_dvc_repo_says_so(tmp_path, in_dir, capsys):
    in_dir(tmp_path)
    out = _status(capsys)
    assert "is not a DVC repo" in out and "stage status unknown" in out
    assert "MLflow: store unknown (params.yaml: not found" in out
    assert "nightly: no run yet" in out
    assert out.count("stages: unknown") == len(declarations())
    assert list(tmp_path.iterdir()) == []


def test_status_before_anything_ran_lists_every_stage_as_never_run(tmp_path, in_dir, capsys):
    repo = in_dir(copy_repo(tmp_path))
    out = _status(capsys)
    for pipeline in declarations():
        for stage in pipeline.stages:
            assert any(line.split() == [stage.name, "never", "run"] for line in out.splitlines())
    assert "MLflow: sqlite:///mlflow.db: no store yet" in out
    assert out.count("champion: none yet (no MLflow store)") == len(declarations())
    assert "Nothing has run here yet" in out
    assert not (repo / "mlflow.db").exists()  # status reads, never creates a store


def test_status_names_a_stale_stage_and_what_changed(tmp_path, in_dir, capsys):
    repo = in_dir(copy_repo(tmp_path))
    stale = {"cmd": "python -m flows.crypto split",
             "deps": [{"path": "tasks/crypto/split.py", "hash": "md5",
                       "md5": "0123456789abcdef0123456789abcdef", "size": 1}]}
    (repo / "dvc.lock").write_text(yaml.safe_dump(
        {"schema": "2.0", "stages": {"crypto_split": stale}}))
    out = _status(capsys)
    assert "dvc.lock records 1 of" in out
    [line] = [line for line in out.splitlines() if "crypto_split" in line]
    assert "stale: deps:" in line and "outs: data/crypto/splits" in line
    assert "Nothing has run here yet" not in out


def test_status_shows_the_champion_its_metric_and_last_nights_verdict(tmp_path, in_dir,
                                                                       capsys):
    repo = in_dir(copy_repo(tmp_path))
    uri = f"sqlite:///{repo}/mlflow.db"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    for name in ("crypto-next-move", "quora-duplicates"):
        client.create_registered_model(name)
        client.create_model_version(name, source=str(repo / "model"))
    client.set_model_version_tag("crypto-next-move", "1", "test_metric", "test.accuracy")
    client.set_model_version_tag("crypto-next-move", "1", "test_value", "0.61")
    client.set_registered_model_alias("crypto-next-move", "champion", "1")
    verdict = {"model": "crypto-next-move", "challenger": "1", "champion": None,
               "promoted": True, "reason": "first model version: no champion yet"}
    rows = [{"pipeline": "crypto", "verdict": verdict},
            {"pipeline": "kinetics", "error": "kinetics: stage 'kinetics_train' failed"}]
    (repo / "reports/nightly").mkdir(parents=True, exist_ok=True)  # in git (README)
    (repo / "reports/nightly/summary.json").write_text(json.dumps({"pipelines": rows}))
    out = _status(capsys)
    assert "champion: crypto-next-move v1, test.accuracy 0.6100" in out
    assert "champion: none yet (quora-duplicates: newest registered version v1" in out
    assert "champion: none yet (kinetics-besnet: no registered version" in out
    assert "last nightly: promoted v1: first model version" in out
    assert "last nightly: failed: kinetics: stage 'kinetics_train' failed" in out
    assert "last nightly: not run yet" in out  # quora was not in that night


def test_report_builds_the_site_from_what_exists(tmp_path, monkeypatch, prefect_api, capsys):
    """Outside a DVC repo `reprolab report` builds the site here, as a Prefect flow; a pipeline
    with no results gets a page that says how to make them."""
    assert _help(["report", "--help"], capsys).startswith("usage: reprolab report")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("REPROLAB_PARAMS", str(ROOT / "params.yaml"))
    assert main(["report"]) == 0
    assert "reports/site/index.html" in capsys.readouterr().out
    crypto = (tmp_path / "reports/site/crypto.html").read_text()
    assert "Not run yet" in crypto and "reprolab run crypto" in crypto
