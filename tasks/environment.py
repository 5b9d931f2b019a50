"""The environment every ReproLab process runs in, however it was started.

DVC runs each stage's command (`python -m flows.crypto train`) through the shell, so the
`python` first on PATH must be the project's; Prefect keeps its profiles, results and the
ephemeral server's database under PREFECT_HOME; telemetry is off. `apply()` sets all of it
(never overriding a value already set) and runs:
- at the start of every interpreter of the project's venv: `make venv` writes a `.pth` hook
  into its site-packages (`python -m tasks.environment install`), so `.venv/bin/dvc repro`,
  `.venv/bin/prefect ...` and a worker's flow runs behave the same from a plain shell as
  under `make`;
- when `flows` is imported (any other install: a venv made by hand, an image).

Standard library only, and no project import: the hook loads this file by path.
"""
from __future__ import annotations

import os
import sys
import sysconfig

# telemetry off; a slow machine may need longer than Prefect's 20 s to start its ephemeral server
DEFAULTS = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "true",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90"}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOOK = "reprolab-environment.pth"


def is_checkout(folder: str) -> bool:
    return all(os.path.isfile(os.path.join(folder, name))
               for name in ("dvc.yaml", os.path.join("tasks", "environment.py")))


def project_root(root: str = ROOT) -> str | None:
    """The checkout this process works for: the one it is started in (as git and Prefect's
    own prefect.toml find theirs), else the one whose `.venv` runs it, else the one this
    module belongs to; None for an installed copy of the package outside any checkout."""
    for candidate in (os.getcwd(), os.path.dirname(sys.prefix), root):
        if is_checkout(candidate):
            return candidate
    return None


def interpreter_first(path: str, interpreter: str) -> str:
    """PATH with the interpreter's folder first (once): `python` there is this one."""
    folder = os.path.dirname(interpreter)
    return os.pathsep.join([folder, *(p for p in path.split(os.pathsep) if p and p != folder)])


def apply(root: str = ROOT) -> None:
    """Set this process's environment (inherited by everything it starts)."""
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)
    checkout = project_root(root)
    if checkout is not None:
        os.environ.setdefault("PREFECT_HOME", os.path.join(checkout, ".prefect"))
    if sys.executable:
        os.environ["PATH"] = interpreter_first(os.environ.get("PATH", ""), sys.executable)


def hook_line(module: str) -> str:
    """The .pth line: load this file by path and apply it (skipped if the file is gone)."""
    return (f"import os, importlib.util as u; p = {module!r}; "
            "s = os.path.isfile(p) and u.spec_from_file_location('reprolab_environment', p); "
            "m = s and u.module_from_spec(s); s and s.loader.exec_module(m); m and m.apply()\n")


def install(site_packages: str | None = None) -> str:
    """Write the start-up hook into this interpreter's site-packages; returns its path."""
    folder = site_packages or sysconfig.get_paths()["purelib"]
    dest = os.path.join(folder, HOOK)
    tmp = f"{dest}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(hook_line(os.path.abspath(__file__)))
    os.replace(tmp, dest)
    return dest


def main(argv: list[str]) -> int:
    if argv != ["install"]:
        print("usage: python -m tasks.environment install", file=sys.stderr)
        return 2
    print(f"installed {install()}: this venv's programs run in the project's environment")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
