"""Seeded cross-validation splits, one split function per cold-start scenario.

Folds partition the *users*: a test user's ratings never reach training. A scenario is a function
``(ratings, train_users, test_users, support_size, seed) -> Split`` registered in :data:`SCENARIOS`;
``new_user`` is the first. ``warm`` fits the same signature; ``new_item`` and ``new_both`` hold out items
as well, so they will add their own item folds beside :func:`user_folds`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

RATING_COLUMNS = ("user_index", "item_index", "rating")


@dataclass(frozen=True)
class Split:
    """One fold of one scenario: who trains, and the test users' support and query sets.

    ``support_set`` and ``query_set`` are column dicts of the ratings table (``user_index``, ``item_index``,
    ``rating`` and any other column), rows kept in the table's order. Models see the query set without its
    ``rating`` column.
    """

    scenario: str
    train_users: np.ndarray
    test_users: np.ndarray
    support_set: dict[str, np.ndarray]
    query_set: dict[str, np.ndarray]


def _check_ratings(ratings: dict[str, np.ndarray]) -> None:
    missing = [c for c in RATING_COLUMNS if c not in ratings]
    if missing:
        raise ValueError(f"ratings: missing column(s) {missing}; expected {list(RATING_COLUMNS)}")
    n = len(ratings["user_index"])
    for name, col in ratings.items():
        if len(col) != n:
            raise ValueError(f"ratings: column '{name}' has {len(col)} rows, 'user_index' has {n}")


def select_rows(table: dict[str, np.ndarray], mask: np.ndarray) -> dict[str, np.ndarray]:
    """The rows of a column dict where ``mask`` holds (a boolean mask or an index array)."""
    return {name: np.asarray(col)[mask] for name, col in table.items()}


def rows_of_users(ratings: dict[str, np.ndarray], users: np.ndarray) -> dict[str, np.ndarray]:
    """The ratings of ``users``, in table order."""
    return select_rows(ratings, np.isin(ratings["user_index"], users))


def user_folds(users: np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    """Partition the distinct ``users`` into ``folds`` seeded, near-equal, sorted folds.

    Every user lands in exactly one fold; fold sizes differ by at most one.
    """
    uniq = np.unique(np.asarray(users))
    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    if uniq.size < folds:
        raise ValueError(f"cannot split {uniq.size} users into {folds} folds")
    shuffled = np.random.default_rng(seed).permutation(uniq)
    return [np.sort(part) for part in np.array_split(shuffled, folds)]


def support_mask(user: np.ndarray, support_size: int, seed: int) -> np.ndarray:
    """Mark ``support_size`` seeded random rows of each user as support; the rest is the user's query.

    A user with ``support_size`` ratings or fewer keeps one random rating for the query set and puts the
    other ``n - 1`` in the support set (a user with a single rating has an empty support set), so every
    user is scored on at least one query rating.
    """
    user = np.asarray(user)
    if support_size < 0:
        raise ValueError(f"support_size must be >= 0, got {support_size}")
    keys = np.random.default_rng(seed).random(user.size)
    order = np.lexsort((keys, user))
    sorted_users = user[order]
    first = np.r_[True, sorted_users[1:] != sorted_users[:-1]]
    starts = np.flatnonzero(first)
    counts = np.diff(np.r_[starts, user.size])
    group = np.cumsum(first) - 1
    rank = np.arange(user.size) - starts[group]
    take = np.minimum(support_size, counts - 1)[group]
    mask = np.empty(user.size, dtype=bool)
    mask[order] = rank < take
    return mask


def new_user_split(
    ratings: dict[str, np.ndarray],
    train_users: np.ndarray,
    test_users: np.ndarray,
    support_size: int,
    seed: int,
) -> Split:
    """``new_user``: test users are unseen; each reveals ``support_size`` random ratings (the support
    set) and is scored on the rest (the query set); see :func:`support_mask` for users with few ratings.
    """
    _check_ratings(ratings)
    overlap = np.intersect1d(train_users, test_users)
    if overlap.size:
        raise ValueError(f"new_user split: {overlap.size} user(s) are both train and test, e.g. {overlap[0]}")
    test = rows_of_users(ratings, test_users)
    is_support = support_mask(test["user_index"], support_size, seed)
    return Split(
        scenario="new_user",
        train_users=np.sort(np.asarray(train_users)),
        test_users=np.sort(np.asarray(test_users)),
        support_set=select_rows(test, is_support),
        query_set=select_rows(test, ~is_support),
    )


SplitFn = Callable[[dict[str, np.ndarray], np.ndarray, np.ndarray, int, int], Split]
SCENARIOS: dict[str, SplitFn] = {"new_user": new_user_split}


def kfold_splits(
    ratings: dict[str, np.ndarray], folds: int, support_size: int, seed: int, scenario: str = "new_user"
) -> list[Split]:
    """K seeded folds over the users that have ratings, each split by ``scenario`` with a seed drawn from
    ``(seed, fold)``.
    """
    _check_ratings(ratings)
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; known: {sorted(SCENARIOS)}")
    parts = user_folds(ratings["user_index"], folds, seed)
    split_fn = SCENARIOS[scenario]
    out = []
    for f, test_users in enumerate(parts):
        train_users = np.concatenate([p for g, p in enumerate(parts) if g != f])
        split_seed = int(np.random.SeedSequence([seed, f]).generate_state(1)[0])
        out.append(split_fn(ratings, train_users, test_users, support_size, split_seed))
    return out
