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

    # source
    @property
    def source(self) -> Path:
        """Links to the raw files ``ingest`` reads, and their manifest: DVC hashes the files through them."""
        return self.root / "data" / "source"

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
    def origins(self) -> Path:
        """Per ingested row: table, row, and the raw file and line it came from (what errors name)."""
        return self.ingested / "origins.parquet"

    @property
    def quarantine(self) -> Path:
        return self.root / "data" / "quarantine"

    @property
    def feedback(self) -> Path:
        """Immutable feedback batches (one DVC-tracked parquet file each), merged by ``ingest``."""
        return self.root / "feedback"

    @property
    def feedback_state(self) -> Path:
        """Up to which feedback batch the last retraining run went."""
        return self.root / "reports" / "feedback.json"

    # validate
    @property
    def validation_reports(self) -> Path:
        return self.root / "reports" / "validation"

    @property
    def validated(self) -> Path:
        """The tables that passed validation (bad ratings quarantined): what ``features`` reads."""
        return self.root / "data" / "validated"

    def validated_table(self, name: str) -> Path:
        return self.validated / f"{name}.parquet"

    @property
    def validation_metrics(self) -> Path:
        return self.root / "metrics" / "validation.json"

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
    def headline_metrics(self) -> Path:
        """The primary metric per scenario and model: what ``dvc metrics show`` prints."""
        return self.metrics / "headline.json"

    @property
    def shots_metrics(self) -> Path:
        """The new_user support-size curve."""
        return self.metrics / "shots.json"

    @property
    def per_user_values(self) -> Path:
        """The meta model's ``new_user`` value per user, which the promotion gate pairs (no DVC metric)."""
        return self.root / "data" / "evaluation" / "per_user.json"

    @property
    def evaluation_plots(self) -> Path:
        """DVC plot data of the evaluation: one file per scenario, and the support-size curve."""
        return self.plots / "evaluation"

    @property
    def evaluation_report(self) -> Path:
        """``report.md`` and its PNG figures."""
        return self.reports / "evaluation"

    @property
    def train_metrics(self) -> Path:
        return self.metrics / "train.json"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def train_curve(self) -> Path:
        return self.plots / "train_curve.json"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    # tune
    @property
    def tuning(self) -> Path:
        """Optuna's default study storage (``tune.storage: null``)."""
        return self.root / "data" / "tuning"

    @property
    def tuning_db(self) -> Path:
        return self.tuning / "optuna.db"

    @property
    def tuning_storage(self) -> str:
        """The SQLAlchemy URL of :attr:`tuning_db` (absolute: the same from any working directory)."""
        return f"sqlite:///{self.tuning_db.resolve()}"

    def tuned_params(self, name: str) -> Path:
        """The tuned-params file ``name`` (the top-level key ``tuned``), relative to the root."""
        return self.root / name

    # register
    @property
    def registration(self) -> Path:
        return self.root / "reports" / "registration.json"

    @property
    def mlflow_db(self) -> Path:
        """The default MLflow tracking store (sqlite); ``MLFLOW_TRACKING_URI`` overrides it."""
        return self.root / "mlruns.db"

    @property
    def mlflow_uri(self) -> str:
        """The tracking URI of :attr:`mlflow_db` (absolute: the same from any working directory)."""
        return f"sqlite:///{self.mlflow_db.resolve()}"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.root / "mlartifacts"
