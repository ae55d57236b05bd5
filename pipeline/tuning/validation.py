"""Validation users for tuning, carved from TRAINING rows only.

The tuning rows are the rows that train in EVERY reported fold (:func:`tuning_rows`; under ``melu`` and
``melu_split``: the ``meta_training`` rows, since each repeat redraws the other states' support and query
rows), else, under ``kfold``, where every row is a test row of some fold, the tuning fold's own training
rows. A seeded share of their users becomes validation users: all their rows leave the trial's training
rows, and each reveals ``support_size`` random ratings (support, as a ``new_user`` does) and is scored on
the rest (query).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.evaluation.splits import Fold, Role, Scenario, select_rows, support_mask

SCENARIO = "validation"


@dataclass(frozen=True)
class ValidationSplit:
    """One tuning fold: the trial's training rows, the validation users and their scenario (support,
    query, the fold's known items as pool; nothing ranked for top-k)."""

    fold: int
    train: dict[str, np.ndarray]
    users: np.ndarray
    scenario: Scenario


def tuning_rows(ratings: dict[str, np.ndarray], folds: list[Fold]) -> dict[str, np.ndarray] | None:
    """The rating rows that are training rows in every fold; None when there are none (``kfold``)."""
    always = np.logical_and.reduce([fold.roles == Role.TRAIN for fold in folds])
    return select_rows(ratings, always) if always.any() else None


def validation_split(
    fold: Fold,
    share: float,
    support_size: int,
    sample_users: int,
    seed: int,
    rows: dict[str, np.ndarray] | None = None,
) -> ValidationSplit:
    """Hold out ``round(share * n)`` of the ``n`` users of ``rows`` (default: the fold's training rows; at
    most ``sample_users`` when > 0, at least one), drawn with ``seed`` and the fold index; at least one
    training user stays."""
    if not 0 < share < 1:
        raise ValueError(f"tune.validation_share must be in (0, 1), got {share}")
    train = fold.train if rows is None else rows
    user = np.asarray(train["user_index"])
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
    validation = select_rows(train, held)
    is_support = support_mask(validation["user_index"], support_size, int(rng.integers(2**32)))
    scenario = Scenario(
        name=SCENARIO,
        support=select_rows(validation, is_support),
        query=select_rows(validation, ~is_support),
        items=fold.known_items,
        support_group=SCENARIO,
        ranked_users=np.zeros(0, dtype=np.int64),
    )
    return ValidationSplit(fold.index, select_rows(train, ~held), users, scenario)
