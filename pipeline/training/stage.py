"""The ``train`` stage: meta-train on the FeatureSet through torchrun, write the model and its metrics.

Reads ``data/features``; writes ``models/meta`` (weights.safetensors, config.json, history.json),
``models/checkpoints``, ``metrics/train.json`` and the training curve ``plots/train_curve.json``.
The params model is only duck-typed here, so this package still imports without pydantic on the GPU image.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file

from pipeline.io import write_json
from pipeline.meta.saved import WEIGHTS
from pipeline.training.launch import train_distributed

if TYPE_CHECKING:
    from pipeline.params import Params
    from pipeline.paths import Paths

logger = logging.getLogger(__name__)


class NonFiniteModel(RuntimeError):
    """The trained model holds non-finite weights, or its training metrics are not finite."""


def check_finite(model_dir: Path, history: list[dict[str, Any]]) -> None:
    """Raise :class:`NonFiniteModel` naming the non-finite metrics (per epoch) and weight tensors."""
    problems = [
        f"epoch {row['epoch']} {key} = {row[key]}"
        for row in history
        for key in ("train_loss", "query_mae")
        if not math.isfinite(row[key])
    ]
    weights = load_file(str(Path(model_dir) / WEIGHTS))
    problems += [
        f"weights {name}: {int((~torch.isfinite(t)).sum())} non-finite values"
        for name, t in sorted(weights.items())
        if t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]
    if problems:
        raise NonFiniteModel(
            f"training wrote a broken model to {model_dir}: {'; '.join(problems[:5])}"
            + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else "")
            + "; it must not be evaluated or registered: see docs/training.md, 'Divergence'"
        )


def train_config(params: Params) -> dict[str, Any]:
    """The ``train`` section as the plain dict the meta-learner takes."""
    return params.train.model_dump(mode="json")


def train_stage(params: Params, paths: Paths) -> dict[str, Any]:
    """Run torchrun with ``train.nproc`` workers per node on ``train.nnodes`` nodes; returns the summary
    written to ``metrics/train.json`` (on the node that held rank 0; the other nodes raise).

    A model with non-finite weights or metrics fails the stage (:class:`NonFiniteModel`) before any
    metric is written."""
    config = train_config(params)
    t = params.train
    result = train_distributed(
        paths.features,
        config,
        paths.model,
        t.nproc,
        seed=params.seed,
        checkpoints=paths.checkpoints,
        max_restarts=t.max_restarts,
        nnodes=t.nnodes,
        rdzv_endpoint=t.rdzv_endpoint,
        rdzv_id=f"metarec-{params.digest()[:12]}",
    )
    if result["history"] is None:
        raise RuntimeError(
            f"training finished, but rank 0 ran on another of the {t.nnodes} nodes: the model, metrics and "
            f"checkpoints are on that node ({paths.model}); continue the pipeline there"
        )
    check_finite(paths.model, result["history"])
    last = result["history"][-1]
    summary = {
        "train_loss": last["train_loss"],
        "query_mae": last["query_mae"],
        "epochs": len(result["history"]),
        "nnodes": result["nnodes"],
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
