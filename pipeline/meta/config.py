"""The training configuration as a plain dataclass: the fields of ``TrainParams``, without pydantic.

The meta-learning packages run on a bare GPU image (torch, numpy, pyarrow), so they take the ``train``
section of the params as a plain dict (``params.train.model_dump()``) and check it here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

MODELS = ("foldin", "melu")
ALGORITHMS = ("maml", "fomaml", "metasgd", "joint")
ADAPT = ("decision", "all")
IMPLS = ("loop", "vmap", "graph")
DEVICES = ("auto", "cpu", "cuda")
LR_SCHEDULES = ("constant", "cosine")
TEXT_PROJECTIONS = ("trained", "frozen")
OBJECTIVES = ("regression", "binary")


@dataclass(frozen=True)
class FoldInConfig:
    """Hyper-parameters of the meta-learned fold-in (``train.model: foldin``); mirror ``FoldInParams``."""

    factors: int = 32
    hidden: int = 128
    epochs: int = 30
    batch: int = 128
    learning_rate: float = 3e-3
    item_dropout: float = 0.5
    max_support: int = 100
    max_query: int = 100
    init_precision: float = 5.0
    rank_weight: float = 1.0

    def __post_init__(self) -> None:
        sizes = ("factors", "hidden", "epochs", "batch", "max_support", "max_query")
        bad = [n for n in sizes if getattr(self, n) < 1]
        bad += [n for n in ("learning_rate", "init_precision") if getattr(self, n) <= 0]
        bad += ["rank_weight"] if self.rank_weight < 0 else []
        bad += ["item_dropout"] if not 0.0 <= self.item_dropout < 1.0 else []
        if bad:
            shown = ", ".join(f"{n}={getattr(self, n)!r}" for n in bad)
            raise ValueError(f"invalid train.foldin config: {shown}")


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of the meta-learner; field names and defaults mirror ``TrainParams``.

    ``objective`` is the one field that is not a train param: the caller derives it from the task kind
    (``regression`` on explicit ratings, ``binary`` on 0/1 implicit labels).
    """

    model: str = "foldin"
    foldin: FoldInConfig = field(default_factory=FoldInConfig)
    algorithm: str = "maml"
    adapt: str = "decision"
    embedding_dim: int = 32
    hidden: tuple[int, ...] = (128, 64)
    inner_steps: int = 5
    inner_lr: float = 0.2
    outer_lr: float = 3e-3
    meta_batch: int = 16
    epochs: int = 20
    max_support: int = 10
    query_size: int = 100
    nproc: int = 2
    device: str = "auto"
    bf16: bool = False
    checkpoint_every: int = 50
    impl: str = "vmap"
    item_dropout: float = 0.1
    min_support: int = 10
    resplit: bool = True
    lr_schedule: str = "cosine"
    max_restarts: int = 1
    use_text: bool = True
    user_profile: bool = True
    item_prior: float = 10.0
    support_shrinkage: float = 10.0
    inner_grad_clip: float = 10.0
    text_projection: str = "trained"
    nnodes: int = 1
    rdzv_endpoint: str = ""
    objective: str = "regression"

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        if isinstance(self.foldin, dict):
            object.__setattr__(self, "foldin", FoldInConfig(**self.foldin))
        checks = {
            "model": self.model in MODELS,
            "algorithm": self.algorithm in ALGORITHMS,
            "adapt": self.adapt in ADAPT,
            "impl": self.impl in IMPLS,
            "device": self.device in DEVICES,
            "embedding_dim": self.embedding_dim > 0,
            "hidden": all(h > 0 for h in self.hidden),
            "inner_steps": self.inner_steps >= 0,
            "inner_lr": self.inner_lr > 0,
            "outer_lr": self.outer_lr > 0,
            "meta_batch": self.meta_batch > 0,
            "epochs": self.epochs > 0,
            "max_support": self.max_support > 0,
            "min_support": 0 <= self.min_support <= self.max_support,
            "lr_schedule": self.lr_schedule in LR_SCHEDULES,
            "query_size": self.query_size > 0,
            "nproc": self.nproc > 0,
            "nnodes": self.nnodes > 0,
            "checkpoint_every": self.checkpoint_every > 0,
            "max_restarts": self.max_restarts >= 0,
            "item_dropout": 0.0 <= self.item_dropout < 1.0,
            "objective": self.objective in OBJECTIVES,
            "item_prior": self.item_prior >= 0,
            "support_shrinkage": self.support_shrinkage >= 0,
            "inner_grad_clip": self.inner_grad_clip >= 0,
            "text_projection": self.text_projection in TEXT_PROJECTIONS,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in bad)
            raise ValueError(f"invalid train config: {shown}")

    @classmethod
    def from_dict(cls, config: dict[str, Any] | TrainConfig) -> TrainConfig:
        """Build from a dict of ``TrainParams`` fields; unknown keys are an error (they would be ignored)."""
        if isinstance(config, TrainConfig):
            return config
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"unknown train config keys: {unknown} (known: {sorted(known)})")
        return cls(**config)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["hidden"] = list(self.hidden)
        return out

    @property
    def second_order(self) -> bool:
        return self.algorithm not in ("fomaml", "joint")

    @property
    def train_inner_steps(self) -> int:
        """Inner steps during training: none for ``joint`` (plain supervised training, no inner loop)."""
        return 0 if self.algorithm == "joint" else self.inner_steps
