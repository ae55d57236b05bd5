"""The evaluation protocols: which rating rows train, and which are the support and query rows of the four
cold-start scenarios, fold by fold (``eval.protocol``).

``kfold``
    Seeded group K-fold over users AND over items: fold f holds out user fold f and item fold f. A new
    user (of fold f) reveals ``support_size`` random ratings of known items and is scored on its other
    ratings of known items (``new_user``) and on its ratings of new items (``new_both``); a known user is
    scored on its ratings of new items (``new_item``) and on a seeded share ``warm_fraction`` of its ratings
    of known items held out of training (``warm``). Training rows: known users x known items minus the
    warm hold-out. Every user and every item is new in exactly one fold.
``melu``
    MeLU (Lee et al., KDD 2019): only users with ``min_ratings`` to ``max_ratings`` ratings take part;
    items released before ``new_item_year`` exist, later ones are new; a seeded ``existing_users`` share of
    the users exists. In each of the four (user, item) cells a user's query set is ``query_size`` random
    ratings of the cell and its support set the rest of the cell (for warm users: their training rows).
    Repeated ``folds`` times with different seeds, for the spread.
"""

from __future__ import annotations

import logging

import numpy as np

from pipeline.evaluation.splits import (
    Fold,
    Role,
    Shots,
    build_fold,
    check_ratings,
    random_rank,
    select_rows,
    user_folds,
)
from pipeline.params import EvalParams, MeluParams

log = logging.getLogger(__name__)


def _seeds(seed: int, n: int) -> list[int]:
    return [int(c.generate_state(1)[0]) for c in np.random.SeedSequence(seed).spawn(n)]


def kfold_folds(
    ratings: dict[str, np.ndarray],
    n_items: int,
    folds: int,
    support_size: int,
    warm_fraction: float,
    support_cap: int,
    max_shots: int,
    seed: int,
    topk_users: int = 0,
) -> list[Fold]:
    """The ``kfold`` protocol (module docstring); ``topk_users``: see :func:`build_fold`.

    Warm hold-out: ``round(warm_fraction * n)`` random ratings of each known user's ``n`` ratings of known
    items, at most ``n - 1``. New-user support: ``support_size`` random ratings of known items, at most
    ``n - 1`` (one is always scored). Support-size curve: the new user's first ``min(max_shots, n - 1)``
    ratings of known items in a seeded order form the support pool, the rest its fixed query set.
    """
    check_ratings(ratings)
    if not 0 < warm_fraction < 1:
        raise ValueError(f"warm_fraction must be in (0, 1), got {warm_fraction}")
    user = np.asarray(ratings["user_index"], dtype=np.int64)
    item = np.asarray(ratings["item_index"], dtype=np.int64)
    user_seed, item_seed, *fold_seeds = _seeds(seed, 2 + folds)
    user_parts = user_folds(user, folds, user_seed)
    item_parts = user_folds(item, folds, item_seed)
    out = []
    for f in range(folds):
        warm_seed, support_seed, cap_seed = _seeds(fold_seeds[f], 3)
        new_u = np.isin(user, user_parts[f])
        new_i = np.isin(item, item_parts[f])
        roles = np.full(user.size, Role.TRAIN, dtype=np.int8)

        known = np.flatnonzero(~new_u & ~new_i)
        rank, size = random_rank(user[known], warm_seed)
        held = np.minimum(np.floor(warm_fraction * size + 0.5), size - 1)
        roles[known[rank < held]] = Role.WARM_QUERY

        revealed = np.flatnonzero(new_u & ~new_i)
        rank, size = random_rank(user[revealed], support_seed)
        is_support = rank < np.minimum(support_size, size - 1)
        roles[revealed] = np.where(is_support, Role.NEW_USER_SUPPORT, Role.NEW_USER_QUERY)
        roles[~new_u & new_i] = Role.NEW_ITEM_QUERY
        roles[new_u & new_i] = Role.NEW_BOTH_QUERY

        shots_start = np.minimum(max_shots, size - 1)
        in_pool = rank < shots_start
        shots = Shots(
            pool=select_rows(ratings, revealed[in_pool]),
            order=rank[in_pool],
            query=select_rows(ratings, revealed[~in_pool]),
        )
        out.append(
            build_fold(
                f,
                ratings,
                roles,
                user_parts[f],
                item_parts[f],
                n_items,
                support_cap,
                shots,
                cap_seed,
                topk_users=topk_users,
            )
        )
    return out


def melu_folds(
    ratings: dict[str, np.ndarray],
    item_year: np.ndarray,
    melu: MeluParams,
    repeats: int,
    support_cap: int,
    seed: int,
    rating_counts: np.ndarray | None = None,
    topk_users: int = 0,
) -> list[Fold]:
    """The ``melu`` protocol (module docstring); ``item_year`` [n_items] holds release years, NaN if unknown
    (an item without a year counts as existing). ``rating_counts`` [n_users]: the ratings per user the
    ``min_ratings``/``max_ratings`` filter applies to (default: the rows of ``ratings``; the implicit task
    passes the real ratings, not its sampled negatives). ``topk_users``: see :func:`build_fold`.

    In each (user, item) cell a user with ``n`` ratings there gets ``min(query_size, n - 1)`` query ratings
    (one if ``n`` is 1) and the rest as support; the support-size curve takes the new users' support
    rows in a seeded order and keeps their query sets.
    """
    check_ratings(ratings)
    year = np.asarray(item_year, dtype=np.float64)
    if year.size == 0 or not np.isfinite(year).any():
        raise ValueError("eval.protocol melu needs item release years, and the items have none")
    user = np.asarray(ratings["user_index"], dtype=np.int64)
    item = np.asarray(ratings["item_index"], dtype=np.int64)
    if item.size and item.max() >= year.size:
        raise ValueError(f"item_year has {year.size} entries but ratings use item index {item.max()}")
    counts = np.bincount(user) if rating_counts is None else np.asarray(rating_counts)
    active = (counts[user] >= melu.min_ratings) & (counts[user] <= melu.max_ratings)
    eligible = np.unique(user[active])
    if eligible.size < 2:
        raise ValueError(
            f"melu: {eligible.size} users have {melu.min_ratings} to {melu.max_ratings} ratings; need >= 2"
        )
    is_new_item = np.nan_to_num(year, nan=-np.inf) >= melu.new_item_year
    new_items = np.flatnonzero(is_new_item)
    log.info(
        "melu: %d of %d users with %d-%d ratings, %d items released >= %d are new",
        eligible.size,
        np.unique(user).size,
        melu.min_ratings,
        melu.max_ratings,
        new_items.size,
        melu.new_item_year,
    )
    cells = (
        (False, False, Role.WARM_QUERY, Role.TRAIN),
        (True, False, Role.NEW_USER_QUERY, Role.NEW_USER_SUPPORT),
        (False, True, Role.NEW_ITEM_QUERY, Role.NEW_ITEM_SUPPORT),
        (True, True, Role.NEW_BOTH_QUERY, Role.NEW_BOTH_SUPPORT),
    )
    out = []
    for r, repeat_seed in enumerate(_seeds(seed, repeats)):
        user_seed, cap_seed, *cell_seeds = _seeds(repeat_seed, 2 + len(cells))
        n_existing = int(np.clip(round(melu.existing_users * eligible.size), 1, eligible.size - 1))
        new_users = np.sort(np.random.default_rng(user_seed).permutation(eligible)[n_existing:])
        new_u = np.isin(user, new_users)
        new_i = is_new_item[item]
        roles = np.full(user.size, Role.UNUSED, dtype=np.int8)
        for (cell_new_user, cell_new_item, query_role, support_role), cell_seed in zip(
            cells, cell_seeds, strict=True
        ):
            rows = np.flatnonzero(active & (new_u == cell_new_user) & (new_i == cell_new_item))
            rank, size = random_rank(user[rows], cell_seed)
            n_query = np.minimum(melu.query_size, np.maximum(size - 1, 1))
            is_query = rank < n_query
            roles[rows] = np.where(is_query, query_role, support_role)
            if cell_new_user and not cell_new_item:
                shots = Shots(
                    pool=select_rows(ratings, rows[~is_query]),
                    order=(rank - n_query)[~is_query],
                    query=select_rows(ratings, rows[is_query]),
                )
        out.append(
            build_fold(
                r,
                ratings,
                roles,
                new_users,
                new_items,
                year.size,
                support_cap,
                shots,
                cap_seed,
                own_support=True,
                topk_users=topk_users,
            )
        )
    return out


def make_folds(
    ev: EvalParams,
    ratings: dict[str, np.ndarray],
    n_items: int,
    seed: int,
    item_year: np.ndarray | None = None,
    rating_counts: np.ndarray | None = None,
) -> list[Fold]:
    """The folds of ``ev.protocol``; ``item_year`` is required by ``melu`` (``rating_counts``: see
    :func:`melu_folds`)."""
    if ev.protocol == "kfold":
        return kfold_folds(
            ratings,
            n_items,
            ev.folds,
            ev.support_size,
            ev.warm_fraction,
            ev.max_support,
            max(ev.shots),
            seed,
            ev.topk_users,
        )
    if item_year is None:
        raise ValueError("eval.protocol melu needs the items' release years (item_year)")
    if len(item_year) != n_items:
        raise ValueError(f"item_year has {len(item_year)} entries for {n_items} items")
    return melu_folds(
        ratings, item_year, ev.melu, ev.folds, ev.max_support, seed, rating_counts, ev.topk_users
    )
