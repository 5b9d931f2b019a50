"""The project's environment in every process: the venv's start-up hook and `apply()`."""
import json
import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from tasks import environment
from tests.conftest import ROOT

PLAIN_PATH = "/usr/local/bin:/usr/bin:/bin"
PROBE = ("import json, os, shutil; print(json.dumps({k: os.environ.get(k) for k in "
         "('PATH', 'PREFECT_HOME', 'DO_NOT_TRACK', 'MLFLOW_DISABLE_TELEMETRY', "
         "'PREFECT_SERVER_ANALYTICS_ENABLED')} | {'python': shutil.which('python')}))")


def test_interpreter_first_puts_its_folder_first_once():
    path = environment.interpreter_first("/a:/venv/bin:/b", "/venv/bin/python")
    assert path == "/venv/bin:/a:/b"
    assert environment.interpreter_first(path, "/venv/bin/python") == path


def test_apply_sets_defaults_and_keeps_what_is_set(monkeypatch):
    monkeypatch.setenv("PREFECT_HOME", "/elsewhere")
    monkeypatch.delenv("DO_NOT_TRACK", raising=False)
    monkeypatch.setenv("PATH", PLAIN_PATH)
    environment.apply()
    assert os.environ["PREFECT_HOME"] == "/elsewhere"
    assert os.environ["DO_NOT_TRACK"] == "true"
    assert os.environ["PATH"].split(os.pathsep)[0] == os.path.dirname(sys.executable)


def test_an_installed_copy_sets_no_prefect_home(tmp_path, monkeypatch):
    monkeypatch.delenv("PREFECT_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "venv"))  # a venv outside any checkout
    environment.apply(str(tmp_path))  # no dvc.yaml: not a checkout
    assert "PREFECT_HOME" not in os.environ


@pytest.fixture(scope="module")
def bare_venv(tmp_path_factory) -> Path:
    """A venv of this interpreter with the hook installed and nothing else."""
    home = tmp_path_factory.mktemp("venv")
    venv.create(home, with_pip=False)
    site = subprocess.run([str(home / "bin/python"), "-c",
                           "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    environment.install(site)
    return home


def probe(python: Path, cwd: Path | None = None, **env: str) -> dict:
    out = subprocess.run([str(python), "-c", PROBE], env={"PATH": PLAIN_PATH, **env},
                         capture_output=True, text=True, check=True, cwd=cwd)
    assert out.stderr == ""
    return json.loads(out.stdout)


def test_the_hook_puts_every_program_of_the_venv_in_the_project_environment(bare_venv, tmp_path):
    seen = probe(bare_venv / "bin/python", cwd=tmp_path)
    assert seen["PATH"].split(os.pathsep)[0] == str(bare_venv / "bin")
    assert seen["python"] == str(bare_venv / "bin/python")  # what DVC's stage commands run
    assert seen["PREFECT_HOME"] == str(ROOT / ".prefect")
    assert (seen["DO_NOT_TRACK"], seen["MLFLOW_DISABLE_TELEMETRY"],
            seen["PREFECT_SERVER_ANALYTICS_ENABLED"]) == ("true", "true", "false")
    assert probe(bare_venv / "bin/python", tmp_path, PREFECT_HOME="/mine")["PREFECT_HOME"] == \
        "/mine"


def checkout(folder: Path) -> Path:
    (folder / "tasks").mkdir(parents=True)
    (folder / "tasks/environment.py").write_text("")
    (folder / "dvc.yaml").write_text("stages: {}\n")
    return folder


def test_a_checkout_works_in_its_own_prefect_home(bare_venv, tmp_path):
    """Another clone, with this venv linked in (`.venv` -> it) or run from inside it, works in
    its own Prefect home: the checkout a command is started in, else the venv's."""
    clone = checkout(tmp_path / "clone")
    (clone / ".venv").symlink_to(bare_venv)
    seen = probe(clone / ".venv/bin/python", cwd=tmp_path)
    assert seen["PREFECT_HOME"] == str(clone / ".prefect")
    assert seen["PATH"].split(os.pathsep)[0] == str(clone / ".venv/bin")
    other = checkout(tmp_path / "other")
    assert probe(bare_venv / "bin/python", cwd=other)["PREFECT_HOME"] == str(other / ".prefect")


def test_a_hook_whose_checkout_is_gone_is_ignored(tmp_path):
    home = tmp_path / "venv"
    venv.create(home, with_pip=False)
    site = subprocess.run([str(home / "bin/python"), "-c",
                           "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, environment.HOOK).write_text(environment.hook_line(str(tmp_path / "gone.py")))
    seen = probe(home / "bin/python", cwd=tmp_path)
    assert seen["PATH"] == PLAIN_PATH and seen["PREFECT_HOME"] is None


def test_this_venv_has_the_hook():
    """`make venv` installed it where the tests run (what a plain shell relies on)."""
    hook = Path(sysconfig.get_paths()["purelib"], environment.HOOK)
    assert hook.read_text() == environment.hook_line(str(ROOT / "tasks/environment.py"))
