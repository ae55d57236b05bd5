"""Roles of the rating rows per fold (kfold protocol), the scenarios and the support-size pools (MeLU's
protocols: tests/test_eval_melu.py)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.evaluation.protocols import kfold_folds, make_folds
from pipeline.evaluation.splits import (
    Fold,
    Role,
    capped_rows,
    random_rank,
    support_mask,
    user_folds,
)
from pipeline.params import load_params


def _ratings(counts: dict[int, int], n_items: int | None = None, seed: int = 1) -> dict[str, np.ndarray]:
    """``counts[u]`` ratings for user u on distinct items (random ones when ``n_items`` is given, else
    0..n-1), rows shuffled, rating = item % 5 + 1."""
    rng = np.random.default_rng(seed)
    user = np.concatenate([np.full(n, u) for u, n in counts.items()])
    if n_items is None:
        item = np.concatenate([np.arange(n) for n in counts.values()])
    else:
        item = np.concatenate([rng.choice(n_items, n, replace=False) for n in counts.values()])
    perm = rng.permutation(user.size)
    return {
        "user_index": user[perm].astype(np.int32),
        "item_index": item[perm].astype(np.int32),
        "rating": (item[perm] % 5 + 1).astype(np.float32),
        "timestamp": np.arange(user.size, dtype=np.int64),
    }


def _pairs(table: dict[str, np.ndarray]) -> set[tuple[int, int]]:
    return set(zip(table["user_index"].tolist(), table["item_index"].tolist(), strict=True))


def test_user_folds_partition_the_users() -> None:
    users = np.repeat(np.arange(0, 46, 2), 3)  # 23 distinct users, each listed three times
    folds = user_folds(users, 5, seed=7)
    assert len(folds) == 5
    assert np.array_equal(np.sort(np.concatenate(folds)), np.unique(users))  # each user exactly once
    assert sorted(len(f) for f in folds) == [4, 4, 5, 5, 5]
    assert all(np.array_equal(a, b) for a, b in zip(folds, user_folds(users, 5, seed=7), strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(folds, user_folds(users, 5, seed=8), strict=True))
    with pytest.raises(ValueError, match="cannot split 3 users into 5 folds"):
        user_folds(np.arange(3), 5, seed=0)


def test_random_rank_is_a_permutation_within_each_group() -> None:
    group = np.array([3, 1, 3, 3, 1, 7])
    rank, size = random_rank(group, seed=0)
    assert size.tolist() == [3, 2, 3, 3, 2, 1]
    assert sorted(rank[group == 3].tolist()) == [0, 1, 2]
    assert sorted(rank[group == 1].tolist()) == [0, 1]
    assert rank[group == 7].tolist() == [0]
    assert capped_rows(group, 2, seed=0).tolist() == (rank < 2).tolist()


def test_support_mask_sizes_follow_the_rule() -> None:
    counts = {0: 25, 1: 11, 2: 10, 3: 4, 4: 1}
    ratings = _ratings(counts)
    mask = support_mask(ratings["user_index"], support_size=10, seed=3)
    n_support = {u: int(mask[ratings["user_index"] == u].sum()) for u in counts}
    # n > 10: exactly 10; n <= 10: n - 1 (one query rating left); a single rating: empty support
    assert n_support == {0: 10, 1: 10, 2: 9, 3: 3, 4: 0}
    assert np.array_equal(mask, support_mask(ratings["user_index"], 10, seed=3))
    assert not np.array_equal(mask, support_mask(ratings["user_index"], 10, seed=4))


def test_support_mask_draws_every_rating_about_equally() -> None:
    user = np.zeros(20, dtype=np.int64)
    hits = sum(support_mask(user, 5, seed=s).astype(int) for s in range(400))
    # each of 20 ratings is in the support set with probability 5/20: 100 of 400 draws expected
    assert hits.min() > 65 and hits.max() < 135


N_ITEMS = 60
COUNTS = {u: 3 + (u * 7) % 30 for u in range(40)}


@pytest.fixture(scope="module")
def ratings() -> dict[str, np.ndarray]:
    return _ratings(COUNTS, n_items=N_ITEMS)


@pytest.fixture(scope="module")
def folds(ratings: dict[str, np.ndarray]) -> list[Fold]:
    return kfold_folds(
        ratings, N_ITEMS, folds=4, support_size=5, warm_fraction=0.2, support_cap=6, max_shots=8, seed=11
    )


def test_kfold_gives_every_rating_exactly_one_role_consistent_with_the_held_out_groups(
    ratings: dict[str, np.ndarray], folds: list[Fold]
) -> None:
    user, item = ratings["user_index"], ratings["item_index"]
    for fold in folds:
        assert fold.roles.shape == user.shape and set(np.unique(fold.roles)) <= set(Role)
        new_u, new_i = np.isin(user, fold.new_users), np.isin(item, fold.new_items)
        expected = {
            (False, False): {Role.TRAIN, Role.WARM_QUERY},
            (True, False): {Role.NEW_USER_SUPPORT, Role.NEW_USER_QUERY},
            (False, True): {Role.NEW_ITEM_QUERY},
            (True, True): {Role.NEW_BOTH_QUERY},
        }
        for (nu, ni), allowed in expected.items():
            cell = (new_u == nu) & (new_i == ni)
            assert set(fold.roles[cell].tolist()) <= {int(r) for r in allowed}
        assert np.array_equal(np.sort(fold.known_items), np.setdiff1d(np.arange(N_ITEMS), fold.new_items))
        # the roles' rows make up the scenarios and the training rows, each row in one place
        parts = [fold.train, *(s.query for s in fold.scenarios.values()), fold.scenarios["new_user"].support]
        assert sum(p["rating"].size for p in parts) == user.size
        assert set().union(*map(_pairs, parts)) == _pairs(ratings)
    # every user and every rated item is new in exactly one fold
    assert np.array_equal(np.sort(np.concatenate([f.new_users for f in folds])), np.arange(40))
    assert np.array_equal(np.sort(np.concatenate([f.new_items for f in folds])), np.unique(item))


def test_kfold_hold_out_and_support_sizes_by_hand(ratings: dict[str, np.ndarray], folds: list[Fold]) -> None:
    user, item = ratings["user_index"], ratings["item_index"]
    for fold in folds:
        known_known = ~np.isin(user, fold.new_users) & ~np.isin(item, fold.new_items)
        revealed = np.isin(user, fold.new_users) & ~np.isin(item, fold.new_items)
        for u in np.unique(user):
            n = int((known_known & (user == u)).sum())
            held = int((fold.roles[user == u] == Role.WARM_QUERY).sum())
            assert held == min(int(np.floor(0.2 * n + 0.5)), max(n - 1, 0))
            m = int((revealed & (user == u)).sum())
            support = int((fold.roles[user == u] == Role.NEW_USER_SUPPORT).sum())
            assert support == (min(5, m - 1) if m else 0)
        warm = fold.scenarios["warm"]
        assert _pairs(warm.support) <= _pairs(fold.train)
        assert np.bincount(warm.support["user_index"]).max() <= 6  # support_cap
        assert set(np.unique(warm.support["user_index"])) == set(warm.users)
        new_item = fold.scenarios["new_item"]
        assert _pairs(new_item.support) <= _pairs(fold.train)
        new_both = fold.scenarios["new_both"]
        nu_support = fold.scenarios["new_user"].support
        assert _pairs(new_both.support) == {p for p in _pairs(nu_support) if p[0] in set(new_both.users)}
        assert np.array_equal(fold.scenarios["warm"].items, fold.known_items)
        assert np.array_equal(fold.scenarios["new_both"].items, fold.new_items)


def test_kfold_shots_nest_the_supports_and_keep_one_query_set(folds: list[Fold]) -> None:
    for fold in folds:
        shots = fold.shots
        pool, query = _pairs(shots.pool), _pairs(shots.query)
        assert pool.isdisjoint(query)
        nu = fold.scenarios["new_user"]
        assert pool | query == _pairs(nu.support) | _pairs(nu.query)
        assert _pairs(nu.support) == _pairs(shots.support(5))  # the main support set is the 5-shot set
        previous: set[tuple[int, int]] = set()
        for k in (0, 1, 3, 8):
            support = shots.support(k)
            assert previous <= _pairs(support)
            previous = _pairs(support)
            assert np.bincount(support["user_index"], minlength=40).max(initial=0) <= k
        assert shots.support(0)["rating"].size == 0


def test_kfold_ranks_every_query_user_or_a_seeded_sample(
    ratings: dict[str, np.ndarray], folds: list[Fold]
) -> None:
    for fold in folds:
        for scenario in fold.scenarios.values():
            assert np.array_equal(scenario.ranked_users, scenario.users)
    sampled = kfold_folds(ratings, N_ITEMS, 4, 5, 0.2, 6, 8, seed=11, topk_users=4)
    again = kfold_folds(ratings, N_ITEMS, 4, 5, 0.2, 6, 8, seed=11, topk_users=4)
    for fold, same in zip(sampled, again, strict=True):
        for name, scenario in fold.scenarios.items():
            assert scenario.ranked_users.size == min(4, scenario.users.size)
            assert np.isin(scenario.ranked_users, scenario.users).all()
            assert np.array_equal(scenario.ranked_users, same.scenarios[name].ranked_users)


def test_kfold_is_seeded(ratings: dict[str, np.ndarray], folds: list[Fold]) -> None:
    again = kfold_folds(ratings, N_ITEMS, 4, 5, 0.2, 6, 8, seed=11)
    other = kfold_folds(ratings, N_ITEMS, 4, 5, 0.2, 6, 8, seed=12)
    assert all(np.array_equal(a.roles, b.roles) for a, b in zip(folds, again, strict=True))
    for a, b in zip(folds, again, strict=True):
        for name, s in a.scenarios.items():
            for col in s.support:
                assert np.array_equal(s.support[col], b.scenarios[name].support[col])
    assert not all(np.array_equal(a.roles, b.roles) for a, b in zip(folds, other, strict=True))


def test_make_folds_dispatches_on_the_protocol(ratings: dict[str, np.ndarray]) -> None:
    params = load_params(None, ["eval.folds=3", "eval.shots=[0, 2]"])
    assert len(make_folds(params.eval, ratings, N_ITEMS, seed=0)) == 3
    melu = load_params(None, ["eval.protocol=melu"]).eval
    with pytest.raises(ValueError, match="needs the items' release years"):
        make_folds(melu, ratings, N_ITEMS, seed=0)
    melu_split = load_params(None, ["eval.protocol=melu_split"]).eval
    with pytest.raises(ValueError, match="needs the split's states"):
        make_folds(melu_split, ratings, N_ITEMS, seed=0)
