"""Row-level checks of the ratings table that mirror the suite, to move failing rows aside.

The validate stage re-runs the Great Expectations suite on the cleaned table, so any disagreement between
these rules and the suite surfaces as a validation failure rather than passing silently.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

DUPLICATE = "duplicate (user_id, item_id)"


def rating_problems(
    ratings: pd.DataFrame, user_ids: pd.Series, item_ids: pd.Series, rating_min: float, rating_max: float
) -> pd.Series:
    """Per row of ``ratings``: ``"; "``-joined reasons it fails, or ``""`` when it passes.

    Of duplicated (user_id, item_id) pairs among otherwise valid rows, the latest rating (greatest
    timestamp, then the later row) is kept and the others are marked.
    """
    rating = ratings["rating"]
    checks = {
        "null user_id": ratings["user_id"].isna(),
        "null item_id": ratings["item_id"].isna(),
        "null rating": rating.isna(),
        f"rating outside [{rating_min:g}, {rating_max:g}]": rating.notna()
        & ~rating.between(rating_min, rating_max),
        "unknown user_id": ratings["user_id"].notna() & ~ratings["user_id"].isin(user_ids),
        "unknown item_id": ratings["item_id"].notna() & ~ratings["item_id"].isin(item_ids),
    }
    reasons = pd.Series("", index=ratings.index, dtype=object)
    for reason, mask in checks.items():
        reasons = reasons.where(~mask.to_numpy(), reasons + np.where(reasons == "", "", "; ") + reason)
    valid = ratings[reasons == ""]
    latest_last = valid.assign(_row=np.arange(len(valid))).sort_values(
        ["timestamp", "_row"], na_position="first", kind="stable"
    )
    duplicated = latest_last.index[latest_last.duplicated(["user_id", "item_id"], keep="last")]
    reasons.loc[duplicated] = DUPLICATE
    return reasons.astype(str)
