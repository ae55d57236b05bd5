"""The meta-learner: meta-training on users as tasks, adaptation to new users, save/load without pickle."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pipeline.features.store import FeatureSet
from pipeline.meta import saved
from pipeline.meta.batching import TaskBatch, TaskSampler, TaskSet, pad_tasks
from pipeline.meta.config import TrainConfig
from pipeline.meta.loop import GradReducer, TrainState, apply_gradients, train_loop
from pipeline.meta.maml import GraphedMetaGradient, MetaObjective, make_inner_lrs
from pipeline.meta.model import MeLU, ModelDims, check_adapt_inputs

logger = logging.getLogger(__name__)

PREDICT_CHUNK = 128


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but torch sees no CUDA device")
    return torch.device(name)


def build_model(dims: ModelDims, config: TrainConfig) -> MeLU:
    """The (untrained) model a config describes."""
    return MeLU(
        dims,
        config.embedding_dim,
        config.hidden,
        frozen_text=config.text_projection == "frozen",
        user_profile=config.user_profile,
    )


def item_priors(taskset: TaskSet, n_rows: int, config: TrainConfig) -> tuple[float, np.ndarray]:
    """The global offset and each item's prior [n_rows] from the training ratings of ``taskset``.

    Regression: the mean rating, and per item ``sum(r - mean) / (count + config.item_prior)``. Binary: the
    base rate's log-odds, and per item the log-odds of its rate shrunk toward the base rate the same way,
    minus the base log-odds. ``config.item_prior == 0`` switches priors off (all 0).
    """
    items = np.concatenate([taskset.support_items, taskset.query_items])
    ratings = np.concatenate([taskset.support_ratings, taskset.query_ratings]).astype(np.float64)
    mean = float(ratings.mean())
    shrink = config.item_prior
    if config.objective == "binary":
        rate = min(max(mean, 1e-3), 1 - 1e-3)
        base = math.log(rate / (1 - rate))
        if shrink == 0:
            return base, np.zeros(n_rows)
        p = (np.bincount(items, ratings, n_rows) + shrink * rate) / (
            np.bincount(items, None, n_rows) + shrink
        )
        return base, np.log(p / (1 - p)) - base
    if shrink == 0:
        return mean, np.zeros(n_rows)
    return mean, np.bincount(items, ratings - mean, n_rows) / (np.bincount(items, None, n_rows) + shrink)


class MetaLearner:
    """A MeLU-style model with its meta-training algorithm (MAML, first-order MAML or Meta-SGD)."""

    def __init__(
        self,
        model: MeLU,
        config: TrainConfig,
        inner_lrs: torch.nn.ParameterDict | None,
        seed: int,
        device: torch.device,
    ) -> None:
        self.model = model.to(device)
        self.config = config
        self.inner_lrs = inner_lrs.to(device) if inner_lrs is not None else None
        self.seed = seed
        self.device = device
        self.objective = MetaObjective(self.model, config, self.inner_lrs)
        self.optimizer = torch.optim.Adam(list(self.objective.meta_parameters().values()), lr=config.outer_lr)
        self._graphed: GraphedMetaGradient | None = None
        if config.bf16 and device.type != "cuda":
            logger.warning("train.bf16 applies to CUDA only; training in float32 on %s", device)

    @classmethod
    def create(
        cls,
        config: dict[str, Any] | TrainConfig,
        fs: FeatureSet,
        seed: int,
        device: torch.device | None = None,
    ) -> MetaLearner:
        """A new learner for the users and items of ``fs``; ``config``: TrainParams fields."""
        cfg = replace(TrainConfig.from_dict(config), model="melu")
        text = fs.item_text if cfg.use_text else fs.item_text[:, :0]
        binary = cfg.objective == "binary"
        dims = ModelDims(
            user_cards=tuple(fs.user_cards),
            item_cards=tuple(fs.item_cards),
            n_items=fs.n_items,
            n_multi=fs.n_multi,
            text_dim=int(text.shape[1]),
            rating_min=0.0 if binary else float(fs.vocab["rating_min"]),
            rating_max=1.0 if binary else float(fs.vocab["rating_max"]),
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build_model(dims, cfg)
            inner_lrs = make_inner_lrs(model, cfg)
        model.set_item_features(fs.item_cats, fs.item_multi, text)
        return cls(model, cfg, inner_lrs, seed, device or resolve_device(cfg.device))

    # -- meta-training ----------------------------------------------------------------------------

    def sampler(self, fs: FeatureSet, users: np.ndarray | None = None) -> TaskSampler:
        """The seeded task sampler over the tasks of ``users``; fixes the offsets and the seen items."""
        taskset = TaskSet.from_tasks(fs.tasks, fs.user_cats, users)
        with torch.no_grad():
            mean, prior = item_priors(taskset, self.model.dims.n_items + 1, self.config)
            self.model.global_mean.fill_(mean)
            self.model.item_prior.copy_(torch.as_tensor(prior, dtype=self.model.item_prior.dtype))
            self.model.item_seen.zero_()
            self.model.item_seen[torch.as_tensor(taskset.rated_items(), device=self.device)] = True
        c = self.config
        return TaskSampler(
            taskset,
            meta_batch=c.meta_batch,
            min_support=c.min_support,
            max_support=c.max_support,
            query_size=c.query_size,
            resplit=c.resplit,
            item_dropout=c.item_dropout,
            unknown_item=self.model.unknown_item,
            seed=self.seed,
        )

    def fit(self, fs: FeatureSet, users: np.ndarray | None = None, progress: bool = True) -> list[dict]:
        """Single-process meta-training on the tasks of ``users`` (None = all); the per-epoch history."""
        return self.train(self.sampler(fs, users), TrainState(), progress=progress).history

    def train(
        self,
        sampler: TaskSampler,
        state: TrainState,
        *,
        rank: int = 0,
        world_size: int = 1,
        reduce: GradReducer | None = None,
        checkpoint_every: int = 0,
        on_checkpoint: Callable[[TrainState], None] | None = None,
        on_step: Callable[[int], None] | None = None,
        progress: bool = True,
    ) -> TrainState:
        """Run the meta-steps left after ``state``; this rank takes tasks ``rank::world_size`` of each batch.

        Raises :class:`TrainingDiverged` (naming the meta-step and epoch) at the first meta-step whose
        loss or meta-gradient is not finite. ``reduce`` sums a flat tensor over ranks in place (None:
        single process). ``on_checkpoint`` receives the full state every ``checkpoint_every`` meta-steps,
        ``on_step`` the step count after every meta-step.
        """
        return train_loop(
            self,
            sampler,
            state,
            self.config.epochs,
            rank=rank,
            world_size=world_size,
            reduce=reduce,
            checkpoint_every=checkpoint_every,
            on_checkpoint=on_checkpoint,
            on_step=on_step,
            progress=progress,
            divergence_hint="Lower train.inner_lr, train.inner_grad_clip or train.outer_lr "
            '(docs/training.md, "Divergence")',
        )

    def schedule(self, step: int, total: int) -> None:
        """Outer learning rate of meta-step ``step``: constant, or cosine decay from ``outer_lr`` to 0."""
        lr = self.config.outer_lr
        if self.config.lr_schedule == "cosine":
            lr *= 0.5 * (1.0 + math.cos(math.pi * step / total))
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def train_step(
        self, batch: TaskBatch, n_global: int, reduce: GradReducer | None = None, world_size: int = 1
    ) -> tuple[Tensor, Tensor]:
        """One meta-step on this rank's tasks; returns the (reduced) summed query loss and MAE.

        A non-finite loss, MAE or gradient raises :class:`TrainingDiverged` before the step is applied
        (one host sync per meta-step).
        """
        dtype = next(self.model.parameters()).dtype
        batch = batch.to(self.device, dtype)
        grads, loss_sum, mae_sum = self._gradient(batch, n_global, world_size)
        sums = torch.stack([loss_sum.reshape(()), mae_sum.reshape(())])
        return apply_gradients(self.meta_parameters(), grads, sums, self.optimizer, reduce)

    def meta_parameters(self) -> list[Tensor]:
        """The tensors meta-training updates (ranks start from rank 0's values of these)."""
        return list(self.objective.meta_parameters().values())

    def _gradient(
        self, batch: TaskBatch, n_global: int, world_size: int
    ) -> tuple[list[Tensor], Tensor, Tensor]:
        c = self.config
        if c.impl != "graph":
            return self.objective.gradient(batch, n_global, c.impl)
        if self._graphed is None:
            per_rank = -(-c.meta_batch // world_size)
            self._graphed = GraphedMetaGradient(
                self.objective,
                per_rank,
                c.max_support,
                c.query_size,
                self.device,
                len(self.model.dims.user_cards),
            )
        grads, loss_sum, mae_sum = self._graphed(batch, n_global)
        return [g.clone() for g in grads], loss_sum.clone(), mae_sum.clone()

    # -- adaptation to (new) users -----------------------------------------------------------------

    def adapt_predict(
        self,
        user_cats: np.ndarray,
        support_items: list[np.ndarray],
        support_ratings: list[np.ndarray],
        query_items: list[np.ndarray],
        context_items: list[np.ndarray] | None = None,
    ) -> list[np.ndarray]:
        """Adapt to each user on its support ratings (none: the meta-initialisation), score its query items.

        ``context_items``: per user, items interacted with but not rated (clicks, views); with the support
        items they form the user's text profile (``train.user_profile``), so they inform users with no
        ratings too.

        ``user_cats`` [n_users, Fu] holds attribute codes (0 = unknown); item indices are FeatureSet rows,
        or ``n_items`` for an unknown item. Returns per user the predicted ratings, clipped to the rating
        range (objective ``binary``: probabilities; support ratings are then 0/1 labels).
        """
        user_cats = check_adapt_inputs(
            self.model.dims, user_cats, support_items, support_ratings, query_items, context_items
        )
        n = len(query_items)
        sizes = np.array([len(s) + len(q) for s, q in zip(support_items, query_items, strict=True)])
        order = np.argsort(sizes, kind="stable")
        out: list[np.ndarray] = [np.empty(0, np.float32)] * n
        dims = self.model.dims
        dtype = next(self.model.parameters()).dtype
        with torch.no_grad():
            for start in range(0, n, PREDICT_CHUNK):
                chunk = order[start : start + PREDICT_CHUNK]
                batch = pad_tasks(
                    user_cats[chunk],
                    [support_items[i] for i in chunk],
                    [support_ratings[i] for i in chunk],
                    [query_items[i] for i in chunk],
                )
                batch = batch.to(self.device, dtype)
                batch = replace(
                    batch,
                    support_ids=self.model.id_rows(batch.support_items),
                    query_ids=self.model.id_rows(batch.query_items),
                )
                profile = None
                if context_items is not None:
                    profile = self._profile(
                        [np.concatenate([support_items[i], context_items[i]]) for i in chunk], dtype
                    )
                with self.objective.autocast(self.device):
                    preds = self.objective.adapt_and_predict(batch, profile)
                scored = self.objective.score(preds.float()).clamp(dims.rating_min, dims.rating_max)
                scores = scored.cpu().numpy()
                for row, i in enumerate(chunk):
                    out[i] = scores[row, : len(query_items[i])].copy()
        return out

    def _profile(self, items: list[np.ndarray], dtype: torch.dtype) -> Tensor:
        """Text profiles [n, D] of users who interacted with ``items`` (one array per user)."""
        width = max((len(i) for i in items), default=0)
        padded = np.zeros((len(items), width), np.int64)
        mask = np.zeros((len(items), width), np.float32)
        for row, user_items in enumerate(items):
            padded[row, : len(user_items)] = user_items
            mask[row, : len(user_items)] = 1.0
        return self.model.profile(
            torch.as_tensor(padded, device=self.device),
            torch.as_tensor(mask, device=self.device, dtype=dtype),
        )

    # -- persistence ---------------------------------------------------------------------------------

    def tensors(self) -> dict[str, Tensor]:
        """Everything learned or needed to score: model parameters and buffers, Meta-SGD rates (``lr.*``)."""
        out = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        if self.inner_lrs is not None:
            out.update({f"lr.{k}": v.detach().cpu().contiguous() for k, v in self.inner_lrs.items()})
        return out

    def load_tensors(self, tensors: dict[str, Tensor]) -> None:
        model_part = {k: v for k, v in tensors.items() if not k.startswith("lr.")}
        self.model.load_state_dict(model_part, strict=True)
        lrs = {k[3:]: v for k, v in tensors.items() if k.startswith("lr.")}
        expected = set(self.inner_lrs.keys()) if self.inner_lrs is not None else set()
        if set(lrs) != expected:
            raise ValueError(
                f"weights hold inner learning rates {sorted(lrs)}, the config expects {sorted(expected)}"
            )
        if self.inner_lrs is not None:
            with torch.no_grad():
                for k, v in lrs.items():
                    self.inner_lrs[k].copy_(v)

    def describe(self) -> dict[str, Any]:
        return saved.description(self.seed, self.config.to_dict(), self.model.dims.to_dict())

    def write(self, folder: Path) -> None:
        """Write ``weights.safetensors`` and ``config.json`` into an existing folder (not atomic)."""
        saved.write(folder, self.tensors(), self.describe())

    def save(self, folder: Path) -> None:
        """Replace ``folder`` atomically with the weights (safetensors) and config.json."""
        saved.save(folder, self.tensors(), self.describe())

    @classmethod
    def load(cls, folder: Path, device: torch.device | str | None = None) -> MetaLearner:
        """Rebuild a saved learner on ``device`` (default: CUDA when available, whatever it trained on)."""
        meta = saved.read_description(folder)
        # models saved before support_shrinkage / inner_grad_clip existed adapted without them
        cfg = TrainConfig.from_dict(
            {"support_shrinkage": 0.0, "inner_grad_clip": 0.0, **meta["train"], "model": "melu"}
        )
        dims = ModelDims.from_dict(meta["dims"])
        model = build_model(dims, cfg)
        learner = cls(
            model,
            cfg,
            make_inner_lrs(model, cfg),
            int(meta["seed"]),
            torch.device(device) if device is not None else resolve_device("auto"),
        )
        learner.load_tensors(saved.read_weights(folder, learner.device))
        return learner
