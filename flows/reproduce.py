"""`reprolab reproduce models:/<name>/<version>` (or `@champion`): rebuild a registered model
from what its runs recorded and say whether the result is the same, byte for byte.

From the version and its training run (the tags of tasks/provenance.py; the version's own are
written when evaluate registers it, tasks.tracking.registration_tags) it
1. takes the recorded commit (refused when the run came from a tree with uncommitted changes,
   or the commit is not in this repository) and makes a temporary `git worktree` there that
   shares this checkout's DVC cache (`.dvc/config.local`);
2. compares the installed packages with pylock.toml at that commit and with the versions the
   run recorded, naming each that differs, and goes on;
3. restores the recorded data: the earliest recorded stage outputs the training read, from this
   checkout where they still hash as recorded, else from the DVC cache, else from the DVC
   remote (each said);
4. reruns the model's stages from there (`dvc repro --single-item`, in the worktree, at the
   recorded thread count), into an MLflow store of the worktree's own: nothing is logged to or
   registered in this checkout's;
5. compares what they wrote with what was recorded: the data rebuilt on the way, the trained
   artifacts (the predictions file by name), the metrics and results files. Identical, or how
   far (the largest difference of each metric and prediction column) and the likely reason
   (README, Determinism: thread count, CUDA, package versions).

The rebuild works in its own worktree under its own run lock (tasks/runlock.py), so it neither
waits for nor blocks a run of this checkout; it only adds objects to the shared DVC cache,
which is content-addressed. Exit status: 0 identical, 1 differs, 2 error.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from tasks.errors import ReproLabError
from tasks.pipeline import Pipeline, declarations
from tasks.provenance import INPUT_TAG, OUTPUT_TAG, UNKNOWN

IDENTICAL, DIFFERS, ERROR = 0, 1, 2
VERSION_TAG = "reprolab.version."
SOURCES = {"checkout": "this checkout's copy (it still hashes as recorded)",
           "cache": "the DVC cache", "remote": "the DVC remote"}
LOG_TAIL = 3000


class ReproduceError(ReproLabError):
    """The version cannot be rebuilt as recorded: the message says why."""


# ---------------------------------------------------------------- what was recorded
def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """`models:/<name>/<version>` -> (name, version, None); `models:/<name>@<alias>` ->
    (name, None, alias); the version may be `latest`."""
    rest = uri.removeprefix("models:/")
    if rest == uri or not rest:
        raise ReproduceError(f"{uri!r}: expected models:/<name>/<version> or "
                             "models:/<name>@<alias>")
    if "@" in rest:
        name, _, alias = rest.partition("@")
        if name and alias and "/" not in name:
            return name, None, alias
    else:
        name, _, version = rest.partition("/")
        if name and version and (version.isdigit() or version == "latest"):
            return name, version, None
    raise ReproduceError(f"{uri!r}: expected models:/<name>/<version> or models:/<name>@<alias>")


def with_prefix(tags: Mapping[str, str], prefix: str) -> dict[str, str]:
    """{rest of key: value} of the tags whose key starts with `prefix`."""
    return {key[len(prefix):]: value for key, value in tags.items() if key.startswith(prefix)}


@dataclass(frozen=True)
class Record:
    """What a version and its training run recorded (tasks/provenance.py)."""

    model: str
    version: str
    run_id: str
    commit: str                  # where to rebuild: where it was registered, else trained
    trained_at: str              # the training run's commit
    dirty: tuple[str, ...]       # the dirty flags recorded (the training run's, the version's)
    lock_sha256: str
    threads: str | None          # OMP_NUM_THREADS of the training ("auto": none); None: unrecorded
    cores: str | None
    device: str
    versions: dict[str, str]     # package -> version, as the training run recorded
    inputs: dict[str, str]       # what the training read: path -> DVC hash
    read: dict[str, str]         # what the registering stage (evaluate) read
    written: dict[str, str]      # what it wrote: the metrics and results files


def record_of(model: str, version: str, run_id: str, version_tags: Mapping[str, str],
              run_tags: Mapping[str, str], run_params: Mapping[str, str]) -> Record:
    """The Record of a version from its tags and its training run's tags and params."""
    trained_at = run_tags.get("reprolab.git_commit", UNKNOWN)
    dirty = tuple(tags["reprolab.git_dirty"] for tags in (run_tags, version_tags)
                  if "reprolab.git_dirty" in tags)
    return Record(
        model=model, version=version, run_id=run_id,
        commit=version_tags.get("reprolab.git_commit", trained_at), trained_at=trained_at,
        dirty=dirty or (UNKNOWN,), lock_sha256=run_tags.get("reprolab.lock_sha256", UNKNOWN),
        threads=run_tags.get("reprolab.threads"), cores=run_tags.get("reprolab.cores"),
        device=run_params.get("device") or run_params.get("common.device") or UNKNOWN,
        versions=with_prefix(run_tags, VERSION_TAG), inputs=with_prefix(run_tags, INPUT_TAG),
        read=with_prefix(version_tags, INPUT_TAG), written=with_prefix(version_tags, OUTPUT_TAG))


def refusal(record: Record, in_repository: bool) -> str | None:
    """Why the version cannot be rebuilt from its commit, or None."""
    if record.commit == UNKNOWN:
        return "its runs recorded no git commit (made outside a git checkout?)"
    if "true" in record.dirty:
        return (f"it was made from a tree with uncommitted changes (reprolab.git_dirty=true at "
                f"{record.commit[:10]}): the code and params it ran are at no commit")
    if UNKNOWN in record.dirty:
        return "its runs did not record whether the tree had uncommitted changes"
    if not in_repository:
        return (f"commit {record.commit} is not in this repository (fetch it first: "
                f"git fetch origin {record.commit})")
    return None


# ---------------------------------------------------------------- packages
def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_lock(text: str) -> dict[str, str]:
    """pylock.toml -> {canonical name: version}."""
    import tomllib

    return {canonical(p["name"]): str(p.get("version", "")) for p in
            tomllib.loads(text).get("packages", [])}


def installed_versions() -> dict[str, str]:
    return {canonical(dist.metadata["Name"]): dist.version
            for dist in metadata.distributions() if dist.metadata["Name"]}


def package_differences(locked: Mapping[str, str] | None, recorded: Mapping[str, str],
                        installed: Mapping[str, str]) -> list[str]:
    """One line per package installed at another version than the lock at the commit
    (`locked`, None when there was none) or the training run recorded (`recorded`)."""
    lines: dict[str, list[str]] = {}
    for source, pins in (("locked", locked or {}), ("the run recorded", recorded)):
        for name, version in sorted(pins.items()):
            if version in ("", UNKNOWN):
                continue
            now = installed.get(canonical(name))
            if now != version and not (version == "not installed" and now is None):
                lines.setdefault(canonical(name), []).append(f"{source} {version}")
    return [f"{name}: {', '.join(parts)}; installed {installed.get(name) or 'none'}"
            for name, parts in sorted(lines.items())]


# ---------------------------------------------------------------- the plan
@dataclass(frozen=True)
class Plan:
    restore: tuple[str, ...]   # recorded paths to put in place first
    stages: tuple[str, ...]    # then these stages, in order


def producers(pipeline: Pipeline) -> dict[str, int]:
    """Each stage output path -> the index of the stage that writes it."""
    return {path: i for i, stage in enumerate(pipeline.stages) for path in stage.out_paths}


def upstream(pipeline: Pipeline) -> set[int]:
    """The indices of the last stage (evaluate) and every stage it needs, transitively."""
    made_by = producers(pipeline)
    seen: set[int] = set()
    todo = [len(pipeline.stages) - 1]
    while todo:
        i = todo.pop()
        if i not in seen:
            seen.add(i)
            todo.extend(made_by[d] for d in pipeline.stages[i].deps if d in made_by)
    return seen


def plans(pipeline: Pipeline, recorded: Mapping[str, str]) -> list[Plan]:
    """The ways to rebuild, earliest start first: restore the recorded stage outputs that the
    stages after a start read, rerun those stages. A start is possible only where everything
    the later stages read and do not write themselves was recorded."""
    made_by, needed = producers(pipeline), upstream(pipeline)
    out = []
    for start in sorted({made_by[p] for p in recorded if p in made_by}):
        run = [i for i in sorted(needed) if i > start]
        made = {p for i in run for p in pipeline.stages[i].out_paths}
        required = {d for i in run for d in pipeline.stages[i].deps if d not in made}
        if run and required <= set(recorded):
            out.append(Plan(tuple(sorted(required, key=lambda p: (made_by.get(p, -1), p))),
                            tuple(pipeline.stages[i].name for i in run)))
    return out


# ---------------------------------------------------------------- comparing
def numbers(tree: Any, prefix: str = "") -> dict[str, float]:
    """The numeric leaves of a JSON document by dotted key (list items by index)."""
    items = (tree.items() if isinstance(tree, Mapping)
             else enumerate(tree) if isinstance(tree, list) else None)
    if items is None:
        is_number = isinstance(tree, int | float) and not isinstance(tree, bool)
        return {prefix: float(tree)} if is_number else {}
    out: dict[str, float] = {}
    for key, value in items:
        out.update(numbers(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def metric_differences(recorded: Any, rebuilt: Any) -> dict[str, float]:
    """|rebuilt - recorded| of every numeric value that differs (inf: on one side only, or
    not a number on one side), largest first."""
    old, new = numbers(recorded), numbers(rebuilt)
    out = {}
    for key in old.keys() | new.keys():
        a, b = old.get(key), new.get(key)
        if a is None or b is None or math.isnan(a) != math.isnan(b):
            out[key] = math.inf
        elif a != b and not (math.isnan(a) and math.isnan(b)):
            out[key] = abs(a - b)
    return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))


def column_differences(recorded: Any, rebuilt: Any) -> dict[str, float]:
    """Two prediction tables (pandas): the largest |difference| of each numeric column that
    differs, the share of rows that differ for the others; inf for a column on one side or
    tables of other lengths."""
    import numpy as np

    if len(recorded) != len(rebuilt):
        return {f"rows ({len(recorded)} recorded, {len(rebuilt)} rebuilt)": math.inf}
    out = {}
    for column in [*recorded.columns, *(c for c in rebuilt.columns if c not in recorded)]:
        if column not in recorded or column not in rebuilt:
            out[str(column)] = math.inf
            continue
        a, b = recorded[column].to_numpy(), rebuilt[column].to_numpy()
        if a.dtype.kind in "fiub" and b.dtype.kind in "fiub":
            diff = np.abs(a.astype(float) - b.astype(float))
            diff[np.isnan(a.astype(float)) & np.isnan(b.astype(float))] = 0.0
            worst = float(np.nanmax(diff)) if diff.size else 0.0
            if np.isnan(diff).any():
                worst = math.inf
        else:
            worst = float(np.mean(a != b)) if a.size else 0.0
        if worst:
            out[str(column)] = worst
    return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))


def how_far(differences: Mapping[str, float], limit: int = 6) -> str:
    """'max |difference| 0.0021: test.accuracy 0.0021, ci_low 0.0015 (+3 more)'."""
    if not differences:
        return "no value differs (the bytes do: formatting or order)"
    items = list(differences.items())
    shown = ", ".join(f"{key} {value:.3g}" for key, value in items[:limit])
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return f"max |difference| {items[0][1]:.3g}: {shown}{more}"


@dataclass(frozen=True)
class Check:
    path: str
    role: str                  # data, trained, predictions, metrics, results
    identical: bool | None     # None: nothing recorded to compare with
    detail: str = ""


def likely_reasons(record: Record, threads: str, cores: str, packages: list[str],
                   checks: list[Check]) -> list[str]:
    """Why a rebuild may differ from the record (README, Determinism), most likely first."""
    out = []
    if "cuda" in record.device.lower():
        out.append(f"the run trained on {record.device}: cuDNN and atomic adds may pick "
                   "nondeterministic kernels, so GPU runs agree only closely")
    if record.threads is None:
        out.append("the run recorded no thread count: another count sums floats in another "
                   "order")
    elif record.threads != threads:
        out.append(f"thread count: the run had {record.threads}, the rebuild {threads}")
    elif record.threads == "auto":
        out.append(f"the run had no thread count of its own (torch's default on its "
                   f"{record.cores or '?'} cores, fewer while other trainings ran on the "
                   f"machine); the rebuild {cores} cores: give runs a thread count "
                   "(REPROLAB_THREADS or OMP_NUM_THREADS) to pin the last bits")
    if packages:
        out.append(f"package versions differ: {', '.join(p.split(':')[0] for p in packages)}")
    data = [c.path for c in checks if c.role == "data" and c.identical is False]
    if data:
        out.append(f"the data stages rebuilt other bytes ({', '.join(data)}): a data step is "
                   "not deterministic, or the source changed")
    if not out:
        out.append("no known cause: another CPU or BLAS build sums floats in another order")
    return out


# ---------------------------------------------------------------- the report
@dataclass
class Report:
    uri: str
    record: Record
    pipeline: str
    worktree: Path
    kept: bool
    tracking_uri: str = ""     # the checkout's MLflow store, where the record is
    packages: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    threads: str = ""          # the rebuild's thread count ("auto": none of its own)
    threads_note: str = ""
    restored: list[tuple[str, str, str]] = field(default_factory=list)  # path, source, note
    stages: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)

    @property
    def compared(self) -> list[Check]:
        return [c for c in self.checks if c.identical is not None]

    @property
    def identical(self) -> bool:
        return bool(self.compared) and all(c.identical for c in self.compared)

    @property
    def exit_code(self) -> int:
        if not any(c.role == "metrics" and c.identical is not None for c in self.checks):
            return ERROR  # nothing recorded to hold the rebuild against
        return IDENTICAL if self.identical else DIFFERS

    def verdict(self) -> str:
        if self.exit_code == ERROR:
            return "cannot tell: the version recorded no metrics to compare with"
        roles = {c.role for c in self.compared}
        what = " and ".join(r for r in ("metrics", "predictions") if r in roles)
        if self.identical:
            return f"byte-identical: the {what} are the recorded ones"
        differ = [c.path for c in self.compared if not c.identical]
        return f"differs: {', '.join(differ)}"

    def text(self) -> str:
        r = self.record
        lines = [f"reproduce {self.uri}: {r.model} v{r.version}, training run {r.run_id} "
                 f"({self.pipeline})",
                 f"  commit    {r.commit} (clean)"
                 + (f"; trained at {r.trained_at}" if r.trained_at not in (r.commit, UNKNOWN)
                    else ""),
                 f"  worktree  {self.worktree} ({'kept' if self.kept else 'removed'})"]
        if self.packages:
            lines.append(f"  packages  {len(self.packages)} differ from the record (went on):")
            lines.extend(f"            {line}" for line in self.packages)
        else:
            lines.append("  packages  as locked at that commit and as the run recorded")
        lines.extend(f"  warning   {w}" for w in self.warnings)
        lines.append(f"  threads   {self.threads}{self.threads_note}")
        for path, source, note in self.restored:
            lines.append(f"  data      {path}: from {SOURCES.get(source, source)}"
                         + (f" ({note})" if note else ""))
        lines.append(f"  reran     {', '.join(self.stages)} (dvc repro --single-item --force)")
        lines.append("  compared")
        for check in self.checks:
            state = {True: "identical", False: "DIFFERS", None: "unrecorded"}[check.identical]
            lines.append(f"    {state:<10} {check.path} ({check.role})"
                         + (f": {check.detail}" if check.detail else ""))
        lines.append(f"  verdict   {self.verdict()}")
        if self.exit_code == DIFFERS:
            lines.extend(f"  likely    {reason}" for reason in self.reasons)
        return "\n".join(lines)


# ---------------------------------------------------------------- git, DVC, MLflow
def git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                          check=False)


def has_commit(root: Path, commit: str) -> bool:
    return git(root, "cat-file", "-e", f"{commit}^{{commit}}").returncode == 0


def tracking_uri(root: Path) -> str:
    """The checkout's MLflow store (params.yaml), a relative SQLite path made absolute."""
    from tasks.config import load_params

    uri = load_params(root / "params.yaml").common.mlflow.tracking_uri
    path = uri.removeprefix("sqlite:///")
    if path != uri and not path.startswith("/"):
        return f"sqlite:///{(root / path).resolve()}"
    return uri


def resolve(client: Any, uri: str) -> Any:
    """The model version a models:/ URI names (aliases and `latest` work)."""
    from mlflow.exceptions import MlflowException

    name, version, alias = parse_model_uri(uri)
    try:
        if alias:
            return client.get_model_version_by_alias(name, alias)
        if version == "latest":
            found = client.search_model_versions(f"name='{name}'")
            if not found:
                raise ReproduceError(f"{uri}: {name} has no versions")
            return max(found, key=lambda v: int(v.version))
        return client.get_model_version(name, version)
    except MlflowException as exc:
        raise ReproduceError(f"{uri}: not in the registry ({exc.message})") from None


def pipeline_of(model: str) -> Pipeline:
    for spec in declarations():
        if spec.model_name == model:
            return spec
    raise ReproduceError(f"{model} is the model of no pipeline "
                         f"({', '.join(s.model_name for s in declarations())})")


def local_store(params_text: str) -> bool:
    """Whether params.yaml's MLflow store and artifacts are paths relative to the checkout
    (so a worktree's runs land in the worktree)."""
    mlflow = ((yaml.safe_load(params_text) or {}).get("common") or {}).get("mlflow") or {}
    uri = str(mlflow.get("tracking_uri", "sqlite:///mlflow.db"))
    artifacts = mlflow.get("artifact_dir", "mlartifacts")
    relative = uri.startswith("sqlite:///") and not uri.removeprefix("sqlite:///").startswith("/")
    return relative and (artifacts is None or ("://" not in str(artifacts)
                                               and not str(artifacts).startswith("/")))


class Store:
    """This checkout's DVC cache and default remote, by hash."""

    def __init__(self, root: Path) -> None:
        from dvc.repo import Repo

        self.repo = Repo(str(root))
        self.odb = self.repo.cache.local

    @property
    def cache_dir(self) -> str:
        return str(self.repo.cache.local_cache_dir)

    def path(self, md5: str) -> Path | None:
        """The cached object of a file's md5, or None."""
        return Path(self.odb.oid_to_path(md5)) if self.odb.exists(md5) else None

    def manifest(self, md5: str) -> dict[str, str] | None:
        """A directory's files (relative path -> md5) from its .dir object, or None."""
        from dvc_data.hashfile.hash_info import HashInfo
        from dvc_data.hashfile.tree import Tree

        if not md5.endswith(".dir") or not self.odb.exists(md5):
            return None
        tree = Tree.load(self.odb, HashInfo("md5", md5))
        return {"/".join(key): hi.value for key, _, hi in tree}

    def complete(self, md5: str) -> bool:
        """Whether the cache holds the object (a directory: and every file in it)."""
        if md5.endswith(".dir"):
            files = self.manifest(md5)
            return files is not None and all(self.odb.exists(h) for h in files.values())
        return self.odb.exists(md5)

    def pull(self, md5: str) -> bool:
        """Fetch the object from the default remote into the cache; whether it is there now."""
        from dvc.exceptions import DvcException
        from dvc_data.hashfile.hash_info import HashInfo

        try:  # a directory: its .dir object first, then the files it lists
            self.repo.cloud.pull([HashInfo("md5", md5)])
            files = self.manifest(md5) if md5.endswith(".dir") else {}
            missing = [HashInfo("md5", h) for h in (files or {}).values()
                       if not self.odb.exists(h)]
            if missing:
                self.repo.cloud.pull(missing)
        except DvcException:
            return False
        return self.complete(md5)

    def put(self, md5: str, dest: Path) -> None:
        """Write the cached object (a file, or a directory's files) at `dest`."""
        files = self.manifest(md5) if md5.endswith(".dir") else {"": md5}
        for rel, digest in (files or {}).items():
            target = dest / rel if rel else dest
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.odb.oid_to_path(digest), target)

    def close(self) -> None:
        self.repo.close()


def md5_of(path: Path) -> str | None:
    """DVC's hash of a file or directory (None when it is missing)."""
    from tasks.provenance import dvc_hash

    return dvc_hash(path) if path.exists() else None


def copy_in(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dest)
    else:
        shutil.copyfile(src, dest)


def restore(store: Store, root: Path, worktree: Path, path: str, md5: str
            ) -> tuple[str, str] | None:
    """Put the recorded `path` (DVC hash `md5`) in the worktree; (source, note) or None when
    neither this checkout, the cache nor the remote has it."""
    mine = root / path
    if md5 != UNKNOWN and md5_of(mine) == md5:
        copy_in(mine, worktree / path)
        return "checkout", ""
    note = ("this checkout's copy changed since" if mine.exists()
            else "this checkout has none")
    if md5 == UNKNOWN:
        return None
    if store.complete(md5):
        source = "cache"
    elif store.pull(md5):
        source = "remote"
        note += f"; fetched into the cache from remote '{store.repo.config['core'].get('remote')}'"
    else:
        return None
    store.put(md5, worktree / path)
    return source, note


def lock_outputs(text: str) -> dict[str, str]:
    """Every output's DVC hash in a dvc.lock: path -> md5."""
    stages = (yaml.safe_load(text) or {}).get("stages", {})
    return {out["path"]: str(out.get("md5", UNKNOWN))
            for stage in stages.values() for out in stage.get("outs", [])}


def thread_env(record: Record, env: dict[str, str]) -> tuple[str, str]:
    """Give the rebuild the training's thread count (changes `env`): (count, how chosen)."""
    from tasks.threads import BUDGET_VAR, THREAD_VARS, cores
    from tasks.threads import thread_env as env_for

    if record.threads is None:
        return env.get("OMP_NUM_THREADS") or "auto", " (the run recorded no thread count)"
    if record.threads.isdigit():
        env.update(env_for(int(record.threads)))
        return record.threads, ", as the run recorded"
    for name in (BUDGET_VAR, *THREAD_VARS):
        env.pop(name, None)
    return "auto", (f", as the run recorded (torch's default: {cores()} cores here, "
                    f"{record.cores or '?'} there)")


# ---------------------------------------------------------------- the rebuild
def reproduce(model_uri: str, *, root: Path = Path("."), keep: bool = False,
              log: Any = None) -> Report:
    """Rebuild the registered model `model_uri` from its provenance in a temporary worktree
    and compare what it writes with what was recorded (see the module's docstring)."""
    import mlflow

    parse_model_uri(model_uri)  # a malformed URI fails before anything opens
    root = root.resolve()
    say = log or (lambda text: print(text, file=sys.stderr, flush=True))
    uri = tracking_uri(root)
    client = mlflow.MlflowClient(uri)
    version = resolve(client, model_uri)
    run = client.get_run(version.run_id)
    record = record_of(version.name, str(version.version), version.run_id, version.tags,
                       run.data.tags, run.data.params)
    pipeline = pipeline_of(record.model)
    why = refusal(record, record.commit != UNKNOWN and has_commit(root, record.commit))
    if why:
        raise ReproduceError(f"{record.model} v{record.version} cannot be rebuilt: {why}")
    parent = Path(tempfile.mkdtemp(prefix="reprolab-reproduce-"))
    worktree = parent / f"{pipeline.name}-v{record.version}"
    report = Report(model_uri, record, pipeline.name, worktree, keep, uri)
    added = git(root, "worktree", "add", "--detach", str(worktree), record.commit)
    if added.returncode != 0:
        shutil.rmtree(parent, ignore_errors=True)
        raise ReproduceError(f"git worktree add {record.commit}: {added.stderr.strip()}")
    store = None
    try:
        store = Store(root)
        say(f"reproduce: {record.model} v{record.version} at {record.commit[:10]} in {worktree}")
        _rebuild(report, store, root, worktree, pipeline, parent / "dvc-repro.log", say)
    finally:
        if store is not None:
            store.close()
        if not keep:
            git(root, "worktree", "remove", "--force", str(worktree))
            shutil.rmtree(parent, ignore_errors=True)
            git(root, "worktree", "prune")
    return report


def _rebuild(report: Report, store: Store, root: Path, worktree: Path, pipeline: Pipeline,
             log_file: Path, say: Any) -> None:
    record = report.record
    if record.trained_at not in (record.commit, UNKNOWN):
        report.warnings.append(f"trained at {record.trained_at[:10]}, registered at "
                               f"{record.commit[:10]}: rebuilding at the latter")
    _check_packages(report, root)
    (worktree / ".dvc" / "config.local").write_text(f"[cache]\n    dir = {store.cache_dir}\n")
    params = worktree / "params.yaml"
    if not local_store(params.read_text()):
        from tasks.params_text import with_overrides

        params.write_text(with_overrides(params.read_text(), {
            "common.mlflow.tracking_uri": f"sqlite:///{worktree / 'mlflow.db'}",
            "common.mlflow.artifact_dir": str(worktree / "mlartifacts")}))
        report.warnings.append("the rebuild logs to an MLflow store in the worktree, not to "
                               "the one params.yaml names")
    plan = _restore(report, store, root, worktree, pipeline)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(worktree), os.environ.get("PYTHONPATH")]))}
    # the worktree's own params.yaml, run lock and MLflow store; no run of this process
    for name in ("REPROLAB_PARAMS", "REPROLAB_RUN_LOCK", "MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID"):
        env.pop(name, None)
    report.threads, report.threads_note = thread_env(record, env)
    report.stages = list(plan.stages)
    # --force: run every stage, never its outputs from DVC's run cache (the shared cache
    # holds the recorded run's); --no-run-cache: nor add the rebuild's to it
    cmd = ["dvc", "repro", "--single-item", "--force", "--no-run-cache", *plan.stages]
    say(f"reproduce: {' '.join(cmd)} (log: {log_file})")
    with open(log_file, "w") as out:
        done = subprocess.run([sys.executable, "-m", *cmd], cwd=worktree, env=env, stdout=out,
                              stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        tail = log_file.read_text(errors="replace")[-LOG_TAIL:]
        raise ReproduceError(f"the rebuild failed (dvc repro exited {done.returncode}):\n{tail}")
    _compare(report, store, worktree, pipeline, plan)


def _check_packages(report: Report, root: Path) -> None:
    record = report.record
    shown = subprocess.run(["git", "-C", str(root), "show", f"{record.commit}:pylock.toml"],
                           capture_output=True, check=False)
    locked = None
    if shown.returncode == 0:
        locked = parse_lock(shown.stdout.decode())
        digest = hashlib.sha256(shown.stdout).hexdigest()
        if record.lock_sha256 not in (digest, UNKNOWN):
            report.warnings.append("the run's pylock.toml was not the one committed at "
                                   f"{record.commit[:10]} (reprolab.lock_sha256 differs)")
    else:
        report.warnings.append(f"no pylock.toml at {record.commit[:10]}: packages checked "
                               "against the versions the run recorded only")
    report.packages = package_differences(locked, record.versions, installed_versions())


def _restore(report: Report, store: Store, root: Path, worktree: Path,
             pipeline: Pipeline) -> Plan:
    record = report.record
    candidates = plans(pipeline, record.inputs)
    if not candidates:
        raise ReproduceError(
            f"the training run recorded no inputs to rebuild from (reprolab.input.* tags: "
            f"{', '.join(record.inputs) or 'none'})")
    missing: list[str] = []
    for plan in candidates:  # the earliest start whose data can be found
        found = {}
        for path in plan.restore:
            where = restore(store, root, worktree, path, record.inputs[path])
            if where is None:
                missing.append(f"{path} ({record.inputs[path]})")
                break
            found[path] = where
        else:
            report.restored = [(path, *found[path]) for path in plan.restore]
            return plan
        for path in found:  # this start is not possible: clear what it put in place
            target = worktree / path
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    raise ReproduceError("the recorded data is in neither this checkout, the DVC cache nor "
                         f"the remote: {'; '.join(missing)}")


def _compare(report: Report, store: Store, worktree: Path, pipeline: Pipeline,
             plan: Plan) -> None:
    record = report.record
    lock = worktree / "dvc.lock"
    rebuilt = lock_outputs(lock.read_text()) if lock.exists() else {}
    made = {p for s in pipeline.stages if s.name in plan.stages for p in s.out_paths}
    checks = []
    for path, md5 in record.inputs.items():
        if path in made:
            checks.append(Check(path, "data", rebuilt.get(path) == md5,
                                "" if rebuilt.get(path) == md5 else "rebuilt other bytes"))
    for path, md5 in record.read.items():
        if path in made and path not in record.inputs:
            checks.extend(_compare_dir(store, path, md5, rebuilt.get(path, UNKNOWN)))
    if not record.read:
        checks.append(Check("predictions", "predictions", None,
                            "this version was registered before what evaluate read was "
                            "recorded"))
    logged = {} if record.written else _run_artifacts(report, pipeline)
    written = record.written or {p: hashlib.md5(data).hexdigest() for p, data in logged.items()}
    for path, md5 in written.items():
        role = "metrics" if path == pipeline.metrics_file else "results"
        checks.append(_compare_file(store, worktree, path, md5, role, logged.get(path)))
    report.checks = checks
    if not report.identical:
        from tasks.threads import cores

        report.reasons = likely_reasons(record, report.threads, str(cores()), report.packages,
                                        checks)


def _compare_dir(store: Store, path: str, recorded: str, rebuilt: str) -> list[Check]:
    """A trained output: as a whole, and each predictions file in it by name (how far)."""
    old, new = store.manifest(recorded), store.manifest(rebuilt)
    if old is None or new is None:  # a file, or a manifest the cache lost
        return [Check(path, "trained", recorded == rebuilt)]
    differ = sorted(f for f in old.keys() | new.keys() if old.get(f) != new.get(f))
    checks = [Check(path, "trained", not differ,
                    f"{', '.join(differ)} differ" if differ else ", ".join(sorted(new)))]
    for name in sorted(new):
        if Path(name).name.startswith("predictions."):
            same = old.get(name) == new[name]
            detail = "" if same else _predictions_far(store, old.get(name), new[name], name)
            checks.append(Check(f"{path}/{name}", "predictions", same, detail))
    return checks


def _predictions_far(store: Store, recorded: str | None, rebuilt: str, name: str) -> str:
    import pandas as pd

    old, new = (store.path(h) if h else None for h in (recorded, rebuilt))
    if old is None or new is None or not name.endswith(".parquet"):
        return "the recorded file is not in the cache: cannot say how far"
    return how_far(column_differences(pd.read_parquet(old), pd.read_parquet(new)))


def _compare_file(store: Store, worktree: Path, path: str, md5: str, role: str,
                  recorded: bytes | None = None) -> Check:
    """A file evaluate wrote vs its recorded hash; how far for JSON when the recorded bytes
    are in the cache (or `recorded`: logged to MLflow)."""
    mine = worktree / path
    if not mine.is_file():
        return Check(path, role, False, "the rebuild did not write it")
    data = mine.read_bytes()
    if hashlib.md5(data).hexdigest() == md5:
        return Check(path, role, True)
    cached = store.path(md5)
    recorded = cached.read_bytes() if cached is not None else recorded
    if recorded is None or not path.endswith(".json"):
        return Check(path, role, False, "the recorded file is not in the cache: cannot say "
                                        "how far")
    return Check(path, role, False, how_far(metric_differences(json.loads(recorded),
                                                               json.loads(data))))


def _run_artifacts(report: Report, pipeline: Pipeline) -> dict[str, bytes]:
    """For a version registered before its files were recorded: the metrics and results files
    evaluate logged to the training run (its latest evaluation)."""
    import mlflow

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for path in (pipeline.metrics_file, pipeline.results_file):
            try:
                got = Path(mlflow.artifacts.download_artifacts(
                    run_id=report.record.run_id, artifact_path=Path(path).name, dst_path=tmp,
                    tracking_uri=report.tracking_uri))
            except Exception:  # no such artifact: nothing recorded
                continue
            out[path] = got.read_bytes()
    if out:
        report.warnings.append("this version recorded no hashes of its files: compared with "
                               "the training run's MLflow artifacts (its latest evaluation)")
    return out


def main(argv: list[str] | None = None, prog: str = "python -m flows.reproduce") -> int:
    parser = argparse.ArgumentParser(
        prog=prog, description="Rebuild a registered model from its recorded provenance in a "
        "temporary git worktree and report whether the metrics and predictions are byte-"
        "identical (exit 0), differ (1, with how far and the likely reason) or it failed (2).")
    parser.add_argument("model_uri", help="models:/<name>/<version> or models:/<name>@<alias>")
    parser.add_argument("--keep", action="store_true",
                        help="keep the worktree (its data, outputs, dvc.lock, MLflow store)")
    args = parser.parse_args(argv)
    try:
        report = reproduce(args.model_uri, keep=args.keep)
    except ReproLabError as exc:
        print(f"error: reproduce {args.model_uri}: {exc}", file=sys.stderr)
        return ERROR
    print(report.text())
    return report.exit_code


if __name__ == "__main__":
    sys.exit(main())
