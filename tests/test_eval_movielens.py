"""The evaluation on MovieLens-100k: the kfold scenarios and the MeLU protocol, with fast baselines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.evaluation.cv import cross_validate
from pipeline.evaluation.protocols import make_folds
from pipeline.evaluation.splits import Role
from pipeline.params import load_params
from tests.eval_fixtures import movielens_feature_set, movielens_item_year

MODELS = "eval.models=[global_mean, popularity, linear_bias]"


@pytest.mark.slow
def test_kfold_scenarios_on_movielens_100k(data_mirror: Path) -> None:
    fs = movielens_feature_set(data_mirror)
    cv = cross_validate(load_params(None, [MODELS]), fs).cv
    sizes = cv["sizes"]
    # per fold, every rating is a training row, a query row of one scenario or a new user's support row
    for f in range(5):
        queries = sum(sizes[s]["query_rows"][f] for s in ("warm", "new_user", "new_item", "new_both"))
        assert sizes["train_rows"][f] + queries + sizes["new_user"]["support_rows"][f] == 100_000
    assert sum(sizes["new_user"]["query_users"]) == 943
    got = {s: cv["scenarios"][s] for s in cv["scenarios"]}
    for scenario in ("warm", "new_user", "new_item", "new_both"):
        floor = got[scenario]["global_mean"]["mae"]["mean"]
        assert 0.9 < floor < 1.0  # the spread of MovieLens ratings around their mean
        assert got[scenario]["linear_bias"]["mae"]["mean"] < floor - 0.04
    # known users are easier than new ones; new items are harder than known ones
    lb = {s: got[s]["linear_bias"]["mae"]["mean"] for s in got}
    assert lb["warm"] < lb["new_user"] < lb["new_item"]
    # the published new-user numbers of bias baselines on ML-100k sit around MAE 0.75-0.80
    assert 0.72 < lb["new_user"] < 0.82
    assert (
        got["new_user"]["popularity"]["hr@10"]["mean"]
        > got["new_user"]["global_mean"]["hr@10"]["mean"] + 0.05
    )
    assert cv["tests"] == {}


@pytest.mark.slow
def test_melu_protocol_on_movielens_100k(data_mirror: Path) -> None:
    fs = movielens_feature_set(data_mirror)
    year = movielens_item_year(data_mirror)
    params = load_params(None, [MODELS, "eval.protocol=melu", "eval.folds=2"])
    folds = make_folds(params.eval, fs.ratings, fs.n_items, params.seed, year)
    user, item = fs.ratings["user_index"], fs.ratings["item_index"]
    for fold in folds:
        assert set(fold.new_items.tolist()) == set(np.flatnonzero(year >= 1998)) & set(item.tolist())
        assert fold.new_users.size == round(0.2 * 943)
        for scenario in fold.scenarios.values():  # every task: a cell of 13..100 ratings, 10 of them query
            assert set(np.bincount(scenario.query["user_index"]).tolist()) <= {0, 10}
        unused = fold.roles == Role.UNUSED
        known = ~np.isin(user, fold.new_users) & ~np.isin(item, fold.new_items)
        assert unused.any() and not unused[known].any()  # known x known rows train or are warm queries
    cv = cross_validate(params, fs, year).cv
    for scenario in ("warm", "new_user", "new_item", "new_both"):
        models = cv["scenarios"][scenario]
        assert models["linear_bias"]["mae"]["mean"] < models["global_mean"]["mae"]["mean"]
    assert cv["protocol"] == "melu"
