"""A team's clones publish their results on a branch (tasks/workspace.py): real git, a bare
repository as the team's remote, clones as the workers."""
import subprocess
from pathlib import Path

import pytest
import yaml

from tasks import workspace

BRANCH = "nightly"


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                          check=True).stdout


def lock(**stages: str) -> str:
    """A dvc.lock whose stages each have one output of the given md5."""
    return yaml.safe_dump({"schema": "2.0", "stages": {
        name: {"cmd": f"run {name}", "outs": [{"path": name, "md5": md5}]}
        for name, md5 in stages.items()}}, sort_keys=False)


@pytest.fixture
def team(tmp_path, monkeypatch):
    """A bare repository with one commit (params.yaml, no dvc.lock) and a function that clones
    it as a worker."""
    origin, seed = tmp_path / "origin.git", tmp_path / "seed"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], check=True)
    subprocess.run(["git", "init", "-q", "-b", "main", str(seed)], check=True)
    (seed / "params.yaml").write_text("seed: 1\n")
    git(seed, "add", "params.yaml")
    git(seed, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "code")
    git(seed, "push", "-q", str(origin), "main")
    monkeypatch.setenv(workspace.BRANCH_VAR, BRANCH)
    monkeypatch.delenv(workspace.REMOTE_VAR, raising=False)

    def clone(name: str) -> Path:
        path = tmp_path / name
        subprocess.run(["git", "clone", "-q", "--depth", "1", f"file://{origin}", str(path)],
                       check=True)
        return path

    clone.origin = origin
    return clone


def tip_file(origin: Path, path: str) -> str:
    return git(origin, "show", f"{BRANCH}:{path}")


def test_the_first_results_are_published_on_a_new_branch(team):
    worker = team("a")
    started = workspace.start_from_results(worker)
    assert started == "" and not (worker / "dvc.lock").exists()  # nothing published yet
    (worker / "dvc.lock").write_text(lock(crypto_train="1"))
    commit = workspace.publish("crypto pipeline: crypto_train", started, worker)
    assert commit and git(team.origin, "rev-parse", BRANCH).strip() == commit
    assert yaml.safe_load(tip_file(team.origin, "dvc.lock"))["stages"]["crypto_train"]["outs"][0][
        "md5"] == "1"
    assert tip_file(team.origin, "params.yaml") == "seed: 1\n"
    # its parent: the code commit the run used; its subject says what ran
    parents, subject = git(team.origin, "log", "-1", "--format=%P|%s", BRANCH).strip().split("|")
    assert parents == git(team.origin, "rev-parse", "main").strip()
    assert subject == "crypto pipeline: crypto_train"
    assert git(worker, "status", "--porcelain", "--untracked-files=no") == ""  # tree untouched
    # nothing new: nothing published
    assert workspace.publish("again", started, worker) is None


def test_two_workers_publishing_keep_each_others_results(team):
    first, second = team("a"), team("b")
    (first / "dvc.lock").write_text(lock(crypto_train="1", quora_train="1"))
    workspace.publish("both", "", first)

    started_a = workspace.start_from_results(first)
    started_b = workspace.start_from_results(second)  # both start from the same tip
    assert started_a == started_b and (second / "dvc.lock").read_text() == started_b
    (first / "dvc.lock").write_text(lock(crypto_train="2", quora_train="1"))  # crypto reran
    (second / "dvc.lock").write_text(lock(crypto_train="1", quora_train="3"))  # quora reran
    workspace.publish("crypto", started_a, first)
    workspace.publish("quora", started_b, second)  # after the other: laid over its tip

    stages = yaml.safe_load(tip_file(team.origin, "dvc.lock"))["stages"]
    assert {name: entry["outs"][0]["md5"] for name, entry in stages.items()} == {
        "crypto_train": "2", "quora_train": "3"}
    history = git(team.origin, "log", "--first-parent", "--format=%s", BRANCH).split()
    assert history == ["quora", "crypto", "both", "code"]
    # the next run on any clone starts from both
    third = team("c")
    assert workspace.start_from_results(third) == tip_file(team.origin, "dvc.lock")


def test_no_results_branch_means_nothing_is_read_or_published(team, monkeypatch):
    monkeypatch.delenv(workspace.BRANCH_VAR)
    worker = team("a")
    assert workspace.start_from_results(worker) is None
    (worker / "dvc.lock").write_text(lock(crypto_train="1"))
    assert workspace.publish("x", None, worker) is None
    assert workspace.start(["crypto_evaluate"], worker) is None
    assert git(team.origin, "branch", "--list", BRANCH) == ""


def test_a_remote_that_refuses_the_push_is_an_error_naming_the_branch(team, monkeypatch):
    worker = team("a")
    (worker / "dvc.lock").write_text(lock(crypto_train="1"))
    hook = team.origin / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\nexit 1\n")
    hook.chmod(0o755)
    with pytest.raises(workspace.PublishError, match="branch 'nightly' of 'origin'"):
        workspace.publish("refused", "", worker)


def test_overlay_takes_only_the_stages_this_run_changed():
    theirs = lock(a="1", b="9", c="1")
    started, ours = lock(a="1", b="1"), lock(a="2", b="1", d="1")
    assert {k: v["outs"][0]["md5"] for k, v in workspace.stages_of(
        workspace.overlay(theirs, started, ours)).items()} == {"a": "2", "b": "9", "c": "1",
                                                              "d": "1"}


def test_the_nights_records_travel_with_the_results(team):
    first, second = team("a"), team("b")
    run = workspace.start(["crypto_evaluate"], first)
    night = first / "reports" / "nightly" / "nights" / "night-1.json"
    night.parent.mkdir(parents=True)
    night.write_text('{"night": 1}')
    (first / "reports" / "nightly" / "held").mkdir()
    (first / "reports" / "nightly" / "held" / "crypto.json").write_text('{"keys": [1, 2]}')
    (first / "dvc.lock").write_text(lock(crypto_train="1"))
    run.publish("night 1", always=True)

    later = workspace.start(["crypto_evaluate"], second)  # another worker, the next night
    held = second / "reports" / "nightly" / "held" / "crypto.json"
    assert held.read_text() == '{"keys": [1, 2]}'  # the rows a failed check holds back
    assert (second / "reports" / "nightly" / "nights" / "night-1.json").exists()
    held.write_text('{"keys": []}')  # they passed tonight
    (second / "reports" / "nightly" / "nights" / "night-2.json").write_text('{"night": 2}')
    later.publish("night 2", always=True)
    assert git(team.origin, "ls-tree", "-r", "--name-only", BRANCH, "reports").split() == [
        "reports/nightly/held/crypto.json", "reports/nightly/nights/night-1.json",
        "reports/nightly/nights/night-2.json"]
    assert tip_file(team.origin, "reports/nightly/held/crypto.json") == '{"keys": []}'
    # a record this run did not touch is never taken back from an older start
    (first / "reports" / "nightly" / "nights" / "night-1.json").write_text('{"night": 1}')
    run.publish("night 1 again")
    assert tip_file(team.origin, "reports/nightly/held/crypto.json") == '{"keys": []}'
