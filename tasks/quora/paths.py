"""Where each quora stage reads and writes (relative to the project root, as in dvc.yaml)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class QuoraPaths:
    root: Path = Path(".")

    @property
    def raw(self) -> Path:
        return self.root / "data/quora/raw"

    @property
    def clean(self) -> Path:
        return self.root / "data/quora/clean"

    @property
    def split(self) -> Path:
        return self.root / "data/quora/split"

    @property
    def embed(self) -> Path:
        return self.root / "data/quora/embed"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts/quora"

    @property
    def results(self) -> Path:
        """Everything evaluate found (the report site reads it)."""
        return self.root / "reports/quora/results.json"

    @property
    def metrics(self) -> Path:
        """The summary a person compares across experiments (DVC's metrics)."""
        return self.root / "metrics/quora.json"

    @property
    def curves(self) -> Path:
        """Data plots (CSV) beside the images: dvc.yaml's top-level plots draw them."""
        return self.root / "plots/curves/quora"

    @property
    def plots(self) -> Path:
        return self.root / "plots/quora"
