"""The folder a trained meta-learner is saved in: ``weights.safetensors`` (no pickle) and ``config.json``
(format, seed, the train config, the input shapes). Both learners write and read it through here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from pipeline.io import atomic_dir

WEIGHTS = "weights.safetensors"
CONFIG = "config.json"
FORMAT_VERSION = 1


def description(seed: int, train: dict[str, Any], dims: dict[str, Any]) -> dict[str, Any]:
    """The ``config.json`` of a learner: format, seed, train config and input shapes."""
    return {"format": FORMAT_VERSION, "seed": seed, "train": train, "dims": dims}


def write(folder: Path, tensors: dict[str, Tensor], described: dict[str, Any]) -> None:
    """Write the weights and ``config.json`` into an existing folder (not atomic)."""
    save_file(tensors, str(Path(folder) / WEIGHTS))
    (Path(folder) / CONFIG).write_text(json.dumps(described, indent=2, sort_keys=True) + "\n")


def save(folder: Path, tensors: dict[str, Tensor], described: dict[str, Any]) -> None:
    """Replace ``folder`` atomically with the weights and ``config.json``."""
    with atomic_dir(Path(folder)) as tmp:
        write(tmp, tensors, described)


def read_description(folder: Path) -> dict[str, Any]:
    """``config.json`` of a saved learner; a missing file or another format is an error naming the path."""
    folder = Path(folder)
    for name in (WEIGHTS, CONFIG):
        if not (folder / name).exists():
            raise FileNotFoundError(f"{folder / name}: missing; not a saved meta-learner folder")
    meta: dict[str, Any] = json.loads((folder / CONFIG).read_text())
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(f"{folder / CONFIG}: format {meta.get('format')!r}, expected {FORMAT_VERSION}")
    return meta


def read_weights(folder: Path, device: torch.device) -> dict[str, Tensor]:
    return load_file(str(Path(folder) / WEIGHTS), device=str(device))
