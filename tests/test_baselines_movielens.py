"""Every baseline on MovieLens-100k, new users: a held-out fifth of the users, 10 support ratings each."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.baselines.base import ColdStartModel
from pipeline.baselines.global_mean import GlobalMean
from pipeline.baselines.lightgbm_model import LightGBMModel
from pipeline.baselines.linear_bias import LinearBias
from pipeline.baselines.popularity import Popularity
from pipeline.evaluation.metrics import auc, mae, ndcg_at_k, relevant_rows, topk_metrics, unseen_candidates
from tests.baseline_fixtures import implicit, new_user_case
from tests.eval_fixtures import movielens_feature_set


@pytest.mark.slow
def test_baselines_on_movielens_100k_new_users(data_mirror: Path) -> None:
    fs = movielens_feature_set(data_mirror)
    case = new_user_case(fs, test_share=0.2, support_size=10, seed=0)
    user, item = case.query["user_index"], case.query["item_index"]
    seen_user = np.r_[case.train["user_index"], case.support["user_index"]]
    seen_item = np.r_[case.train["item_index"], case.support["item_index"]]
    cand_user, cand_item = unseen_candidates(np.unique(user), fs.n_items, seen_user, seen_item)
    relevant = relevant_rows(user, item, case.y_true)
    models: list[ColdStartModel] = [
        GlobalMean(),
        Popularity(),
        LinearBias(),
        LightGBMModel(support_size=10, seed=0),
        LightGBMModel(support_size=10, seed=0, objective="lambdarank"),
    ]
    got = {}
    for model in models:
        model.fit(fs, case.train)
        pred = model.predict(fs, case.support, case.query)
        candidates = {"user_index": cand_user, "item_index": cand_item}
        got[model.name] = {
            "mae": mae(case.y_true, pred),
            "ndcg@3": ndcg_at_k(user, case.y_true, pred, 3),
            "auc": auc(user, case.y_true >= 4, pred),
            **topk_metrics(cand_user, cand_item, model.predict(fs, case.support, candidates), relevant, 10),
        }
    floor = got["global_mean"]
    # the published new-user numbers of bias baselines on ML-100k sit around MAE 0.75-0.80
    assert 0.72 < got["linear_bias"]["mae"] < 0.82
    assert got["popularity"]["mae"] < floor["mae"] - 0.08
    assert got["lightgbm"]["mae"] < floor["mae"] - 0.1
    for name in ("popularity", "linear_bias", "lightgbm", "lightgbm_rank"):
        assert got[name]["ndcg@3"] > floor["ndcg@3"] + 0.5, name
        assert got[name]["auc"] > 0.65, name
        assert got[name]["precision@10"] > floor["precision@10"] + 0.05, name
    assert floor["auc"] == 0.5  # a constant score ties every pair

    binary = implicit(fs)
    implicit_case = new_user_case(binary, test_share=0.2, support_size=10, seed=0)
    model = LinearBias("binary")
    model.fit(binary, implicit_case.train)
    pred = model.predict(binary, implicit_case.support, implicit_case.query)
    assert auc(implicit_case.query["user_index"], implicit_case.y_true, pred) > 0.65
