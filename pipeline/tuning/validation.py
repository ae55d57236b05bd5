"""Validation users for tuning, carved from one fold's TRAINING rows only.

The fold's test users (its new users) and every query row of its scenarios are not training rows, so a
trial never sees them. A seeded share of the fold's training users becomes validation users: all their
training rows leave the trial's training rows, and each reveals ``support_size`` random ratings (support,
as a ``new_user`` does) and is scored on the rest (query).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.evaluation.splits import Fold, Scenario, select_rows, support_mask

SCENARIO = "validation"


@dataclass(frozen=True)
class ValidationSplit:
    """One tuning fold: the trial's training rows, the validation users and their scenario (support,
    query, the fold's known items as pool; nothing ranked for top-k)."""

    fold: int
    train: dict[str, np.ndarray]
    users: np.ndarray
    scenario: Scenario


def validation_split(
    fold: Fold, share: float, support_size: int, sample_users: int, seed: int
) -> ValidationSplit:
    """Hold out ``round(share * n)`` of the fold's ``n`` training users (at most ``sample_users`` when
    > 0, at least one), drawn with ``seed`` and the fold index; at least one training user stays."""
    if not 0 < share < 1:
        raise ValueError(f"tune.validation_share must be in (0, 1), got {share}")
    user = np.asarray(fold.train["user_index"])
    candidates = np.unique(user)
    n = max(1, round(share * candidates.size))
    if sample_users > 0:
        n = min(n, sample_users)
    if n >= candidates.size:
        raise ValueError(
            f"fold {fold.index} has {candidates.size} training user(s): too few to hold out {n} "
            "as validation users"
        )
    rng = np.random.default_rng([seed, fold.index])
    users = np.sort(rng.choice(candidates, n, replace=False))
    held = np.isin(user, users)
    rows = select_rows(fold.train, held)
    is_support = support_mask(rows["user_index"], support_size, int(rng.integers(2**32)))
    scenario = Scenario(
        name=SCENARIO,
        support=select_rows(rows, is_support),
        query=select_rows(rows, ~is_support),
        items=fold.known_items,
        support_group=SCENARIO,
        ranked_users=np.zeros(0, dtype=np.int64),
    )
    return ValidationSplit(fold.index, select_rows(fold.train, ~held), users, scenario)
