"""pylock.toml agrees with pyproject.toml: every dependency locked, every file hashed."""
import importlib.metadata
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tasks import lockfile

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "pylock.toml"
PYPROJECT = ROOT / "pyproject.toml"


def locked_packages() -> dict[str, dict]:
    return {canonicalize_name(p["name"]): p for p in tomllib.loads(LOCK.read_text())["packages"]}


def declared_requirements() -> list[Requirement]:
    lists = lockfile.dependency_lists(PYPROJECT)
    specs = lists["dependencies"] + [s for extra in lists["optional-dependencies"].values()
                                     for s in extra]
    return [Requirement(s) for s in specs]


def files_of(package: dict) -> list[dict]:
    single = [package[k] for k in ("sdist", "archive") if k in package]
    return package.get("wheels", []) + single


def test_the_lock_was_made_from_this_pyproject():
    assert lockfile.recorded_digest(LOCK) == lockfile.pyproject_digest(PYPROJECT), (
        "pyproject.toml's dependencies changed since pylock.toml was made: run make lock")


def applies(requirement: Requirement, extras: frozenset[str] = frozenset({"dev"})) -> bool:
    """The requirement holds on this machine for a package installed with `extras`."""
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({"extra": extra}) for extra in extras or {""})


@pytest.mark.parametrize("requirement", [r for r in declared_requirements() if applies(r)],
                         ids=str)
def test_every_declared_dependency_has_a_locked_version_that_satisfies_it(requirement):
    package = locked_packages().get(canonicalize_name(requirement.name))
    assert package is not None, f"{requirement.name} is not in pylock.toml: run make lock"
    assert requirement.specifier.contains(Version(package["version"]), prereleases=True), (
        f"locked {requirement.name} {package['version']} does not satisfy {requirement}: "
        "run make lock")


def test_every_locked_package_has_a_version_and_a_sha256_for_each_file():
    for name, package in locked_packages().items():
        assert "version" in package, name
        files = files_of(package)
        assert files, f"{name} has no wheel or sdist"
        for file in files:
            assert len(file.get("hashes", {}).get("sha256", "")) == 64, f"{name}: {file}"


def test_torch_is_locked_to_the_cpu_wheel():
    assert locked_packages()["torch"]["version"].endswith("+cpu")


def test_stamp_replaces_the_digest_and_an_edited_pyproject_changes_it(tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\nname = "x"\ndependencies = ["a>=1"]  # note\n')
    lock = tmp_path / "pylock.toml"
    lock.write_text('lock-version = "1.0"\n\n[[packages]]\nname = "a"\nversion = "1.0"\n')
    first = lockfile.stamp(lock, pyproject)
    pyproject.write_text('[project]\nname = "x"\ndependencies = ["a>=1"]\n')
    assert lockfile.pyproject_digest(pyproject) == first
    pyproject.write_text('[project]\nname = "x"\ndependencies = ["a>=2"]\n')
    second = lockfile.stamp(lock, pyproject)
    assert second != first and lockfile.recorded_digest(lock) == second
    assert lock.read_text().count("[tool.reprolab]") == 1
    assert tomllib.loads(lock.read_text())["packages"][0]["name"] == "a"


def needed_packages(roots: list[Requirement]) -> set[str]:
    """Every distribution the declared requirements need here, transitively, read from the
    installed packages' metadata (the venv holds exactly the lock)."""
    todo = [(r, frozenset({"dev"})) for r in roots]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        requirement, extras = todo.pop()
        name = canonicalize_name(requirement.name)
        key = (name, frozenset(requirement.extras))
        if not applies(requirement, extras) or key in seen:
            continue
        seen.add(key)
        try:
            requires = importlib.metadata.requires(requirement.name) or []
        except importlib.metadata.PackageNotFoundError:
            continue  # not installed: the satisfies-test above names it
        wanted = frozenset(requirement.extras) or frozenset({""})
        todo.extend((Requirement(spec), wanted) for spec in requires)
    return {name for name, _ in seen}


def test_the_lock_holds_nothing_pyproject_no_longer_needs():
    """A dependency dropped from pyproject.toml must leave the lock too (a re-stamp without a
    re-resolve keeps it): every locked package is needed by a declared one, transitively."""
    orphans = set(locked_packages()) - needed_packages(declared_requirements())
    assert not orphans, (f"pylock.toml holds {sorted(orphans)}, which nothing in "
                         "pyproject.toml needs: run make lock")


def test_the_orphan_check_finds_a_dropped_dependency():
    declared = [r for r in declared_requirements() if canonicalize_name(r.name) != "gensim"]
    assert "gensim" in set(locked_packages()) - needed_packages(declared)
