"""torch nn.Modules and nothing else: no file I/O, no MLflow, no Prefect."""
