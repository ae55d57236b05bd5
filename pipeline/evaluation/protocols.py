"""The evaluation protocols: which rating rows train, and which are the support and query rows of the four
cold-start scenarios, fold by fold (``eval.protocol``).

``kfold``
    Seeded group K-fold over users AND over items: fold f holds out user fold f and item fold f. A new
    user (of fold f) reveals ``support_size`` random ratings of known items and is scored on its other
    ratings of known items (``new_user``) and on its ratings of new items (``new_both``); a known user is
    scored on its ratings of new items (``new_item``) and on a seeded share ``warm_fraction`` of its ratings
    of known items held out of training (``warm``). Training rows: known users x known items minus the
    warm hold-out. Every user and every item is new in exactly one fold.
``melu_split``
    MeLU's tasks (Lee et al., KDD 2019; :mod:`pipeline.evaluation.melu`) on the split MeLU published
    (``eval.split_file``): each rating's state (training, warm, new user, new item, both new) is read from
    the file; in each (user, state) cell of ``min_ratings`` to ``max_ratings`` ratings, ``query_size``
    random ratings are the query and the rest the support. Repeated ``folds`` times with new query draws.
``melu``
    The same tasks on states derived from the data the way MeLU's code does: items released in or after
    ``new_item_year`` are new, a seeded ``1 - existing_users`` share of the users is new, and each other
    rating is a ``warm_up`` rating with probability ``warm_up``. Repeated ``folds`` times with new seeds.
"""

from __future__ import annotations

import numpy as np

from pipeline.evaluation.melu import derive_states, state_folds
from pipeline.evaluation.splits import (
    Fold,
    Role,
    Shots,
    build_fold,
    check_ratings,
    random_rank,
    select_rows,
    spawn_seeds,
    user_folds,
)
from pipeline.params import EvalParams


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
    user_seed, item_seed, *fold_seeds = spawn_seeds(seed, 2 + folds)
    user_parts = user_folds(user, folds, user_seed)
    item_parts = user_folds(item, folds, item_seed)
    out = []
    for f in range(folds):
        warm_seed, support_seed, cap_seed = spawn_seeds(fold_seeds[f], 3)
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


def make_folds(
    ev: EvalParams,
    ratings: dict[str, np.ndarray],
    n_items: int,
    seed: int,
    item_year: np.ndarray | None = None,
    states: np.ndarray | None = None,
) -> list[Fold]:
    """The folds of ``ev.protocol``; ``melu`` needs ``item_year`` (release year per item, NaN if unknown),
    ``melu_split`` the split's ``states`` (one :class:`~pipeline.evaluation.melu.State` per rating row)."""
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
    if ev.protocol == "melu":
        if item_year is None:
            raise ValueError("eval.protocol melu needs the items' release years (item_year)")
        if len(item_year) != n_items:
            raise ValueError(f"item_year has {len(item_year)} entries for {n_items} items")
        states_seed, folds_seed = spawn_seeds(seed, 2)
        states = derive_states(ratings, item_year, ev.melu, states_seed)
        seed = folds_seed
    elif states is None:
        raise ValueError("eval.protocol melu_split needs the split's states")
    return state_folds(ratings, states, n_items, ev.melu, ev.folds, ev.max_support, seed, ev.topk_users)
