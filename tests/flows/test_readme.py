"""README.md, run as a newcomer runs it: every ```bash block in order, exactly as written, in
the fresh clone of tests/flows/conftest.py (after its `make demo`), from a shell whose PATH is
/usr/local/bin:/usr/bin:/bin. Along the way, checks of what the commands must have done; at
the end, every ```text command is checked to name a real program, file and make target."""
import json
import re
import shlex
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.flows.readme import Shell, blocks, commands, console_steps, runs_until_stopped

pytestmark = pytest.mark.slow
README = Path(__file__).resolve().parents[2] / "README.md"
DONE_BY_THE_FIXTURE = "make demo"
SUITE = "make test"  # the suite this test runs in: the one command left out
WIDTH = 200


def stale(shell: Shell) -> set[str]:
    return set(json.loads(shell.run(".venv/bin/dvc status --json").stdout))


def widest(text: str) -> int:
    return max(len(line) for line in text.splitlines())


# ---------------------------------------------------------------- checks along the way
def after_make_server(shell: Shell, proc) -> None:
    view = shell.run(".venv/bin/prefect config view").stdout
    assert "PREFECT_API_URL='http://127.0.0.1:4200/api' (from profile)" in view


def after_metrics_show(shell: Shell, proc) -> None:
    assert widest(proc.stdout) <= WIDTH, proc.stdout
    assert "crypto_accuracy" in proc.stdout and "kinetics_top1" in proc.stdout


def after_repro(shell: Shell, proc) -> None:
    assert "Running stage" not in proc.stdout and stale(shell) == set()


def after_kinetics_train(shell: Shell, proc) -> None:
    """A rerun is a rerun: the stage resumes from its finished checkpoints and writes the same
    bytes, so nothing is stale."""
    assert "resuming from" in proc.stdout + proc.stderr
    assert stale(shell) == set()


def after_status(shell: Shell, proc) -> None:
    for pipeline in ("crypto", "quora", "kinetics"):
        assert pipeline in proc.stdout


def after_wider_network(shell: Shell, proc) -> None:
    changed = shell.run("git diff --unified=0 HEAD -- params.yaml").stdout
    assert [line for line in changed.splitlines() if line[:1] in "+-"
            and not line.startswith(("+++", "---"))] == ["-    hidden: 8", "+    hidden: 24"]


def after_exp_show(shell: Shell, proc) -> None:
    assert widest(proc.stdout) <= WIDTH and "…" not in proc.stdout, proc.stdout
    assert "crypto_accuracy" in proc.stdout and "hidden" in proc.stdout


def after_exp_diff(shell: Shell, proc) -> None:
    assert "crypto.source" in proc.stdout and "crypto_accuracy" in proc.stdout


def after_checkout(shell: Shell, proc) -> None:
    assert stale(shell) == set()


def mlflow_runs(shell: Shell, pipeline: str) -> list:
    client = MlflowClient(tracking_uri=f"sqlite:///{shell.cwd}/mlflow.db")
    return client.search_runs([client.get_experiment_by_name(f"reprolab-{pipeline}")
                               .experiment_id], max_results=5000)


def after_ablation(shell: Shell, proc) -> None:
    """The table, each metric's interval over seeds and the paired difference; every run under
    the grid's parent run, which has every run's provenance; the workspace's DVC outputs and
    model registry left alone."""
    text = (shell.cwd / "reports/ablations/crypto.md").read_text()
    assert text in proc.stdout and "## erase-relu" in text and "3 seeds (42, 43, 44)" in text
    assert "| relu | test.accuracy |" in text and "(reference)" in text
    row = next(line for line in text.splitlines() if line.startswith("| erase_relu | test.acc"))
    assert row.count("[") == 2 and ("includes 0" in row or "excludes 0" in row)
    runs = mlflow_runs(shell, "crypto")
    [parent] = [r for r in runs if r.info.run_name == "ablation:erase-relu"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted({(r.data.tags["ablation.config"], r.data.tags["ablation.seed"])
                   for r in children}) == [(c, str(s)) for c in ("erase_relu", "relu")
                                           for s in (42, 43, 44)]
    tags = parent.data.tags
    assert tags["pipeline"] == "crypto" and len(tags["reprolab.git_commit"]) == 40
    assert tags["reprolab.lock_sha256"] != "unknown" and "reprolab.version.torch" in tags
    inputs = {k for k, v in tags.items() if k.startswith("reprolab.input.") and v != "unknown"}
    assert {k.rsplit("/", 1)[-1] for k in inputs} == {"crypto-erase-relu.yaml", "params.yaml"}
    registered = {v.run_id for v in MlflowClient(
        tracking_uri=f"sqlite:///{shell.cwd}/mlflow.db").search_model_versions()}
    assert registered and not registered & {r.info.run_id for r in children}
    assert stale(shell) == set()


def after_ablation_deployment(shell: Shell, proc) -> None:
    """The same grid from the deployment, 2 seeds: read back, not trained again."""
    assert "Completed" in proc.stdout + proc.stderr
    trained = [r for r in mlflow_runs(shell, "crypto") if r.info.run_name == "crypto-train"
               and r.data.tags.get("ablation") == "erase-relu"]
    assert len(trained) == 6  # 2 configurations x 3 seeds, from the command line run only


def after_curl(shell: Shell, proc) -> None:
    [row] = json.loads(proc.stdout)["predictions"]
    assert 0 <= row["p_duplicate"] <= 1


def after_deployment_run(shell: Shell, proc) -> None:
    assert "Completed" in proc.stdout + proc.stderr


SERVER = "http://127.0.0.1:4200/api"  # make server's


def night_summary(shell: Shell, proc) -> dict:
    """The night that just ran: its record, and its flow run on make server's server."""
    assert "Completed" in proc.stdout + proc.stderr
    summary = json.loads((shell.cwd / "reports/nightly/summary.json").read_text())
    assert all("error" not in row and "promoted" in row["verdict"]
               for row in summary["pipelines"])
    return {row["pipeline"]: row for row in summary["pipelines"]}


def after_a_night(shell: Shell, proc) -> None:
    """No new data since the demo: the crypto and Quora stages are not rerun, no new model
    version is trained; the night still judges what is registered and pushes what is done."""
    rows = night_summary(shell, proc)
    assert set(rows) == set(
        yaml.safe_load((shell.cwd / "params.yaml").read_text())["nightly"]["pipelines"])
    for name in ("crypto", "quora"):
        assert rows[name]["data"]["changed"] is False and rows[name]["stages_run"] == []
    pushed = json.loads((shell.cwd / "reports/nightly/summary.json").read_text())["pushed"]
    assert pushed > 0 and (shell.cwd / ".dvcstore").is_dir()  # the default remote


def after_a_night_with_new_candles(shell: Shell, proc) -> None:
    """New demo candles: the crypto stages rerun as DVC's stages, each a subflow run of the
    night, a new model version is judged, and dvc.lock describes what is on disk."""
    rows = night_summary(shell, proc)
    crypto = rows["crypto"]
    assert crypto["data"]["changed"] is True and "crypto_train" in crypto["stages_run"]
    assert crypto["verdict"]["challenger"] is not None
    runs = httpx.post(f"{SERVER}/flow_runs/filter", json={  # (not the schedule's next one)
        "flows": {"name": {"any_": ["nightly-retrain"]}},
        "flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}, "sort": "END_TIME_DESC",
        "limit": 1}).json()
    stages = httpx.post(f"{SERVER}/flow_runs/filter", json={"flow_runs": {
        "parent_flow_run_id": {"any_": [runs[0]["id"]]}}}).json()
    flows = {f["id"]: f["name"] for f in httpx.post(f"{SERVER}/flows/filter", json={}).json()}
    assert {flows[r["flow_id"]] for r in stages} >= {"crypto_ingest", "crypto_train",
                                                      "crypto_evaluate"}
    status = shell.run(".venv/bin/dvc status --json --with-deps crypto_evaluate").stdout
    assert json.loads(status) == {}


def after_make_worker(shell: Shell, proc) -> None:
    assert "stopped worker" in proc.stdout and "at most 3 flow runs at once" in proc.stdout


def after_make_stop(shell: Shell, proc) -> None:
    assert "stopped server" in proc.stdout
    assert "PREFECT_API_URL" not in shell.run(".venv/bin/prefect config view").stdout


def after_rollback(shell: Shell, proc) -> None:
    """Two moves by hand and a rollback: the alias is v2's again, each move a span by a
    person in the registry, a record on the site's history, the site rebuilt."""
    assert "champion v1 -> v2" in proc.stdout
    client = MlflowClient(tracking_uri=f"sqlite:///{shell.cwd}/mlflow.db")
    assert str(client.get_model_version_by_alias("crypto-next-move", "champion").version) == "2"
    exported = json.loads((shell.cwd / "reports/nightly/champions/crypto.json").read_text())
    assert exported["champion"] == "2"
    assert [(s["version"], s["by"]) for s in exported["history"]][-3:] == [
        ("2", "person"), ("1", "person"), ("2", "person")]
    by_hand = sorted((shell.cwd / "reports/nightly/nights").glob("*-by-hand.json"))
    assert len(by_hand) == 3
    assert "rollback: the look is over" in (shell.cwd / "reports/site/crypto.html").read_text()
    assert stale(shell) == set()


CHECKS = {  # the start of a README command -> what must hold after it
    "make server ": after_make_server,
    ".venv/bin/dvc metrics show": after_metrics_show,
    ".venv/bin/dvc repro ": after_repro,
    ".venv/bin/reprolab run kinetics train": after_kinetics_train,
    ".venv/bin/reprolab status": after_status,
    ".venv/bin/reprolab run crypto --set crypto.model.hidden": after_wider_network,
    ".venv/bin/dvc exp show": after_exp_show,
    ".venv/bin/dvc exp diff": after_exp_diff,
    "git checkout params.yaml dvc.lock": after_checkout,
    ".venv/bin/python -m flows.ablate": after_ablation,
    "curl ": after_curl,
    ".venv/bin/prefect deployment run 'ablate/default'": after_ablation_deployment,
    ".venv/bin/prefect deployment run 'nightly-retrain/nightly' --watch  ": after_a_night,
    ".venv/bin/prefect deployment run 'nightly-retrain/nightly' --watch \\": (
        after_a_night_with_new_candles),
    ".venv/bin/prefect deployment run": after_deployment_run,
    "make worker WORKER_FLOWS": after_make_worker,
    "make stop": after_make_stop,
    ".venv/bin/reprolab rollback crypto": after_rollback,
}


def check_for(command: str):
    return next((check for start, check in CHECKS.items() if command.startswith(start)), None)


def test_every_bash_block_runs_as_written_from_a_plain_shell(readme_clone):
    shell = readme_clone.shell
    text = README.read_text()
    ran, checked = [], set()
    for block in blocks(text):
        try:
            if block.lang == "bash":
                for command in commands(block.text):
                    if command.startswith((DONE_BY_THE_FIXTURE, SUITE)):
                        continue
                    background, url = runs_until_stopped(command)
                    if background:
                        shell.start(command, url)
                    else:
                        proc = shell.run(command)
                        check = check_for(command)
                        if check is not None:
                            check(shell, proc)
                            checked.add(check.__name__)
                    ran.append(command)
            elif block.lang == "console":
                for command, shown in console_steps(block.text):
                    proc = shell.run(command, check=False)
                    for line in shown:
                        assert line in proc.stdout + proc.stderr, (command, line)
                    ran.append(command)
            elif block.lang == "python":
                proc = subprocess.run([".venv/bin/python", "-"], input=block.text, text=True,
                                      cwd=shell.cwd, env=shell.env, capture_output=True,
                                      timeout=300)
                assert proc.returncode == 0, (block.line, proc.stderr[-4000:])
                ran.append(f"python block at line {block.line}")
        finally:
            shell.stop_background()
    assert checked == {check.__name__ for check in CHECKS.values()}, "a checked command is gone"
    assert len(ran) >= 30


# ---------------------------------------------------------------- what the test cannot run
def program_and_args(command: str) -> list[str]:
    words = shlex.split(command, comments=True)
    while words and re.match(r"^[A-Z_]+=", words[0]):  # VAR=value before the program
        words.pop(0)
    return words


@pytest.mark.parametrize("command", [c for b in blocks(README.read_text()) if b.lang == "text"
                                     for c in commands(b.text)], ids=lambda c: c[:60])
def test_every_text_block_command_names_what_exists(readme_clone, command):
    """Commands for a GPU, the internet, your data or hours: each names a program of the venv,
    a module, profile and make target that exist; a benchmark answers --help."""
    shell = readme_clone.shell
    for part in command.split("&&"):
        words = program_and_args(part)
        program = words[0]
        assert (shell.cwd / program).exists() or program == "make", program
        if "-m" in words:
            module = words[words.index("-m") + 1]
            if module.startswith("benchmarks."):
                shell.run(f".venv/bin/python -m {module} --help")
            else:
                shell.run(f".venv/bin/python -c 'import {module}'")
        if "--profile" in words:
            assert yaml.safe_load((shell.cwd / words[words.index("--profile") + 1]).read_text())
        if program == "make":
            shell.run(f"make -n {words[1]}")
