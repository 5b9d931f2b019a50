"""The import closure (tasks/fingerprint.py) on a small synthetic package: exactly the modules
a stage can run are in it, nothing it cannot run."""
from pathlib import Path

import pytest

from tasks.fingerprint import (
    code_digest,
    copy_closure,
    imported_names,
    module_closure,
    third_party_imports,
)

FILES = {
    "tasks/__init__.py": "",
    "tasks/app.py": """\
from __future__ import annotations

import importlib
import typing
from importlib import import_module
from typing import TYPE_CHECKING

import numpy

from . import helpers
from .sub.rel import thing
from tasks.sub import leaf

if TYPE_CHECKING:
    from tasks import typing_only
else:
    from tasks import runtime_branch

if typing.TYPE_CHECKING:
    import tasks.typing_only_too

DECLARED = "tasks.declared:run"           # a declaration names it; nothing imports it
PLUGINS = {"x": "tasks.declared_too"}


def later():
    import tasks.lazy

    return tasks.lazy


def dynamic():
    importlib.import_module("tasks.dynamic")
    import_module("models.net")
    __import__("tasks.dunder")
    importlib.import_module(PLUGINS["x"])  # not a literal: cannot be followed
""",
    "tasks/helpers.py": "",
    "tasks/sub/__init__.py": "",
    "tasks/sub/rel.py": "from ..deep import other\nthing = 1\n",
    "tasks/sub/leaf.py": "",
    "tasks/deep.py": "other = 2\n",
    "tasks/runtime_branch.py": "",
    "tasks/typing_only.py": "",
    "tasks/typing_only_too.py": "",
    "tasks/lazy.py": "",
    "tasks/dynamic.py": "",
    "tasks/dunder.py": "",
    "tasks/declared.py": "import tasks.never\n",
    "tasks/declared_too.py": "",
    "tasks/never.py": "",
    "tasks/unrelated.py": "import scipy\n",
    "models/__init__.py": "",
    "models/net.py": "import torch\n",
}
IN_CLOSURE = {"tasks/__init__.py", "tasks/app.py", "tasks/helpers.py", "tasks/sub/__init__.py",
              "tasks/sub/rel.py", "tasks/sub/leaf.py", "tasks/deep.py",
              "tasks/runtime_branch.py", "tasks/lazy.py", "tasks/dynamic.py",
              "tasks/dunder.py", "models/__init__.py", "models/net.py"}


@pytest.fixture
def package(tmp_path: Path) -> Path:
    for rel, text in FILES.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return tmp_path


def closure(root: Path, *modules: str) -> set[str]:
    return {p.relative_to(root).as_posix() for p in module_closure(modules, root)}


def test_the_closure_holds_exactly_what_the_module_can_run(package):
    assert closure(package, "tasks.app") == IN_CLOSURE


@pytest.mark.parametrize(("rel", "why"), [
    ("tasks/typing_only.py", "imported only under `if TYPE_CHECKING:`"),
    ("tasks/typing_only_too.py", "imported only under `if typing.TYPE_CHECKING:`"),
    ("tasks/declared.py", "named only in a declaration string"),
    ("tasks/declared_too.py", "named only in a dict, imported through a non-literal"),
    ("tasks/never.py", "imported only by a module outside the closure"),
    ("tasks/unrelated.py", "never imported"),
])
def test_what_the_module_cannot_run_stays_out(package, rel, why):
    assert rel not in closure(package, "tasks.app"), why


def test_a_declared_module_is_its_own_closure_root(package):
    """A stage's declared callable is a root of its closure (tasks.pipeline.stage_modules),
    so what a declaration names is covered there, not by scanning strings."""
    assert closure(package, "tasks.declared") == {"tasks/__init__.py", "tasks/declared.py",
                                                  "tasks/never.py"}


def test_relative_imports_resolve_against_the_package(package):
    names = imported_names(package / "tasks/sub/rel.py", "tasks.sub.rel")
    assert "tasks.deep" in names and "tasks.deep.other" in names
    init = imported_names(package / "tasks/app.py", "tasks.app")
    assert {"tasks.helpers", "tasks.sub.rel", "tasks.sub.leaf"} <= init


def test_third_party_imports_of_the_closure(package):
    assert third_party_imports(["tasks.app"], package) == {"numpy", "torch"}


def test_the_digest_moves_with_the_closure_and_only_with_it(package):
    before = code_digest(["tasks.app"], package)
    (package / "tasks/unrelated.py").write_text("import scipy  # edited\n")
    (package / "tasks/typing_only.py").write_text("# edited\n")
    assert code_digest(["tasks.app"], package) == before
    (package / "tasks/lazy.py").write_text("# edited\n")
    assert code_digest(["tasks.app"], package) != before


def test_copy_closure_keeps_the_package_layout(package, tmp_path_factory):
    dest = tmp_path_factory.mktemp("code")
    tops = copy_closure(["tasks.app"], dest, package)
    assert tops == [dest / "models", dest / "tasks"]
    copied = {p.relative_to(dest).as_posix() for p in dest.rglob("*.py")}
    assert copied == IN_CLOSURE
