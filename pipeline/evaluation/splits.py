"""Roles of the rating rows in one evaluation fold, and the four cold-start scenarios they define.

A fold gives every row of the ratings table exactly one :class:`Role`: training row, or the support or
query row of a scenario (or unused, for users a protocol leaves out). From the roles follow

- ``warm``: known users on known items; query = held-out training-user ratings, support = the user's
  training ratings (capped);
- ``new_user``: new users on known items; support = the ratings the user reveals, query = the rest;
- ``new_item``: known users on new items; query = their ratings of new items;
- ``new_both``: new users on new items.

Each scenario carries its candidate pool (the known items, or the new items) for the top-k metrics, and
``new_user`` an ordered support pool for the support-size curve (:class:`Shots`). The protocols that
assign the roles live in :mod:`pipeline.evaluation.protocols`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np

RATING_COLUMNS = ("user_index", "item_index", "rating")
SCENARIO_NAMES = ("warm", "new_user", "new_item", "new_both")


class Role(IntEnum):
    """What a rating row is in one fold."""

    TRAIN = 0
    WARM_QUERY = 1
    NEW_USER_SUPPORT = 2
    NEW_USER_QUERY = 3
    NEW_ITEM_SUPPORT = 4
    NEW_ITEM_QUERY = 5
    NEW_BOTH_SUPPORT = 6
    NEW_BOTH_QUERY = 7
    UNUSED = 8


def check_ratings(ratings: dict[str, np.ndarray]) -> int:
    """The number of rows of a ratings column dict; raises on a missing column or a ragged table."""
    missing = [c for c in RATING_COLUMNS if c not in ratings]
    if missing:
        raise ValueError(f"ratings: missing column(s) {missing}; expected {list(RATING_COLUMNS)}")
    n = len(ratings["user_index"])
    for name, col in ratings.items():
        if len(col) != n:
            raise ValueError(f"ratings: column '{name}' has {len(col)} rows, 'user_index' has {n}")
    return n


def spawn_seeds(seed: int, n: int) -> list[int]:
    """``n`` independent seeds derived from ``seed`` (``np.random.SeedSequence.spawn``)."""
    return [int(c.generate_state(1)[0]) for c in np.random.SeedSequence(seed).spawn(n)]


def select_rows(table: dict[str, np.ndarray], mask: np.ndarray) -> dict[str, np.ndarray]:
    """The rows of a column dict where ``mask`` holds (a boolean mask or an index array)."""
    return {name: np.asarray(col)[mask] for name, col in table.items()}


def rows_of_users(ratings: dict[str, np.ndarray], users: np.ndarray) -> dict[str, np.ndarray]:
    """The ratings of ``users``, in table order."""
    return select_rows(ratings, np.isin(ratings["user_index"], users))


def user_folds(users: np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    """Partition the distinct ids in ``users`` (users, or items) into ``folds`` seeded, near-equal, sorted
    folds.

    Every id lands in exactly one fold; fold sizes differ by at most one.
    """
    uniq = np.unique(np.asarray(users))
    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    if uniq.size < folds:
        raise ValueError(f"cannot split {uniq.size} users into {folds} folds")
    shuffled = np.random.default_rng(seed).permutation(uniq)
    return [np.sort(part) for part in np.array_split(shuffled, folds)]


def random_rank(group: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row: its position in a seeded random order of its group's rows, and its group's size."""
    group = np.asarray(group)
    keys = np.random.default_rng(seed).random(group.size)
    order = np.lexsort((keys, group))
    sorted_group = group[order]
    first = np.r_[True, sorted_group[1:] != sorted_group[:-1]] if group.size else np.zeros(0, bool)
    starts = np.flatnonzero(first)
    counts = np.diff(np.r_[starts, group.size])
    index = np.cumsum(first) - 1
    rank = np.empty(group.size, dtype=np.int64)
    size = np.empty(group.size, dtype=np.int64)
    rank[order] = np.arange(group.size) - starts[index]
    size[order] = counts[index]
    return rank, size


def support_mask(user: np.ndarray, support_size: int, seed: int) -> np.ndarray:
    """Mark ``support_size`` seeded random rows of each user as support; the rest is the user's query.

    A user with ``support_size`` ratings or fewer keeps one random rating for the query set and puts the
    other ``n - 1`` in the support set (a user with a single rating has an empty support set), so every
    user is scored on at least one query rating.
    """
    if support_size < 0:
        raise ValueError(f"support_size must be >= 0, got {support_size}")
    rank, size = random_rank(user, seed)
    return rank < np.minimum(support_size, size - 1)


def capped_rows(user: np.ndarray, cap: int, seed: int) -> np.ndarray:
    """Mask of at most ``cap`` seeded random rows per user (all of a user's rows when it has fewer)."""
    rank, _ = random_rank(user, seed)
    return rank < cap


@dataclass(frozen=True)
class Scenario:
    """One scenario of one fold: the query users' support rows, the query rows, the candidate pool.

    ``support`` and ``query`` are column dicts of the ratings table (rows in table order). ``items`` are
    the item indices the scenario ranks for top-k: every item of the pool a query user has not rated in
    training or support is a candidate; ``ranked_users`` are the query users whose candidates are ranked
    (all of them, or a seeded sample). Scenarios of one ``support_group`` give a user the same support
    rows (e.g. ``warm`` and ``new_item``: its capped training rows).
    """

    name: str
    support: dict[str, np.ndarray]
    query: dict[str, np.ndarray]
    items: np.ndarray
    support_group: str
    ranked_users: np.ndarray

    @property
    def users(self) -> np.ndarray:
        return np.unique(self.query["user_index"])


@dataclass(frozen=True)
class Shots:
    """The support-size curve of ``new_user``: a fixed query set, and each user's support rows in a seeded
    order; the support set of size k is the first k rows of the user (all of them if it has fewer)."""

    pool: dict[str, np.ndarray]
    order: np.ndarray
    query: dict[str, np.ndarray]

    def support(self, k: int) -> dict[str, np.ndarray]:
        return select_rows(self.pool, self.order < k)


@dataclass(frozen=True)
class Fold:
    """One fold of a protocol: the role of every rating row, the training rows, the four scenarios.

    ``new_users`` and ``new_items`` are the users and items held out of training (new items: every rating
    of them is removed from training); ``known_items`` are all other items of the feature set.
    """

    index: int
    roles: np.ndarray
    train: dict[str, np.ndarray]
    new_users: np.ndarray
    new_items: np.ndarray
    known_items: np.ndarray
    scenarios: dict[str, Scenario]
    shots: Shots


def build_fold(
    index: int,
    ratings: dict[str, np.ndarray],
    roles: np.ndarray,
    new_users: np.ndarray,
    new_items: np.ndarray,
    n_items: int,
    support_cap: int,
    shots: Shots,
    seed: int,
    own_support: bool = False,
    topk_users: int = 0,
) -> Fold:
    """Assemble the scenarios from the rows' roles.

    ``warm`` uses as support the query users' training rows, at most ``support_cap`` seeded random ones
    per user. With ``own_support`` (MeLU) ``new_item`` and ``new_both`` take the ``NEW_ITEM_SUPPORT`` and
    ``NEW_BOTH_SUPPORT`` rows; else ``new_item`` uses the capped training rows like ``warm``, and
    ``new_both`` the new user's ``NEW_USER_SUPPORT`` rows (its revealed ratings of known items).
    ``topk_users`` > 0 ranks the candidates of at most that many seeded random query users per scenario.
    """
    roles = np.asarray(roles)
    train = select_rows(ratings, roles == Role.TRAIN)
    capped = select_rows(train, capped_rows(train["user_index"], support_cap, seed))
    new_items = np.sort(np.asarray(new_items))
    known_items = np.setdiff1d(np.arange(n_items), new_items)
    pools = {"warm": known_items, "new_user": known_items, "new_item": new_items, "new_both": new_items}
    new_user_support = select_rows(ratings, roles == Role.NEW_USER_SUPPORT)
    supports = {
        "warm": capped,
        "new_user": new_user_support,
        "new_item": select_rows(ratings, roles == Role.NEW_ITEM_SUPPORT) if own_support else capped,
        "new_both": select_rows(ratings, roles == Role.NEW_BOTH_SUPPORT) if own_support else new_user_support,
    }
    queries = {
        "warm": Role.WARM_QUERY,
        "new_user": Role.NEW_USER_QUERY,
        "new_item": Role.NEW_ITEM_QUERY,
        "new_both": Role.NEW_BOTH_QUERY,
    }
    scenarios = {}
    for k, name in enumerate(SCENARIO_NAMES):
        query = select_rows(ratings, roles == queries[name])
        users = np.unique(query["user_index"])
        support = rows_of_users(supports[name], users)
        group = name if own_support else {"warm": "known", "new_item": "known"}.get(name, "revealed")
        ranked = users
        if 0 < topk_users < users.size:
            ranked = np.sort(np.random.default_rng([seed, 1, k]).choice(users, topk_users, replace=False))
        scenarios[name] = Scenario(name, support, query, pools[name], group, ranked)
    return Fold(
        index=index,
        roles=roles,
        train=train,
        new_users=np.sort(np.asarray(new_users)),
        new_items=new_items,
        known_items=known_items,
        scenarios=scenarios,
        shots=shots,
    )
