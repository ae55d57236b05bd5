"""The meta-learner: meta-training on users as tasks, adaptation to new users, save/load without pickle."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from pipeline.features.store import FeatureSet
from pipeline.io import atomic_dir
from pipeline.meta.batching import TaskBatch, TaskSampler, TaskSet, pad_tasks
from pipeline.meta.config import TrainConfig
from pipeline.meta.maml import GraphedMetaGradient, MetaObjective, make_inner_lrs
from pipeline.meta.model import MeLU, ModelDims
from pipeline.progress import Progress

logger = logging.getLogger(__name__)

WEIGHTS = "weights.safetensors"
CONFIG = "config.json"
FORMAT_VERSION = 1
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


GradReducer = Callable[[Tensor], None]


class TrainingDiverged(RuntimeError):
    """A meta-step's query loss or meta-gradient is not finite; raised on every rank alike (the check runs
    after the all-reduce), before the step is applied, so no non-finite weight is ever kept or saved."""


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
        cfg = TrainConfig.from_dict(config)
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
        total = self.config.epochs * sampler.n_batches
        bar = Progress(total, "meta-train", "step", initial=state.step, enabled=progress)
        loss_acc = torch.tensor(state.loss_sum, dtype=torch.float64, device=self.device)
        mae_acc = torch.tensor(state.mae_sum, dtype=torch.float64, device=self.device)
        while state.epoch < self.config.epochs:
            while state.batch < sampler.n_batches:
                self._schedule(state.step, total)
                batch, n_global = sampler.batch(state.epoch, state.batch, rank, world_size)
                try:
                    loss_sum, mae_sum = self.train_step(batch, n_global, reduce, world_size)
                except TrainingDiverged as exc:
                    raise TrainingDiverged(
                        f"training diverged at meta-step {state.step + 1} of {total} (epoch "
                        f"{state.epoch + 1} of {self.config.epochs}, batch {state.batch + 1} of "
                        f"{sampler.n_batches}): {exc}; no model is written. Lower train.inner_lr, "
                        'train.inner_grad_clip or train.outer_lr (docs/training.md, "Divergence")'
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
                "train_loss": loss_acc.item() / state.n_tasks,
                "query_mae": mae_acc.item() / state.n_tasks,
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

    def _schedule(self, step: int, total: int) -> None:
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
        params = list(self.objective.meta_parameters().values())
        flat = torch.cat([*(g.reshape(-1) for g in grads), loss_sum.reshape(1), mae_sum.reshape(1)])
        if reduce is not None:
            reduce(flat)
        if not bool(torch.isfinite(flat).all()):
            raise TrainingDiverged(
                f"query loss sum {flat[-2].item():.4g}, MAE sum {flat[-1].item():.4g}, "
                f"{int((~torch.isfinite(flat[:-2])).sum())} non-finite meta-gradient entries"
            )
        grads = list(torch.split(flat[:-2], [p.numel() for p in params]))
        loss_sum, mae_sum = flat[-2], flat[-1]
        for p, g in zip(params, grads, strict=True):
            p.grad = g.view_as(p)
        self.optimizer.step()
        return loss_sum.detach(), mae_sum.detach()

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
        user_cats = self._check_inputs(user_cats, support_items, support_ratings, query_items, context_items)
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

    def _check_inputs(
        self,
        user_cats: np.ndarray,
        support_items: Sequence[np.ndarray],
        support_ratings: Sequence[np.ndarray],
        query_items: Sequence[np.ndarray],
        context_items: Sequence[np.ndarray] | None = None,
    ) -> np.ndarray:
        dims = self.model.dims
        uc = np.asarray(user_cats, dtype=np.int64)
        n_fields = len(dims.user_cards)
        if uc.ndim != 2 or uc.shape[1] != n_fields:
            raise ValueError(f"user_cats: expected shape [n_users, {n_fields}], got {list(uc.shape)}")
        if not len(support_items) == len(support_ratings) == len(query_items) == uc.shape[0]:
            raise ValueError(
                f"adapt_predict: {uc.shape[0]} users in user_cats, {len(support_items)} support item lists, "
                f"{len(support_ratings)} support rating lists, {len(query_items)} query item lists"
            )
        for f, card in enumerate(dims.user_cards):
            bad = np.flatnonzero((uc[:, f] < 0) | (uc[:, f] >= card))
            if bad.size:
                raise ValueError(
                    f"user_cats row {bad[0]}, column {f}: code {uc[bad[0], f]} outside [0, {card})"
                )
        if context_items is not None and len(context_items) != uc.shape[0]:
            raise ValueError(
                f"adapt_predict: {uc.shape[0]} users but {len(context_items)} context item lists"
            )
        lists_by_name = {"support_items": support_items, "query_items": query_items}
        if context_items is not None:
            lists_by_name["context_items"] = context_items
        for name, lists in lists_by_name.items():
            for u, items in enumerate(lists):
                items = np.asarray(items)
                if items.size and (items.min() < 0 or items.max() > dims.n_items):
                    raise ValueError(
                        f"{name}[{u}]: item index outside [0, {dims.n_items}] (n_items = unknown)"
                    )
        for u, (items, ratings) in enumerate(zip(support_items, support_ratings, strict=True)):
            if len(items) != len(ratings):
                raise ValueError(f"user {u}: {len(items)} support items but {len(ratings)} support ratings")
            ratings = np.asarray(ratings, dtype=np.float64)
            bad = np.flatnonzero(~((ratings >= dims.rating_min) & (ratings <= dims.rating_max)))
            if bad.size:
                raise ValueError(
                    f"support_ratings[{u}]: rating {ratings[bad[0]]} outside "
                    f"[{dims.rating_min}, {dims.rating_max}]"
                )
        return uc

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
        return {
            "format": FORMAT_VERSION,
            "seed": self.seed,
            "train": self.config.to_dict(),
            "dims": self.model.dims.to_dict(),
        }

    def write(self, folder: Path) -> None:
        """Write ``weights.safetensors`` and ``config.json`` into an existing folder (not atomic)."""
        save_file(self.tensors(), str(Path(folder) / WEIGHTS))
        (Path(folder) / CONFIG).write_text(json.dumps(self.describe(), indent=2, sort_keys=True) + "\n")

    def save(self, folder: Path) -> None:
        """Replace ``folder`` atomically with the weights (safetensors) and config.json."""
        with atomic_dir(Path(folder)) as tmp:
            self.write(tmp)

    @classmethod
    def load(cls, folder: Path, device: torch.device | str | None = None) -> MetaLearner:
        """Rebuild a saved learner on ``device`` (default: CUDA when available, whatever it trained on)."""
        folder = Path(folder)
        for name in (WEIGHTS, CONFIG):
            if not (folder / name).exists():
                raise FileNotFoundError(f"{folder / name}: missing; not a saved MetaLearner folder")
        meta = json.loads((folder / CONFIG).read_text())
        if meta.get("format") != FORMAT_VERSION:
            raise ValueError(f"{folder / CONFIG}: format {meta.get('format')!r}, expected {FORMAT_VERSION}")
        # models saved before support_shrinkage / inner_grad_clip existed adapted without them
        cfg = TrainConfig.from_dict({"support_shrinkage": 0.0, "inner_grad_clip": 0.0, **meta["train"]})
        dims = ModelDims.from_dict(meta["dims"])
        model = build_model(dims, cfg)
        learner = cls(
            model,
            cfg,
            make_inner_lrs(model, cfg),
            int(meta["seed"]),
            torch.device(device) if device is not None else resolve_device("auto"),
        )
        learner.load_tensors(load_file(str(folder / WEIGHTS), device=str(learner.device)))
        return learner
