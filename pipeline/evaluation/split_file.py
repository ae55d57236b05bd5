"""Reading a published MeLU split (protocol ``melu_split``): one line per rating, ``user_id item_id state``.

The file is tab-separated with that header. Every line must name a rating of the ingested data, once, in
one of MeLU's five states; a new user (a user-cold state) or a new item (an item-cold state) must have no
training rating. A broken rule stops the evaluation with a :class:`DataError` naming the file, line and
column. Ratings the file does not list (e.g. feedback added later) take no part.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.data.errors import DataError
from pipeline.evaluation.melu import NEW_ITEM_STATES, NEW_USER_STATES, STATE_NAMES, State

log = logging.getLogger(__name__)

COLUMNS = ("user_id", "item_id", "state")
HEADER = "\t".join(COLUMNS)
SUFFIX = ".melu_split.tsv"
"""The split file's name in a dataset folder: ``<data.name>.melu_split.tsv``."""


def _first(mask: np.ndarray) -> int:
    return int(np.argmax(mask))


def read_split_file(
    path: Path, ratings: dict[str, np.ndarray], user_ids: list[str], item_ids: list[str]
) -> np.ndarray:
    """The :class:`State` of every row of ``ratings`` (``user_index``, ``item_index``; ids in vocab order
    ``user_ids``, ``item_ids``) as the split file at ``path`` gives it; ``State.ABSENT`` where unlisted."""
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, on_bad_lines="error")
    except FileNotFoundError:
        raise DataError(path, None, None, "split file not found (eval.split_file)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(path, None, None, f"not a tab-separated table: {exc}") from None
    if tuple(table.columns) != COLUMNS:
        raise DataError(path, 1, None, f"header must be {HEADER!r}, got {list(table.columns)}")
    line = np.arange(len(table)) + 2  # the header is line 1

    codes: dict[str, np.ndarray] = {}
    for column, ids, what in (("user_id", user_ids, "user"), ("item_id", item_ids, "item")):
        found = pd.Index(pd.Series(ids, dtype=str)).get_indexer(table[column])
        if (found < 0).any():
            row = _first(found < 0)
            value = table[column].iloc[row]
            raise DataError(path, line[row], column, f"unknown {what} {value!r}: not in the data")
        codes[column] = found
    state = table["state"].map(lambda s: STATE_NAMES.get(s, State.ABSENT)).to_numpy(dtype=np.int8)
    if (state == State.ABSENT).any():
        row = _first(state == State.ABSENT)
        value = table["state"].iloc[row]
        raise DataError(path, line[row], "state", f"unknown state {value!r}; one of {list(STATE_NAMES)}")

    n_items = max(len(item_ids), 1)
    keys = codes["user_id"].astype(np.int64) * n_items + codes["item_id"]
    order = np.argsort(keys, kind="stable")
    repeated = np.flatnonzero(keys[order][1:] == keys[order][:-1])
    if repeated.size:
        first, again = sorted(order[[repeated[0], repeated[0] + 1]])
        raise DataError(path, line[again], None, f"duplicate (user_id, item_id): also on line {line[first]}")

    rating_keys = np.asarray(ratings["user_index"], dtype=np.int64) * n_items + ratings["item_index"]
    if rating_keys.size == 0:
        raise ValueError("melu_split: the data holds no ratings")
    by_key = np.argsort(rating_keys, kind="stable")
    found = by_key[np.minimum(np.searchsorted(rating_keys, keys, sorter=by_key), rating_keys.size - 1)]
    rated = rating_keys[found] == keys
    if not rated.all():
        row = _first(~rated)
        raise DataError(
            path,
            line[row],
            None,
            f"user {table['user_id'].iloc[row]!r} has no rating of item {table['item_id'].iloc[row]!r}",
        )

    training = np.isin(state, (State.META_TRAINING, State.WARM_UP))
    for column, cold in (("user_id", NEW_USER_STATES), ("item_id", NEW_ITEM_STATES)):
        new = np.unique(codes[column][np.isin(state, cold)])
        clash = training & np.isin(codes[column], new)
        if clash.any():
            row = _first(clash)
            value = table[column].iloc[row]
            other = line[_first(np.isin(state, cold) & (codes[column] == codes[column][row]))]
            raise DataError(
                path,
                line[row],
                column,
                f"{column.split('_')[0]} {value!r} is new (a cold state on line {other}) but has a training "
                f"rating ({table['state'].iloc[row]}) here",
            )

    states = np.full(rating_keys.size, State.ABSENT, dtype=np.int8)
    states[found] = state
    if (states == State.ABSENT).any():
        log.info("%s lists %d of %d ratings; the others take no part", path, len(table), rating_keys.size)
    return states
