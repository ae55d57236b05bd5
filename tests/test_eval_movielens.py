"""The baselines on MovieLens-100k (new_user, 5 folds over users, 10 support ratings)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.evaluation.cv import cross_validate
from pipeline.params import load_params
from tests.eval_fixtures import movielens_feature_set


@pytest.mark.slow
def test_baselines_on_movielens_100k(data_mirror: Path) -> None:
    fs = movielens_feature_set(data_mirror)
    cv = cross_validate(load_params(None, ["eval.models=[global_mean, linear_bias, lightgbm]"]), fs)
    got = cv["scenarios"]["new_user"]
    floor = got["global_mean"]
    for name in ("linear_bias", "lightgbm"):
        assert got[name]["mae"]["mean"] < floor["mae"]["mean"] - 0.1
        assert got[name]["rmse"]["mean"] < floor["rmse"]["mean"] - 0.1
        assert got[name]["ndcg@3"]["mean"] > floor["ndcg@3"]["mean"] + 0.3
    # the published new-user numbers of bias baselines on ML-100k sit around MAE 0.75-0.80
    assert 0.72 < got["linear_bias"]["mae"]["mean"] < 0.82
