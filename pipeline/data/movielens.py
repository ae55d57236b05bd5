"""The official GroupLens layouts of MovieLens-100k (``u.data``/``u.item``/``u.user``) and -1m (``*.dat``)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.data.errors import DataError
from pipeline.data.schema import GENRE_SEPARATOR, ITEMS, MOVIELENS_USERS, RATINGS, Tables, frame, typed_column
from pipeline.data.textfile import Table, check_unique, origins, read_delimited, to_float, to_int

ENCODING = "latin-1"
# Genre order of the 19 flags in u.item (used when u.genre is absent).
ML100K_GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
# users.dat stores occupations as codes 0-20; the names are those of the ml-1m README.
ML1M_OCCUPATIONS = (
    "other",
    "academic/educator",
    "artist",
    "clerical/admin",
    "college/grad student",
    "customer service",
    "doctor/health care",
    "executive/managerial",
    "farmer",
    "homemaker",
    "K-12 student",
    "lawyer",
    "programmer",
    "retired",
    "sales/marketing",
    "scientist",
    "self-employed",
    "technician/engineer",
    "tradesman/craftsman",
    "unemployed",
    "writer",
)
_TITLE_YEAR = re.compile(r"^(?P<title>.*?)\s*\((?P<year>\d{4})\)\s*$")
RATING_COLUMNS = ("user_id", "item_id", "rating", "timestamp")


def split_title(title: str) -> tuple[str, int | None]:
    """``'Toy Story (1995)'`` → ``('Toy Story', 1995)``; a title without a trailing year is kept whole."""
    match = _TITLE_YEAR.match(title)
    if match is None or not match["title"]:
        return title, None
    return match["title"], int(match["year"])


def ratings_table(table: Table) -> pd.DataFrame:
    columns = {
        "user_id": table.columns["user_id"],
        "item_id": table.columns["item_id"],
        "rating": to_float(table, "rating"),
        "timestamp": to_int(table, "timestamp", truncate=True),
    }
    return frame(columns, RATINGS)


def _titles_and_years(
    table: Table, fallback: list[int | None] | None = None
) -> tuple[list[str], list[int | None]]:
    """Titles without their ``(year)`` suffix, and that year (else ``fallback``'s, where given)."""
    titles: list[str] = []
    years: list[int | None] = []
    for k, raw in enumerate(table.columns["title"]):
        title, year = split_title(raw)
        titles.append(title)
        years.append(year if year is not None or fallback is None else fallback[k])
    return titles, years


def _release_years(table: Table) -> list[int | None]:
    """Year of ``release_date`` (``01-Jan-1995``) where it has one; used when the title lacks it."""
    return [int(d[-4:]) if len(d) >= 4 and d[-4:].isdigit() else None for d in table.columns["release_date"]]


def read_genre_names(path: Path, max_mb: float) -> tuple[str, ...]:
    """``u.genre`` (``name|index`` lines) if present, else the standard 19 ml-100k genres."""
    if not path.exists():
        return ML100K_GENRES
    table = read_delimited(path, "|", ("name", "index"), ENCODING, max_mb)
    indexes = to_int(table, "index")
    if sorted(indexes.tolist()) != list(range(len(ML100K_GENRES))):
        raise DataError(path, None, "index", f"expected genre indexes 0..{len(ML100K_GENRES) - 1}")
    names = dict(zip(indexes.tolist(), table.columns["name"], strict=True))
    return tuple(names[i] for i in range(len(ML100K_GENRES)))


def read_ml100k(folder: Path, max_mb: float) -> Tables:
    """``u.data`` (tab), ``u.item`` and ``u.user`` (``|``), latin-1."""
    rating_rows = read_delimited(folder / "u.data", "\t", RATING_COLUMNS, ENCODING, max_mb)
    ratings = ratings_table(rating_rows)

    genre_names = read_genre_names(folder / "u.genre", max_mb)
    flag_columns = [f"genre:{name}" for name in genre_names]
    item_columns = ("item_id", "title", "release_date", "video_release_date", "imdb_url", *flag_columns)
    item_table = read_delimited(folder / "u.item", "|", item_columns, ENCODING, max_mb)
    check_unique(item_table, "item_id")
    flags = np.array([item_table.columns[c] for c in flag_columns]).T
    bad = np.argwhere((flags != "0") & (flags != "1"))
    if bad.size:
        k, g = bad[0]
        raise item_table.error(k, flag_columns[g], f"genre flag must be 0 or 1 ({str(flags[k, g])!r})")
    genres = [GENRE_SEPARATOR.join(np.asarray(genre_names)[row == "1"]) for row in flags]
    titles, years = _titles_and_years(item_table, _release_years(item_table))
    items = frame(
        {
            "item_id": item_table.columns["item_id"],
            "title": titles,
            "year": years,
            "genres": genres,
            "release_date": item_table.columns["release_date"],
            "video_release_date": item_table.columns["video_release_date"],
            "imdb_url": item_table.columns["imdb_url"],
        },
        ITEMS,
    )

    user_table = read_delimited(folder / "u.user", "|", tuple(MOVIELENS_USERS), ENCODING, max_mb)
    check_unique(user_table, "user_id")
    users = frame({**user_table.columns, "age": to_int(user_table, "age")}, MOVIELENS_USERS)
    rows = {"ratings": rating_rows, "users": user_table, "items": item_table}
    return Tables(ratings, users, items, {name: origins(t) for name, t in rows.items()})


def conform_users(tables: Tables, source: str) -> Tables:
    """Users of a MovieLens source read from RecBole atomic files, in the schema the GroupLens readers give
    (``MOVIELENS_USERS``): ml-1m's occupation codes become their names, as ``users.dat``'s do, so that a
    model sees the same vocabulary from either layout; other attribute columns keep their schema dtype."""
    users = tables.users.copy()
    if source == "movielens-1m" and pd.api.types.is_integer_dtype(users["occupation"]):
        codes = users["occupation"]
        unknown = np.flatnonzero(~codes.isin(range(len(ML1M_OCCUPATIONS))).to_numpy())
        if unknown.size:
            k = int(unknown[0])
            origin = tables.origins.get("users")
            file, line = ("users", None) if origin is None else (origin["file"][k], int(origin["line"][k]))
            raise DataError(file, line, "occupation", f"unknown occupation code {int(codes.iloc[k])}")
        users["occupation"] = [ML1M_OCCUPATIONS[c] for c in codes]
    for column, dtype in MOVIELENS_USERS.items():
        if column in users and str(users[column].dtype) != dtype:
            users[column] = typed_column(users[column].astype("str").where(users[column].notna()), dtype)
    return Tables(tables.ratings, users, tables.items, tables.origins)


def read_ml1m(folder: Path, max_mb: float) -> Tables:
    """``ratings.dat``, ``movies.dat``, ``users.dat`` with ``::`` separators, latin-1."""
    rating_rows = read_delimited(folder / "ratings.dat", "::", RATING_COLUMNS, ENCODING, max_mb)
    ratings = ratings_table(rating_rows)

    item_table = read_delimited(folder / "movies.dat", "::", ("item_id", "title", "genres"), ENCODING, max_mb)
    check_unique(item_table, "item_id")
    titles, years = _titles_and_years(item_table)
    items = frame(
        {
            "item_id": item_table.columns["item_id"],
            "title": titles,
            "year": years,
            "genres": item_table.columns["genres"],
        },
        ITEMS,
    )

    user_columns = ("user_id", "gender", "age", "occupation", "zip_code")
    user_table = read_delimited(folder / "users.dat", "::", user_columns, ENCODING, max_mb)
    check_unique(user_table, "user_id")
    codes = to_int(user_table, "occupation")
    unknown = np.flatnonzero(~codes.isin(range(len(ML1M_OCCUPATIONS))).to_numpy())
    if unknown.size:
        k = int(unknown[0])
        code = user_table.columns["occupation"].iloc[k]
        raise user_table.error(k, "occupation", f"unknown occupation code {code!r}")
    users = frame(
        {
            "user_id": user_table.columns["user_id"],
            "age": to_int(user_table, "age"),
            "gender": user_table.columns["gender"],
            "occupation": [ML1M_OCCUPATIONS[c] for c in codes],
            "zip_code": user_table.columns["zip_code"],
        },
        MOVIELENS_USERS,
    )
    rows = {"ratings": rating_rows, "users": user_table, "items": item_table}
    return Tables(ratings, users, items, {name: origins(t) for name, t in rows.items()})
