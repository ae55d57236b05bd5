"""User and item attributes as integer codes (0 = unknown or missing), with vocabularies a server can reuse.

Code ``k`` of a field means ``vocab[field][k - 1]``. Numeric user fields with many values are bucketed
(``age`` into MovieLens-1M's groups, others into quantile bins) and their edges stored, so that
:func:`encode_user` maps a brand-new user exactly as the training users were mapped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pipeline.features.text import GENRE_SEPARATOR

AGE_EDGES: tuple[float, ...] = (1, 18, 25, 35, 45, 50, 56)
"""MovieLens-1M age groups: under 18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+."""
PREFIX_FIELDS: dict[str, int] = {"zip_code": 1}
"""Fields reduced to their first characters (a zip code's first digit is its region)."""
MANY_VALUES = 20
"""A numeric field with more distinct values than this is bucketed."""
QUANTILE_BINS = 8
DECADE_FIELD = "decade"


@dataclass(frozen=True)
class Encoded:
    """Codes [N, F] (int64) of ``fields``, their vocabularies and the bin edges of bucketed fields."""

    codes: np.ndarray
    fields: list[str]
    vocab: dict[str, list[str]]
    bins: dict[str, list[float]]


def _is_numeric(s: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)


def _tokens(s: pd.Series, field: str) -> pd.Series:
    """Values as normalised strings (NA when missing or blank); integral floats lose their ``.0``."""
    if _is_numeric(s):
        numeric = pd.to_numeric(s)
        finite = numeric.dropna()
        if pd.api.types.is_float_dtype(numeric) and bool((finite == finite.round()).all()):
            numeric = numeric.astype("Int64")
        s = numeric
    out = s.astype("string").str.strip()
    out = out.where(out != "")
    if field in PREFIX_FIELDS:
        out = out.str[: PREFIX_FIELDS[field]]
    return out


def _bin_edges(values: pd.Series, field: str) -> list[float] | None:
    """Bucket edges for a numeric field with many values (``age`` always), else None."""
    if field == "age":
        return list(AGE_EDGES)
    finite = pd.to_numeric(values).dropna().to_numpy(dtype=np.float64)
    if np.unique(finite).size <= MANY_VALUES:
        return None
    edges = np.unique(np.quantile(finite, np.linspace(0, 1, QUANTILE_BINS + 1)[:-1]))
    return [float(e) for e in edges]


def _bin_labels(edges: list[float]) -> list[str]:
    bounds = [*edges[1:], float("inf")]
    return [f"[{lo:g}, {hi:g})" for lo, hi in zip(edges, bounds, strict=True)]


def _bin_codes(values: pd.Series, edges: list[float]) -> np.ndarray:
    """Bucket index + 1; values below the first edge fall in the first bucket, missing ones get 0."""
    x = pd.to_numeric(values, errors="coerce").astype("Float64").to_numpy(dtype=np.float64, na_value=np.nan)
    codes = np.clip(np.searchsorted(np.asarray(edges, dtype=np.float64), x, side="right"), 1, len(edges))
    return np.where(np.isnan(x), 0, codes).astype(np.int64)


def _lookup(tokens: pd.Series, vocabulary: list[str]) -> np.ndarray:
    return pd.Categorical(tokens, categories=vocabulary).codes.astype(np.int64) + 1


def _sorted_vocab(tokens: pd.Series) -> list[str]:
    values = [str(v) for v in tokens.dropna().unique()]
    if values and all(v.lstrip("-").isdigit() for v in values):
        return sorted(values, key=int)
    return sorted(values)


def encode_users(users: pd.DataFrame) -> Encoded:
    """Encode every attribute column of ``users`` except ``user_id`` (rows kept in frame order)."""
    fields = [c for c in users.columns if c != "user_id"]
    vocab: dict[str, list[str]] = {}
    bins: dict[str, list[float]] = {}
    columns = []
    for field in fields:
        s = users[field]
        edges = _bin_edges(s, field) if _is_numeric(s) or field == "age" else None
        if edges is not None:
            bins[field] = edges
            vocab[field] = _bin_labels(edges)
            columns.append(_bin_codes(s, edges))
        else:
            tokens = _tokens(s, field)
            vocab[field] = _sorted_vocab(tokens)
            columns.append(_lookup(tokens, vocab[field]))
    codes = np.stack(columns, axis=1) if columns else np.zeros((len(users), 0), dtype=np.int64)
    return Encoded(codes.astype(np.int64), fields, vocab, bins)


def encode_user(attrs: dict[str, object], vocab: dict[str, Any]) -> np.ndarray:
    """Codes [Fu] of one (possibly brand-new) user, from ``vocab.json``; unknown values and fields → 0."""
    codes = np.zeros(len(vocab["user_fields"]), dtype=np.int64)
    for k, field in enumerate(vocab["user_fields"]):
        value = pd.Series([attrs.get(field)])
        if field in vocab["user_bins"]:
            codes[k] = _bin_codes(value, vocab["user_bins"][field])[0]
        else:
            codes[k] = _lookup(_tokens(value, field), vocab["user_vocab"][field])[0]
    return codes


def encode_items(items: pd.DataFrame) -> tuple[Encoded, np.ndarray, list[str]]:
    """Item codes (``year`` → decade, when present) and the genres multi-hot [I, G] float32 with its vocab."""
    fields, vocab, columns = [], {}, []
    if "year" in items.columns:
        year = pd.to_numeric(items["year"], errors="coerce").astype("Float64")
        tokens = _tokens((year // 10 * 10).astype("Int64"), DECADE_FIELD)
        fields.append(DECADE_FIELD)
        vocab[DECADE_FIELD] = _sorted_vocab(tokens)
        columns.append(_lookup(tokens, vocab[DECADE_FIELD]))
    codes = np.stack(columns, axis=1) if columns else np.zeros((len(items), 0), dtype=np.int64)
    multi, multi_vocab = genre_multi_hot(items)
    return Encoded(codes.astype(np.int64), fields, vocab, {}), multi, multi_vocab


def genre_multi_hot(items: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    """``genres`` ("|"-joined names, may be empty/null) → multi-hot [I, G] float32 and sorted names."""
    if "genres" not in items.columns:
        return np.zeros((len(items), 0), dtype=np.float32), []
    genres = items["genres"].reset_index(drop=True).astype("string").fillna("")
    names = genres.str.split(GENRE_SEPARATOR).explode().str.strip()
    names = names[names != ""]
    multi_vocab = sorted(names.unique().tolist())
    rows = np.asarray(names.index, dtype=np.int64)
    multi = np.zeros((len(items), len(multi_vocab)), dtype=np.float32)
    multi[rows, _lookup(names, multi_vocab) - 1] = 1.0
    return multi, multi_vocab
