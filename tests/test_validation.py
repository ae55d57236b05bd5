"""Validate: GX suites over the ingested tables, readable failures, quarantine of bad ratings rows."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.data import ingest
from pipeline.io import write_parquet
from pipeline.params import Params
from pipeline.paths import Paths
from pipeline.validation import DataValidationError, ValidationReport, validate

FIXTURE = Path(__file__).parent / "data" / "fixtures" / "ml-100k"  # 15 ratings, 5 users, 6 items


def tiny_params(**validate_settings: object) -> Params:
    return Params.model_validate({"data": {"path": str(FIXTURE)}, "validate": validate_settings})


@pytest.fixture
def tiny(tmp_path: Path) -> Paths:
    paths = Paths(tmp_path)
    ingest(tiny_params(), paths)
    return paths


def edit(paths: Paths, table: str, change) -> pd.DataFrame:  # type: ignore[no-untyped-def]
    frame = change(pd.read_parquet(paths.table(table)))
    write_parquet(frame, paths.table(table))
    return frame


def failures_of(paths: Paths, params: Params | None = None) -> tuple[set[tuple[str, str | None, str]], str]:
    with pytest.raises(DataValidationError) as caught:
        validate(params or tiny_params(), paths)
    report = caught.value.report
    assert report is not None and not report.success
    return {(f.table, f.column, f.expectation) for f in report.failures}, str(caught.value)


def test_movielens_100k_passes(data_mirror: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METAREC_DATA_MIRROR", str(data_mirror))
    paths = Paths(tmp_path)
    ingest(Params(), paths)
    report = validate(Params(), paths)
    assert report.success and report.failures == ()
    assert report.rows == {"ratings": 100_000, "users": 943, "items": 1682}
    assert report.evaluated == 28  # ratings 12, users 8, items 8
    saved = json.loads((paths.validation_reports / "result.json").read_text())
    assert saved["success"] is True and saved["great_expectations"]["success"] is True
    assert len(saved["great_expectations"]["validation_results"]) == 3
    index = paths.validation_reports / "docs" / "index.html"
    assert index == report.docs_path and "ratings" in index.read_text()
    assert list((paths.validation_reports / "docs" / "validations").rglob("*.html"))


def test_rating_out_of_range(tiny: Paths) -> None:
    def plant(r: pd.DataFrame) -> pd.DataFrame:
        r.loc[[2, 9], "rating"] = [7.0, 0.0]
        return r

    edit(tiny, "ratings", plant)
    found, message = failures_of(tiny)
    assert found == {("ratings", "rating", "expect_column_values_to_be_between")}
    assert message.splitlines()[1].strip() == (
        "u.data lines 3, 10, column rating: expect_column_values_to_be_between [1.0, 5.0] failed for "
        "2 of 15 rows, e.g. 7.0, 0.0"
    )


def test_duplicate_pair(tiny: Paths) -> None:
    edit(tiny, "ratings", lambda r: pd.concat([r, r.iloc[[4]].assign(rating=2.0)], ignore_index=True))
    found, message = failures_of(tiny)
    assert found == {("ratings", "user_id,item_id", "expect_compound_columns_to_be_unique")}
    assert (
        "ratings.parquet rows 4, 15, columns user_id, item_id: expect_compound_columns_to_be_unique "
        "failed for 2 of 16 rows, e.g. (user_id='2', item_id='4')"
    ) in message


def test_unknown_item(tiny: Paths) -> None:
    def plant(r: pd.DataFrame) -> pd.DataFrame:
        r.loc[3, "item_id"] = "999"
        return r

    edit(tiny, "ratings", plant)
    found, message = failures_of(tiny)
    assert found == {("ratings", "item_id", "expect_column_values_to_be_in_set")}
    assert (
        "u.data line 4, column item_id: expect_column_values_to_be_in_set failed for 1 of 15 rows, e.g. '999'"
    ) in message


def test_null_rating(tiny: Paths) -> None:
    def plant(r: pd.DataFrame) -> pd.DataFrame:
        r.loc[6, "rating"] = np.nan
        return r

    edit(tiny, "ratings", plant)
    found, message = failures_of(tiny)
    assert found == {("ratings", "rating", "expect_column_values_to_not_be_null")}
    assert (
        "u.data line 7, column rating: expect_column_values_to_not_be_null failed for 1 of 15 rows, e.g. null"
    ) in message


def test_schema_defects(tiny: Paths) -> None:
    edit(tiny, "ratings", lambda r: r.drop(columns=["timestamp"]).assign(rating=r["rating"].astype(str)))
    edit(tiny, "users", lambda u: pd.concat([u, u.iloc[[0]]], ignore_index=True))
    found, message = failures_of(tiny)
    assert found == {
        ("ratings", None, "expect_table_columns_to_match_set"),
        ("ratings", "timestamp", "expect_column_values_to_be_of_type"),
        ("ratings", "rating", "expect_column_values_to_be_of_type"),
        ("ratings", "rating", "expect_column_values_to_be_between"),
        ("users", "user_id", "expect_column_values_to_be_unique"),
    }
    assert (
        "ratings.parquet: expect_table_columns_to_match_set failed: observed (missing=['timestamp'])"
        in message
    )
    assert (
        "ratings.parquet, column timestamp: expect_column_values_to_be_of_type could not run: "
        "column not in the table"
    ) in message
    assert (
        "ratings.parquet, column rating: expect_column_values_to_be_of_type failed: observed 'str'" in message
    )
    assert (
        "users.parquet rows 0, 5, column user_id: expect_column_values_to_be_unique failed for 2 of 6 rows, "
        "e.g. '1'"
    ) in message
    saved = json.loads((tiny.validation_reports / "result.json").read_text())
    assert saved["success"] is False and len(saved["failures"]) == 5
    assert (tiny.validation_reports / "docs" / "index.html").is_file()  # docs are written on failure too


def test_extra_item_columns_must_be_text(tiny: Paths) -> None:
    edit(tiny, "items", lambda i: i.assign(in_stock=True))
    found, message = failures_of(tiny)
    assert found == {("items", "in_stock", "expect_column_values_to_be_of_type")}
    assert (
        "items.parquet, column in_stock: expect_column_values_to_be_of_type failed: observed 'bool'"
        in message
    )


def plant_four_bad_rows(paths: Paths) -> pd.DataFrame:
    """Rows 2 (rating 7), 3 (null rating), 4 (unknown item) and 0 (older copy of a re-rated pair) are bad."""

    def plant(r: pd.DataFrame) -> pd.DataFrame:
        r.loc[2, "rating"] = 7.0
        r.loc[3, "rating"] = np.nan
        r.loc[4, "item_id"] = "999"
        rerated = r.iloc[[0]].assign(rating=1.0, timestamp=880009999)
        return pd.concat([r, rerated], ignore_index=True)

    return edit(paths, "ratings", plant)


def test_quarantine_moves_exactly_the_bad_rows(tiny: Paths) -> None:
    planted = plant_four_bad_rows(tiny)
    ingested = {name: tiny.table(name).read_bytes() for name in ("ratings", "users", "items")}
    report = validate(tiny_params(on_error="quarantine", max_bad_fraction=0.25), tiny)
    assert report.success and report.quarantined == 4
    assert report.quarantine_reasons == {
        "duplicate (user_id, item_id)": 1,
        "null rating": 1,
        "rating outside [1, 5]": 1,
        "unknown item_id": 1,
    }
    assert {f.expectation for f in report.failures_before_quarantine} == {
        "expect_column_values_to_be_between",
        "expect_column_values_to_not_be_null",
        "expect_column_values_to_be_in_set",
        "expect_compound_columns_to_be_unique",
    }
    moved = pd.read_parquet(tiny.quarantine / "ratings.parquet")
    pd.testing.assert_frame_equal(
        moved.drop(columns="reason"), planted.iloc[[0, 2, 3, 4]].reset_index(drop=True)
    )
    assert moved["reason"].tolist() == [
        "duplicate (user_id, item_id)",
        "rating outside [1, 5]",
        "null rating",
        "unknown item_id",
    ]
    kept = pd.read_parquet(tiny.validated_table("ratings"))
    pd.testing.assert_frame_equal(kept, planted.drop(index=[0, 2, 3, 4]).reset_index(drop=True))
    assert kept.iloc[-1]["timestamp"] == 880009999  # the newer rating of the re-rated pair stays
    assert json.loads((tiny.validation_reports / "result.json").read_text())["quarantined"] == 4
    assert json.loads(tiny.validation_metrics.read_text()) == {
        "expectations": 31,
        "quarantined": 4,
        "quarantined_fraction": 0.25,
        "ratings": 16,
    }
    # ingest's output (another stage's DVC out) is never rewritten; users and items pass through as they are
    assert {name: tiny.table(name).read_bytes() for name in ingested} == ingested
    for name in ("users", "items"):
        assert tiny.validated_table(name).read_bytes() == ingested[name]


def test_quarantine_refuses_when_too_many_rows_are_bad(tiny: Paths) -> None:
    plant_four_bad_rows(tiny)
    before = tiny.table("ratings").read_bytes()
    with pytest.raises(
        DataValidationError, match=r"4 of 16 rows \(25\.00%\) fail, more than validate\.max_bad"
    ):
        validate(tiny_params(on_error="quarantine", max_bad_fraction=0.2), tiny)
    assert tiny.table("ratings").read_bytes() == before
    assert not (tiny.quarantine / "ratings.parquet").exists()
    assert not tiny.validated.exists() and not tiny.validation_metrics.exists()


def test_quarantine_cannot_cure_table_level_defects(tiny: Paths) -> None:
    plant_four_bad_rows(tiny)
    edit(tiny, "items", lambda i: pd.concat([i, i.iloc[[0]]], ignore_index=True))
    found, _ = failures_of(tiny, tiny_params(on_error="quarantine", max_bad_fraction=0.5))
    assert ("items", "item_id", "expect_column_values_to_be_unique") in found
    assert len(pd.read_parquet(tiny.table("ratings"))) == 16
    assert not tiny.validated.exists() and not (tiny.quarantine / "ratings.parquet").exists()


def test_clean_data_in_quarantine_mode_quarantines_nothing(tiny: Paths) -> None:
    report = validate(tiny_params(on_error="quarantine"), tiny)
    assert report.success and report.quarantined == 0
    assert len(pd.read_parquet(tiny.quarantine / "ratings.parquet")) == 0
    for name in ("ratings", "users", "items"):
        assert tiny.validated_table(name).read_bytes() == tiny.table(name).read_bytes()


def test_a_failed_validation_keeps_the_previous_validated_tables(tiny: Paths) -> None:
    validate(tiny_params(), tiny)
    published = {p.name: p.read_bytes() for p in tiny.validated.iterdir()}
    plant_four_bad_rows(tiny)
    failures_of(tiny)
    assert {p.name: p.read_bytes() for p in tiny.validated.iterdir()} == published
    assert not [p for p in tiny.validated.parent.iterdir() if p.name.startswith(".")]  # no staging left


@pytest.mark.parametrize(
    ("data", "rows"),
    [
        ({"source": "synthetic"}, {"ratings": 3277, "users": 120, "items": 80}),
        ({"source": "recbole", "name": "tiny", "path": "atomic"}, {"ratings": 15, "users": 5, "items": 6}),
        (
            {"source": "recbole", "name": "shop", "path": "recbole-min"},
            {"ratings": 10, "users": 5, "items": 4},
        ),
    ],
)
def test_other_sources_pass(data: dict[str, str], rows: dict[str, int], tmp_path: Path) -> None:
    if "path" in data:
        data = {**data, "path": str(FIXTURE.parent / data["path"])}
    params = Params.model_validate({"data": data})
    ingest(params, Paths(tmp_path))
    report = validate(params, Paths(tmp_path))
    assert report.success and report.rows == rows


def test_error_and_report_survive_pickling(tiny: Paths) -> None:
    plant_four_bad_rows(tiny)
    with pytest.raises(DataValidationError) as caught:
        validate(tiny_params(), tiny)
    again = pickle.loads(pickle.dumps(caught.value))
    assert str(again) == str(caught.value)
    assert (
        isinstance(again.report, ValidationReport) and again.report.failures == caught.value.report.failures
    )


def test_importing_the_package_leaves_great_expectations_unloaded() -> None:
    code = "import sys, pipeline.validation; assert 'great_expectations' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
