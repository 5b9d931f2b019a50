"""Where each crypto stage reads and writes (relative to the project root, as in dvc.yaml)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CryptoPaths:
    root: Path = Path(".")

    @property
    def raw(self) -> Path:
        return self.root / "data/crypto/raw"

    @property
    def partitions(self) -> Path:
        """Inside raw: the partitions the last ingest wrote (stable while the data is)."""
        return self.raw / "partitions.json"

    @property
    def ingest_report(self) -> Path:
        return self.root / "reports/crypto/ingest.json"

    @property
    def features(self) -> Path:
        return self.root / "data/crypto/features.parquet"

    @property
    def splits(self) -> Path:
        return self.root / "data/crypto/splits"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts/crypto"

    @property
    def results(self) -> Path:
        """Everything evaluate found (the report site reads it)."""
        return self.root / "reports/crypto/results.json"

    @property
    def metrics(self) -> Path:
        """The summary a person compares across experiments (DVC's metrics)."""
        return self.root / "metrics/crypto.json"

    @property
    def curves(self) -> Path:
        """Data plots (CSV) beside the images: dvc.yaml's top-level plots draw them."""
        return self.root / "plots/curves/crypto"

    @property
    def plots(self) -> Path:
        return self.root / "plots/crypto"
