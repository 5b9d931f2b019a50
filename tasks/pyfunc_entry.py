"""The file MLflow runs to load every registered ReproLab model (MLflow's "models from code":
no pickle). It builds the `mlflow.pyfunc.PythonModel` class the model's config names.

That class's module and every project module it imports travel with the model, in the `code/`
folder beside this file, so the model loads where the project is not installed. It runs that
code even where other copies of the project's packages are imported already (this checkout,
or another model loaded earlier): those are set aside while the model's own modules are
imported, and afterwards sys.modules is as it was, so each model keeps the code it was logged
with (its classes and functions hold their own modules) and neither breaks the other nor
leaks into the process. An import inside a function resolves when it runs: to the module the
process has under that name then, else from sys.path (where MLflow put the model's code/).
"""
import importlib
import sys
from pathlib import Path

import mlflow

CODE = Path(__file__).resolve().with_name("code")


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
    bytecode = sys.dont_write_bytecode
    sys.dont_write_bytecode = True  # a model in a local store is loaded in place: keep it clean
    try:
        return importlib.import_module(module)
    finally:
        sys.dont_write_bytecode = bytecode
        sys.path.remove(str(CODE))
        for name in [name for name in sys.modules if ours(name)]:
            del sys.modules[name]  # the model keeps its modules through its own references
        sys.modules.update(theirs)


_module, _, _name = mlflow.models.ModelConfig().get("model_class").partition(":")
mlflow.models.set_model(getattr(import_shipped(_module), _name)())
