"""Prefect flows: orchestration only. `python -m flows.<pipeline> <stage>` runs one stage."""
