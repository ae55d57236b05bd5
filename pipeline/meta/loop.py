"""The meta-training loop every learner runs: seeded batches over epochs, checkpoints, progress, divergence.

A learner supplies one meta-step (``train_step``) and its learning-rate schedule; a sampler supplies the
batch of (epoch, index) for a rank. Everything else, and what a checkpoint records, lives here once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import torch
from torch import Tensor

from pipeline.progress import Progress

logger = logging.getLogger(__name__)

GradReducer = Callable[[Tensor], None]
"""Sums a flat tensor over ranks in place (torch.distributed's all-reduce)."""
Batch = TypeVar("Batch")
Batch_contra = TypeVar("Batch_contra", contravariant=True)
Batch_co = TypeVar("Batch_co", covariant=True)


@dataclass
class TrainState:
    """Where training stands: the next (epoch, batch), meta-steps done, the running epoch's sums, history.

    Together with the seed this fixes every later batch, so it is all a checkpoint needs besides weights.
    """

    epoch: int = 0
    batch: int = 0
    step: int = 0
    loss_sum: float = 0.0
    mae_sum: float = 0.0
    n_tasks: int = 0
    history: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainState:
        return cls(**d)


class TrainingDiverged(RuntimeError):
    """A meta-step's query loss or meta-gradient is not finite; raised on every rank alike (the check runs
    after the all-reduce), before the step is applied, so no non-finite weight is ever kept or saved."""


class BatchSource(Protocol[Batch_co]):
    """A seeded sampler: the tasks of batch ``index`` of ``epoch`` that ``rank`` of ``world_size`` takes."""

    @property
    def n_batches(self) -> int: ...

    def batch(self, epoch: int, index: int, rank: int = 0, world_size: int = 1) -> tuple[Batch_co, int]: ...


class Steppable(Protocol[Batch_contra]):
    """A learner: one meta-step on this rank's tasks, and the learning rate of each step."""

    device: torch.device

    def schedule(self, step: int, total: int) -> None: ...

    def train_step(
        self, batch: Batch_contra, n_global: int, reduce: GradReducer | None = None, world_size: int = 1
    ) -> tuple[Tensor, Tensor]: ...


def apply_gradients(
    params: list[Tensor],
    grads: list[Tensor],
    sums: Tensor,
    optimizer: torch.optim.Optimizer,
    reduce: GradReducer | None,
) -> tuple[Tensor, Tensor]:
    """Sum ``grads`` and the (loss, MAE) ``sums`` over ranks, check they are finite, step ``optimizer``.

    Raises :class:`TrainingDiverged` before the step when anything is not finite; returns the summed loss
    and MAE."""
    flat = torch.cat([*(g.reshape(-1) for g in grads), sums.reshape(2)])
    if reduce is not None:
        reduce(flat)
    if not bool(torch.isfinite(flat).all()):
        raise TrainingDiverged(
            f"query loss sum {flat[-2].item():.4g}, MAE sum {flat[-1].item():.4g}, "
            f"{int((~torch.isfinite(flat[:-2])).sum())} non-finite meta-gradient entries"
        )
    for p, g in zip(params, torch.split(flat[:-2], [p.numel() for p in params]), strict=True):
        p.grad = g.view_as(p)
    optimizer.step()
    return flat[-2].detach(), flat[-1].detach()


def train_loop(
    learner: Steppable[Batch],
    sampler: BatchSource[Batch],
    state: TrainState,
    epochs: int,
    *,
    rank: int = 0,
    world_size: int = 1,
    reduce: GradReducer | None = None,
    checkpoint_every: int = 0,
    on_checkpoint: Callable[[TrainState], None] | None = None,
    on_step: Callable[[int], None] | None = None,
    progress: bool = True,
    divergence_hint: str = "",
) -> TrainState:
    """Run the meta-steps left after ``state``; this rank takes its share of each batch.

    Raises :class:`TrainingDiverged` (naming the meta-step and epoch, then ``divergence_hint``) at the first
    meta-step whose loss or meta-gradient is not finite. ``on_checkpoint`` receives the full state every
    ``checkpoint_every`` meta-steps, ``on_step`` the step count after every meta-step.
    """
    total = epochs * sampler.n_batches
    bar = Progress(total, "meta-train", "step", initial=state.step, enabled=progress)
    loss_acc = torch.tensor(state.loss_sum, dtype=torch.float64, device=learner.device)
    mae_acc = torch.tensor(state.mae_sum, dtype=torch.float64, device=learner.device)
    while state.epoch < epochs:
        while state.batch < sampler.n_batches:
            learner.schedule(state.step, total)
            batch, n_global = sampler.batch(state.epoch, state.batch, rank, world_size)
            try:
                loss_sum, mae_sum = learner.train_step(batch, n_global, reduce, world_size)
            except TrainingDiverged as exc:
                raise TrainingDiverged(
                    f"training diverged at meta-step {state.step + 1} of {total} (epoch "
                    f"{state.epoch + 1} of {epochs}, batch {state.batch + 1} of "
                    f"{sampler.n_batches}): {exc}; no model is written. {divergence_hint}"
                ) from None
            loss_acc += loss_sum
            mae_acc += mae_sum
            state.batch += 1
            state.step += 1
            state.n_tasks += n_global
            bar.update()
            if on_step is not None:
                on_step(state.step)
            if on_checkpoint is not None and checkpoint_every and state.step % checkpoint_every == 0:
                state.loss_sum, state.mae_sum = loss_acc.item(), mae_acc.item()
                on_checkpoint(state)
        entry = {
            "epoch": state.epoch,
            "train_loss": loss_acc.item() / max(state.n_tasks, 1),
            "query_mae": mae_acc.item() / max(state.n_tasks, 1),
        }
        state.history.append(entry)
        bar.set_postfix(train_loss=f"{entry['train_loss']:.4f}", query_mae=f"{entry['query_mae']:.4f}")
        logger.debug("epoch %d: %s", state.epoch, entry)
        state.epoch, state.batch, state.n_tasks = state.epoch + 1, 0, 0
        loss_acc.zero_()
        mae_acc.zero_()
        state.loss_sum = state.mae_sum = 0.0
    bar.close()
    return state
