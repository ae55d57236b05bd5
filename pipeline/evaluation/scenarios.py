"""Scoring one fitted model on one scenario of one fold.

Rating and ranking metrics use the query rows: MAE and RMSE (models whose scores are ratings), graded
nDCG@k of each user's query items, and for the implicit task the per-user AUC of labels against scores;
each is a mean over users, every user weighing the same.
Top-k metrics rank, for each ranked query user (all, or a seeded sample: ``eval.topk_users``), every
candidate item of the scenario's pool the user has not rated in training or support, by the model's
scores (its ranking head's, :class:`~pipeline.baselines.base.Ranker`, where it has one); the relevant items
are its query items rated ``>= relevance`` (labelled 1). The model scores the candidates and the other
users' query rows in one pass per chunk of users, and the query rows are read from those scores, as every
query row of a ranked user is a candidate.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from pipeline.baselines.base import ColdStartModel, Ranker
from pipeline.evaluation.metrics import (
    TOPK_METRICS,
    auc,
    ndcg_at_k,
    per_user_auc,
    per_user_mae,
    per_user_rmse,
    relevant_rows,
    topk_metrics,
    unseen_candidates,
)
from pipeline.evaluation.splits import Scenario, rows_of_users
from pipeline.features.store import FeatureSet

CANDIDATE_ROWS = 1 << 18  # candidate rows per predict call
WEIGHTING = "user"
"""How a scenario's metrics weigh the query rows: every user the same, whatever its number of rows."""
PerUser = dict[str, tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Scoring:
    """How a scenario is scored: the task, the relevance threshold, the cut-offs."""

    implicit: bool
    relevance: float
    ndcg_ks: tuple[int, ...]
    top_k: int

    @property
    def primary(self) -> str:
        """The metric the paired tests and plots use: MAE (explicit), AUC (implicit)."""
        return "auc" if self.implicit else "mae"

    @property
    def lower_is_better(self) -> bool:
        return not self.implicit


@dataclass(frozen=True)
class ScenarioResult:
    """One model on one scenario of one fold: metric values (None where undefined) and per-user values."""

    metrics: dict[str, float | None]
    per_user: PerUser


def _has_both_classes(user: np.ndarray, label: np.ndarray) -> bool:
    _, codes = np.unique(user, return_inverse=True)
    positives = np.bincount(codes, weights=label > 0)
    return bool(((positives > 0) & (positives < np.bincount(codes))).any())


def query_metrics(
    user: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray, scoring: Scoring, predicts_ratings: bool
) -> ScenarioResult:
    """The metrics of the query rows alone (no candidates); empty query rows give every metric None.

    Every user weighs the same (``WEIGHTING``): MAE is the mean over users of each user's MAE, RMSE the
    mean over users of each user's RMSE, as nDCG and AUC are means over users; the per-user values are
    those the paired tests compare.
    """
    names = (["mae", "rmse"] if predicts_ratings else []) + (["auc"] if scoring.implicit else [])
    names += [f"ndcg@{k}" for k in scoring.ndcg_ks]
    metrics: dict[str, float | None] = dict.fromkeys(names)
    per_user: PerUser = {}
    if y_true.size == 0:
        return ScenarioResult(metrics, per_user)
    if predicts_ratings:
        per_user["mae"] = per_user_mae(user, y_true, y_pred)
        per_user["rmse"] = per_user_rmse(user, y_true, y_pred)
        metrics["mae"] = float(np.mean(per_user["mae"][1]))
        metrics["rmse"] = float(np.mean(per_user["rmse"][1]))
    if scoring.implicit and _has_both_classes(user, y_true):
        metrics["auc"] = auc(user, y_true, y_pred)
        per_user["auc"] = per_user_auc(user, y_true, y_pred)
    if (y_true > 0).any():
        for k in scoring.ndcg_ks:
            metrics[f"ndcg@{k}"] = ndcg_at_k(user, y_true, y_pred, k)
    return ScenarioResult(metrics, per_user)


def predict_by_user(
    model: ColdStartModel,
    fs: FeatureSet,
    support: dict[str, np.ndarray],
    user: np.ndarray,
    item: np.ndarray,
    chunk_rows: int = CANDIDATE_ROWS,
    rank: bool = False,
) -> np.ndarray:
    """``model``'s scores of the rows ``(user, item)`` (grouped by user), at most about ``chunk_rows`` rows
    per predict call, each call with the support rows of its users; ``rank``: its ranking head's scores
    (:class:`~pipeline.baselines.base.Ranker`)."""
    score = model.rank if rank and isinstance(model, Ranker) else model.predict
    out = np.empty(user.size, dtype=np.float64)
    if user.size == 0:
        return out
    starts = np.flatnonzero(np.r_[True, user[1:] != user[:-1]])
    bounds = [0]
    for s in starts[1:]:
        if s - bounds[-1] >= chunk_rows:
            bounds.append(int(s))
    bounds.append(user.size)
    for a, b in itertools.pairwise(bounds):
        chunk_support = rows_of_users(support, np.unique(user[a:b]))
        pred = np.asarray(
            score(fs, chunk_support, {"user_index": user[a:b], "item_index": item[a:b]}),
            dtype=np.float64,
        )
        if pred.shape != (b - a,):
            raise ValueError(f"{model.name}: {pred.size} predictions for {b - a} query rows")
        if not np.isfinite(pred).all():
            raise ValueError(f"{model.name}: {int((~np.isfinite(pred)).sum())} non-finite predictions")
        out[a:b] = pred
    return out


def candidate_rows(
    scenario: Scenario, train: dict[str, np.ndarray], n_items: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(user, item)`` of every pool item each ranked user has not rated in ``train`` or its support rows;
    users ascending."""
    users = scenario.ranked_users
    seen_train = rows_of_users(train, users)
    seen_user = np.r_[seen_train["user_index"], scenario.support["user_index"]]
    seen_item = np.r_[seen_train["item_index"], scenario.support["item_index"]]
    user, item = unseen_candidates(users, n_items, seen_user, seen_item)
    in_pool = np.isin(item, scenario.items)
    return user[in_pool], item[in_pool]


def scored_rows(
    scenario: Scenario, train: dict[str, np.ndarray], n_items: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(user, item)`` the model scores: the ranked users' candidates and the other users' query rows,
    sorted by user, then item."""
    c_user, c_item = candidate_rows(scenario, train, n_items)
    q = scenario.query
    other = ~np.isin(q["user_index"], scenario.ranked_users)
    user = np.r_[c_user, np.asarray(q["user_index"], dtype=np.int64)[other]]
    item = np.r_[c_item, np.asarray(q["item_index"], dtype=np.int64)[other]]
    order = np.lexsort((item, user))
    return user[order], item[order]


def _query_positions(scenario: Scenario, user: np.ndarray, item: np.ndarray, n_items: int) -> np.ndarray:
    """Position of each query row among the scored rows ``(user, item)`` (sorted by user, then item)."""
    q_user = np.asarray(scenario.query["user_index"], dtype=np.int64)
    q_item = np.asarray(scenario.query["item_index"], dtype=np.int64)
    key = user * n_items + item
    q_key = q_user * n_items + q_item
    pos = np.minimum(np.searchsorted(key, q_key), max(key.size - 1, 0))
    missing = key[pos] != q_key if key.size else np.ones(q_key.size, dtype=bool)
    if missing.any():
        row = int(np.argmax(missing))
        raise ValueError(
            f"{scenario.name}: query row {row} (user {q_user[row]}, item {q_item[row]}) is also a training "
            "or support row of the user, or outside the scenario's items"
        )
    return pos


def _union(tables: list[dict[str, np.ndarray]], n_items: int) -> dict[str, np.ndarray]:
    """The rows of ``tables`` (support sets of one group: a user's rows are the same in each), each
    (user, item) once, in the order of first appearance."""
    joined = {c: np.concatenate([t[c] for t in tables]) for c in tables[0]}
    key = np.asarray(joined["user_index"], dtype=np.int64) * n_items + joined["item_index"]
    _, first = np.unique(key, return_index=True)
    return {c: col[np.sort(first)] for c, col in joined.items()}


def score_scenarios(
    model: ColdStartModel,
    fs: FeatureSet,
    scenarios: list[Scenario],
    train: dict[str, np.ndarray],
    scoring: Scoring,
) -> dict[str, ScenarioResult]:
    """Every metric of ``model`` on each scenario (see the module docstring), by scenario name.

    Scenarios of one ``support_group`` give each user the same support set, so their candidates are scored
    in one pass: the model adapts to each user once.
    """
    topk_names = [f"{m}@{scoring.top_k}" for m in TOPK_METRICS]
    groups: dict[str, list[Scenario]] = {}
    for scenario in scenarios:
        if scenario.query["rating"].size:
            groups.setdefault(scenario.support_group, []).append(scenario)
    ranks = isinstance(model, Ranker) and model.ranks
    scores: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
    for members in groups.values():
        parts = [scored_rows(s, train, fs.n_items) for s in members]
        user = np.concatenate([u for u, _ in parts])
        item = np.concatenate([i for _, i in parts])
        order = np.argsort(user, kind="stable")
        support = _union([s.support for s in members], fs.n_items)
        flat = np.empty(user.size)
        flat[order] = predict_by_user(model, fs, support, user[order], item[order])
        ranking = flat
        if ranks:
            ranking = np.empty(user.size)
            ranking[order] = predict_by_user(model, fs, support, user[order], item[order], rank=True)
        ends = np.cumsum([u.size for u, _ in parts])
        for s, (s_user, s_item), end in zip(members, parts, ends, strict=True):
            span = slice(end - s_user.size, end)
            scores[s.name] = (s_user, s_item, flat[span], ranking[span])
    results = {}
    for scenario in scenarios:
        q = scenario.query
        q_user = np.asarray(q["user_index"], dtype=np.int64)
        y_true = np.asarray(q["rating"], dtype=np.float64)
        if scenario.name not in scores:
            empty = query_metrics(q_user, y_true, y_true, scoring, model.predicts_ratings)
            results[scenario.name] = ScenarioResult(empty.metrics | dict.fromkeys(topk_names), {})
            continue
        s_user, s_item, s_score, s_rank = scores[scenario.name]
        pos = _query_positions(scenario, s_user, s_item, fs.n_items)
        result = query_metrics(q_user, y_true, s_score[pos], scoring, model.predicts_ratings)
        metrics = result.metrics | dict.fromkeys(topk_names)
        ranked = np.isin(q_user, scenario.ranked_users)
        relevant = relevant_rows(q_user[ranked], q["item_index"][ranked], y_true[ranked], scoring.relevance)
        if relevant[0].size:
            candidate = np.isin(s_user, scenario.ranked_users)
            metrics |= topk_metrics(
                s_user[candidate], s_item[candidate], s_rank[candidate], relevant, scoring.top_k
            )
        results[scenario.name] = ScenarioResult(metrics, result.per_user)
    return results
