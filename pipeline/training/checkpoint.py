"""Checkpoints: weights (safetensors), optimiser and RNG state, training position; sha256-checked, atomic.

Layout: ``<dir>/step-00000050/`` with ``weights.safetensors``, ``optimizer.pt`` (tensors and plain
containers only, read with ``torch.load(weights_only=True)``), ``state.json`` (TrainState, fingerprint)
and ``manifest.json`` (sha256 per file). A folder appears only complete (written aside, then renamed);
one whose checksums do not match is reported and skipped in favour of the previous one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from pipeline.io import atomic_dir
from pipeline.meta.learners import Learner
from pipeline.meta.loop import TrainState

logger = logging.getLogger(__name__)

PREFIX = "step-"
FILES = ("weights.safetensors", "optimizer.pt", "state.json")
MANIFEST = "manifest.json"
MIN_KEEP = 2
"""A corrupted newest checkpoint always leaves a previous one to resume from."""


@dataclass
class Checkpoint:
    path: Path
    tensors: dict[str, Tensor]
    optimizer: dict[str, Any]
    torch_rng: Tensor
    state: TrainState


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(
    folder: Path, learner: Learner, state: TrainState, fingerprint: str, keep: int = 3
) -> Path:
    """Write the checkpoint of ``state.step`` atomically, then drop all but this run's newest ``keep`` (at
    least :data:`MIN_KEEP`): another run's checkpoints (other data, config or seed) can never resume this
    one, and left in place they would outnumber, and so prune away, the ones it just wrote.

    Only rank 0 writes, one checkpoint at a time, so a hidden ``.step-*`` folder found here is the
    leftover of a writer that was killed mid-write, and is removed.
    """
    if keep < MIN_KEEP:
        raise ValueError(f"keep={keep}: keep at least {MIN_KEEP} checkpoints, so a bad one has a fallback")
    target = Path(folder) / f"{PREFIX}{state.step:08d}"
    if Path(folder).is_dir():
        for stale in Path(folder).glob(f".{PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)
    with atomic_dir(target) as tmp:
        save_file(learner.tensors(), str(tmp / "weights.safetensors"))
        torch.save(
            {"optimizer": learner.optimizer.state_dict(), "torch_rng": torch.get_rng_state()},
            tmp / "optimizer.pt",
        )
        (tmp / "state.json").write_text(
            json.dumps({"fingerprint": fingerprint, "train_state": state.to_dict()})
        )
        manifest = {name: sha256_file(tmp / name) for name in FILES}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    mine = [p for p in _candidates(folder) if _fingerprint(p) == fingerprint]
    others = [p for p in _candidates(folder) if p not in mine]
    for old in [*mine[keep:], *others]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def _fingerprint(path: Path) -> str | None:
    """The run that wrote the checkpoint at ``path`` (None when its state cannot be read)."""
    try:
        return str(json.loads((path / "state.json").read_text())["fingerprint"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _candidates(folder: Path) -> list[Path]:
    """Checkpoint folders, newest first."""
    if not Path(folder).is_dir():
        return []
    found = [p for p in Path(folder).iterdir() if p.is_dir() and p.name.startswith(PREFIX)]
    return sorted(found, key=lambda p: p.name, reverse=True)


def verify(path: Path) -> str | None:
    """None if every file matches the manifest's sha256, else the reason it does not."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        return f"unreadable {MANIFEST}: {exc}"
    for name in FILES:
        if not (path / name).exists():
            return f"missing {name}"
        if manifest.get(name) != sha256_file(path / name):
            return f"sha256 mismatch for {name}"
    return None


def load_latest(folder: Path, fingerprint: str, device: torch.device) -> Checkpoint | None:
    """The newest valid checkpoint of this run (same fingerprint), or None; bad ones (checksum mismatch,
    another run's, or not loadable by the weights-only unpickler) are warned about and skipped."""
    for path in _candidates(folder):
        problem = verify(path)
        if problem is None:
            meta = json.loads((path / "state.json").read_text())
            if meta["fingerprint"] != fingerprint:
                problem = "written by a run with other data, config or seed"
        if problem is not None:
            logger.warning("checkpoint %s skipped: %s", path, problem)
            continue
        try:
            extra = torch.load(path / "optimizer.pt", map_location=device, weights_only=True)
            tensors = load_file(str(path / "weights.safetensors"), device=str(device))
        except (pickle.UnpicklingError, SafetensorError, RuntimeError, OSError, KeyError) as exc:
            reason = (str(exc).strip().splitlines() or [""])[0].split(". ")[0]
            logger.warning(
                "checkpoint %s skipped: not loadable without pickle (%s: %s)",
                path,
                type(exc).__name__,
                reason,
            )
            continue
        return Checkpoint(
            path=path,
            tensors=tensors,
            optimizer=extra["optimizer"],
            torch_rng=extra["torch_rng"].cpu(),
            state=TrainState.from_dict(meta["train_state"]),
        )
    return None


def restore(learner: Learner, ckpt: Checkpoint) -> TrainState:
    """Load a checkpoint into ``learner``; returns the position to continue from."""
    learner.load_tensors(ckpt.tensors)
    learner.optimizer.load_state_dict(ckpt.optimizer)
    torch.set_rng_state(ckpt.torch_rng)
    return ckpt.state
