"""The file MLflow runs to load every registered ReproLab model (MLflow's "models from code":
no pickle). It builds the `mlflow.pyfunc.PythonModel` class the model's config names.

That class's module and every project module it imports travel with the model, in the `code/`
folder beside this file, so the model loads where the project is not installed. It runs that
code even where other copies of the project's packages are imported already (this checkout,
or another model loaded earlier): those are set aside while the model's own modules are
imported, then put back, so each model keeps the code it was logged with and neither breaks
the other. (Imports inside functions resolve by name when they run, to the copy registered
then; every module a model ships is loaded here, so such an import always finds one.)
"""
import importlib
import sys
from pathlib import Path

import mlflow

CODE = Path(__file__).resolve().with_name("code")


def shipped_modules() -> list[str]:
    """Dotted names of every module under code/ (packages first, then their modules)."""
    names = []
    for path in sorted(CODE.rglob("*.py")):
        parts = path.relative_to(CODE).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return sorted(names, key=lambda n: (n.count("."), n))


def import_shipped(module: str) -> object:
    """`module` imported from code/, with the packages code/ holds set aside meanwhile."""
    if not CODE.is_dir():  # run from the project's own tree (MLflow does when logging)
        return importlib.import_module(module)
    packages = {p.name for p in CODE.iterdir() if p.is_dir()}

    def ours(name: str) -> bool:
        return name.split(".")[0] in packages

    theirs = {name: mod for name, mod in sys.modules.items() if ours(name)}
    for name in theirs:
        del sys.modules[name]
    sys.path.insert(0, str(CODE))
    try:
        for name in shipped_modules():
            importlib.import_module(name)
        return importlib.import_module(module)
    finally:
        sys.path.remove(str(CODE))
        sys.modules.update(theirs)


_module, _, _name = mlflow.models.ModelConfig().get("model_class").partition(":")
mlflow.models.set_model(getattr(import_shipped(_module), _name)())
