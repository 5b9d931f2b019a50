"""Data on S3-compatible object storage: the DVC remote, its credentials, MLflow's artifacts.

One command configures the DVC remote of the checkout it runs in, and checks the bucket:

    python -m tasks.objectstore remote s3://BUCKET/PREFIX --endpoint-url URL --default

Credentials are never written anywhere (not .dvc/config, not .dvc/config.local): each
process that talks to the bucket reads AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (and
AWS_SESSION_TOKEN, if any) from its environment. A flow keeps them in a Prefect Secret block
(JSON: {"aws_access_key_id": ..., "aws_secret_access_key": ...}) and exports them only for
the DVC work it runs: `with aws_credentials(block): repo.push(...)` in process, or
`subprocess.run([...dvc...], env={**os.environ, **credentials_env(block)})`. The project's own
DVC transfers (the nightly's push, a team run's pull and push) take the block that
REPROLAB_STORAGE_BLOCK names (a worker's environment or a deployment's job variables: a name,
not a secret).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

from tasks.errors import ReproLabError

KEY_ID, SECRET_KEY, SESSION_TOKEN = "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"
CREDENTIAL_VARS = (KEY_ID, SECRET_KEY, SESSION_TOKEN)
REQUIRED_VARS = (KEY_ID, SECRET_KEY)
# The keys a Secret block's JSON value may use for each variable (case-insensitive).
_BLOCK_KEYS = {KEY_ID: ("aws_access_key_id", "access_key_id"),
               SECRET_KEY: ("aws_secret_access_key", "secret_access_key"),
               SESSION_TOKEN: ("aws_session_token", "session_token")}


class ObjectStoreError(ReproLabError):
    """The bucket, its URL or its credentials are wrong or missing (never shows a secret)."""


def split_url(url: str) -> tuple[str, str]:
    """s3://bucket/prefix -> ('bucket', 'prefix')."""
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ObjectStoreError(f"{url!r}: expected s3://bucket[/prefix]")
    return parsed.netloc, parsed.path.strip("/")


def credentials_env(block_name: str) -> dict[str, str]:
    """The AWS_* variables held by the Prefect Secret block `block_name` (its value: a JSON
    object with the access key id, the secret access key and optionally a session token)."""
    from prefect.blocks.system import Secret

    try:
        value = Secret.load(block_name).get()
    except Exception as exc:  # noqa: BLE001 - any failure to load is reported the same way
        raise ObjectStoreError(f"Secret block {block_name!r}: cannot load it "
                               f"({type(exc).__name__})") from None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            value = None
    if not isinstance(value, Mapping):
        raise ObjectStoreError(f"Secret block {block_name!r}: its value is not a JSON object "
                               f"with {_BLOCK_KEYS[KEY_ID][0]} and {_BLOCK_KEYS[SECRET_KEY][0]}")
    lowered = {str(k).lower(): v for k, v in value.items()}
    env = {}
    for var, keys in _BLOCK_KEYS.items():
        found = next((lowered[k] for k in keys if lowered.get(k)), None)
        if found:
            env[var] = str(found)
    missing = [_BLOCK_KEYS[var][0] for var in REQUIRED_VARS if var not in env]
    if missing:
        raise ObjectStoreError(f"Secret block {block_name!r}: no {' or '.join(missing)} "
                               "in its JSON value")
    return env


@contextmanager
def aws_credentials(block_name: str | None) -> Iterator[None]:
    """Within the `with`, this process's environment holds the block's AWS_* variables (what
    DVC's and MLflow's S3 clients read); afterwards it is as before. None: left unchanged.
    The environment is process-wide: do not run two of these at once with different blocks."""
    if block_name is None:
        yield
        return
    env = credentials_env(block_name)
    before = {var: os.environ.get(var) for var in CREDENTIAL_VARS}
    try:
        for var in CREDENTIAL_VARS:
            os.environ.pop(var, None)
        os.environ.update(env)
        yield
    finally:
        for var, old in before.items():
            if old is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = old


BLOCK_VAR = "REPROLAB_STORAGE_BLOCK"  # a Prefect Secret block's name: the storage's keys


def storage_credentials() -> contextlib.AbstractContextManager[None]:
    """The keys of the block REPROLAB_STORAGE_BLOCK names, for the DVC work inside the `with`
    (the nightly's push, a team run's pull and push); without it, the environment's own."""
    return aws_credentials(os.environ.get(BLOCK_VAR, "").strip() or None)


def missing_credentials(env: Mapping[str, str]) -> list[str]:
    """The required variables `env` lacks (empty values count as missing)."""
    return [var for var in REQUIRED_VARS if not env.get(var)]


def _require_credentials(env: Mapping[str, str], what: str) -> None:
    missing = missing_credentials(env)
    if missing:
        raise ObjectStoreError(
            f"{what}: no S3 credentials: {' and '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not set. Set {KEY_ID} and {SECRET_KEY} "
            f"(and {SESSION_TOKEN} for temporary ones) in the environment, or pass "
            "--secret-block NAME (a Prefect Secret block holding them)")


def check_bucket(url: str, endpoint_url: str | None = None, region: str | None = None,
                 env: Mapping[str, str] | None = None) -> None:
    """List one key under the URL's prefix with the credentials in `env` (default: this
    process's environment, nothing else: no ~/.aws files); raises ObjectStoreError saying
    what is wrong."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    env = os.environ if env is None else env
    bucket, prefix = split_url(url)
    _require_credentials(env, url)
    client = boto3.client(
        "s3", endpoint_url=endpoint_url, region_name=region or env.get("AWS_DEFAULT_REGION"),
        aws_access_key_id=env[KEY_ID], aws_secret_access_key=env[SECRET_KEY],
        aws_session_token=env.get(SESSION_TOKEN) or None,
        config=Config(connect_timeout=10, read_timeout=20, retries={"max_attempts": 2}))
    where = f"at {endpoint_url}" if endpoint_url else "on AWS"
    try:
        client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        if code in ("NoSuchBucket", "404"):
            raise ObjectStoreError(f"{url}: bucket {bucket!r} does not exist {where}") from None
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            raise ObjectStoreError(
                f"{url}: {code} {where}: the credentials in {KEY_ID} / {SECRET_KEY} may not "
                f"list this bucket") from None
        raise ObjectStoreError(f"{url}: {code or 'error'} {where}: "
                               f"{error.get('Message', '')}") from None
    except BotoCoreError as exc:
        raise ObjectStoreError(f"{url}: cannot reach the bucket {where} "
                               f"({type(exc).__name__})") from None


def configure_remote(url: str, name: str = "s3", endpoint_url: str | None = None,
                     region: str | None = None, default: bool = False,
                     root: str | Path | None = None) -> Path:
    """`dvc remote add -f [-d] NAME URL` (+ endpointurl, region) in the checkout at `root`
    (default: the one around the working directory), in .dvc/config and with no credential;
    returns that config file."""
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    split_url(url)
    section = {"url": url}
    if endpoint_url:
        section["endpointurl"] = endpoint_url
    if region:
        section["region"] = region
    try:
        repo = Repo(None if root is None else str(root))
    except NotDvcRepoError:
        raise ObjectStoreError(f"{Path(root or '.').resolve()}: not in a DVC checkout "
                               "(run `dvc init` first)") from None
    with repo:
        with repo.config.edit("repo") as conf:
            conf["remote"][name] = section
            if default:
                conf["core"]["remote"] = name
        return Path(repo.config.files["repo"])


def mlflow_s3_env(endpoint_url: str | None, block_name: str | None = None) -> dict[str, str]:
    """The environment an MLflow process needs for artifacts on S3-compatible storage: a
    `mlflow server --artifacts-destination s3://BUCKET/mlflow` (its clients then need no
    credentials), or a client logging to an s3:// artifact location itself. That is
    MLFLOW_S3_ENDPOINT_URL (when not AWS) and the AWS_* credentials, from the Secret block
    `block_name` or else from this process's environment (plus AWS_DEFAULT_REGION if set)."""
    if block_name is not None:
        env = credentials_env(block_name)
    else:
        env = {var: os.environ[var] for var in (*CREDENTIAL_VARS, "AWS_DEFAULT_REGION")
               if os.environ.get(var)}
        _require_credentials(env, "MLflow artifacts on S3")
    if endpoint_url:
        env["MLFLOW_S3_ENDPOINT_URL"] = endpoint_url
    return env


def remote(args: argparse.Namespace) -> int:
    """The `remote` command: check the bucket, then configure the DVC remote."""
    with aws_credentials(args.secret_block):
        if not args.no_check:
            check_bucket(args.url, args.endpoint_url, args.region)
    config = configure_remote(args.url, args.name, args.endpoint_url, args.region, args.default)
    details = [f"endpoint {args.endpoint_url}" if args.endpoint_url else "",
               f"region {args.region}" if args.region else ""]
    print(f"DVC remote {args.name!r}{' (default)' if args.default else ''}: {args.url}"
          f"{''.join(f', {d}' for d in details if d)}; written to {config}")
    print("bucket not checked (--no-check)" if args.no_check
          else f"bucket reachable with the credentials from "
               f"{'Secret block ' + repr(args.secret_block) if args.secret_block else 'the environment'}")
    print(f"credentials: not stored; every dvc push/pull reads {KEY_ID} and {SECRET_KEY} "
          "from its environment")
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.objectstore",
                                     description="Data on S3-compatible object storage.")
    commands = parser.add_subparsers(dest="command", required=True)
    cmd = commands.add_parser("remote", help="configure this checkout's DVC remote on a bucket")
    cmd.add_argument("url", help="s3://bucket/prefix")
    cmd.add_argument("--name", default="s3", help="the remote's name (default: s3)")
    cmd.add_argument("--endpoint-url", help="S3-compatible endpoint, e.g. http://host:9000")
    cmd.add_argument("--region", help="the bucket's region")
    cmd.add_argument("--default", action="store_true", help="make it the default remote")
    cmd.add_argument("--secret-block", help="Prefect Secret block with the credentials "
                                            "(default: the environment's AWS_* variables)")
    cmd.add_argument("--no-check", action="store_true",
                     help="configure without checking that the bucket is reachable")
    args = parser.parse_args(argv)
    try:
        return remote(args)
    except ObjectStoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
