"""The features stage: ingested tables → :class:`FeatureSet` in ``data/features`` (+ the embedding cache)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.features.categorical import encode_items, encode_users
from pipeline.features.encoder import encode_texts, model_identity
from pipeline.features.store import ITEM_TITLES, FeatureSet, save_feature_set
from pipeline.features.tasks import index_ratings, make_tasks, unique_ids
from pipeline.features.text import item_texts
from pipeline.io import atomic_dir
from pipeline.params import Params
from pipeline.paths import Paths

log = logging.getLogger(__name__)


def _ordered(frame: pd.DataFrame, column: str, ids: list[str]) -> pd.DataFrame:
    """Rows of ``frame`` in the order of ``ids``, with a fresh RangeIndex."""
    position = pd.Index(frame[column].astype(str)).get_indexer(ids)
    return frame.iloc[position].reset_index(drop=True)


def item_titles(items: pd.DataFrame) -> list[str]:
    """Each item's title ("" when missing, or without a ``title`` column), in row order."""
    if "title" not in items.columns:
        return [""] * len(items)
    return items["title"].astype("string").fillna("").str.strip().tolist()


def compute_features(
    ratings: pd.DataFrame,
    users: pd.DataFrame,
    items: pd.DataFrame,
    params: Params,
    cache_dir: Path,
    sources: tuple[str, str, str] = ("ratings", "users", "items"),
) -> tuple[FeatureSet, int]:
    """The feature set of three ingested tables, and how many item texts had to be encoded.

    ``sources`` name the tables in error messages (their file paths when read from disk).
    """
    ratings_src, users_src, items_src = sources
    for frame, column, source in ((users, "user_id", users_src), (items, "item_id", items_src)):
        if column not in frame.columns:
            raise ValueError(f"{source}: missing column {column} (have {', '.join(map(str, frame.columns))})")
        if frame.empty:
            raise ValueError(f"{source}: no rows")
    user_ids = unique_ids(users, "user_id", users_src)
    item_ids = unique_ids(items, "item_id", items_src)
    indexed = index_ratings(ratings, user_ids, item_ids, ratings_src)
    if not indexed["rating"].size:
        raise ValueError(f"{ratings_src}: no rows")
    fp = params.features
    users = _ordered(users, "user_id", user_ids)
    items = _ordered(items, "item_id", item_ids)
    user_codes = encode_users(users)
    item_codes, item_multi, multi_vocab = encode_items(items)
    item_text, n_encoded = encode_texts(
        item_texts(items, fp.text_template),
        fp.text_encoder,
        cache_dir,
        batch_size=fp.batch_size,
        device=fp.device,
    )
    vocab = {
        "user_ids": user_ids,
        "item_ids": item_ids,
        "user_fields": user_codes.fields,
        "item_fields": item_codes.fields,
        "user_vocab": user_codes.vocab,
        "item_vocab": item_codes.vocab,
        "user_bins": user_codes.bins,
        "multi_vocab": multi_vocab,
        "text_model": model_identity(fp.text_encoder),
        "text_template": fp.text_template,
        ITEM_TITLES: item_titles(items),
        "rating_min": params.validation.rating_min,
        "rating_max": params.validation.rating_max,
    }
    fs = FeatureSet(
        user_cats=user_codes.codes,
        item_cats=item_codes.codes,
        item_multi=item_multi,
        item_text=item_text.astype(np.float32),
        vocab=vocab,
        ratings=indexed,
        tasks=make_tasks(indexed, fp.query_size, params.seed),
    )
    return fs, n_encoded


def _read_table(paths: Paths, name: str) -> pd.DataFrame:
    path = paths.validated_table(name)
    if not path.exists():
        raise FileNotFoundError(f"validated table {path} not found: run the validate stage first")
    return pd.read_parquet(path)


def build_features(params: Params, paths: Paths) -> FeatureSet:
    """Read the validated tables, build the feature set and write it atomically to ``paths.features``."""
    start = time.perf_counter()
    tables = {name: _read_table(paths, name) for name in ("ratings", "users", "items")}
    fs, n_encoded = compute_features(
        tables["ratings"],
        tables["users"],
        tables["items"],
        params,
        paths.embedding_cache,
        sources=(
            str(paths.validated_table("ratings")),
            str(paths.validated_table("users")),
            str(paths.validated_table("items")),
        ),
    )
    with atomic_dir(paths.features) as tmp:
        save_feature_set(fs, tmp)
    n_query = int(fs.tasks["is_query"].sum())
    log.info(
        "features: %d users x %d fields, %d items x %d fields + %d multi-hot + %d-d text (%d encoded), "
        "%d ratings (%d support, %d query) in %.1f s",
        fs.n_users,
        fs.user_cats.shape[1],
        fs.n_items,
        fs.item_cats.shape[1],
        fs.n_multi,
        fs.text_dim,
        n_encoded,
        fs.ratings["rating"].size,
        fs.ratings["rating"].size - n_query,
        n_query,
        time.perf_counter() - start,
    )
    return fs
