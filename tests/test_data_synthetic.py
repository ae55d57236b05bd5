"""The synthetic source: deterministic for a seed, shaped like the real tables, with planted structure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.data import generate_synthetic, ingest, load_tables
from pipeline.data.synthetic import GLOBAL_MEAN
from pipeline.params import Params, SyntheticParams
from pipeline.paths import Paths

PARAMS = SyntheticParams(n_users=300, n_items=120, n_factors=4, min_ratings=20, max_ratings=40, noise=0.3)


@pytest.fixture(scope="module")
def data():  # type: ignore[no-untyped-def]
    return generate_synthetic(PARAMS, seed=7)


def test_same_seed_same_tables_other_seed_other_tables() -> None:
    small = SyntheticParams()
    a, b, c = generate_synthetic(small, 1), generate_synthetic(small, 1), generate_synthetic(small, 2)
    for name in ("ratings", "users", "items"):
        pd.testing.assert_frame_equal(getattr(a.tables, name), getattr(b.tables, name))
    assert not a.tables.ratings.equals(c.tables.ratings)


def test_tables_follow_the_contract(data) -> None:  # type: ignore[no-untyped-def]
    ratings, users, items = data.tables.ratings, data.tables.users, data.tables.items
    assert {c: str(t) for c, t in ratings.dtypes.items()} == {
        "user_id": "str",
        "item_id": "str",
        "rating": "float64",
        "timestamp": "Int64",
    }
    assert users.columns.tolist() == ["user_id", "age", "gender", "occupation"]
    assert items.columns.tolist() == ["item_id", "title", "year", "genres", "description"]
    assert len(users) == PARAMS.n_users and len(items) == PARAMS.n_items
    per_user = ratings.groupby("user_id").size()
    assert per_user.min() >= PARAMS.min_ratings and per_user.max() <= PARAMS.max_ratings
    assert not ratings.duplicated(["user_id", "item_id"]).any()
    assert set(ratings["rating"]) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert ratings.groupby("user_id")["timestamp"].apply(lambda t: t.is_monotonic_increasing).all()
    assert users["user_id"].is_unique and items["item_id"].is_unique


def test_ratings_follow_the_planted_factors(data) -> None:  # type: ignore[no-untyped-def]
    ratings = data.tables.ratings
    u = ratings["user_id"].str[1:].astype(int).to_numpy() - 1
    i = ratings["item_id"].str[1:].astype(int).to_numpy() - 1
    signal = (
        GLOBAL_MEAN
        + data.user_bias[u]
        + data.item_bias[i]
        + np.einsum("nk,nk->n", data.user_factors[u], data.item_factors[i])
    )
    expected = np.clip(np.rint(signal), 1, 5)
    assert np.corrcoef(signal, ratings["rating"])[0, 1] > 0.8
    assert np.mean(np.abs(expected - ratings["rating"].to_numpy())) < 0.3  # noise 0.3 rarely moves a rating


def r_squared(features: np.ndarray, targets: np.ndarray) -> float:
    """Share of the targets' variance a least-squares fit on ``features`` (plus intercept) explains."""
    design = np.column_stack([features, np.ones(len(features))])
    coef, *_ = np.linalg.lstsq(design, targets, rcond=None)
    residual = targets - design @ coef
    return float(1 - residual.var(axis=0).sum() / targets.var(axis=0).sum())


def beyond_chance(features: np.ndarray, targets: np.ndarray) -> float:
    """R² of the real pairing minus R² after shuffling rows (what many features explain by chance)."""
    shuffled = targets[np.random.default_rng(0).permutation(len(targets))]
    return r_squared(features, targets) - r_squared(features, shuffled)


def test_side_information_carries_the_factors(data) -> None:  # type: ignore[no-untyped-def]
    users, items = data.tables.users, data.tables.items
    assert np.corrcoef(users["age"].to_numpy(float), data.user_factors[:, 0])[0, 1] > 0.8
    occupation = pd.get_dummies(users["occupation"]).to_numpy(float)
    assert beyond_chance(occupation, data.user_factors) > 0.3
    genres = items["genres"].str.get_dummies("|").to_numpy(float)
    assert beyond_chance(genres, data.item_factors) > 0.4
    words = items["description"].str.lower().str.get_dummies(" ").to_numpy(float)
    assert beyond_chance(words, data.item_factors) > 0.4  # the item text alone explains the factors
    assert np.corrcoef(items["year"].to_numpy(float), data.item_factors[:, 0])[0, 1] > 0.8


def test_ingest_synthetic_writes_the_tables(tmp_path: Path) -> None:
    params = Params.model_validate({"data": {"source": "synthetic"}, "seed": 3})
    counts = ingest(params, Paths(tmp_path))
    tables = load_tables(Paths(tmp_path))
    assert counts == {"ratings": len(tables.ratings), "users": 120, "items": 80}
    pd.testing.assert_frame_equal(tables.ratings, generate_synthetic(params.data.synthetic, 3).tables.ratings)
    ingest(params, Paths(tmp_path / "again"))
    for name in ("ratings", "users", "items"):  # byte-identical files: DVC sees no change on a rerun
        assert Paths(tmp_path / "again").table(name).read_bytes() == Paths(tmp_path).table(name).read_bytes()
