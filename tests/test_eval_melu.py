"""MeLU's tasks: roles from states (by hand), states derived from data, the published split file (its
reading and its bad input), and the derived states against the published ML-1M split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.data.errors import DataError
from pipeline.evaluation.melu import State, derive_states, state_folds
from pipeline.evaluation.split_file import read_split_file
from pipeline.evaluation.splits import Role
from pipeline.params import MeluParams, load_params

MELU = MeluParams()  # cells of 13..100 ratings, 10 query ratings


def _table(cells: list[tuple[int, State, list[int]]]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Ratings and states from ``(user, state, items)`` cells, rows shuffled; rating = item % 5 + 1."""
    user = np.concatenate([np.full(len(items), u) for u, _, items in cells])
    item = np.concatenate([items for _, _, items in cells])
    state = np.concatenate([np.full(len(items), s) for _, s, items in cells]).astype(np.int8)
    perm = np.random.default_rng(0).permutation(user.size)
    ratings = {"user_index": user[perm], "item_index": item[perm], "rating": (item[perm] % 5 + 1.0)}
    return ratings, state[perm]


OLD, NEW = list(range(150)), list(range(150, 300))
CELLS = [
    (0, State.META_TRAINING, OLD[:20]),
    (0, State.WARM_UP, OLD[20:35]),  # 15: a warm task (10 query, 5 support = training rows)
    (1, State.META_TRAINING, OLD[:30]),
    (1, State.WARM_UP, OLD[30:35]),  # 5: too small, training rows
    (2, State.USER_COLD, OLD[:13]),  # 13: a new-user task (10 query, 3 support)
    (2, State.USER_AND_ITEM_COLD, NEW[:12]),  # 12: too small, unused
    (3, State.USER_COLD, OLD[:101]),  # 101: too large, unused
    (3, State.USER_AND_ITEM_COLD, NEW[:100]),  # 100: a new-both task (10 query, 90 support)
    (4, State.META_TRAINING, OLD[:20]),
    (4, State.ITEM_COLD, NEW[100:114]),  # 14: a new-item task (10 query, 4 support)
    (5, State.ABSENT, OLD[:40]),  # not in the split: unused
]


def _roles_of(fold_roles: np.ndarray, ratings: dict[str, np.ndarray], state: np.ndarray, u: int, s: State):
    rows = (ratings["user_index"] == u) & (state == s)
    return np.bincount(fold_roles[rows], minlength=len(Role)).tolist()


def _count(**roles: int) -> list[int]:
    out = [0] * len(Role)
    for name, n in roles.items():
        out[Role[name.upper()]] = n
    return out


def test_state_folds_assign_melu_tasks_by_hand() -> None:
    ratings, state = _table(CELLS)
    folds = state_folds(ratings, state, 300, MELU, repeats=2, support_cap=50, seed=3)
    expected = {
        (0, State.META_TRAINING): _count(train=20),
        (0, State.WARM_UP): _count(warm_query=10, train=5),
        (1, State.META_TRAINING): _count(train=30),
        (1, State.WARM_UP): _count(train=5),
        (2, State.USER_COLD): _count(new_user_query=10, new_user_support=3),
        (2, State.USER_AND_ITEM_COLD): _count(unused=12),
        (3, State.USER_COLD): _count(unused=101),
        (3, State.USER_AND_ITEM_COLD): _count(new_both_query=10, new_both_support=90),
        (4, State.META_TRAINING): _count(train=20),
        (4, State.ITEM_COLD): _count(new_item_query=10, new_item_support=4),
        (5, State.ABSENT): _count(unused=40),
    }
    for fold in folds:
        for (u, s), counts in expected.items():
            assert _roles_of(fold.roles, ratings, state, u, s) == counts, (u, s.name)
        assert fold.new_users.tolist() == [2, 3]
        assert set(fold.new_items.tolist()) == set(NEW[:114])
        scenarios = fold.scenarios
        assert scenarios["warm"].users.tolist() == [0]
        assert scenarios["new_user"].users.tolist() == [2]
        assert scenarios["new_item"].users.tolist() == [4]
        assert scenarios["new_both"].users.tolist() == [3]
        # support and query come from the same cell
        assert set(scenarios["new_item"].support["item_index"].tolist()) <= set(NEW[100:114])
        assert scenarios["new_both"].support["rating"].size == 90
        assert scenarios["new_user"].support["rating"].size == 3
        # the support-size curve: the new users' support rows as a pool, their query rows kept
        assert fold.shots.support(100)["rating"].size == 3
        assert fold.shots.support(2)["rating"].size == 2
        assert np.array_equal(
            np.sort(fold.shots.query["item_index"]), np.sort(scenarios["new_user"].query["item_index"])
        )
    # repeats draw new query sets; the same seed draws the same
    assert not np.array_equal(folds[0].roles, folds[1].roles)
    again = state_folds(ratings, state, 300, MELU, repeats=2, support_cap=50, seed=3)
    assert all(np.array_equal(a.roles, b.roles) for a, b in zip(folds, again, strict=True))


def test_derive_states_follows_melu() -> None:
    rng = np.random.default_rng(0)
    n_users, n_items = 50, 200
    user = np.repeat(np.arange(n_users), 60)
    item = np.concatenate([rng.choice(n_items, 60, replace=False) for _ in range(n_users)])
    ratings = {"user_index": user, "item_index": item, "rating": np.ones(user.size)}
    year = np.where(np.arange(n_items) < 150, 1990.0, 1999.0)
    year[3] = np.nan  # no year: existing
    states = derive_states(ratings, year, MELU, seed=1)
    new_item = year[item] >= 1998
    new_users = np.unique(user[np.isin(states, (State.USER_COLD, State.USER_AND_ITEM_COLD))])
    assert new_users.size == 10  # round((1 - 0.8) * 50)
    new_user = np.isin(user, new_users)
    assert np.array_equal(states == State.USER_COLD, new_user & ~new_item)
    assert np.array_equal(states == State.ITEM_COLD, ~new_user & new_item)
    assert np.array_equal(states == State.USER_AND_ITEM_COLD, new_user & new_item)
    known = ~new_user & ~new_item
    warm_share = (states[known] == State.WARM_UP).mean()
    assert 0.08 < warm_share < 0.12  # probability 0.1 over ~1,800 ratings
    assert np.array_equal(states, derive_states(ratings, year, MELU, seed=1))
    assert not np.array_equal(states, derive_states(ratings, year, MELU, seed=2))
    with pytest.raises(ValueError, match="needs item release years"):
        derive_states(ratings, np.full(n_items, np.nan), MELU, seed=1)


USER_IDS, ITEM_IDS = ["u1", "u2", "u3"], ["i1", "i2", "i3", "i4"]
RATED = [("u1", "i1"), ("u1", "i2"), ("u2", "i1"), ("u2", "i3"), ("u3", "i4"), ("u3", "i2")]
GOOD = """user_id\titem_id\tstate
u1\ti1\tmeta_training
u1\ti2\twarm_up
u2\ti1\tuser_cold_testing
u2\ti3\tuser_and_item_cold_testing
u3\ti4\titem_cold_testing
"""


def _rated() -> dict[str, np.ndarray]:
    return {
        "user_index": np.array([USER_IDS.index(u) for u, _ in RATED]),
        "item_index": np.array([ITEM_IDS.index(i) for _, i in RATED]),
        "rating": np.full(len(RATED), 4.0),
    }


def test_read_split_file_gives_each_rating_its_state(tmp_path: Path) -> None:
    path = tmp_path / "tiny.melu_split.tsv"
    path.write_text(GOOD)
    states = read_split_file(path, _rated(), USER_IDS, ITEM_IDS)
    assert states.tolist() == [
        State.META_TRAINING,
        State.WARM_UP,
        State.USER_COLD,
        State.USER_AND_ITEM_COLD,
        State.ITEM_COLD,
        State.ABSENT,  # (u3, i2) is not listed
    ]


@pytest.mark.parametrize(
    ("change", "line", "column", "rule"),
    [
        (("u1\ti1\tmeta_training", "u9\ti1\tmeta_training"), 2, "user_id", "unknown user 'u9'"),
        (("u1\ti1\tmeta_training", "u1\ti9\tmeta_training"), 2, "item_id", "unknown item 'i9'"),
        (("u1\ti2\twarm_up", "u1\ti2\twarm"), 3, "state", "unknown state 'warm'"),
        (
            ("u3\ti4\titem_cold_testing", "u3\ti4\titem_cold_testing\nu1\ti1\twarm_up"),
            7,
            None,
            "also on line 2",
        ),
        (("u3\ti4\titem_cold_testing", "u3\ti3\titem_cold_testing"), 6, None, "no rating of item 'i3'"),
        (("u1\ti2\twarm_up", "u1\ti2\tuser_cold_testing"), 2, "user_id", "'u1' is new .* line 3"),
        (
            ("u1\ti2\twarm_up", "u1\ti2\titem_cold_testing\nu3\ti2\tmeta_training"),
            4,
            "item_id",
            "'i2' is new .* line 3",
        ),
        (("user_id\titem_id\tstate", "user\titem\tstate"), 1, None, "header must be"),
    ],
)
def test_bad_split_file_names_file_line_and_rule(
    tmp_path: Path, change: tuple[str, str], line: int, column: str | None, rule: str
) -> None:
    path = tmp_path / "bad.melu_split.tsv"
    path.write_text(GOOD.replace(*change, 1))
    with pytest.raises(DataError, match=rule) as caught:
        read_split_file(path, _rated(), USER_IDS, ITEM_IDS)
    assert (Path(caught.value.file).name, caught.value.row, caught.value.column) == (path.name, line, column)


def test_melu_protocols_may_run_one_repeat_kfold_needs_two() -> None:
    assert load_params(None, ["eval.protocol=melu_split", "eval.folds=1"]).eval.folds == 1
    with pytest.raises(ValueError, match="kfold needs folds >= 2"):
        load_params(None, ["eval.folds=1"])


def _ml1m(mirror: Path) -> tuple[dict[str, np.ndarray], list[str], list[str], np.ndarray]:
    root = mirror / "ml-1m"
    inter = pd.read_csv(root / "ml-1m.inter", sep="\t", dtype=str, usecols=[0, 1])
    inter.columns = ["user_id", "item_id"]
    items = pd.read_csv(root / "ml-1m.item", sep="\t", dtype=str, usecols=[0, 2])
    items.columns = ["item_id", "year"]
    user_ids = sorted(inter["user_id"].unique())
    item_ids = sorted(set(items["item_id"]) | set(inter["item_id"]))
    ratings = {
        "user_index": pd.Index(user_ids).get_indexer(inter["user_id"]),
        "item_index": pd.Index(item_ids).get_indexer(inter["item_id"]),
        "rating": np.ones(len(inter)),
    }
    year = pd.to_numeric(items.set_index("item_id")["year"], errors="coerce").reindex(item_ids)
    return ratings, user_ids, item_ids, year.to_numpy(np.float64)


def test_derived_states_match_melus_published_split(data_mirror: Path) -> None:
    """Protocol ``melu`` re-derives MeLU's ML-1M split: per state, the users within 1 % (the new users
    exactly: 20 % of 6,040), the items within 3 %, the users whose cell makes a task (13-100 ratings)
    within 5 %, the ratings within 15 % (new users are drawn at random, and their activity varies)."""
    if not (data_mirror / "ml-1m" / "ml-1m.melu_split.tsv").is_file():
        pytest.skip("MovieLens-1M with MeLU's split not in the mirror")
    ratings, user_ids, item_ids, year = _ml1m(data_mirror)
    published = read_split_file(data_mirror / "ml-1m" / "ml-1m.melu_split.tsv", ratings, user_ids, item_ids)
    derived = derive_states(ratings, year, MELU, seed=0)
    user, item = ratings["user_index"], ratings["item_index"]

    def sizes(states: np.ndarray, s: State) -> tuple[int, int, int, int]:
        cell = np.bincount(user[states == s])
        tasks = int(((cell >= 13) & (cell <= 100)).sum())
        return (
            np.unique(user[states == s]).size,
            np.unique(item[states == s]).size,
            tasks,
            int((states == s).sum()),
        )

    assert (published == State.ABSENT).sum() == 0
    for s in State:
        if s == State.ABSENT:
            continue
        want, got = sizes(published, s), sizes(derived, s)
        for (w, g), tolerance in zip(zip(want, got, strict=True), (0.01, 0.03, 0.05, 0.15), strict=True):
            assert abs(g - w) <= tolerance * w, (s.name, want, got)
    assert np.unique(user[derived == State.USER_COLD]).size == 1208
