"""A meta-learned fold-in (``train.model: foldin``): matrix factorisation whose user side is a closed-form
ridge solve on the support set, trained end to end on the query loss (the R2-D2 idea of Bertinetto et
al., ICLR 2019, on ratings).

The item tower gives every item a bias and ``factors`` factors: an id embedding (its id row, or the
unknown row for an item without training ratings and, with probability ``item_dropout`` per training
step, for a trained one) plus a content part, an MLP of the item's centred text embedding and genres
plus its categorical attributes' embeddings. A user's head ``w_u = [b_u, p_u]`` is the ridge solution

    w_u = (XᵀX + Λ)⁻¹ (Xᵀ y + Λ m_u),   X = [1, h_i] over the support items, y = r - μ - b_i,

with a learned per-dimension precision ``Λ`` and a learned prior mean ``m_u`` (a global vector plus
embeddings of the user's categorical attributes), so a user without ratings scores at its prior. The
prediction is ``μ + b_i + [1, h_i]·w_u``. Training draws, per user and step, a random support set of 1
to ``max_support`` of the user's training ratings and scores the solve on up to ``max_query`` others:
the gradient of the query error flows through the solve into the item tower, Λ and the prior.

The ranking head (``rank_weight`` > 0) scores which items a user will rate: every item also has a
ranking bias ``c_i`` and factors ``g_i`` (its own id embedding and MLP of text and genres, plus a linear
map of the rating factors read without moving them: the ranking leaves the ratings as they are), and the
user's ranking state is the implicit fold-in of its support items (iALS's user solve),

    v_u = (Σ_S g_i g_iᵀ + a Ḡ + diag(λ))⁻¹ Σ_S g_i,   Ḡ = the mean g_i g_iᵀ over the trained items,

with ``a`` and ``λ`` learned; an item's ranking score is ``c_i + g_i·v_u``. Training adds ``rank_weight``
times the cross-entropy of a softmax over the trained items (the support items left out) at the query
items; a user without ratings ranks by ``c_i``.

:meth:`FoldInLearner.adapt_heads` and :meth:`FoldInLearner.rank_states` are the one adaptation path:
training, evaluation and the served model all solve a user's heads with them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pipeline.features.store import FeatureSet
from pipeline.meta import saved
from pipeline.meta.batching import TaskBatch, pad_tasks
from pipeline.meta.config import FoldInConfig, TrainConfig
from pipeline.meta.learner import resolve_device
from pipeline.meta.loop import GradReducer, TrainState, apply_gradients, train_loop
from pipeline.meta.model import ModelDims, check_adapt_inputs

PREDICT_CHUNK = 256
WARMUP = 0.1
"""Share of the steps over which the learning rate rises (one-cycle schedule)."""


def model_dims(fs: FeatureSet, config: TrainConfig) -> ModelDims:
    """The input shapes of ``fs`` as the model sees them (no text columns without ``use_text``)."""
    binary = config.objective == "binary"
    return ModelDims(
        user_cards=tuple(fs.user_cards),
        item_cards=tuple(fs.item_cards),
        n_items=fs.n_items,
        n_multi=fs.n_multi,
        text_dim=fs.text_dim if config.use_text else 0,
        rating_min=0.0 if binary else float(fs.vocab["rating_min"]),
        rating_max=1.0 if binary else float(fs.vocab["rating_max"]),
    )


class ItemTower(nn.Module):
    """Bias and factors of every item, and the users' prior heads; row ``n_items`` is the unknown item.

    The item attributes, the training mean and which items have training ratings are buffers, so a saved
    tower scores any item by its index alone."""

    text: Tensor
    genres: Tensor
    cats: Tensor
    seen: Tensor
    mean: Tensor

    def __init__(self, dims: ModelDims, config: FoldInConfig) -> None:
        super().__init__()
        rows, d = dims.n_items + 1, config.factors + 1
        self.dims = dims
        self.register_buffer("text", torch.zeros(rows, dims.text_dim))
        self.register_buffer("genres", torch.zeros(rows, dims.n_multi))
        self.register_buffer("cats", torch.zeros(rows, len(dims.item_cards), dtype=torch.long))
        self.register_buffer("seen", torch.zeros(rows, dtype=torch.bool))
        self.register_buffer("mean", torch.zeros(()))
        self.id = nn.Embedding(rows, d)
        self.content = nn.Sequential(
            nn.Linear(dims.text_dim + dims.n_multi, config.hidden), nn.ReLU(), nn.Linear(config.hidden, d)
        )
        self.item_fields = nn.ModuleList(nn.Embedding(c, d) for c in dims.item_cards)
        self.user_fields = nn.ModuleList(nn.Embedding(c, d) for c in dims.user_cards)
        for emb in [self.id, *self.item_fields, *self.user_fields]:
            nn.init.normal_(emb.weight, std=0.01)
        self.prior = nn.Parameter(torch.zeros(d))
        self.log_precision = nn.Parameter(torch.full((d,), math.log(config.init_precision)))
        self.rank_id = nn.Embedding(rows, d)
        nn.init.normal_(self.rank_id.weight, std=0.01)
        self.rank_map = nn.Linear(d, d, bias=False)
        self.rank_content = nn.Sequential(  # no output bias: a shift of every c_i leaves the softmax alone
            nn.Linear(dims.text_dim + dims.n_multi, config.hidden),
            nn.ReLU(),
            nn.Linear(config.hidden, d, bias=False),
        )
        self.log_rank_precision = nn.Parameter(torch.zeros(d - 1))
        self.log_rank_alpha = nn.Parameter(torch.zeros(()))

    def set_item_features(self, fs: FeatureSet) -> None:
        """Copy the items' centred text, normalised genres and attribute codes of ``fs`` into the buffers."""
        text = fs.item_text[:, : self.dims.text_dim]
        text = text - text.mean(0) if fs.n_items else text
        genres = fs.item_multi / np.maximum(fs.item_multi.sum(1, keepdims=True), 1)
        with torch.no_grad():
            self.text[:-1] = torch.as_tensor(text, dtype=torch.float32)
            self.genres[:-1] = torch.as_tensor(genres, dtype=torch.float32)
            self.cats[:-1] = torch.as_tensor(fs.item_cats, dtype=torch.long)

    def set_training_rows(self, items: np.ndarray, ratings: np.ndarray) -> None:
        """Mark the items with training ratings and set the global mean, from the training rows."""
        with torch.no_grad():
            self.seen.zero_()
            self.seen[torch.tensor(np.asarray(items), dtype=torch.long)] = True
            self.mean.fill_(float(np.mean(ratings)) if len(ratings) else 0.0)

    def forward(self, dropped: Tensor | None = None) -> ItemSide:
        """Every item's rating bias and design rows ``[1, h_i]`` and its ranking bias and factors; an item
        without training ratings, or ``dropped``, takes the unknown item's id embeddings."""
        items = torch.arange(self.dims.n_items + 1, device=self.seen.device)
        known = self.seen if dropped is None else self.seen & ~dropped
        ids = torch.where(known, items, self.dims.n_items)
        features = torch.cat([self.text, self.genres], -1)
        out = self.id(ids) + self.content(features)
        for f, emb in enumerate(self.item_fields):
            out = out + emb(self.cats[:, f])
        # the ranking reads the rating factors but does not move them
        rank = self.rank_id(ids) + self.rank_content(features) + self.rank_map(out.detach())
        design = torch.cat([torch.ones_like(out[:, :1]), out[:, 1:]], -1)
        return ItemSide(out[:, 0], design, rank[:, 0], rank[:, 1:])

    def user_prior(self, user_cats: Tensor) -> Tensor:
        """Prior head ``m_u`` [B, k + 1] of users with attribute codes ``user_cats`` [B, F]."""
        out = self.prior.expand(user_cats.shape[0], -1)
        for f, emb in enumerate(self.user_fields):
            out = out + emb(user_cats[:, f])
        return out


@dataclass(frozen=True)
class ItemSide:
    """What the tower gives every item (row ``n_items``: the unknown item): the rating bias [n + 1] and
    design rows ``[1, h_i]`` [n + 1, k + 1], the ranking bias ``c_i`` [n + 1] and factors ``g_i``
    [n + 1, k]."""

    bias: Tensor
    x: Tensor
    rank_bias: Tensor
    rank_x: Tensor


def ridge_heads(x: Tensor, y: Tensor, mask: Tensor, prior: Tensor, precision: Tensor) -> Tensor:
    """Per task, ``(XᵀX + diag(precision))⁻¹ (Xᵀy + precision · prior)`` over the rows where ``mask`` is 1:
    ``x`` [B, S, d], ``y`` and ``mask`` [B, S], ``prior`` [B, d], ``precision`` [d] → [B, d]."""
    xm = x * mask.unsqueeze(-1)
    gram = xm.transpose(1, 2) @ x + torch.diag_embed(precision.expand_as(prior))
    rhs = (xm * y.unsqueeze(-1)).sum(1) + precision * prior
    return torch.linalg.solve(gram, rhs.unsqueeze(-1)).squeeze(-1)


@dataclass(frozen=True)
class FoldInBatch:
    """One rank's tasks of a training step, padded: support [T, S] and query [T, Q] (mask 0 on padding),
    the items whose id is dropped this step [n + 1], and the query ratings of the whole global batch."""

    user_cats: Tensor
    support_items: Tensor
    support_ratings: Tensor
    support_mask: Tensor
    query_items: Tensor
    query_ratings: Tensor
    query_mask: Tensor
    dropped: Tensor
    global_queries: int

    @classmethod
    def of(cls, padded: TaskBatch, dropped: Tensor, global_queries: int) -> FoldInBatch:
        """The padded tasks of :func:`pipeline.meta.batching.pad_tasks` with this step's dropped items."""
        return cls(
            user_cats=padded.user_cats,
            support_items=padded.support_items,
            support_ratings=padded.support_ratings,
            support_mask=padded.support_mask,
            query_items=padded.query_items,
            query_ratings=padded.query_ratings,
            query_mask=padded.query_mask,
            dropped=dropped,
            global_queries=global_queries,
        )


class FoldInSampler:
    """Seeded training tasks: each step, a batch of users, each with a random support of 1..max_support of
    its ratings and up to max_query of the others as query.

    A batch is a pure function of (seed, epoch, index), drawn whole before it is sharded across ranks, so
    any number of processes, and a resumed run, train on exactly the tasks one process would."""

    def __init__(
        self,
        rows: dict[str, np.ndarray],
        user_cats: np.ndarray,
        n_items: int,
        config: FoldInConfig,
        seed: int,
    ) -> None:
        order = np.argsort(rows["user_index"], kind="stable")
        self.items = np.asarray(rows["item_index"], np.int64)[order]
        self.ratings = np.asarray(rows["rating"], np.float32)[order]
        users, starts, counts = np.unique(rows["user_index"][order], return_index=True, return_counts=True)
        keep = counts >= 2  # a task needs a support and a query rating
        self.users, self.starts, self.counts = users[keep], starts[keep], counts[keep]
        self.user_cats = np.asarray(user_cats, np.int64)
        self.n_items, self.config, self.seed = n_items, config, seed
        self._epoch_order: tuple[int, np.ndarray] | None = None

    @property
    def n_batches(self) -> int:
        return max(1, -(-self.users.size // self.config.batch))

    def _order(self, epoch: int) -> np.ndarray:
        if self._epoch_order is None or self._epoch_order[0] != epoch:
            self._epoch_order = (
                epoch,
                np.random.default_rng([self.seed, epoch]).permutation(self.users.size),
            )
        return self._epoch_order[1]

    def batch(self, epoch: int, index: int, rank: int = 0, world_size: int = 1) -> tuple[FoldInBatch, int]:
        """Rank ``rank``'s share (tasks ``rank::world_size``) of batch ``index`` of ``epoch``, and the number
        of tasks in the whole batch."""
        c = self.config
        pick = self._order(epoch)[index * c.batch : (index + 1) * c.batch]
        rng = np.random.default_rng([self.seed, epoch, index, 1])
        support, query = [], []
        for t in pick:
            n = int(self.counts[t])
            rows = self.starts[t] + rng.permutation(n)
            ns = int(rng.integers(1, min(n - 1, c.max_support) + 1))
            support.append(rows[:ns])
            query.append(rows[ns : ns + min(n - ns, c.max_query)])
        dropped = torch.as_tensor(rng.random(self.n_items + 1) < c.item_dropout)
        mine = slice(rank, None, world_size)
        s_rows, q_rows = support[mine], query[mine]
        padded = pad_tasks(
            self.user_cats[self.users[pick[mine]]],
            [self.items[r] for r in s_rows],
            [self.ratings[r] for r in s_rows],
            [self.items[r] for r in q_rows],
            [self.ratings[r] for r in q_rows],
        )
        return FoldInBatch.of(padded, dropped, sum(len(q) for q in query)), len(pick)


class FoldInLearner:
    """The item tower with its meta-training (through the ridge solve) and its per-user adaptation."""

    def __init__(self, tower: ItemTower, config: TrainConfig, seed: int, device: torch.device) -> None:
        self.tower = tower.to(device)
        self.config = config
        self.seed = seed
        self.device = device
        self.optimizer = torch.optim.Adam(self.tower.parameters(), lr=config.foldin.learning_rate)

    @classmethod
    def create(
        cls,
        config: dict[str, Any] | TrainConfig,
        fs: FeatureSet,
        seed: int,
        device: torch.device | None = None,
    ) -> FoldInLearner:
        """A new learner for the users and items of ``fs``; ``config``: TrainParams fields."""
        cfg = TrainConfig.from_dict(config)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            tower = ItemTower(model_dims(fs, cfg), cfg.foldin)
        tower.set_item_features(fs)
        return cls(tower, cfg, seed, device or resolve_device(cfg.device))

    @property
    def dims(self) -> ModelDims:
        return self.tower.dims

    def meta_parameters(self) -> list[Tensor]:
        """The tensors meta-training updates (ranks start from rank 0's values of these)."""
        return list(self.tower.parameters())

    # -- meta-training ----------------------------------------------------------------------------

    def sampler(self, fs: FeatureSet, users: np.ndarray | None = None) -> FoldInSampler:
        """The seeded task sampler over the rows of ``fs.tasks`` of ``users`` (None: all; support and query
        alike, every step redraws the split); sets the training mean and the items seen."""
        rows = fs.tasks
        if users is not None:
            keep = np.isin(rows["user_index"], users)
            rows = {c: np.asarray(v)[keep] for c, v in rows.items()}
        self.tower.set_training_rows(rows["item_index"], rows["rating"])
        return FoldInSampler(rows, fs.user_cats, fs.n_items, self.config.foldin, self.seed)

    def fit(self, fs: FeatureSet, users: np.ndarray | None = None, progress: bool = True) -> list[dict]:
        """Single-process meta-training on the tasks of ``users`` (None = all); the per-epoch history."""
        return self.train(self.sampler(fs, users), TrainState(), progress=progress).history

    def train(
        self,
        sampler: FoldInSampler,
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
        """The steps left after ``state`` (:func:`pipeline.meta.loop.train_loop`); the tower is left in eval
        mode."""
        self.tower.train()
        state = train_loop(
            self,
            sampler,
            state,
            self.config.foldin.epochs,
            rank=rank,
            world_size=world_size,
            reduce=reduce,
            checkpoint_every=checkpoint_every,
            on_checkpoint=on_checkpoint,
            on_step=on_step,
            progress=progress,
            divergence_hint="Lower train.foldin.learning_rate (docs/training.md)",
        )
        self.tower.eval()
        return state

    def schedule(self, step: int, total: int) -> None:
        """One-cycle learning rate: a cosine rise from 1/25 of ``learning_rate`` over the first 10 % of the
        steps, then a cosine decay to 0."""
        peak = self.config.foldin.learning_rate
        warm = max(1, int(WARMUP * total))
        if step < warm:
            lr = peak / 25 + (peak - peak / 25) * 0.5 * (1 - math.cos(math.pi * step / warm))
        else:
            lr = peak * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def train_step(
        self, batch: FoldInBatch, n_global: int, reduce: GradReducer | None = None, world_size: int = 1
    ) -> tuple[Tensor, Tensor]:
        """One step on this rank's tasks: the squared query error of the heads solved on the supports, plus
        ``rank_weight`` times the ranking head's cross-entropy at the query items, over the global batch's
        query ratings; returns the (reduced) sums of per-task query MSE and MAE."""
        dev = self.device
        side = self.tower(batch.dropped.to(dev))
        si, smask = batch.support_items.to(dev), batch.support_mask.to(dev)
        heads = self.adapt_heads(side, batch.user_cats.to(dev), si, batch.support_ratings.to(dev), smask)
        qi, mask = batch.query_items.to(dev), batch.query_mask.to(dev)
        pred = self.tower.mean + side.bias[qi] + (side.x[qi] * heads.unsqueeze(1)).sum(-1)
        err = (pred - batch.query_ratings.to(dev)) * mask
        n_queries = max(batch.global_queries, 1)
        loss = (err**2).sum() / n_queries
        weight = self.config.foldin.rank_weight
        if weight > 0:
            logits = self.rank_scores(side, self.rank_states(side, si, smask))
            support = torch.zeros_like(logits).scatter_add_(1, si, smask) > 0
            logits = logits.masked_fill(support | ~self.tower.seen, -torch.inf)
            picked = torch.log_softmax(logits, -1).gather(1, qi)
            loss = loss - weight * torch.where(mask > 0, picked, 0.0).sum() / n_queries
        params = self.meta_parameters()
        raw = torch.autograd.grad(loss, params, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, raw, strict=True)]
        per_task = mask.sum(1).clamp(min=1.0)
        sums = torch.stack([((err**2).sum(1) / per_task).sum(), (err.abs().sum(1) / per_task).sum()])
        return apply_gradients(params, grads, sums.detach(), self.optimizer, reduce)

    # -- adaptation to (new) users -----------------------------------------------------------------

    @property
    def ranks(self) -> bool:
        """Whether the learner has a ranking head (``rank_weight`` > 0); else top-k ranks by rating."""
        return self.config.foldin.rank_weight > 0

    def adapt_heads(
        self, side: ItemSide, user_cats: Tensor, items: Tensor, ratings: Tensor, mask: Tensor
    ) -> Tensor:
        """The users' rating heads [B, k + 1]: the ridge solve on their support rows (``items``,
        ``ratings``, ``mask`` [B, S]) towards their prior, given the tower's ``side``."""
        y = ratings - self.tower.mean - side.bias[items]
        prior = self.tower.user_prior(user_cats)
        return ridge_heads(side.x[items], y, mask, prior, self.tower.log_precision.exp())

    def rank_states(self, side: ItemSide, items: Tensor, mask: Tensor) -> Tensor:
        """The users' ranking states ``v_u`` [B, k]: the implicit fold-in of their support ``items``
        (``mask`` [B, S]; the module docstring), every trained item a weak negative."""
        trained = side.rank_x[self.tower.seen]
        gram = trained.T @ trained / max(trained.shape[0], 1)
        g = side.rank_x[items] * mask.unsqueeze(-1)
        lhs = g.transpose(1, 2) @ g + self.tower.log_rank_alpha.exp() * gram
        lhs = lhs + torch.diag(self.tower.log_rank_precision.exp())
        return torch.linalg.solve(lhs, g.sum(1).unsqueeze(-1)).squeeze(-1)

    @staticmethod
    def rank_scores(side: ItemSide, states: Tensor, items: Tensor | None = None) -> Tensor:
        """Ranking scores ``c_i + g_i·v_u``: of every item [B, n + 1], or of ``items`` [B, Q]."""
        if items is None:
            return side.rank_bias + states @ side.rank_x.T
        return side.rank_bias[items] + (side.rank_x[items] * states.unsqueeze(1)).sum(-1)

    @torch.no_grad()
    def adapt_predict(
        self,
        user_cats: np.ndarray,
        support_items: list[np.ndarray],
        support_ratings: list[np.ndarray],
        query_items: list[np.ndarray],
        context_items: list[np.ndarray] | None = None,
    ) -> list[np.ndarray]:
        """Solve each user's head on its support ratings (none: its prior), score its query items.

        Arguments as :meth:`pipeline.meta.learner.MetaLearner.adapt_predict`; ``context_items`` (items
        interacted with but not rated) are checked and not used: the fold-in learns from ratings only.
        Returns per user the predictions clipped to the rating range (binary: to [0, 1])."""
        return self._per_user(user_cats, support_items, support_ratings, query_items, context_items, False)

    @torch.no_grad()
    def adapt_rank(
        self,
        user_cats: np.ndarray,
        support_items: list[np.ndarray],
        support_ratings: list[np.ndarray],
        query_items: list[np.ndarray],
    ) -> list[np.ndarray]:
        """As :meth:`adapt_predict`, the ranking head's scores (higher ranks first); without a ranking head
        (``rank_weight`` 0) the predicted ratings."""
        return self._per_user(user_cats, support_items, support_ratings, query_items, None, self.ranks)

    def _per_user(
        self,
        user_cats: np.ndarray,
        support_items: list[np.ndarray],
        support_ratings: list[np.ndarray],
        query_items: list[np.ndarray],
        context_items: list[np.ndarray] | None,
        rank: bool,
    ) -> list[np.ndarray]:
        user_cats = check_adapt_inputs(
            self.dims, user_cats, support_items, support_ratings, query_items, context_items
        )
        side = self.tower()
        out: list[np.ndarray] = [np.empty(0, np.float32)] * len(query_items)
        order = np.argsort([len(s) for s in support_items], kind="stable")
        for start in range(0, order.size, PREDICT_CHUNK):
            chunk = order[start : start + PREDICT_CHUNK]
            batch = pad_tasks(
                user_cats[chunk],
                [support_items[i] for i in chunk],
                [support_ratings[i] for i in chunk],
                [query_items[i] for i in chunk],
            ).to(self.device)
            qi = batch.query_items
            if rank:
                states = self.rank_states(side, batch.support_items, batch.support_mask)
                scores = self.rank_scores(side, states, qi).cpu().numpy()
            else:
                heads = self.adapt_heads(
                    side, batch.user_cats, batch.support_items, batch.support_ratings, batch.support_mask
                )
                pred = self.tower.mean + side.bias[qi] + (side.x[qi] * heads.unsqueeze(1)).sum(-1)
                scores = pred.clamp(self.dims.rating_min, self.dims.rating_max).cpu().numpy()
            for row, i in enumerate(chunk):
                out[i] = scores[row, : len(query_items[i])].copy()
        return out

    # -- persistence ---------------------------------------------------------------------------------

    def tensors(self) -> dict[str, Tensor]:
        """Everything learned or needed to score: the tower's parameters and buffers."""
        return {k: v.detach().cpu().contiguous() for k, v in self.tower.state_dict().items()}

    def load_tensors(self, tensors: dict[str, Tensor]) -> None:
        missing = sorted(set(self.tower.state_dict()) - set(tensors))
        if missing:
            raise ValueError(
                f"saved fold-in lacks {', '.join(missing)}: it predates this version's model (e.g. the "
                "ranking head); retrain it (metarec train)"
            )
        self.tower.load_state_dict(tensors, strict=True)

    def describe(self) -> dict[str, Any]:
        return saved.description(self.seed, self.config.to_dict(), self.dims.to_dict())

    def write(self, folder: Path) -> None:
        """Write ``weights.safetensors`` and ``config.json`` into an existing folder (not atomic)."""
        saved.write(folder, self.tensors(), self.describe())

    def save(self, folder: Path) -> None:
        """Replace ``folder`` atomically with the weights (safetensors) and config.json."""
        saved.save(folder, self.tensors(), self.describe())

    @classmethod
    def load(cls, folder: Path, device: torch.device | str | None = None) -> FoldInLearner:
        """Rebuild a saved learner on ``device`` (default: CUDA when available)."""
        meta = saved.read_description(folder)
        cfg = TrainConfig.from_dict(meta["train"])
        tower = ItemTower(ModelDims.from_dict(meta["dims"]), cfg.foldin)
        where = torch.device(device) if device is not None else resolve_device("auto")
        learner = cls(tower, cfg, int(meta["seed"]), where)
        learner.load_tensors(saved.read_weights(folder, learner.device))
        learner.tower.eval()
        return learner
