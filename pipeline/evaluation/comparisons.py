"""The model under test against every baseline, over the same users: what ``cv.json`` reports as ``tests``,
the per-user means with their bootstrap intervals, and the text ablation.

A user's value of a metric is its value (e.g. the MAE of its query rows) averaged over the seeds, then
over the folds it is scored in. Per scenario, ``meta`` is compared with every baseline (every model not in
``META_MODELS``) that has the primary metric: a one-sided Wilcoxon signed-rank test over the users both
were scored on, with Holm's correction over all (scenario, baseline) tests, and a percentile bootstrap
interval over users of the mean difference.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.evaluation.models import META_MODELS
from pipeline.evaluation.scenarios import Scoring
from pipeline.evaluation.stats import (
    bootstrap_ci,
    holm,
    mean_by_user,
    paired_values,
    paired_wilcoxon,
    summarize,
)

TESTED_MODEL = "meta"
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP = {"resamples": BOOTSTRAP_RESAMPLES, "unit": "user", "interval": "percentile"}
"""How the intervals over users are drawn (``cv.json`` key ``bootstrap``)."""
# scenario -> model -> metric -> one value per fold (None where undefined)
PerFold = dict[str, dict[str, dict[str, list[float | None]]]]
# scenario -> model -> metric -> per fold (users, values)
UserValues = dict[str, dict[str, dict[str, list[tuple[np.ndarray, np.ndarray]]]]]


def bootstrap_seed(seed: int) -> int:
    """The seed of every bootstrap of a run with params ``seed``: one stream of ``SeedSequence([seed, 2])``
    (stream 1 draws the implicit task's negatives). Resamples depend on the seed and the number of users
    only, so a model's interval does not change when another model joins the run."""
    return int(np.random.SeedSequence([seed, 2]).generate_state(1)[0])


def user_means(user_values: UserValues, seed: int) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """``{scenario: {model: {metric: {"n_users", "mean_users", "ci95_users"}}}}``: each model's mean over
    users of the per-user values and its bootstrap interval, for the metrics with per-user values."""
    out: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    for scenario, models in user_values.items():
        for model, metrics in models.items():
            for metric, parts in metrics.items():
                if not parts:
                    continue
                _, values = mean_by_user(parts)
                out.setdefault(scenario, {}).setdefault(model, {})[metric] = {
                    "n_users": int(values.size),
                    "mean_users": float(values.mean()),
                    "ci95_users": bootstrap_ci(values, BOOTSTRAP_RESAMPLES, bootstrap_seed(seed)),
                }
    return out


def baseline_tests(user_values: UserValues, scoring: Scoring, seed: int) -> dict[str, dict[str, Any]]:
    """``{scenario: {baseline: {"metric", "n_users", "mean_difference", "difference_ci95", "p_value",
    "p_holm", "alternative", "test"}}}``: ``meta`` against every baseline with per-user values of the
    primary metric (MAE; implicit task: AUC), over the users both were scored on.

    ``mean_difference`` is the mean over those users of meta's value minus the baseline's, with its
    bootstrap interval; ``p_value`` the one-sided Wilcoxon signed-rank test in meta's favour (lower MAE,
    higher AUC), None when fewer than two users differ; ``p_holm`` Holm's adjustment over every test of
    the run (those with a p-value).
    """
    metric = scoring.primary
    alternative = "less" if scoring.lower_is_better else "greater"
    tests: dict[str, dict[str, Any]] = {}
    for scenario, models in user_values.items():
        mine_parts = models.get(TESTED_MODEL, {}).get(metric)
        if not mine_parts:
            continue
        mine = mean_by_user(mine_parts)
        for baseline, metrics in models.items():
            if baseline in META_MODELS or not metrics.get(metric):
                continue
            theirs = mean_by_user(metrics[metric])
            test = paired_wilcoxon(*mine, *theirs, alternative=alternative)
            _, a, b = paired_values(*mine, *theirs)
            tests.setdefault(scenario, {})[baseline] = {
                "metric": metric,
                "n_users": test["n_users"],
                "mean_difference": test["mean_difference"],
                "difference_ci95": bootstrap_ci(a - b, BOOTSTRAP_RESAMPLES, bootstrap_seed(seed)),
                "p_value": test["p_value"],
                "p_holm": None,
                "alternative": alternative,
                "test": test["test"],
            }
    family = [t for by_baseline in tests.values() for t in by_baseline.values()]
    for t, adjusted in zip(family, holm([t["p_value"] for t in family]), strict=True):
        t["p_holm"] = adjusted
    return tests


def text_ablation(per_fold: PerFold, scoring: Scoring) -> dict[str, Any]:
    """Per scenario: the relative improvement of ``meta`` over ``meta_no_text`` in the primary metric, per
    fold (``(no_text - meta) / no_text`` for an error, the reverse for AUC), summarised over folds."""
    metric = scoring.primary
    out = {}
    for scenario, models in per_fold.items():
        mine = models.get("meta", {}).get(metric)
        theirs = models.get("meta_no_text", {}).get(metric)
        if not mine or not theirs:
            continue
        pairs = [(a, b) for a, b in zip(mine, theirs, strict=True) if a is not None and b is not None]
        if not pairs:
            continue
        sign = 1.0 if scoring.lower_is_better else -1.0
        rel = [sign * (b - a) / b for a, b in pairs]
        out[scenario] = {"metric": metric, **summarize(rel), "per_fold": rel}
    return out
