"""What code a stage runs: the first-party modules a module imports, transitively (read from the
source with `ast`, so nothing is imported), and one digest of their bytes. dvc.yaml lists the
files as each stage's deps; checkpoints carry the digest, so a code change is never resumed."""
from __future__ import annotations

import ast
import hashlib
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path

FIRST_PARTY = ("flows", "tasks", "models")
ROOT = Path(__file__).resolve().parents[1]


def module_file(name: str, root: Path = ROOT) -> Path | None:
    """`tasks.crypto.split` -> tasks/crypto/split.py (or the package's __init__.py)."""
    if name.split(".")[0] not in FIRST_PARTY:
        return None
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(tree: ast.AST) -> Iterable[ast.AST]:
    """ast.walk without `if TYPE_CHECKING:` bodies (imports there never run)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                stack.extend(child.orelse)
            else:
                stack.append(child)


_IMPORT_CALLS = ("import_module", "__import__")


def _literal_import(node: ast.Call) -> str | None:
    """The module `importlib.import_module("a.b")` or `__import__("a.b")` loads (a literal
    absolute name only: a computed name cannot be followed)."""
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if name not in _IMPORT_CALLS or not node.args:
        return None
    first = node.args[0]
    if isinstance(first, ast.Constant) and isinstance(first.value, str) \
            and not first.value.startswith("."):
        return first.value
    return None


def imported_names(path: Path, module: str) -> set[str]:
    """Every module name an import statement in `path` may load (function-level imports too,
    and `importlib.import_module` / `__import__` of a literal name). A module named only in a
    string (a declaration's "module:function") is not followed: a stage's own callable is a
    root of its closure (tasks.pipeline.stage_modules)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in _walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Call) and (literal := _literal_import(node)):
            names.add(literal)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            names.add(target)
            names.update(f"{target}.{alias.name}" for alias in node.names)
    return names


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def module_closure(modules: Iterable[str], root: Path = ROOT) -> list[Path]:
    """The files of `modules` and of every first-party module they import, transitively
    (package __init__ files included: importing a.b.c runs a/__init__ and a/b/__init__)."""
    return sorted(set(_closure(modules, root).values()))


def _closure(modules: Iterable[str], root: Path) -> dict[str, Path]:
    """{module name: file} of module_closure."""
    seen: dict[str, Path] = {}
    todo = [parent for name in modules for parent in _with_parents(name)]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = module_file(name, root)
        if path is None:
            continue
        seen[name] = path
        for imported in imported_names(path, name):
            todo.extend(p for p in _with_parents(imported) if p not in seen)
    return seen


def third_party_imports(modules: Iterable[str], root: Path = ROOT) -> set[str]:
    """Top-level names of the other-party modules (not first-party, not the standard library)
    that any import statement in the closure of `modules` names, function-level ones too."""
    names = {imported.split(".")[0] for name, path in _closure(modules, root).items()
             for imported in imported_names(path, name)}
    return {n for n in names if n and n not in FIRST_PARTY and n not in sys.stdlib_module_names
            and n != "__future__"}


def copy_closure(modules: Iterable[str], dest: Path, root: Path = ROOT) -> list[Path]:
    """Copy the closure of `modules` under `dest`, package layout kept; returns the top-level
    package folders made (what a model ships as its code: exactly what it imports)."""
    tops = set()
    for path in module_closure(modules, root):
        rel = path.relative_to(root)
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dest / rel)
        tops.add(rel.parts[0])
    return [dest / top for top in sorted(tops)]


def relative(paths: Iterable[Path], root: Path = ROOT) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in paths)


def code_digest(modules: Iterable[str], root: Path = ROOT) -> str:
    """sha256 over the path and bytes of every file in the modules' closure."""
    digest = hashlib.sha256()
    for path in module_closure(modules, root):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()
