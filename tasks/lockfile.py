"""pylock.toml (PEP 751, made by `pip lock`) and which pyproject.toml it was made from.

`python -m tasks.lockfile stamp pylock.toml` records the digest in the lock's [tool.reprolab].
Standard library only: `make lock` runs it before any dependency is installed.
"""
from __future__ import annotations

import hashlib
import json
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

STAMP_KEY = "pyproject-sha256"
_STAMP_TABLE = re.compile(r"\n*\[tool\.reprolab\]\n(?:[^\[\n].*\n?)*", re.MULTILINE)


def dependency_lists(pyproject: Path) -> dict[str, Any]:
    """What the lock depends on: requires-python, dependencies and the optional extras."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    return {
        "requires-python": project.get("requires-python", ""),
        "dependencies": sorted(project.get("dependencies", [])),
        "optional-dependencies": {k: sorted(v) for k, v in
                                  sorted(project.get("optional-dependencies", {}).items())},
    }


def pyproject_digest(pyproject: Path) -> str:
    """sha256 of pyproject's dependency lists (comments and formatting do not count)."""
    text = json.dumps(dependency_lists(pyproject), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def stamp(lock: Path, pyproject: Path) -> str:
    """Write (or replace) [tool.reprolab] pyproject-sha256 at the end of the lock."""
    digest = pyproject_digest(pyproject)
    text = _STAMP_TABLE.sub("", lock.read_text(encoding="utf-8")).rstrip("\n")
    lock.write_text(f'{text}\n\n[tool.reprolab]\n{STAMP_KEY} = "{digest}"\n', encoding="utf-8")
    return digest


def recorded_digest(lock: Path) -> str | None:
    """The pyproject digest the lock was stamped with, or None."""
    data = tomllib.loads(lock.read_text(encoding="utf-8"))
    return data.get("tool", {}).get("reprolab", {}).get(STAMP_KEY)


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "stamp":
        print("usage: python -m tasks.lockfile stamp pylock.toml", file=sys.stderr)
        return 2
    lock = Path(argv[1])
    print(f"{lock}: {STAMP_KEY} = {stamp(lock, lock.parent / 'pyproject.toml')}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
