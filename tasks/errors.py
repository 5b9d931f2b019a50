"""Project exceptions: each names the file, row or field that is wrong."""
from __future__ import annotations


class ReproLabError(Exception):
    """Base of every error the project raises on purpose."""


class ConfigError(ReproLabError):
    """A params.yaml key, type or value is wrong; the message starts with the key path."""


class DataError(ReproLabError):
    """Input data is unusable; names the file and, where known, the row and field."""

    def __init__(self, message: str, *, path: object = None, row: int | None = None,
                 field: str | None = None) -> None:
        where = [str(p) for p in (path,) if p is not None]
        if row is not None:
            where.append(f"row {row}")
        if field is not None:
            where.append(f"field {field!r}")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)
        self.path, self.row, self.field = path, row, field


class LeakError(ReproLabError):
    """A split lets information cross from one side to another."""


class FetchError(ReproLabError):
    """A download or exchange request failed for good (after retries, or permanently)."""
