"""The models ``eval.models`` can name, built fresh (unfitted) for each fold."""

from __future__ import annotations

from typing import Any, get_args

from pipeline.baselines.base import ColdStartModel, Objective
from pipeline.baselines.content import ContentModel
from pipeline.baselines.cornac_retrain import CornacRetrain
from pipeline.baselines.global_mean import GlobalMean
from pipeline.baselines.item_knn import ItemKNN
from pipeline.baselines.lightgbm_model import LightGBMModel
from pipeline.baselines.linear_bias import LinearBias
from pipeline.baselines.mf_foldin import MFFoldIn
from pipeline.baselines.most_popular import MostPopular
from pipeline.baselines.popularity import Popularity
from pipeline.evaluation.meta_adapter import MetaModel
from pipeline.params import ModelName, Params

# the meta-learner family: the train params plus these config changes
META_FAMILY: dict[str, dict[str, Any]] = {
    "meta": {},
    "meta_no_text": {"use_text": False},
    "melu": {"model": "melu"},
    "finetune": {"model": "melu", "algorithm": "joint"},
}
# the models under test; every other model is a baseline they are compared against
META_MODELS = ("meta", "meta_no_text")
MODEL_NAMES: tuple[str, ...] = get_args(ModelName)
"""Every model ``eval.models`` can name: the one list, the params model's ``ModelName``."""
MODEL_CLASSES: dict[str, type[ColdStartModel]] = {
    **dict.fromkeys(META_FAMILY, MetaModel),
    "global_mean": GlobalMean,
    "popularity": Popularity,
    "most_popular": MostPopular,
    "linear_bias": LinearBias,
    "mf_foldin": MFFoldIn,
    "item_knn": ItemKNN,
    "content": ContentModel,
    "cornac_retrain": CornacRetrain,
    "lightgbm": LightGBMModel,
    "lightgbm_rank": LightGBMModel,
}


def is_seeded(name: str) -> bool:
    """Whether model ``name``'s fit is random (its class's ``seeded``): the evaluation fits it
    ``eval.seeds`` times per fold."""
    if name not in MODEL_CLASSES:
        raise ValueError(f"eval.models: unknown model {name!r}; known: {list(MODEL_NAMES)}")
    return bool(MODEL_CLASSES[name].seeded)


def build_model(
    name: str, params: Params, seed: int, objective: Objective = "regression", threads: int | None = None
) -> ColdStartModel:
    """A fresh, unfitted model called ``name``; ``objective``: ``regression`` (explicit ratings) or
    ``binary`` (implicit 0/1 labels, scores are P(positive)). ``lightgbm_rank`` (lambdarank) and
    ``most_popular`` (rating counts) always rank.
    Hyperparameters: ``params.models.<name>`` (the meta family: ``params.train``).
    ``threads``: LightGBM's threads (default: its own choice)."""
    if objective not in ("regression", "binary"):
        raise ValueError(f"objective must be 'regression' or 'binary', got {objective!r}")
    if name in META_FAMILY:
        config = params.train.model_dump() | META_FAMILY[name] | {"objective": objective}
        return MetaModel(config, seed=seed, name=name, known_history=config["model"] == "foldin")
    hyper = params.models.of(name)
    if name == "global_mean":
        return GlobalMean(objective)
    if name == "popularity":
        return Popularity(objective, **hyper)
    if name == "most_popular":
        return MostPopular(objective)
    if name == "linear_bias":
        return LinearBias(objective, **hyper)
    if name == "mf_foldin":
        return MFFoldIn(objective, seed=seed, **hyper)
    if name == "item_knn":
        return ItemKNN(objective, **hyper)
    if name == "content":
        return ContentModel(objective, **hyper)
    if name == "cornac_retrain":
        return CornacRetrain(objective, seed=seed, **hyper)
    if name in ("lightgbm", "lightgbm_rank"):
        booster = objective if name == "lightgbm" else "lambdarank"
        return LightGBMModel(params.eval.support_size, seed, objective=booster, num_threads=threads, **hyper)
    raise ValueError(f"eval.models: unknown model {name!r}; known: {list(MODEL_NAMES)}")
