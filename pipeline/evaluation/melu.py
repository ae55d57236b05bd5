"""MeLU's tasks (Lee et al., KDD 2019): every rating is in one *state*, and each (user, state) cell of
``min_ratings`` to ``max_ratings`` ratings is a task of ``query_size`` random query ratings, the rest of
the cell its support set.

The states, as MeLU's published split names them:

``meta_training``
    existing users on existing items: training rows.
``warm_up``
    existing users on existing items, held out: a cell's query set is the ``warm`` scenario; its other
    rows are training rows (a known user's support is its training history, capped as in every protocol).
``user_cold_testing``, ``item_cold_testing``, ``user_and_item_cold_testing``
    new users on existing items, existing users on new items, new users on new items: the ``new_user``,
    ``new_item`` and ``new_both`` scenarios, support and query from the same cell.

Cells of a test state outside the size range take no part. Protocol ``melu_split`` reads the states from
the published split file (:mod:`pipeline.evaluation.split_file`); protocol ``melu`` derives them from the
data the way MeLU's code does (:func:`derive_states`).
"""

from __future__ import annotations

import logging
from enum import IntEnum

import numpy as np

from pipeline.evaluation.splits import (
    Fold,
    Role,
    Shots,
    build_fold,
    check_ratings,
    random_rank,
    select_rows,
    spawn_seeds,
)
from pipeline.params import MeluParams

log = logging.getLogger(__name__)


class State(IntEnum):
    """A rating's state in MeLU's split (``ABSENT``: the split does not list the rating)."""

    ABSENT = -1
    META_TRAINING = 0
    WARM_UP = 1
    USER_COLD = 2
    ITEM_COLD = 3
    USER_AND_ITEM_COLD = 4


STATE_NAMES: dict[str, State] = {
    "meta_training": State.META_TRAINING,
    "warm_up": State.WARM_UP,
    "user_cold_testing": State.USER_COLD,
    "item_cold_testing": State.ITEM_COLD,
    "user_and_item_cold_testing": State.USER_AND_ITEM_COLD,
}
NEW_USER_STATES = (State.USER_COLD, State.USER_AND_ITEM_COLD)
NEW_ITEM_STATES = (State.ITEM_COLD, State.USER_AND_ITEM_COLD)
# state -> (role of a query row, role of a support row) of a cell that takes part
CELL_ROLES: dict[State, tuple[Role, Role]] = {
    State.WARM_UP: (Role.WARM_QUERY, Role.TRAIN),
    State.USER_COLD: (Role.NEW_USER_QUERY, Role.NEW_USER_SUPPORT),
    State.ITEM_COLD: (Role.NEW_ITEM_QUERY, Role.NEW_ITEM_SUPPORT),
    State.USER_AND_ITEM_COLD: (Role.NEW_BOTH_QUERY, Role.NEW_BOTH_SUPPORT),
}


def derive_states(
    ratings: dict[str, np.ndarray], item_year: np.ndarray, melu: MeluParams, seed: int
) -> np.ndarray:
    """MeLU's states for every rating row, derived from the data (protocol ``melu``).

    Items released in or after ``new_item_year`` are new (no year: existing); a seeded share
    ``1 - existing_users`` of the users (``round``) is new; an existing user's rating of an existing item
    is in ``warm_up`` with probability ``warm_up``, else in ``meta_training``. On MovieLens-1M this gives
    MeLU's published split's users and items per state (``tests/test_eval_melu.py`` states how closely).
    """
    check_ratings(ratings)
    year = np.asarray(item_year, dtype=np.float64)
    if year.size == 0 or not np.isfinite(year).any():
        raise ValueError("eval.protocol melu needs item release years, and the items have none")
    user = np.asarray(ratings["user_index"], dtype=np.int64)
    item = np.asarray(ratings["item_index"], dtype=np.int64)
    if item.size and item.max() >= year.size:
        raise ValueError(f"item_year has {year.size} entries but ratings use item index {item.max()}")
    users = np.unique(user)
    if users.size < 2:
        raise ValueError(f"melu: {users.size} users rated anything; need >= 2")
    user_seed, warm_seed = spawn_seeds(seed, 2)
    n_existing = int(np.clip(round(melu.existing_users * users.size), 1, users.size - 1))
    new_users = np.random.default_rng(user_seed).permutation(users)[n_existing:]
    new_u = np.isin(user, new_users)
    new_i = (np.nan_to_num(year, nan=-np.inf) >= melu.new_item_year)[item]
    warm = np.random.default_rng(warm_seed).random(user.size) < melu.warm_up
    states = np.where(warm, State.WARM_UP, State.META_TRAINING).astype(np.int8)
    states[new_u & ~new_i] = State.USER_COLD
    states[~new_u & new_i] = State.ITEM_COLD
    states[new_u & new_i] = State.USER_AND_ITEM_COLD
    return states


def state_folds(
    ratings: dict[str, np.ndarray],
    states: np.ndarray,
    n_items: int,
    melu: MeluParams,
    repeats: int,
    support_cap: int,
    seed: int,
    topk_users: int = 0,
) -> list[Fold]:
    """The folds of MeLU's tasks over ``states`` (one :class:`State` per rating row), one per repeat.

    Each repeat draws new query sets: in every cell of a test state with ``min_ratings`` to
    ``max_ratings`` ratings, ``min(query_size, n - 1)`` seeded random ratings are the query, the rest the
    support (``warm_up``: training rows). Rows of other test cells and ``ABSENT`` rows are unused. The
    support-size curve takes each new user's support rows in a seeded order and keeps its query set. New users
    are the users of the user-cold states, new items the items of the item-cold states.
    """
    n = check_ratings(ratings)
    states = np.asarray(states)
    if states.shape != (n,):
        raise ValueError(f"states has shape {states.shape}; the ratings have {n} rows")
    user = np.asarray(ratings["user_index"], dtype=np.int64)
    item = np.asarray(ratings["item_index"], dtype=np.int64)
    new_users = np.unique(user[np.isin(states, NEW_USER_STATES)])
    new_items = np.unique(item[np.isin(states, NEW_ITEM_STATES)])
    out = []
    for r, repeat_seed in enumerate(spawn_seeds(seed, repeats)):
        cap_seed, *cell_seeds = spawn_seeds(repeat_seed, 1 + len(CELL_ROLES))
        roles = np.full(n, Role.UNUSED, dtype=np.int8)
        roles[states == State.META_TRAINING] = Role.TRAIN
        shots: Shots | None = None
        cells = zip(CELL_ROLES.items(), cell_seeds, strict=True)
        for (state, (query_role, support_role)), cell_seed in cells:
            rows = np.flatnonzero(states == state)
            rank, size = random_rank(user[rows], cell_seed)
            taking_part = (size >= melu.min_ratings) & (size <= melu.max_ratings)
            n_query = np.minimum(melu.query_size, np.maximum(size - 1, 1))
            is_query = taking_part & (rank < n_query)
            is_support = taking_part & ~is_query
            roles[rows[is_query]] = query_role
            roles[rows[is_support]] = support_role
            if state == State.WARM_UP:
                roles[rows[~taking_part]] = Role.TRAIN
            if state == State.USER_COLD:
                shots = Shots(
                    pool=select_rows(ratings, rows[is_support]),
                    order=(rank - n_query)[is_support],
                    query=select_rows(ratings, rows[is_query]),
                )
        assert shots is not None
        if r == 0:
            log.info(
                "melu tasks: %s query users per state",
                {s.name.lower(): int(np.unique(user[roles == q]).size) for s, (q, _) in CELL_ROLES.items()},
            )
        out.append(
            build_fold(
                r,
                ratings,
                roles,
                new_users,
                new_items,
                n_items,
                support_cap,
                shots,
                cap_seed,
                own_support=True,
                topk_users=topk_users,
            )
        )
    return out
