"""Fixtures for tests that need S3-compatible storage: moto's S3 server on 127.0.0.1."""
