"""The work: plain typed functions, also Prefect tasks, grouped by domain."""
