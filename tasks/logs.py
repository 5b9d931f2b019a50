"""One logger setup: Prefect's run logger inside a flow or task, stdlib logging outside."""
from __future__ import annotations

import logging
import os

_FORMAT = "%(asctime)s | %(levelname)-7s | %(name)s - %(message)s"


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
    return logger
