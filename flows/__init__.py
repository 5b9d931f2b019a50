"""Prefect flows: orchestration only. `python -m flows.<pipeline> <stage>` runs one stage.

Importing the package puts the process in the project's environment (tasks/environment.py):
the project's interpreter first on PATH for the stage commands DVC starts, its Prefect home,
telemetry off."""
from tasks.environment import apply as _apply_environment

_apply_environment()
