"""Feedback batches: reading CSV/JSONL, content-hash idempotency, the GX suite on new rows, the merge that
``ingest`` does, and the validate stage on the merged tables (tiny GroupLens fixture: 5 users, 6 items)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from pipeline.data import ingest
from pipeline.data.errors import DataError
from pipeline.data.ingest import read_tables
from pipeline.data.schema import RATINGS
from pipeline.feedback.batches import (
    add_batch,
    content_hash,
    list_batches,
    mark_trained,
    pending_ratings,
    read_batches,
    read_feedback,
    trained_through,
)
from pipeline.feedback.merge import merge_feedback
from pipeline.feedback.validate import validate_feedback
from pipeline.params import Params
from pipeline.paths import Paths
from pipeline.validation import DataValidationError, validate

FIXTURE = Path(__file__).parent / "data" / "fixtures" / "ml-100k"
ROWS = [
    ("1", "4", 5.0, 890000000),  # user 1 had not rated item 4
    ("2", "1", 5.0, 890000001),  # user 2 rated item 1 with 2 before: a re-rating, later
    ("new-user", "3", 4.0, 890000002),  # a brand-new user
    ("new-user", "6", 1.0, 890000003),
]


def params() -> Params:
    return Params.model_validate({"data": {"path": str(FIXTURE)}})


def write_csv(path: Path, rows: list[tuple], header: str = "user_id,item_id,rating,timestamp") -> Path:
    path.write_text(header + "\n" + "".join(f"{u},{i},{r},{t}\n" for u, i, r, t in rows))
    return path


def write_jsonl(path: Path, rows: list[tuple]) -> Path:
    keys = ("user_id", "item_id", "rating", "timestamp")
    path.write_text("".join(json.dumps(dict(zip(keys, row, strict=True))) + "\n" for row in rows))
    return path


# -- reading ------------------------------------------------------------------------------------------


def test_csv_and_jsonl_read_to_the_same_typed_rows(tmp_path: Path) -> None:
    from_csv, lines = read_feedback(write_csv(tmp_path / "a.csv", ROWS))
    from_jsonl, jsonl_lines = read_feedback(write_jsonl(tmp_path / "a.jsonl", ROWS))
    pd.testing.assert_frame_equal(from_csv, from_jsonl)
    assert {c: str(t) for c, t in from_csv.dtypes.items()} == RATINGS
    assert from_csv["user_id"].tolist() == ["1", "2", "new-user", "new-user"]
    assert from_csv["rating"].tolist() == [5.0, 5.0, 4.0, 1.0]
    assert lines.tolist() == [2, 3, 4, 5] and jsonl_lines.tolist() == [1, 2, 3, 4]


def test_column_order_is_free_and_blank_lines_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "b.csv"
    path.write_text("rating,timestamp,user_id,item_id\n5,890000000,1,4\n\n4,890000002,new-user,3\n")
    ratings, lines = read_feedback(path)
    assert ratings[["user_id", "item_id", "rating"]].values.tolist() == [
        ["1", "4", 5.0],
        ["new-user", "3", 4.0],
    ]
    assert lines.tolist() == [2, 4]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("a.csv", "user_id,item_id,rating\n1,2,3\n", r"a.csv line 1, column timestamp: header must name"),
        ("a.csv", "user_id,item_id,rating,timestamp,extra\n", r"a.csv line 1, column extra: header"),
        ("a.csv", "user_id,item_id,rating,timestamp\n", r"a.csv: header only"),
        (
            "a.csv",
            "user_id,item_id,rating,timestamp\n1,2,five,3\n",
            r"a.csv line 2, column rating: not a number",
        ),
        ("a.csv", "user_id,item_id,rating,timestamp\n1,2,5,3\n1,,4,5\n", r"line 3, column item_id: missing"),
        (
            "a.csv",
            "user_id,item_id,rating,timestamp\n1,2,5,3.5\n",
            r"line 2, column timestamp: not an integer",
        ),
        ("a.csv", "user_id,item_id,rating,timestamp\n1,2,5\n", r"line 2, column timestamp: expected 4"),
        (
            "a.jsonl",
            '{"user_id": "1", "item_id": "2", "rating": 5, "timestamp": 1}\n{"user_id": 1,\n',
            r"line 2",
        ),
        ("a.jsonl", '["1", "2", 5, 1]\n', r"a.jsonl line 1: each line must be a JSON object"),
        ("a.jsonl", '{"user_id": "1", "item": "2"}\n', r"line 1, column item: unknown field"),
        (
            "a.jsonl",
            '{"user_id": "1", "item_id": "2", "rating": [5], "timestamp": 1}\n',
            r"column rating: must be",
        ),
        (
            "a.jsonl",
            '{"user_id": "1", "item_id": "2", "timestamp": 1}\n',
            r"line 1, column rating: missing value",
        ),
        ("a.txt", "1,2,3,4\n", r"a.txt: unknown format"),
        ("a.csv", "", r"a.csv: empty file"),
    ],
)
def test_bad_files_are_rejected_naming_file_line_and_column(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(DataError, match=message):
        read_feedback(tmp_path / name)


# -- batches ------------------------------------------------------------------------------------------


def test_content_hash_ignores_order_and_format(tmp_path: Path) -> None:
    ratings, _ = read_feedback(write_csv(tmp_path / "a.csv", ROWS))
    shuffled, _ = read_feedback(write_jsonl(tmp_path / "b.jsonl", ROWS[::-1]))
    changed, _ = read_feedback(write_csv(tmp_path / "c.csv", [*ROWS[:3], ("new-user", "6", 2.0, 890000003)]))
    assert content_hash(ratings) == content_hash(shuffled)
    assert content_hash(ratings) != content_hash(changed)
    assert len(content_hash(ratings)) == 64


def test_adding_the_same_ratings_twice_stores_one_batch(tmp_path: Path) -> None:
    folder = tmp_path / "feedback"
    ratings, _ = read_feedback(write_csv(tmp_path / "a.csv", ROWS))
    first, added = add_batch(ratings, folder)
    assert added and first.seq == 1 and first.rows == 4
    assert first.name == f"000001-{content_hash(ratings)[:16]}.parquet"
    stamp = first.path.stat().st_mtime_ns
    again, added_again = add_batch(ratings.iloc[::-1], folder)
    assert not added_again and again == first and first.path.stat().st_mtime_ns == stamp
    second, _ = add_batch(ratings.iloc[:1].assign(rating=1.0), folder)
    assert second.seq == 2
    (folder / "notes.txt").write_text("not a batch")
    assert [b.seq for b in list_batches(folder)] == [1, 2]
    merged = read_batches(folder)
    assert len(merged) == 5 and {c: str(t) for c, t in merged.dtypes.items()} == RATINGS
    with pytest.raises(ValueError, match="no ratings to add"):
        add_batch(ratings.iloc[:0], folder)


def test_pending_ratings_count_batches_since_the_last_training(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    assert trained_through(paths) == 0 and pending_ratings(paths) == 0
    ratings, _ = read_feedback(write_csv(tmp_path / "a.csv", ROWS))
    add_batch(ratings, paths.feedback)
    assert pending_ratings(paths) == 4
    mark_trained(paths, 1)
    add_batch(ratings.iloc[:1].assign(rating=2.0), paths.feedback)
    assert (trained_through(paths), pending_ratings(paths)) == (1, 1)


# -- merge into the ingested tables ---------------------------------------------------------------------


def test_merge_appends_ratings_replaces_rerated_items_and_adds_new_users(tmp_path: Path) -> None:
    tables = read_tables(params(), Paths(tmp_path))
    assert merge_feedback(tables, tmp_path / "feedback") is tables  # no batch: nothing changes
    ratings, _ = read_feedback(write_csv(tmp_path / "a.csv", ROWS))
    add_batch(ratings, tmp_path / "feedback")
    merged = merge_feedback(tables, tmp_path / "feedback")
    assert len(merged.ratings) == 15 + 4 - 1  # user 2's earlier rating of item 1 is replaced
    pair = merged.ratings[(merged.ratings["user_id"] == "2") & (merged.ratings["item_id"] == "1")]
    assert pair[["rating", "timestamp"]].values.tolist() == [[5.0, 890000001]]
    assert merged.ratings.dtypes.to_dict() == tables.ratings.dtypes.to_dict()
    assert merged.users["user_id"].tolist() == ["1", "2", "3", "4", "5", "new-user"]
    new = merged.users.iloc[-1]
    assert new[["age", "gender", "occupation", "zip_code"]].isna().all()
    assert merged.users.dtypes.to_dict() == tables.users.dtypes.to_dict()
    assert merged.items is tables.items


def test_an_older_feedback_rating_does_not_replace_a_newer_one(tmp_path: Path) -> None:
    tables = read_tables(params(), Paths(tmp_path))
    add_batch(read_feedback(write_csv(tmp_path / "a.csv", [("2", "1", 5.0, 1)]))[0], tmp_path / "fb")
    merged = merge_feedback(tables, tmp_path / "fb")
    pair = merged.ratings[(merged.ratings["user_id"] == "2") & (merged.ratings["item_id"] == "1")]
    assert pair["rating"].tolist() == [2.0] and len(merged.ratings) == 15


def test_duplicates_within_the_source_are_left_for_validate(tmp_path: Path) -> None:
    tables = read_tables(params(), Paths(tmp_path))
    doubled = tables.__class__(
        pd.concat([tables.ratings, tables.ratings.iloc[:1]], ignore_index=True), tables.users, tables.items
    )
    add_batch(read_feedback(write_csv(tmp_path / "a.csv", ROWS[:1]))[0], tmp_path / "fb")
    assert len(merge_feedback(doubled, tmp_path / "fb").ratings) == 17


def test_ingest_merges_feedback_and_validate_passes_on_the_result(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    add_batch(read_feedback(write_csv(tmp_path / "a.csv", ROWS))[0], paths.feedback)
    counts = ingest(params(), paths)
    assert counts == {"ratings": 18, "users": 6, "items": 6}
    report = validate(params(), paths)
    assert report.success and report.rows == {"ratings": 18, "users": 6, "items": 6}


# -- the ratings suite on new rows (Great Expectations) -------------------------------------------------


@pytest.fixture
def ingested(tmp_path: Path) -> Paths:
    paths = Paths(tmp_path / "project")
    ingest(params(), paths)
    return paths


def test_good_feedback_passes_the_ratings_suite(ingested: Paths, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "a.csv", ROWS)
    ratings, lines = read_feedback(path)
    report = validate_feedback(ratings, lines, path, params(), ingested)
    assert report.success and report.rows == {"ratings": 4} and report.evaluated >= 10


def test_bad_feedback_fails_the_suite_naming_expectations_and_lines(ingested: Paths, tmp_path: Path) -> None:
    rows = [*ROWS, ("3", "99", 4.0, 1), ("4", "2", 7.0, 2), ("1", "4", 3.0, 3)]
    path = write_csv(tmp_path / "bad.csv", rows)
    ratings, lines = read_feedback(path)
    with pytest.raises(DataValidationError) as caught:
        validate_feedback(ratings, lines, path, params(), ingested)
    message = str(caught.value)
    expectations = {(f.column, f.expectation) for f in caught.value.report.failures}
    assert expectations == {
        ("item_id", "expect_column_values_to_be_in_set"),
        ("rating", "expect_column_values_to_be_between"),
        ("user_id,item_id", "expect_compound_columns_to_be_unique"),
    }
    assert "bad.csv line 6: unknown item_id" in message
    assert "bad.csv line 7: rating outside [1, 5]" in message
    assert "bad.csv line 8: duplicate (user_id, item_id)" in message  # older than line 2's rating


def test_validation_needs_the_ingested_items(tmp_path: Path) -> None:
    ratings, lines = read_feedback(write_csv(tmp_path / "a.csv", ROWS))
    with pytest.raises(FileNotFoundError, match=r"items.parquet not found: run the 'ingest' stage first"):
        validate_feedback(ratings, lines, tmp_path / "a.csv", params(), Paths(tmp_path / "empty"))


def test_every_problem_of_a_feedback_file_is_named_at_once(ingested: Paths, tmp_path: Path) -> None:
    """A value that does not parse, an unknown item and a rating out of range: one error lists all three,
    in line order, each with the file's line (and column where it is about one value)."""
    path = tmp_path / "bad.csv"
    path.write_text("user_id,item_id,rating,timestamp\nu9,1,five,1\nu9,2,4,2\nu9,99,4,3\nu9,3,9,4\nu9,4,,5\n")
    problems: list[DataError] = []
    ratings, lines = read_feedback(path, problems)
    assert lines.tolist() == [3, 4, 5]  # lines 2 and 6 hold values that do not parse
    with pytest.raises(DataValidationError) as caught:
        validate_feedback(ratings, lines, path, params(), ingested, problems)
    listed = [line.strip() for line in str(caught.value).splitlines()[1:4]]
    assert listed == [
        "bad.csv line 2, column rating: not a number ('five')",
        "bad.csv line 4: unknown item_id",
        "bad.csv line 5: rating outside [1, 5]",
    ]
    assert "bad.csv line 6, column rating: missing value" in str(caught.value)
    assert str(caught.value).startswith(f"{path}: 4 problem(s) in the new ratings; nothing was stored")
