"""Fixtures for tests that need S3-compatible storage: moto's S3 server on 127.0.0.1.

`s3_server` (session): a `moto_server` subprocess on a free port; yields its endpoint URL.
`s3_credentials` (session): distinctive fake AWS_* credentials (random per session: moto
accepts any), for a test to search its outputs for.
`s3_bucket`: a fresh, empty bucket on that server, with the environment a client needs
(`make_bucket` makes one for a fixture of another scope).
"""
from __future__ import annotations

import secrets
import shutil
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

VENV_BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class S3Bucket:
    """A bucket on the test S3 server. `env` holds the endpoint and credentials (add it to a
    process's environment); `url(prefix)` is its s3:// URL."""

    name: str
    endpoint_url: str
    env: dict[str, str]

    def url(self, prefix: str = "") -> str:
        return f"s3://{self.name}/{prefix}".rstrip("/")

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name="us-east-1",
                            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"])

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key under `prefix`."""
        pages = self.client().get_paginator("list_objects_v2").paginate(
            Bucket=self.name, Prefix=prefix)
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))

    def read(self, key: str) -> bytes:
        return self.client().get_object(Bucket=self.name, Key=key)["Body"].read()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> str:
    """moto's S3 server in its own process (DVC's and s3fs's threads and event loops stay out
    of the test process's moto), killed with the test process; yields http://127.0.0.1:PORT."""
    from tests.conftest import background_server, free_port

    folder = tmp_path_factory.mktemp("moto")
    port = free_port()
    cmd = [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    if shutil.which("setpriv"):
        cmd = ["setpriv", "--pdeathsig", "KILL", *cmd]
    url = f"http://127.0.0.1:{port}"
    with background_server(cmd, folder / "moto.log", f"{url}/moto-api/", 60, stop_seconds=10):
        yield url


@pytest.fixture(scope="session")
def s3_credentials() -> dict[str, str]:
    """Fake credentials no other string in a test's output could hold by chance."""
    return {"AWS_ACCESS_KEY_ID": f"AKIAREPROLAB{secrets.token_hex(6).upper()}",
            "AWS_SECRET_ACCESS_KEY": f"reprolab-secret-{secrets.token_urlsafe(24)}"}


def make_bucket(endpoint_url: str, credentials: dict[str, str], aws_home: Path,
                name: str | None = None) -> S3Bucket:
    """Create a bucket (a random name unless given). Its `env`: the credentials, region and
    endpoint (as MLFLOW_S3_ENDPOINT_URL), with ~/.aws files (pointed at the empty folder
    `aws_home`) and the instance metadata service ruled out. For fixtures of other scopes."""
    env = {**credentials, "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_CONFIG_FILE": str(aws_home / "config"),
           "AWS_SHARED_CREDENTIALS_FILE": str(aws_home / "credentials"),
           "AWS_EC2_METADATA_DISABLED": "true", "MLFLOW_S3_ENDPOINT_URL": endpoint_url}
    bucket = S3Bucket(name or f"reprolab-{uuid.uuid4().hex[:12]}", endpoint_url, env)
    bucket.client().create_bucket(Bucket=bucket.name)
    return bucket


@pytest.fixture
def s3_bucket(s3_server, s3_credentials, tmp_path_factory) -> S3Bucket:
    """A new empty bucket on the session's server (see make_bucket)."""
    return make_bucket(s3_server, s3_credentials, tmp_path_factory.mktemp("no-aws-config"))
