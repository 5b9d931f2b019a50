"""Fixtures for tests that need a PostgreSQL cluster or a Prefect/MLflow server of their own."""
