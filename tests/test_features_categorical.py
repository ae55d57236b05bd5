"""Categorical codes on hand-made frames equal hand-computed codes; serving-time encoding agrees."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.features.categorical import AGE_EDGES, encode_items, encode_user, encode_users


def _users() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": pd.array(["1", "2", "3", "4"], dtype="str"),
            "age": pd.array([24, 53, None, 17], dtype="Int64"),
            "gender": pd.array(["M", "F", "M", None], dtype="str"),
            "occupation": pd.array(["technician", "other", "writer", " "], dtype="str"),
            "zip_code": pd.array(["85711", "94043", "T8H1N", "05201"], dtype="str"),
            "n_kids": pd.array([0, 2, 1, None], dtype="Int64"),
        }
    )


def _vocab(users: pd.DataFrame) -> dict:
    enc = encode_users(users)
    return {"user_fields": enc.fields, "user_vocab": enc.vocab, "user_bins": enc.bins}


def test_user_codes_by_hand() -> None:
    enc = encode_users(_users())
    assert enc.fields == ["age", "gender", "occupation", "zip_code", "n_kids"]
    assert enc.bins == {"age": list(AGE_EDGES)}
    assert enc.vocab["age"][:2] == ["[1, 18)", "[18, 25)"] and enc.vocab["age"][-1] == "[56, inf)"
    assert enc.vocab["gender"] == ["F", "M"]
    assert enc.vocab["occupation"] == ["other", "technician", "writer"]
    assert enc.vocab["zip_code"] == ["0", "8", "9", "T"]
    assert enc.vocab["n_kids"] == ["0", "1", "2"]
    # age 24 → [18,25) = 2, 53 → [50,56) = 6, null → 0, 17 → [1,18) = 1
    expected = np.array(
        [
            [2, 2, 2, 2, 1],
            [6, 1, 1, 3, 3],
            [0, 2, 3, 4, 2],
            [1, 0, 0, 1, 0],
        ]
    )
    np.testing.assert_array_equal(enc.codes, expected)
    assert enc.codes.dtype == np.int64


def test_many_valued_integers_get_quantile_bins() -> None:
    users = pd.DataFrame(
        {"user_id": [str(i) for i in range(30)], "income": pd.array(range(30), dtype="Int64")}
    )
    enc = encode_users(users)
    # linear quantiles of 0..29 at 0, 1/8, ..., 7/8 = 29 * k / 8
    np.testing.assert_allclose(enc.bins["income"], [29 * k / 8 for k in range(8)])
    assert enc.codes[[0, 3, 4, 29], 0].tolist() == [1, 1, 2, 8]


def test_encode_user_matches_training_rows_and_maps_unseen_to_zero() -> None:
    users = _users()
    vocab = _vocab(users)
    enc = encode_users(users)
    for row, record in enumerate(users.drop(columns="user_id").to_dict("records")):
        np.testing.assert_array_equal(encode_user(record, vocab), enc.codes[row])
    new = {"age": 30, "gender": "X", "occupation": "writer", "zip_code": "12345", "n_kids": 2.0}
    # age 30 → [25,35) = 3; gender X unseen → 0; zip "1" unseen → 0; n_kids 2.0 ≡ "2" → 3
    np.testing.assert_array_equal(encode_user(new, vocab), [3, 0, 3, 0, 3])
    np.testing.assert_array_equal(encode_user({}, vocab), [0, 0, 0, 0, 0])
    np.testing.assert_array_equal(encode_user({"age": "not a number", "extra": 1}, vocab), [0, 0, 0, 0, 0])


def test_users_with_only_ids_have_no_fields() -> None:
    enc = encode_users(pd.DataFrame({"user_id": ["1", "2"]}))
    assert enc.fields == [] and enc.codes.shape == (2, 0)


def test_item_decade_and_genre_multi_hot_by_hand() -> None:
    items = pd.DataFrame(
        {
            "item_id": ["a", "b", "c", "d"],
            "year": pd.array([1995, 1964, None, 2001], dtype="Int64"),
            "genres": pd.array(["Animation|Comedy", "", None, "Comedy|Drama"], dtype="str"),
        },
        index=[10, 11, 12, 13],
    )
    enc, multi, multi_vocab = encode_items(items)
    assert enc.fields == ["decade"] and enc.vocab == {"decade": ["1960", "1990", "2000"]}
    assert enc.codes[:, 0].tolist() == [2, 1, 0, 3]
    assert multi_vocab == ["Animation", "Comedy", "Drama"]
    np.testing.assert_array_equal(multi, [[1, 1, 0], [0, 0, 0], [0, 0, 0], [0, 1, 1]])
    assert multi.dtype == np.float32
