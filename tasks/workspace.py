"""A checkout of a worker's own: it starts from the results its team published, pulls from the
DVC remote what it lacks, and publishes what it ran.

A worker that shares nothing with the server but the servers and the remote runs each flow in
a clone of the project's repository (Prefect's `git_clone` pull step, `prefect.team.yaml`).
Two environment variables, set on those deployments, make a run behave as one of a team's:

- REPROLAB_RESULTS_BRANCH (e.g. `nightly`): the git branch the team's results live on. Before
  a pipeline run or a night, the clone takes the `dvc.lock` of that branch's tip (the last
  results anyone published), so DVC reruns only what the code being run made stale. After it,
  the outputs are pushed to the DVC remote and `dvc.lock` + `params.yaml` are committed on the
  branch and pushed to the git remote (`REPROLAB_GIT_REMOTE`, default origin): the commit's
  parents are the branch's previous tip and the code commit the run used (so
  `git log --first-parent nightly` lists the runs), its message says what ran. Two workers publishing at once do not lose each other's results: the stages a run
  changed are laid over the tip it finds when it publishes, and a push that lost the race is
  made again on the new tip. The nights' records (reports/nightly: rows held back by failed
  checks, the champion history, each night's summary) and the ablation tables travel the same
  way: restored from the tip at the start, and what the run added or changed committed with
  the lock.
- REPROLAB_DVC_PULL=1: the data a stage needs and does not find is pulled from the DVC remote.
  A pipeline run pulls only what the stages it runs lack (`dvc repro --pull --allow-missing`:
  an up-to-date stage is not downloaded at all); a night, which checks the data and rescores
  the champion before and after any stage runs, pulls its pipelines' recorded outputs first
  (`dvc pull --with-deps`); nothing of the other pipelines either way.

    git checkout nightly && dvc pull   # then a colleague has exactly what the site shows
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tasks import objectstore
from tasks.errors import ReproLabError
from tasks.logs import get_logger
from tasks.storage import write_bytes, write_text

BRANCH_VAR = "REPROLAB_RESULTS_BRANCH"
REMOTE_VAR = "REPROLAB_GIT_REMOTE"
PULL_VAR = "REPROLAB_DVC_PULL"
PUBLISHED = ("dvc.lock", "params.yaml")
# what the project keeps outside DVC and a team's next run must find: the nights' records (rows
# held back by failed checks, champion history, each night's summary) and the ablation tables;
# they travel with the results (restored at the start, published with the lock)
RECORDS = ("reports/nightly", "reports/ablations")
PUSH_TRIES = 5
IDENTITY = {"GIT_AUTHOR_NAME": "ReproLab", "GIT_AUTHOR_EMAIL": "reprolab@localhost",
            "GIT_COMMITTER_NAME": "ReproLab", "GIT_COMMITTER_EMAIL": "reprolab@localhost"}


class PublishError(ReproLabError):
    """The results could not be published to the results branch."""


def results_branch() -> str | None:
    return os.environ.get(BRANCH_VAR, "").strip() or None


def git_remote() -> str:
    return os.environ.get(REMOTE_VAR, "").strip() or "origin"


def pulls() -> bool:
    return os.environ.get(PULL_VAR, "").strip().lower() in ("1", "true", "yes", "on")


def git(root: Path, *args: str, env: dict[str, str] | None = None,
        stdin: str | None = None) -> str:
    done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                          input=stdin, env={**os.environ, **(env or {})}, timeout=300,
                          check=False)
    if done.returncode != 0:
        raise PublishError(f"git {' '.join(args)}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def _identity(root: Path) -> dict[str, str]:
    """Who commits: git's configured user, else ReproLab."""
    try:
        git(root, "config", "user.email")
        return {}
    except PublishError:
        return IDENTITY


# ---------------------------------------------------------------- before a run
def fetch_tip(root: Path, branch: str) -> str | None:
    """The results branch's tip on the git remote (fetched), or None when it has none yet."""
    remote = git_remote()
    heads = git(root, "ls-remote", "--heads", remote, branch).split()
    if not heads:
        return None
    git(root, "fetch", "--quiet", remote, f"+refs/heads/{branch}:refs/remotes/{remote}/{branch}")
    return git(root, "rev-parse", f"refs/remotes/{remote}/{branch}").strip()


def file_at(root: Path, commit: str, path: str) -> str | None:
    try:
        return git(root, "show", f"{commit}:{path}")
    except PublishError:
        return None


def start_from_results(root: Path = Path(".")) -> str | None:
    """With a results branch: this checkout's dvc.lock becomes the branch tip's (the code and
    params stay this checkout's, so what they changed is stale); returns that lock's text
    ("" when there is none). None without a results branch."""
    branch = results_branch()
    if branch is None:
        return None
    tip = fetch_tip(root, branch)
    lock = None if tip is None else file_at(root, tip, "dvc.lock")
    log = get_logger()
    if lock is None:
        log.info("results branch %s has no dvc.lock yet: starting from this checkout's", branch)
        path = root / "dvc.lock"
        return path.read_text() if path.exists() else ""
    write_text(lock, root / "dvc.lock")
    log.info("starting from the results published on %s (%s)", branch, tip[:12])
    return lock


def results_tip(root: Path) -> str | None:
    """The results branch's tip as last fetched (start_from_results fetches it)."""
    try:
        return git(root, "rev-parse", "--verify", "--quiet",
                   f"refs/remotes/{git_remote()}/{results_branch()}").strip() or None
    except PublishError:
        return None


def tip_records(root: Path, tip: str | None) -> dict[str, str]:
    """{path: blob} of the RECORDS files in commit `tip` (none without one)."""
    if tip is None:
        return {}
    listed = git(root, "ls-tree", "-r", tip, "--", *RECORDS)
    return {line.split("\t", 1)[1]: line.split()[2] for line in listed.splitlines()}


def record_files(root: Path) -> dict[str, str]:
    """{path: blob} of the RECORDS files in this checkout (stored in git's object database)."""
    paths = sorted(str(path.relative_to(root)) for folder in RECORDS
                   for path in (root / folder).rglob("*") if path.is_file())
    if not paths:
        return {}
    blobs = git(root, "hash-object", "-w", "--stdin-paths", stdin="\n".join(paths) + "\n")
    return dict(zip(paths, blobs.split(), strict=True))


def restore_records(root: Path = Path(".")) -> dict[str, str]:
    """The results tip's RECORDS files written into this checkout (where it has none, or other
    content); returns {path: blob} of what it started from."""
    records = tip_records(root, results_tip(root))
    for path, blob in records.items():
        write_bytes(git_bytes(root, "cat-file", "blob", blob), root / path)
    return records


def git_bytes(root: Path, *args: str) -> bytes:
    done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, timeout=300,
                          check=False)
    if done.returncode != 0:
        raise PublishError(f"git {' '.join(args)}: {done.stderr.decode(errors='replace')}")
    return done.stdout


def records_to_publish(root: Path, tip: str | None, started: dict[str, str]) -> dict[str, str]:
    """The tip's records, with every file this run added or changed laid over them."""
    changed = {path: blob for path, blob in record_files(root).items()
               if started.get(path) != blob}
    return {**tip_records(root, tip), **changed}


def pull_inputs(targets: list[str], root: Path = Path(".")) -> int:
    """With REPROLAB_DVC_PULL: the recorded outputs of the targets and the stages they need,
    from the DVC remote, where this checkout lacks them (nothing that is not recorded)."""
    if not pulls():
        return 0
    from dvc.repo import Repo

    with objectstore.storage_credentials(), Repo(str(root)) as repo:
        pulled = repo.pull(targets=targets, with_deps=True, allow_missing=True)
    count = pulled.get("fetched", 0) if isinstance(pulled, dict) else pulled
    get_logger().info("dvc pull %s (with deps): %s file(s) from the remote", " ".join(targets),
                      count)
    return count


# ---------------------------------------------------------------- after it
def stages_of(lock_text: str | None) -> dict[str, Any]:
    data = yaml.safe_load(lock_text or "") or {}
    return dict(data.get("stages") or {})


def overlay(theirs: str | None, started: str | None, ours: str) -> str:
    """The lock to publish: the tip's (`theirs`), with every stage this run changed (its entry
    in `ours` differs from the one it `started` from) taken from `ours`."""
    before, mine = stages_of(started), stages_of(ours)
    stages = stages_of(theirs) or {}
    for name, entry in mine.items():
        if before.get(name) != entry:
            stages[name] = entry
    data = yaml.safe_load(ours) or {}
    data["stages"] = dict(sorted(stages.items()))
    return yaml.safe_dump(data, sort_keys=False)


def _tree_with(root: Path, files: dict[str, str], blobs: dict[str, str]) -> str:
    """A git tree: HEAD's, with `files` (path -> text) and `blobs` (path -> blob) in it; the
    index and the working tree are not touched."""
    blobs = {**blobs, **{path: git(root, "hash-object", "-w", "--stdin", stdin=text).strip()
                         for path, text in files.items()}}
    entries = "".join(f"100644 {blob}\t{path}\n" for path, blob in sorted(blobs.items()))
    with tempfile.TemporaryDirectory() as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        git(root, "read-tree", "HEAD", env=env)
        git(root, "update-index", "--add", "--index-info", env=env, stdin=entries)
        return git(root, "write-tree", env=env).strip()


def is_ancestor(root: Path, commit: str, of: str) -> bool:
    done = subprocess.run(["git", "-C", str(root), "merge-base", "--is-ancestor", commit, of],
                          capture_output=True, timeout=60, check=False)
    return done.returncode == 0


def push_outputs(targets: list[str], remote: str | None = None, root: Path = Path("."),
                 with_deps: bool = True) -> int:
    """`dvc push` the outputs of the targets (and of the stages they need); returns the count."""
    from dvc.repo import Repo

    with objectstore.storage_credentials(), Repo(str(root)) as repo:
        pushed = repo.push(targets=targets, with_deps=with_deps, remote=remote)
    get_logger().info("dvc push %s%s%s: %d file(s)", " ".join(targets),
                      " (with deps)" if with_deps else "", f" -r {remote}" if remote else "",
                      pushed)
    return pushed


def publish(message: str, started: str | None, root: Path = Path("."),
            always: bool = False, records: dict[str, str] | None = None) -> str | None:
    """Commit this run's dvc.lock (over the tip's, see `overlay`), params.yaml and the RECORDS
    files it added or changed since `records` (what it started from) on the results branch and
    push it; returns the commit, or None without a results branch or when the tip already holds
    all of it (unless `always`: a night is recorded even when it changed nothing). Call it once
    the outputs are in the DVC remote."""
    branch = results_branch()
    if branch is None:
        return None
    ours, params = (root / "dvc.lock").read_text(), (root / "params.yaml").read_text()
    head = git(root, "rev-parse", "HEAD").strip()
    for _ in range(PUSH_TRIES):
        tip = fetch_tip(root, branch)
        theirs = None if tip is None else file_at(root, tip, "dvc.lock")
        lock = overlay(theirs, started, ours)
        kept = records_to_publish(root, tip, records or {})
        same = (tip is not None and is_ancestor(root, head, tip)
                and stages_of(lock) == stages_of(theirs)
                and params == file_at(root, tip, "params.yaml")
                and kept == tip_records(root, tip))
        if same and not always:
            get_logger().info("nothing new to publish on %s", branch)
            return None
        tree = _tree_with(root, {"dvc.lock": lock, "params.yaml": params}, kept)
        # first the previous results (`git log --first-parent` lists the runs), then the code
        # this run used, where the branch does not hold it yet
        parents = [tip] if tip is not None else []
        parents += [] if tip is not None and is_ancestor(root, head, tip) else [head]
        parents = [arg for commit in parents for arg in ("-p", commit)]
        commit = git(root, "commit-tree", tree, *parents, "-m", message,
                     env=_identity(root)).strip()
        with contextlib.suppress(PublishError):  # another worker published first: again
            git(root, "push", "--quiet", git_remote(), f"{commit}:refs/heads/{branch}")
            get_logger().info("published %s on %s (%s): %s", " and ".join(PUBLISHED), branch,
                              commit[:12], message.splitlines()[0])
            return commit
    raise PublishError(f"could not push the results to branch {branch!r} of "
                       f"{git_remote()!r} after {PUSH_TRIES} tries")


@dataclass
class TeamRun:
    """A run in a team's clone (a results branch is set): `started` is the lock it last took
    from the branch, what `publish` lays its changes over."""

    targets: list[str]
    started: str
    root: Path = Path(".")
    records: dict[str, str] = field(default_factory=dict)  # the RECORDS it started from
    pull_all: bool = True  # pull the targets' recorded outputs (else `dvc repro` pulls)

    def finish(self, message: str, remote: str | None = None) -> str | None:
        """The targets' outputs to the DVC remote, then the lock published."""
        push_outputs(self.targets, remote, self.root)
        return self.publish(message)

    def publish(self, message: str, always: bool = False) -> str | None:
        """`publish`; what it published is then what a later publish lays its changes over."""
        commit = publish(message, self.started, self.root, always, self.records)
        self.started = (self.root / "dvc.lock").read_text()
        self.records = record_files(self.root)
        return commit

    def restart(self) -> None:
        """Take the branch's results again (another worker published since) and pull them."""
        self.started = start_from_results(self.root) or ""
        self.records = restore_records(self.root)
        if self.pull_all:
            pull_inputs(self.targets, self.root)


def start(targets: list[str], root: Path = Path("."), pull_all: bool = True) -> TeamRun | None:
    """Before a run of `targets` in a team's clone: start from the published results and pull
    the targets' recorded outputs (each only when set, see the module's doc; `pull_all=False`:
    pull nothing here, the run's `dvc repro --pull` takes what its stages lack). None without
    a results branch: the run is not published."""
    started = start_from_results(root)
    records = {} if started is None else restore_records(root)
    if pull_all:
        pull_inputs(targets, root)
    return None if started is None else TeamRun(list(targets), started, root, records,
                                                pull_all)
