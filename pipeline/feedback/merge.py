"""Merge the feedback batches into the ingested tables (called by ``ingest``).

Feedback ratings are appended to the source's ratings. Where a user rated the same item again, the
latest rating (greatest timestamp, then the later batch) replaces the earlier one, the rule ``validate``
applies to duplicates; duplicates within the source itself are left for ``validate`` to report. A user
who appears only in feedback joins the users table with unknown attributes, so a brand-new user's ratings
train the next model like anyone else's.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.data.schema import Tables
from pipeline.feedback.batches import list_batches, read_batches

log = logging.getLogger(__name__)


def merge_feedback(tables: Tables, folder: Path) -> Tables:
    """``tables`` with every batch in ``folder`` merged in; unchanged when there is none."""
    batches = list_batches(folder)
    if not batches:
        return tables
    feedback = read_batches(folder)
    ratings = pd.concat([tables.ratings, feedback.astype(tables.ratings.dtypes.to_dict())], ignore_index=True)
    origins = dict(tables.origins)
    if "ratings" in origins:
        batch_rows = pd.DataFrame({"file": pd.Series(str(folder), index=range(len(feedback)), dtype="str")})
        origins["ratings"] = pd.concat([origins["ratings"], batch_rows], ignore_index=True)
    pairs = pd.MultiIndex.from_frame(ratings[["user_id", "item_id"]])
    touched = ratings[pairs.isin(pd.MultiIndex.from_frame(feedback[["user_id", "item_id"]]))]
    order = touched.assign(_row=np.arange(len(touched))).sort_values(
        ["timestamp", "_row"], na_position="first", kind="stable"
    )
    replaced = order.index[order.duplicated(["user_id", "item_id"], keep="last")]
    ratings = ratings.drop(index=replaced).reset_index(drop=True)
    if "ratings" in origins:
        origins["ratings"] = origins["ratings"].drop(index=replaced).reset_index(drop=True)
    users = tables.users
    new_ids = pd.Index(feedback["user_id"].unique()).difference(pd.Index(users["user_id"]))
    if len(new_ids):
        blank = {c: pd.Series(pd.NA, index=range(len(new_ids)), dtype=users[c].dtype) for c in users.columns}
        new_users = pd.DataFrame(blank).assign(user_id=pd.Series(new_ids, dtype=users["user_id"].dtype))
        users = pd.concat([users, new_users], ignore_index=True)
        if "users" in origins:
            origins["users"] = origins["users"].reindex(range(len(users)))
    log.info(
        "merged %d feedback batches: %d ratings (%d replace earlier ones), %d new users",
        len(batches),
        len(feedback),
        len(replaced),
        len(new_ids),
    )
    return Tables(ratings, users, tables.items, origins)
