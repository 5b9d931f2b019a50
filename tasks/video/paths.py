"""Where each kinetics stage reads and writes (relative to the project root, as in dvc.yaml)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class KineticsPaths:
    root: Path = Path(".")

    @property
    def manifest(self) -> Path:
        return self.root / "data/kinetics/manifest"

    @property
    def clips(self) -> Path:
        return self.root / "data/kinetics/clips"

    @property
    def frames(self) -> Path:
        return self.root / "data/kinetics/frames"

    @property
    def index(self) -> Path:
        return self.root / "data/kinetics/index.parquet"

    @property
    def split(self) -> Path:
        return self.root / "data/kinetics/split"

    @property
    def report(self) -> Path:
        return self.root / "reports/kinetics/data.json"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts/kinetics"

    def checkpoints(self, stage: str) -> Path:
        """Per stage: DVC outputs must not overlap, and each stage keeps its own (persist)."""
        return self.root / "artifacts/checkpoints" / stage

    @property
    def results(self) -> Path:
        """Everything evaluate found (the report site reads it)."""
        return self.root / "reports/kinetics/results.json"

    @property
    def metrics(self) -> Path:
        """The summary a person compares across experiments (DVC's metrics)."""
        return self.root / "metrics/kinetics.json"

    @property
    def curves(self) -> Path:
        """Data plots (CSV) beside the images: dvc.yaml's top-level plots draw them."""
        return self.root / "plots/curves/kinetics"

    @property
    def plots(self) -> Path:
        return self.root / "plots/kinetics"
