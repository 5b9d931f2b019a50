"""One logger setup: Prefect's run logger inside a flow or task, stdlib logging outside."""
from __future__ import annotations

import logging
import os

_FORMAT = "%(asctime)s | %(levelname)-7s | %(name)s - %(message)s"
# their DEBUG records print each request's headers, an S3 access key id among them: a debug
# log of ours never shows them
QUIET_AT_DEBUG = ("botocore", "boto3", "s3transfer", "aiobotocore", "urllib3")


def get_logger(name: str = "reprolab") -> logging.Logger | logging.LoggerAdapter:
    """The Prefect run logger when called in a run, else a configured stdlib logger."""
    try:
        from prefect.exceptions import MissingContextError
        from prefect.logging import get_run_logger

        try:
            return get_run_logger()
        except MissingContextError:
            pass
    except ImportError:  # pragma: no cover - prefect is a hard dependency
        pass
    logger = logging.getLogger(name)
    if not logging.getLogger().handlers and not logger.handlers:
        logging.basicConfig(level=os.environ.get("REPROLAB_LOG_LEVEL", "INFO"), format=_FORMAT)
        for noisy in QUIET_AT_DEBUG:
            logging.getLogger(noisy).setLevel(max(logging.INFO,
                                                  logging.getLogger(noisy).getEffectiveLevel()))
    return logger
