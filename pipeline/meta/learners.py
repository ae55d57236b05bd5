"""The meta-learners ``train.model`` names, created and loaded by that name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pipeline.features.store import FeatureSet
from pipeline.meta.config import TrainConfig
from pipeline.meta.foldin import FoldInLearner
from pipeline.meta.learner import MetaLearner
from pipeline.meta.saved import read_description

Learner = MetaLearner | FoldInLearner


def create_learner(
    config: dict[str, Any] | TrainConfig, fs: FeatureSet, seed: int, device: torch.device | None = None
) -> Learner:
    """A new, untrained learner of kind ``config.model`` for the users and items of ``fs``."""
    cfg = TrainConfig.from_dict(config)
    cls = FoldInLearner if cfg.model == "foldin" else MetaLearner
    return cls.create(cfg, fs, seed, device)


def load_learner(folder: Path, device: torch.device | str | None = None) -> Learner:
    """The learner saved in ``folder`` (``write``/``save`` format), of the kind its config names."""
    model = read_description(folder)["train"].get("model", "melu")
    return (FoldInLearner if model == "foldin" else MetaLearner).load(Path(folder), device)
