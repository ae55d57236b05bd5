"""The whole features stage: a tiny build round-trips through the store; MovieLens-100k end to end."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.features.build import build_features, compute_features
from pipeline.features.categorical import encode_user
from pipeline.features.encoder import DEFAULT_MODEL
from pipeline.features.store import load_feature_set
from pipeline.io import write_parquet
from pipeline.params import Params, load_params
from pipeline.paths import Paths


def _tables() -> dict[str, pd.DataFrame]:
    users = pd.DataFrame(
        {
            "user_id": pd.array(["2", "10", "1"], dtype="str"),
            "age": pd.array([24, 61, None], dtype="Int64"),
            "gender": pd.array(["M", "F", "F"], dtype="str"),
            "occupation": pd.array(["writer", "other", "writer"], dtype="str"),
            "zip_code": pd.array(["85711", None, "T8H1N"], dtype="str"),
        }
    )
    items = pd.DataFrame(
        {
            "item_id": pd.array(["b", "a", "c"], dtype="str"),
            "title": pd.array(["Heat", "Toy Story", "Alien"], dtype="str"),
            "year": pd.array([1995, 1995, None], dtype="Int64"),
            "genres": pd.array(["Crime|Thriller", "Animation|Comedy", ""], dtype="str"),
            "plot": pd.array([None, None, "In space no one can hear you scream."], dtype="str"),
        }
    )
    rng = np.random.default_rng(0)
    pairs = [(u, i) for u in ("1", "2", "10") for i in ("a", "b", "c")] * 2
    ratings = pd.DataFrame(
        {
            "user_id": pd.array([u for u, _ in pairs], dtype="str"),
            "item_id": pd.array([i for _, i in pairs], dtype="str"),
            "rating": rng.integers(1, 6, len(pairs)).astype(np.float64),
            "timestamp": pd.array([*range(len(pairs) - 1), None], dtype="Int64"),
        }
    )
    return {"ratings": ratings, "users": users, "items": items}


def _write(paths: Paths, tables: dict[str, pd.DataFrame]) -> None:
    for name, frame in tables.items():
        write_parquet(frame, paths.validated_table(name))


def test_tiny_build_round_trips_and_reuses_the_cache(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    params = load_params(None, ["features.query_size=2", "seed=3"])
    tables = _tables()
    _write(paths, tables)
    fs = build_features(params, paths)
    loaded = load_feature_set(paths.features)

    v = fs.vocab
    assert v["user_ids"] == ["1", "2", "10"] and v["item_ids"] == ["a", "b", "c"]
    assert v["item_titles"] == ["Toy Story", "Heat", "Alien"]
    assert v["user_fields"] == ["age", "gender", "occupation", "zip_code"] and v["item_fields"] == ["decade"]
    assert v["multi_vocab"] == ["Animation", "Comedy", "Crime", "Thriller"]
    assert v["text_model"] == DEFAULT_MODEL and v["text_template"] == params.features.text_template
    assert (v["rating_min"], v["rating_max"]) == (1.0, 5.0)
    # users 1, 2, 10: age null/24/61 → 0/2/7; gender F/M/F → 1/2/1; occupation writer/writer/other → 2/2/1;
    # zip T/8/null → 2/1/0
    np.testing.assert_array_equal(fs.user_cats, [[0, 1, 2, 2], [2, 2, 2, 1], [7, 1, 1, 0]])
    np.testing.assert_array_equal(fs.item_cats, [[1], [1], [0]])
    np.testing.assert_array_equal(fs.item_multi, [[1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 0, 0]])
    assert fs.item_text.shape == (3, 384)
    np.testing.assert_array_equal(
        encode_user({"age": 61, "gender": "F", "occupation": "other"}, v), [7, 1, 1, 0]
    )

    for name in ("user_cats", "item_cats", "item_multi", "item_text"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(fs, name))
        assert getattr(loaded, name).dtype == getattr(fs, name).dtype
    assert loaded.vocab == fs.vocab
    for table in ("ratings", "tasks"):
        assert getattr(loaded, table).keys() == getattr(fs, table).keys()
        for key, column in getattr(fs, table).items():
            np.testing.assert_array_equal(getattr(loaded, table)[key], column)
            assert getattr(loaded, table)[key].dtype == column.dtype

    r = fs.ratings
    assert r["rating"].size == 18 and int((r["timestamp"] == 0).sum()) == 2  # t=0 and the null
    source = tables["ratings"].assign(timestamp=tables["ratings"]["timestamp"].fillna(0))
    got = {
        (v["user_ids"][u], v["item_ids"][i], float(x), int(t))
        for u, i, x, t in zip(r["user_index"], r["item_index"], r["rating"], r["timestamp"], strict=True)
    }
    assert got == set(source.itertuples(index=False, name=None))
    # each user has 6 ratings > query_size 2: exactly 2 query ratings, the rest support
    assert np.bincount(fs.tasks["user_index"], weights=fs.tasks["is_query"]).tolist() == [2, 2, 2]
    np.testing.assert_array_equal(fs.tasks["item_index"], r["item_index"])

    _, n_again = compute_features(
        tables["ratings"], tables["users"], tables["items"], params, paths.embedding_cache
    )
    assert n_again == 0
    items = tables["items"].copy()
    items.loc[0, "title"] = "Heat (director's cut)"
    fs_changed, n_changed = compute_features(
        tables["ratings"], tables["users"], items, params, paths.embedding_cache
    )
    assert n_changed == 1
    np.testing.assert_array_equal(fs_changed.item_text[[0, 2]], fs.item_text[[0, 2]])
    assert not np.allclose(fs_changed.item_text[1], fs.item_text[1])


def test_same_seed_same_tasks_other_seed_other_tasks(tmp_path: Path) -> None:
    tables = _tables()

    def is_query(seed: int) -> np.ndarray:
        return compute_features(*tables.values(), Params(seed=seed), tmp_path)[0].tasks["is_query"]

    np.testing.assert_array_equal(is_query(1), is_query(1))
    assert not np.array_equal(is_query(1), is_query(2))


def test_missing_table_and_unknown_ids_are_named(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"ratings\.parquet not found: run the validate stage"):
        build_features(Params(), paths)
    tables = _tables()
    tables["ratings"].loc[4, "item_id"] = "zz"
    _write(paths, tables)
    with pytest.raises(
        ValueError, match=r"ratings\.parquet row 4: column item_id value 'zz' is not in items"
    ):
        build_features(Params(), paths)
    assert not paths.features.exists()


def read_movielens_100k(folder: Path) -> dict[str, pd.DataFrame]:
    """The RecBole atomic files as the ingest stage's typed tables."""
    ratings = pd.read_csv(folder / "ml-100k.inter", sep="\t", dtype=str)
    users = pd.read_csv(folder / "ml-100k.user", sep="\t", dtype=str)
    items = pd.read_csv(folder / "ml-100k.item", sep="\t", dtype=str, quoting=3)
    strip = {c: c.split(":")[0] for frame in (ratings, users, items) for c in frame.columns}
    ratings, users, items = (f.rename(columns=strip) for f in (ratings, users, items))
    return {
        "ratings": pd.DataFrame(
            {
                "user_id": ratings["user_id"],
                "item_id": ratings["item_id"],
                "rating": ratings["rating"].astype("float64"),
                "timestamp": pd.to_numeric(ratings["timestamp"]).astype("Int64"),
            }
        ),
        "users": users.assign(age=pd.to_numeric(users["age"]).astype("Int64")),
        "items": pd.DataFrame(
            {
                "item_id": items["item_id"],
                "title": items["movie_title"],
                "year": pd.to_numeric(items["release_year"], errors="coerce").astype("Int64"),
                "genres": items["class"].fillna("").str.split().str.join("|").astype("str"),
            }
        ),
    }


@pytest.mark.slow
def test_movielens_100k_end_to_end(tmp_path: Path, data_mirror: Path) -> None:
    paths = Paths(tmp_path)
    _write(paths, read_movielens_100k(data_mirror / "ml-100k"))
    params = Params()
    start = time.perf_counter()
    fs = build_features(params, paths)
    first = time.perf_counter() - start
    start = time.perf_counter()
    again = build_features(params, paths)
    second = time.perf_counter() - start
    print(f"ml-100k features: first build {first:.1f} s, cache-hit rebuild {second:.1f} s")

    assert (fs.n_users, fs.n_items, fs.ratings["rating"].size) == (943, 1682, 100_000)
    assert fs.vocab["user_fields"] == ["age", "gender", "occupation", "zip_code"]
    # + unknown: 7 age groups, 2 genders, 21 occupations, 19 zip first characters (0-9 and 9 letters)
    assert fs.user_cards == [8, 3, 22, 20]
    assert fs.text_dim == 384 and fs.n_multi == 19
    assert int(fs.tasks["is_query"].sum()) == 943 * 10  # every MovieLens-100k user has >= 20 ratings
    np.testing.assert_array_equal(again.item_text, fs.item_text)
    np.testing.assert_array_equal(again.tasks["is_query"], fs.tasks["is_query"])
    assert len(list(paths.embedding_cache.rglob("*.npz"))) == 1
    assert first < 120 and second < first
