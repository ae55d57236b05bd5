"""The one module that owns where every artifact lives, relative to a project root.

``dvc.yaml`` names the same paths; a test checks that the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Paths:
    """Artifact locations under ``root`` (the working copy; the current directory by default)."""

    root: Path = Path(".")

    # ingest
    @property
    def ingested(self) -> Path:
        return self.root / "data" / "ingested"

    @property
    def raw(self) -> Path:
        """Downloaded source archives and their unpacked files (only ever read after unpacking)."""
        return self.root / "data" / "raw"

    def table(self, name: str) -> Path:
        """Typed parquet table ``ratings``, ``users`` or ``items``."""
        return self.ingested / f"{name}.parquet"

    @property
    def quarantine(self) -> Path:
        return self.root / "data" / "quarantine"

    # validate
    @property
    def validation_reports(self) -> Path:
        return self.root / "reports" / "validation"

    # features
    @property
    def features(self) -> Path:
        return self.root / "data" / "features"

    @property
    def embedding_cache(self) -> Path:
        return self.root / "data" / "cache" / "embeddings"

    # train
    @property
    def model(self) -> Path:
        return self.root / "models" / "meta"

    @property
    def checkpoints(self) -> Path:
        return self.root / "models" / "checkpoints"

    # evaluate
    @property
    def metrics(self) -> Path:
        return self.root / "metrics"

    @property
    def cv_metrics(self) -> Path:
        return self.metrics / "cv.json"

    @property
    def train_metrics(self) -> Path:
        return self.metrics / "train.json"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    # register
    @property
    def registration(self) -> Path:
        return self.root / "reports" / "registration.json"
