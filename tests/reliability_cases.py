"""The bad-input corpus of ``tests/data/bad/``: one folder per case, and what each must make the CLI say.

Every fixture is invented (derived from the hand-written ones in ``tests/data/fixtures/``), never
MovieLens content. ``row`` is the 1-based line of the raw file where ``ingest`` rejects the input, or the
line(s) of the raw file whose rows ``validate`` rejects (``ingest`` records where each row came from).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

BAD = Path(__file__).parent / "data" / "bad"


@dataclass(frozen=True)
class BadInput:
    folder: str
    what: str
    stage: Literal["ingest", "validate"]
    file: str
    row: int | str | None
    column: str | None
    rule: str
    settings: tuple[str, ...] = ()

    @property
    def source(self) -> Literal["movielens-100k", "movielens-1m", "archive"]:
        if self.folder.startswith("ml1m"):
            return "movielens-1m"
        return "archive" if self.folder.startswith("archive") else "movielens-100k"

    def overrides(self) -> list[str]:
        """``--set`` values that point ingest at this case (the archive case comes by download)."""
        data = [] if self.source == "archive" else [f"data.path={BAD / self.folder}", "data.name=tiny"]
        if self.source == "movielens-1m":
            data.append("data.source=movielens-1m")
        return data + list(self.settings)

    def location(self) -> str:
        """How the message must start: file, then line or row(s), then column (as far as known)."""
        where = self.file
        if self.row is not None:
            label = "lines" if isinstance(self.row, str) else "line"
            where += f" {label} {self.row}"
        if self.column is not None:
            where += f", column{'s' if ',' in self.column else ''} {self.column}"
        return where


CASES = [
    BadInput(
        "atomic-missing-column",
        "RecBole .inter without its rating column",
        "ingest",
        "tiny.inter",
        1,
        "rating",
        "missing column(s) rating",
    ),
    BadInput(
        "atomic-wrong-delimiter",
        "RecBole .inter separated by commas instead of tabs",
        "ingest",
        "tiny.inter",
        1,
        "item_id",
        "missing column(s) item_id, rating",
    ),
    BadInput(
        "atomic-not-a-number", "a rating 'abc'", "ingest", "tiny.inter", 7, "rating", "not a number ('abc')"
    ),
    BadInput("atomic-empty-file", "an empty .inter file", "ingest", "tiny.inter", None, None, "empty file"),
    BadInput(
        "atomic-header-only",
        "an .inter file with a header only",
        "ingest",
        "tiny.inter",
        None,
        None,
        "header only",
    ),
    BadInput(
        "atomic-truncated-last-line",
        "the last line cut off mid-record (no final newline)",
        "ingest",
        "tiny.inter",
        16,
        "rating",
        "truncated last line",
    ),
    BadInput(
        "atomic-invalid-encoding",
        "a latin-1 byte in a UTF-8 .item file",
        "ingest",
        "tiny.item",
        3,
        None,
        "invalid utf-8 byte 0xe9",
    ),
    BadInput(
        "atomic-binary-garbage",
        "binary bytes (NUL) in the .inter file",
        "ingest",
        "tiny.inter",
        5,
        None,
        "binary content (NUL byte)",
    ),
    BadInput(
        "atomic-duplicate-item",
        "an item id twice in the .item table",
        "ingest",
        "tiny.item",
        5,
        "item_id",
        "duplicate id '3' (first on line 4)",
    ),
    BadInput(
        "atomic-duplicate-user",
        "a user id twice in the .user table",
        "ingest",
        "tiny.user",
        6,
        "user_id",
        "duplicate id '4' (first on line 5)",
    ),
    BadInput(
        "atomic-bad-field-type",
        "a header field typed 'number' (not a RecBole type)",
        "ingest",
        "tiny.inter",
        1,
        "rating",
        "got 'number'",
    ),
    BadInput(
        "atomic-oversized",
        "an input file over data.max_file_mb (set to 0.0001 MB)",
        "ingest",
        "tiny.inter",
        None,
        None,
        "larger than data.max_file_mb=0.0001",
        ("data.max_file_mb=0.0001",),
    ),
    BadInput(
        "atomic-empty-rating",
        "an empty rating field (NaN after parsing)",
        "validate",
        "tiny.inter",
        6,
        "rating",
        "expect_column_values_to_not_be_null",
    ),
    BadInput(
        "ml100k-wrong-delimiter",
        "u.data separated by commas instead of tabs",
        "ingest",
        "u.data",
        1,
        "item_id",
        "expected 4 tab-separated fields, got 1",
    ),
    BadInput(
        "ml100k-missing-column",
        "u.user without its zip_code column",
        "ingest",
        "u.user",
        1,
        "zip_code",
        "expected 5 '|'-separated fields, got 4; missing zip_code",
    ),
    BadInput(
        "ml100k-truncated-last-line",
        "u.data cut off mid-record",
        "ingest",
        "u.data",
        15,
        "rating",
        "truncated last line: expected 4 tab-separated fields, got 2",
    ),
    BadInput("ml100k-empty-file", "an empty u.item", "ingest", "u.item", None, None, "empty file"),
    BadInput(
        "ml100k-duplicate-user",
        "a user id twice in u.user",
        "ingest",
        "u.user",
        4,
        "user_id",
        "duplicate id '2' (first on line 2)",
    ),
    BadInput(
        "ml100k-bad-genre-flag",
        "a genre flag 'x' in u.item",
        "ingest",
        "u.item",
        2,
        "genre:Comedy",
        "genre flag must be 0 or 1 ('x')",
    ),
    BadInput(
        "ml100k-age-not-a-number",
        "an age 'eighteen' in u.user",
        "ingest",
        "u.user",
        3,
        "age",
        "not a number ('eighteen')",
    ),
    BadInput(
        "ml100k-rating-out-of-range",
        "a rating 6 on the 1-5 scale",
        "validate",
        "u.data",
        9,
        "rating",
        "expect_column_values_to_be_between [1.0, 5.0] failed for 1 of 15 rows, e.g. 6.0",
    ),
    BadInput(
        "ml100k-unknown-item",
        "a rating of item 77, absent from u.item",
        "validate",
        "u.data",
        4,
        "item_id",
        "expect_column_values_to_be_in_set failed for 1 of 15 rows, e.g. '77'",
    ),
    BadInput(
        "ml1m-extra-field",
        "a ratings.dat line with five fields",
        "ingest",
        "ratings.dat",
        4,
        None,
        "expected 4 '::'-separated fields, got 5",
    ),
    BadInput(
        "ml1m-wrong-delimiter",
        "ratings.dat separated by commas instead of '::'",
        "ingest",
        "ratings.dat",
        1,
        "item_id",
        "expected 4 '::'-separated fields, got 1",
    ),
    BadInput(
        "ml1m-nan-rating", "a rating 'NaN'", "ingest", "ratings.dat", 3, "rating", "not a number ('NaN')"
    ),
    BadInput(
        "ml1m-unknown-occupation",
        "an occupation code 42 (of 0-20) in users.dat",
        "ingest",
        "users.dat",
        2,
        "occupation",
        "unknown occupation code",
    ),
    BadInput(
        "ml1m-binary-garbage",
        "binary bytes (NUL) in movies.dat",
        "ingest",
        "movies.dat",
        3,
        None,
        "binary content (NUL byte)",
    ),
    BadInput(
        "ml1m-duplicate-item",
        "a movie id twice in movies.dat",
        "ingest",
        "movies.dat",
        5,
        "item_id",
        "duplicate id '3' (first on line 3)",
    ),
    BadInput(
        "ml1m-empty-file", "a users.dat of blank lines", "ingest", "users.dat", None, None, "empty file"
    ),
    BadInput(
        "ml1m-duplicate-rating",
        "the same (user, item) rated twice",
        "validate",
        "ratings.dat",
        "5, 13",
        "user_id, item_id",
        "expect_compound_columns_to_be_unique failed for 2 of 13 rows",
    ),
    BadInput(
        "ml1m-unknown-user",
        "a rating by user 9, absent from users.dat",
        "validate",
        "ratings.dat",
        13,
        "user_id",
        "expect_column_values_to_be_in_set failed for 1 of 13 rows, e.g. '9'",
    ),
    BadInput(
        "archive-member-escapes",
        "a downloaded zip whose member path '../../escaped.txt' escapes the target folder",
        "ingest",
        "ml-100k.zip",
        None,
        None,
        "unsafe member 'ml-100k/../../escaped.txt' escapes the target folder",
    ),
]
BY_FOLDER = {case.folder: case for case in CASES}
