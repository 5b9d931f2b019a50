"""Where a run came from: git commit and dirty flag, the lock file, input hashes, versions.

Every value is a string for an MLflow tag; what cannot be found is "unknown", never an error.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import subprocess
from collections.abc import Iterable
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
KEY_PACKAGES = ("torch", "prefect", "mlflow", "dvc", "numpy", "pandas")
UNKNOWN = "unknown"
INPUT_TAG, OUTPUT_TAG = "reprolab.input.", "reprolab.output."  # + path: its DVC hash
_TAG_UNSAFE = re.compile(r"[^\w./ -]")


def _git(root: Path, *args: str) -> str | None:
    """stdout of `git -C root args`, or None outside a repository or without git."""
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True,
                              text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def git_commit(root: Path) -> str:
    """HEAD's full commit id, or "unknown"."""
    out = _git(root, "rev-parse", "HEAD")
    return out.strip() if out else UNKNOWN


def git_dirty(root: Path) -> str:
    """"true" when a tracked file differs from HEAD (untracked files do not count)."""
    out = _git(root, "status", "--porcelain", "--untracked-files=no")
    if out is None:
        return UNKNOWN
    return "true" if out.strip() else "false"


def file_sha256(path: Path) -> str:
    """sha256 of a file (cached while its size and mtime stay the same), or "unknown"."""
    try:
        stat = path.stat()
    except OSError:
        return UNKNOWN
    return _sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@lru_cache(maxsize=1)
def package_versions(names: tuple[str, ...] = KEY_PACKAGES) -> dict[str, str]:
    """Installed versions of the key packages ("not installed" when absent)."""
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


@lru_cache(maxsize=8)
def _dvc_repo(root: str) -> Any:
    """One open DVC repo per root for the process (its state cache makes re-hashing cheap)."""
    from dvc.repo import Repo

    return Repo(root)


def _dvc_root(path: Path) -> str | None:
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    try:
        return Repo.find_root(str(path if path.is_dir() else path.parent))
    except NotDvcRepoError:
        return None


def dvc_hash(path: str | Path) -> str:
    """The md5 dvc.lock records for a dependency: a file's md5, a directory's `<md5>.dir`."""
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs.local import LocalFileSystem

    full = Path(path).resolve()
    root = _dvc_root(full)
    if root is not None:
        repo = _dvc_repo(root)
        odb, fs, ignore = repo.cache.local, repo.fs, repo.dvcignore
    else:
        fs = LocalFileSystem()
        odb, ignore = HashFileDB(fs, str(full.parent / ".dvc-none")), None
    _, _, obj = build(odb, str(full), fs, "md5", ignore=ignore, dry_run=True)
    return obj.hash_info.value


def tag_key(prefix: str, name: str) -> str:
    """An MLflow-safe tag key: characters MLflow rejects become '_'."""
    return f"{prefix}{_TAG_UNSAFE.sub('_', name)}"[:250]


def input_tags(paths: Iterable[str], prefix: str = INPUT_TAG) -> dict[str, str]:
    """<prefix><path> = DVC's hash of each path (a stage's inputs by default; "unknown" when
    it fails)."""
    tags = {}
    for path in paths:
        try:
            value = dvc_hash(path)
        except Exception as exc:  # provenance must never stop a run
            log.warning("could not hash %s: %s", path, exc)
            value = UNKNOWN
        tags[tag_key(prefix, path)] = value
    return tags


def thread_tags() -> dict[str, str]:
    """The thread count the process was given (OMP_NUM_THREADS, which REPROLAB_THREADS sets;
    "auto" when none) and the cores it may run on: results are bit-identical only at the same
    count (README, Determinism)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"reprolab.threads": os.environ.get("OMP_NUM_THREADS", "").strip() or "auto",
            "reprolab.cores": str(cores or UNKNOWN)}


def tags(inputs: Iterable[str] = (), root: Path | None = None) -> dict[str, str]:
    """All provenance tags of a new run, for the project checkout at `root`."""
    root = root or PROJECT_ROOT
    out = {
        "reprolab.git_commit": git_commit(root),
        "reprolab.git_dirty": git_dirty(root),
        "reprolab.lock_sha256": file_sha256(root / "pylock.toml"),
        **thread_tags(),
    }
    out.update({f"reprolab.version.{k}": v for k, v in package_versions().items()})
    out.update(input_tags(inputs))
    return out
