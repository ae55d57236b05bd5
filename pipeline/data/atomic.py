"""RecBole atomic files: ``<name>.inter``, ``<name>.item`` and optionally ``<name>.user``.

Tab-separated UTF-8 with one header line of ``name:type`` fields (type: token, token_seq, float,
float_seq). ``token_seq`` values are space-separated tokens.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from pipeline.data.errors import DataError
from pipeline.data.movielens import split_title
from pipeline.data.schema import GENRE_SEPARATOR, ITEMS, RATINGS, Tables, frame
from pipeline.data.textfile import (
    Table,
    check_unique,
    is_integer_text,
    origins,
    parse_fields,
    read_text,
    split_lines,
    to_float,
    to_int,
)

logger = logging.getLogger(__name__)

FIELD_TYPES = ("token", "token_seq", "float", "float_seq")
TITLE_FIELDS = ("movie_title", "title")
YEAR_FIELDS = ("release_year", "year")
GENRE_FIELDS = ("class", "genre", "genres")
# Codes that look numeric but are identifiers (leading zeros, no arithmetic): always kept as text.
_CODE_SUFFIXES = ("_id", "zip", "zip_code", "zipcode", "postcode", "postal_code")


def read_atomic_file(path: Path, required: Sequence[str], max_mb: float) -> tuple[Table, dict[str, str]]:
    """Fields of one atomic file by column name, and each column's declared type."""
    lines = split_lines(read_text(path, "utf-8", max_mb).removeprefix("\ufeff"))
    header, header_line = lines.first()
    names: list[str] = []
    types: dict[str, str] = {}
    for field in header.split("\t"):
        name, _, kind = field.strip().partition(":")
        names.append(name)
        types[name] = kind
    missing = [c for c in required if c not in types]
    if missing:
        rule = f"missing column(s) {', '.join(missing)} (header fields must be tab-separated name:type)"
        raise DataError(path, header_line, missing[0], rule)
    for name in names:
        if names.count(name) > 1:
            raise DataError(path, header_line, name, "column appears twice in the header")
        if types[name] not in FIELD_TYPES:
            rule = f"header field must be name:type with type one of {', '.join(FIELD_TYPES)}"
            raise DataError(path, header_line, name, f"{rule} (got {types[name]!r})")
    if len(lines) == 1:
        raise DataError(path, None, None, "header only: no data rows")
    return parse_fields(path, lines.rest(), "\t", names), types


def _attribute(table: Table, name: str, kind: str) -> tuple[pd.Series, str]:
    """A user attribute column and its dtype: declared floats and plain-integer tokens are numeric."""
    if kind == "float":
        return to_float(table, name), "float64"
    values = table.columns[name]
    is_code = name.endswith(_CODE_SUFFIXES)
    if kind == "token" and not is_code and is_integer_text(values):
        return to_int(table, name), "Int64"
    return values, "str"


def _titles_and_years(titles: Sequence[str], raw_years: Sequence[str]) -> tuple[list[str], list[int | None]]:
    """Years from the year column, or from a ``(1995)`` suffix of the title where that column holds no year.

    The suffix is stripped from the title either way (ml-100k's atomic file has one such title).
    """
    out_titles: list[str] = []
    years: list[int | None] = []
    for title, value in zip(titles, raw_years, strict=True):
        bare, title_year = split_title(title)
        out_titles.append(bare)
        years.append(int(value) if value.isdigit() and len(value) <= 4 else title_year)
    return out_titles, years


def read_atomic(folder: Path, name: str, max_mb: float) -> Tables:
    """Ratings from ``.inter``, items from ``.item``, users from ``.user`` (else just the rated user ids)."""
    inter, inter_types = read_atomic_file(folder / f"{name}.inter", ("user_id", "item_id", "rating"), max_mb)
    timestamps = (
        to_int(inter, "timestamp", truncate=True)
        if "timestamp" in inter_types
        else pd.Series([pd.NA] * len(inter), dtype="Int64")
    )
    ratings = frame(
        {
            "user_id": inter.columns["user_id"],
            "item_id": inter.columns["item_id"],
            "rating": to_float(inter, "rating"),
            "timestamp": timestamps,
        },
        RATINGS,
    )
    ignored = [c for c in inter.columns if c not in RATINGS]
    if ignored:
        logger.info("%s.inter: columns not used: %s", name, ", ".join(ignored))

    item_table, item_types = read_atomic_file(folder / f"{name}.item", ("item_id",), max_mb)
    check_unique(item_table, "item_id")
    items = _items(item_table, item_types)

    rows = {"ratings": inter, "items": item_table}
    user_path = folder / f"{name}.user"
    if user_path.exists():
        user_table, user_types = read_atomic_file(user_path, ("user_id",), max_mb)
        check_unique(user_table, "user_id")
        columns: dict[str, pd.Series] = {"user_id": user_table.columns["user_id"]}
        dtypes = {"user_id": "str"}
        for column, kind in user_types.items():
            if column != "user_id":
                columns[column], dtypes[column] = _attribute(user_table, column, kind)
        users = frame(columns, dtypes)
        rows["users"] = user_table
    else:
        logger.info("%s.user not found: the users table holds only the rated user ids", name)
        users = frame({"user_id": ratings["user_id"].dropna().unique()}, {"user_id": "str"})
    return Tables(ratings, users, items, {table: origins(t) for table, t in rows.items()})


def _items(table: Table, types: dict[str, str]) -> pd.DataFrame:
    """Map the conventional title/year/genre fields; keep every other column as text."""
    blank = [""] * len(table)
    title_field = next((f for f in TITLE_FIELDS if f in types), None)
    year_field = next((f for f in YEAR_FIELDS if f in types), None)
    genre_field = next((f for f in GENRE_FIELDS if f in types), None)
    raw_years = table.columns[year_field] if year_field else blank
    titles, years = _titles_and_years(table.columns[title_field] if title_field else blank, raw_years)
    no_year = sum(1 for value, year in zip(raw_years, years, strict=True) if value and year is None)
    if no_year:
        logger.warning("%s: %d %s values are not years; left missing", table.path.name, no_year, year_field)
    genres = [GENRE_SEPARATOR.join(v.split()) for v in table.columns[genre_field]] if genre_field else blank
    columns: dict[str, Sequence[object]] = {
        "item_id": table.columns["item_id"],
        "title": titles,
        "year": years,
        "genres": genres,
    }
    used = {title_field, year_field, genre_field}
    columns.update({c: v for c, v in table.columns.items() if c not in used and c not in columns})
    return frame(columns, ITEMS)
