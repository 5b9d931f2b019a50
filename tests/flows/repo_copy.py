"""A temporary copy of the project as its own git + DVC repo, with CPU-small params."""
import os
import shutil
import subprocess
from pathlib import Path

import yaml

from tests.conftest import ROOT, VENV_BIN

SMALL = {"crypto": {"demo": {"n_bars": 4000}, "train": {"epochs": 2},
                    "model": {"hidden": 8}, "evaluate": {"bootstrap": 100},
                    "split": {"walk_forward": {"folds": 2}}},
         "quora": {"demo": {"n_pairs": 1200}, "train": {"epochs": 2}, "embed": {"epochs": 2},
                   "evaluate": {"bootstrap": 100}},
         "kinetics": {"demo": {"clips_per_class": 3, "duration": 1.0, "size": 64},
                      "dataset": {"frames": 4, "crop": 32, "test_clips": 1},
                      "model": {"width_multiplier": 0.0625},
                      "baseline": {"width_multiplier": 0.0625, "hidden": 16},
                      "train": {"epochs": 1, "batch_size": 4},
                      "evaluate": {"bootstrap": 100}}}


def merge(base: dict, extra: dict) -> dict:
    for key, value in extra.items():
        base[key] = merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return base


GENERATED = {"dvc.lock"}  # run state even if someone commits it: a copy starts from scratch


def copy_repo(dest: Path, root: Path = ROOT) -> Path:
    """The files git tracks (their working-tree content), as a fresh git repo. Never untracked
    files: a demo run leaves generated state (dvc.lock, data/, mlflow.db, .prefect/) in the
    checkout, and a copy that took it along would start from that run instead of from scratch."""
    listed = subprocess.run(["git", "ls-files", "-c", "-z"], cwd=root, check=True,
                            capture_output=True, text=True).stdout.split("\0")
    for rel in filter(None, listed):
        src = root / rel
        # a tracked file deleted in the working tree is left out
        if src.is_file() and rel not in GENERATED:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"]):
        subprocess.run(cmd, cwd=dest, check=True)
    return dest


def run(cmd: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def small_repo(dest: Path, extra: dict | None = None) -> Path:
    """copy_repo with CPU-small params (SMALL, then `extra`) written into its params.yaml."""
    repo = copy_repo(dest)
    params = merge(merge(yaml.safe_load((repo / "params.yaml").read_text()), SMALL), extra or {})
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return repo


def repo_env(prefect_server: str, **extra: str) -> dict:
    """The environment for commands in a copy: this venv first on PATH, the session's Prefect
    server, the copy's own MLflow store (params.yaml's, not an inherited URI)."""
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
           "PREFECT_API_URL": prefect_server, **extra}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env
