"""A copy of the repository for a test holds what git tracks and never generated state."""
import subprocess

from tests.flows.repo_copy import copy_repo


def git(*args: str, cwd) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def test_the_copy_holds_tracked_files_only_with_their_working_tree_content(tmp_path):
    src, dest = tmp_path / "src", tmp_path / "dest"
    (src / "tasks").mkdir(parents=True)
    dest.mkdir()
    (src / ".gitignore").write_text("/data/\n/mlflow.db\n/.prefect/\n")
    (src / "tasks" / "a.py").write_text("x = 1\n")
    (src / "gone.py").write_text("")
    git("init", "-q", cwd=src)
    git("add", "-A", cwd=src)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init", cwd=src)
    # what a demo run leaves behind, plus an edit and a deletion not yet committed
    for rel in ("dvc.lock", "data/raw/x.csv", "mlflow.db", ".prefect/prefect.db", "metrics/m.json"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text("generated\n")
    (src / "tasks" / "a.py").write_text("x = 2\n")
    (src / "gone.py").unlink()

    copy_repo(dest, root=src)
    files = subprocess.run(["git", "ls-files"], cwd=dest, check=True, capture_output=True,
                           text=True).stdout.split()
    assert sorted(files) == [".gitignore", "tasks/a.py"]
    assert (dest / "tasks" / "a.py").read_text() == "x = 2\n"
    assert not any((dest / p).exists() for p in ("dvc.lock", "data", "mlflow.db", ".prefect",
                                                 "metrics"))
