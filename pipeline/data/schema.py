"""The contract of the three ingested tables: column names and pandas dtypes, shared by ingest and validate.

Ids are strings everywhere (serving takes any string id); integers that may be missing are ``Int64``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

TABLES = ("ratings", "users", "items")

RATINGS = {"user_id": "str", "item_id": "str", "rating": "float64", "timestamp": "Int64"}
ITEMS = {"item_id": "str", "title": "str", "year": "Int64", "genres": "str"}
MOVIELENS_USERS = {"user_id": "str", "age": "Int64", "gender": "str", "occupation": "str", "zip_code": "str"}
SYNTHETIC_USERS = {"user_id": "str", "age": "Int64", "gender": "str", "occupation": "str"}
USER_ATTRIBUTE_DTYPES = ("str", "Int64", "float64")
GENRE_SEPARATOR = "|"


@dataclass(frozen=True)
class Tables:
    """The three ingested tables, typed as promised by :func:`table_schemas`.

    ``origins`` maps a table read from a file to its rows' ``file`` and ``line`` (row for row), so that
    a later stage can name the user's file and line rather than a row of an internal table.
    """

    ratings: pd.DataFrame
    users: pd.DataFrame
    items: pd.DataFrame
    origins: dict[str, pd.DataFrame] = field(default_factory=dict)

    def as_dict(self) -> dict[str, pd.DataFrame]:
        return {"ratings": self.ratings, "users": self.users, "items": self.items}


@dataclass(frozen=True)
class TableSchema:
    """Required columns with their dtypes; other columns are allowed only when ``extra_dtypes`` is set."""

    required: Mapping[str, str]
    extra_dtypes: tuple[str, ...] = field(default=())

    @property
    def exact(self) -> bool:
        return not self.extra_dtypes


def table_schemas(source: str) -> dict[str, TableSchema]:
    """What ``ingest`` promises for ``data.source``; ``validate`` checks the parquet files against it."""
    if source.startswith("movielens"):
        users = TableSchema(MOVIELENS_USERS)
    elif source == "synthetic":
        users = TableSchema(SYNTHETIC_USERS)
    else:
        users = TableSchema({"user_id": "str"}, USER_ATTRIBUTE_DTYPES)
    return {"ratings": TableSchema(RATINGS), "users": users, "items": TableSchema(ITEMS, ("str",))}


def typed_column(values: Iterable[Any] | pd.Series, dtype: str) -> pd.Series:
    """A column of ``dtype`` in which empty strings and ``None`` become missing values."""
    if isinstance(values, pd.Series):
        series = values.reset_index(drop=True)
    else:
        series = pd.Series(values if isinstance(values, np.ndarray) else list(values), dtype=object)
    if dtype == "str":
        series = series.astype("str")
        return series.mask(series == "")
    return series.astype(dtype)


def frame(columns: Mapping[str, Iterable[Any] | pd.Series], dtypes: Mapping[str, str]) -> pd.DataFrame:
    """Build a table from ``columns``, typing the ones named in ``dtypes`` (all others become ``str``)."""
    return pd.DataFrame(
        {name: typed_column(values, dtypes.get(name, "str")) for name, values in columns.items()}
    )
