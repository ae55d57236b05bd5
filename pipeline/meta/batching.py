"""Users as tasks: support/query sets per user, seeded meta-batches, padding with masks.

A meta-batch's content is a pure function of (seed, epoch, batch index), drawn for the whole global batch
before it is sharded across ranks, so any number of processes, and a run resumed from a checkpoint, see
exactly the tasks an uninterrupted single process would.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class TaskBatch:
    """A padded meta-batch of T tasks: support [T, S] and query [T, Q]; padding sits at the end, mask 0."""

    user_cats: Tensor
    support_items: Tensor
    support_ids: Tensor
    support_ratings: Tensor
    support_mask: Tensor
    query_items: Tensor
    query_ids: Tensor
    query_ratings: Tensor
    query_mask: Tensor

    @property
    def n_tasks(self) -> int:
        return int(self.user_cats.shape[0])

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> TaskBatch:
        moved = {}
        for f in fields(self):
            t: Tensor = getattr(self, f.name)
            moved[f.name] = t.to(device, dtype) if t.is_floating_point() else t.to(device)
        return TaskBatch(**moved)


def pad_tasks(
    user_cats: np.ndarray,
    support_items: Sequence[np.ndarray],
    support_ratings: Sequence[np.ndarray],
    query_items: Sequence[np.ndarray],
    query_ratings: Sequence[np.ndarray] | None = None,
    *,
    support_ids: Sequence[np.ndarray] | None = None,
    query_ids: Sequence[np.ndarray] | None = None,
    shape: tuple[int, int] | None = None,
) -> TaskBatch:
    """Pad ragged per-task arrays into a :class:`TaskBatch` (at least 1 column, or exactly ``shape``).

    ``user_cats`` is [n_tasks, n_fields]; ``*_ids`` are the rows of the item-id table (default: the items
    themselves); query ratings default to zeros (scoring only). No task at all gives a batch of 0 rows.
    """
    n = len(support_items)
    cats = np.asarray(user_cats, np.int64)
    if cats.ndim != 2 or cats.shape[0] != n:
        raise ValueError(f"user_cats: expected shape [{n}, n_fields], got {list(cats.shape)}")
    if shape is None:
        s = max([1, *(len(a) for a in support_items)])
        q = max([1, *(len(a) for a in query_items)])
    else:
        s, q = shape
    zeros = [np.zeros(len(a), np.float32) for a in query_items]
    sup = _pad(support_items, support_ratings, support_ids, n, s)
    qry = _pad(query_items, query_ratings if query_ratings is not None else zeros, query_ids, n, q)
    return TaskBatch(torch.tensor(cats), *sup, *qry)


def _pad(
    items: Sequence[np.ndarray],
    ratings: Sequence[np.ndarray],
    ids: Sequence[np.ndarray] | None,
    n: int,
    width: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    out_items = np.zeros((n, width), np.int64)
    out_ids = np.zeros((n, width), np.int64)
    out_ratings = np.zeros((n, width), np.float32)
    mask = np.zeros((n, width), np.float32)
    for t in range(n):
        k = len(items[t])
        if k > width:
            raise ValueError(f"task {t} has {k} entries, more than the padded width {width}")
        out_items[t, :k] = items[t]
        out_ids[t, :k] = items[t] if ids is None else ids[t]
        out_ratings[t, :k] = ratings[t]
        mask[t, :k] = 1.0
    return (
        torch.from_numpy(out_items),
        torch.from_numpy(out_ids),
        torch.from_numpy(out_ratings),
        torch.from_numpy(mask),
    )


@dataclass(frozen=True)
class TaskSet:
    """Support and query sets of a set of users, stored flat (CSR) in user order."""

    users: np.ndarray
    user_cats: np.ndarray
    support_offsets: np.ndarray
    support_items: np.ndarray
    support_ratings: np.ndarray
    query_offsets: np.ndarray
    query_items: np.ndarray
    query_ratings: np.ndarray

    @classmethod
    def from_tasks(
        cls, tasks: dict[str, np.ndarray], user_cats: np.ndarray, users: np.ndarray | None = None
    ) -> TaskSet:
        """Group ``FeatureSet.tasks`` by user; keep ``users`` (None = all) that have a non-empty query set."""
        for col in ("user_index", "item_index", "rating", "is_query"):
            if col not in tasks:
                raise ValueError(f"tasks.parquet: missing column '{col}' (FeatureSet.tasks)")
        user = np.asarray(tasks["user_index"], np.int64)
        is_query = np.asarray(tasks["is_query"], bool)
        keep = np.unique(user[is_query])
        if users is not None:
            wanted = np.unique(np.asarray(users, np.int64))
            keep = np.intersect1d(keep, wanted)
        if keep.size == 0:
            raise ValueError(
                "no training task: none of the requested users has a query set in FeatureSet.tasks"
            )
        selected = np.isin(user, keep)
        order = np.argsort(user[selected], kind="stable")
        u = user[selected][order]
        item = np.asarray(tasks["item_index"], np.int64)[selected][order]
        rating = np.asarray(tasks["rating"], np.float32)[selected][order]
        q = is_query[selected][order]
        s_off = np.zeros(keep.size + 1, np.int64)
        q_off = np.zeros(keep.size + 1, np.int64)
        pos = np.searchsorted(keep, u)
        s_off[1:] = np.cumsum(np.bincount(pos[~q], minlength=keep.size))
        q_off[1:] = np.cumsum(np.bincount(pos[q], minlength=keep.size))
        return cls(
            keep,
            np.asarray(user_cats, np.int64)[keep],
            s_off,
            item[~q],
            rating[~q],
            q_off,
            item[q],
            rating[q],
        )

    def __len__(self) -> int:
        return int(self.users.size)

    def support(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.support_offsets[t], self.support_offsets[t + 1]
        return self.support_items[a:b], self.support_ratings[a:b]

    def query(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.query_offsets[t], self.query_offsets[t + 1]
        return self.query_items[a:b], self.query_ratings[a:b]

    def rated_items(self) -> np.ndarray:
        return np.unique(np.concatenate([self.support_items, self.query_items]))

    def mean_rating(self) -> float:
        return float(np.concatenate([self.support_ratings, self.query_ratings]).astype(np.float64).mean())


class TaskSampler:
    """Seeded meta-batches over a :class:`TaskSet`: a new user order and new task draws every epoch.

    Each epoch a task's support set is ``k`` random ratings, ``k`` uniform in [min_support, max_support],
    and its query set up to ``query_size`` other ratings. With ``resplit`` both come from all of the
    user's ratings (k at most half of them), so every training rating serves as a query target over
    the epochs; without it they come from the FeatureSet's fixed support and query sets.
    """

    def __init__(
        self,
        taskset: TaskSet,
        *,
        meta_batch: int,
        min_support: int,
        max_support: int,
        query_size: int,
        resplit: bool,
        item_dropout: float,
        unknown_item: int,
        seed: int,
    ) -> None:
        if min_support > max_support:
            raise ValueError(f"min_support ({min_support}) must be <= max_support ({max_support})")
        self.taskset = taskset
        self.meta_batch = meta_batch
        self.min_support = min_support
        self.max_support = max_support
        self.query_size = query_size
        self.resplit = resplit
        self.item_dropout = item_dropout
        self.unknown_item = unknown_item
        self.seed = seed

    @property
    def n_batches(self) -> int:
        return -(-len(self.taskset) // self.meta_batch)

    def batch_tasks(self, epoch: int, index: int) -> np.ndarray:
        """Positions in the TaskSet of the tasks of global batch ``index`` of ``epoch``."""
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.taskset))
        return order[index * self.meta_batch : (index + 1) * self.meta_batch]

    def batch(self, epoch: int, index: int, rank: int = 0, world_size: int = 1) -> tuple[TaskBatch, int]:
        """The shard of ``rank`` of global batch ``index`` and the global number of tasks in it.

        Every task of the global batch is drawn (from one generator, in batch order) before sharding.
        A shard may be empty (a last batch with fewer tasks than ranks): 0 tasks, which still take part
        in the step's all-reduce with zero gradient and zero sums. Each item's id is replaced by the
        unknown item with probability ``item_dropout`` (its content features stay), so the unknown row
        learns to stand for items never seen in training.
        """
        tasks = self.batch_tasks(epoch, index)
        rng = np.random.default_rng([self.seed, epoch, index, 1])
        drawn = [self._draw(int(t), rng) for t in tasks]
        mine = drawn[rank::world_size]
        batch = pad_tasks(
            self.taskset.user_cats[tasks[rank::world_size]],
            [d[0] for d in mine],
            [d[1] for d in mine],
            [d[3] for d in mine],
            [d[4] for d in mine],
            support_ids=[d[2] for d in mine],
            query_ids=[d[5] for d in mine],
        )
        return batch, len(tasks)

    def _draw(self, t: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        s_items, s_ratings = self.taskset.support(t)
        q_items, q_ratings = self.taskset.query(t)
        k = int(rng.integers(self.min_support, self.max_support + 1))
        if self.resplit:
            items, ratings = np.concatenate([s_items, q_items]), np.concatenate([s_ratings, q_ratings])
            perm = rng.permutation(len(items))
            k = min(k, len(items) // 2)
            s, q = np.sort(perm[:k]), np.sort(perm[k : k + self.query_size])
            s_items, s_ratings, q_items, q_ratings = items[s], ratings[s], items[q], ratings[q]
        else:
            if len(s_items) > k:
                pick = np.sort(rng.choice(len(s_items), k, replace=False))
                s_items, s_ratings = s_items[pick], s_ratings[pick]
            if len(q_items) > self.query_size:
                pick = np.sort(rng.choice(len(q_items), self.query_size, replace=False))
                q_items, q_ratings = q_items[pick], q_ratings[pick]
        s_ids = np.where(rng.random(len(s_items)) < self.item_dropout, self.unknown_item, s_items)
        q_ids = np.where(rng.random(len(q_items)) < self.item_dropout, self.unknown_item, q_items)
        return s_items, s_ratings, s_ids, q_items, q_ratings, q_ids
