"""The ``train`` stage: meta-train on the FeatureSet through torchrun, write the model and its metrics.

Reads ``data/features``; writes ``models/meta`` (weights.safetensors, config.json, history.json),
``models/checkpoints``, ``metrics/train.json`` and the training curve ``plots/train_curve.json``.
The params model is only duck-typed here, so this package still imports without pydantic on the GPU image.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from pipeline.io import write_json
from pipeline.training.launch import train_distributed

if TYPE_CHECKING:
    from pipeline.params import Params
    from pipeline.paths import Paths

logger = logging.getLogger(__name__)


def train_config(params: Params) -> dict[str, Any]:
    """The ``train`` section as the plain dict the meta-learner takes."""
    return params.train.model_dump(mode="json")


def train_stage(params: Params, paths: Paths) -> dict[str, Any]:
    """Run torchrun with ``train.nproc`` workers; returns the summary written to ``metrics/train.json``."""
    config = train_config(params)
    result = train_distributed(
        paths.features,
        config,
        paths.model,
        params.train.nproc,
        seed=params.seed,
        checkpoints=paths.checkpoints,
        max_restarts=params.train.max_restarts,
    )
    last = result["history"][-1]
    summary = {
        "train_loss": last["train_loss"],
        "query_mae": last["query_mae"],
        "epochs": len(result["history"]),
        "nproc": result["nproc"],
        "restarts": result["restarts"],
        "seconds": round(result["seconds"], 1),
    }
    write_json(summary, paths.train_metrics)
    curve = [
        {"epoch": h["epoch"], "train_loss": h["train_loss"], "query_mae": h["query_mae"]}
        for h in result["history"]
    ]
    write_json(curve, paths.train_curve)
    logger.info("train stage: %s", summary)
    return summary
