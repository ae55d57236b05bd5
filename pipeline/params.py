"""The one validated parameter model, read from ``params.yaml`` plus ``--set section.key=value`` overrides.

Every stage receives a :class:`Params`; unknown keys and invalid values are rejected before any work
starts, with the dotted key named in the error.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]


class ParamsError(ValueError):
    """A params file or override is invalid; the message names the key and the rule."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SyntheticParams(_Section):
    """Seeded generator with planted user/item structure (for tests and smoke runs)."""

    n_users: PositiveInt = 120
    n_items: PositiveInt = 80
    n_factors: PositiveInt = 4
    min_ratings: PositiveInt = 15
    max_ratings: PositiveInt = 40
    noise: Annotated[float, Field(ge=0)] = 0.3

    @model_validator(mode="after")
    def _range(self) -> SyntheticParams:
        if self.min_ratings > self.max_ratings:
            raise ValueError("min_ratings must be <= max_ratings")
        if self.max_ratings > self.n_items:
            raise ValueError("max_ratings must be <= n_items")
        return self


class DataParams(_Section):
    source: Literal["movielens-100k", "movielens-1m", "recbole", "synthetic"] = "movielens-100k"
    name: str = "ml-100k"
    path: str | None = None
    download: bool = True
    max_file_mb: PositiveFloat = 2048.0
    synthetic: SyntheticParams = SyntheticParams()


class ValidateParams(_Section):
    rating_min: float = 1.0
    rating_max: float = 5.0
    on_error: Literal["fail", "quarantine"] = "fail"
    max_bad_fraction: Annotated[float, Field(ge=0, le=1)] = 0.01

    @model_validator(mode="after")
    def _range(self) -> ValidateParams:
        if self.rating_min >= self.rating_max:
            raise ValueError("rating_min must be < rating_max")
        return self


class FeaturesParams(_Section):
    text_encoder: str = "all-MiniLM-L6-v2"
    text_template: str = "{title} ({year}). Genres: {genres}. {extra}"
    batch_size: PositiveInt = 128
    device: Literal["auto", "cpu", "cuda"] = "auto"
    query_size: PositiveInt = 10


class TrainParams(_Section):
    algorithm: Literal["maml", "fomaml", "metasgd", "joint"] = "maml"
    adapt: Literal["decision", "all"] = "decision"
    embedding_dim: PositiveInt = 32
    hidden: tuple[PositiveInt, ...] = (128, 64)
    inner_steps: Annotated[int, Field(ge=0)] = 5
    inner_lr: PositiveFloat = 0.2
    outer_lr: PositiveFloat = 3e-3
    meta_batch: PositiveInt = 16
    epochs: PositiveInt = 20
    max_support: PositiveInt = 10
    query_size: PositiveInt = 100
    nproc: PositiveInt = 2
    device: Literal["auto", "cpu", "cuda"] = "auto"
    bf16: bool = False
    checkpoint_every: PositiveInt = 50
    # loop: per-task reference; vmap: torch.func over the meta-batch; graph: vmap in a CUDA graph (CUDA only)
    impl: Literal["loop", "vmap", "graph"] = "vmap"
    # probability that a training rating hides its item id (content only): trains the unknown-item row
    item_dropout: Annotated[float, Field(ge=0, lt=1)] = 0.1
    # support size per training task is uniform in [min_support, max_support]; match eval.support_size
    min_support: Annotated[int, Field(ge=0)] = 10
    # redraw each training user's support/query split every epoch from all its ratings
    resplit: bool = True
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    # torchrun restarts the worker group up to this many times, resuming from the newest checkpoint
    max_restarts: Annotated[int, Field(ge=0)] = 1
    # feed the language-model text embedding of items to the model (false: the meta_no_text ablation)
    use_text: bool = True
    # the language model is never trained; its projection into the model is trained, or frozen at its
    # seeded random initialisation (pure transfer of the text embedding)
    text_projection: Literal["trained", "frozen"] = "trained"
    # the user's text profile (mean text of the items they interacted with) as model input
    user_profile: bool = True
    # the prediction starts from the global mean plus each item's mean residual shrunk by this many
    # pseudo-ratings toward 0 (0: no item prior)
    item_prior: Annotated[float, Field(ge=0)] = 10.0
    # inner-loop loss = squared error summed over the n support ratings / (n + support_shrinkage)
    support_shrinkage: Annotated[float, Field(ge=0)] = 10.0
    # each inner SGD step's gradient (per task, over the adapted parameters) is clipped to this norm
    # (0: off); without it MAML on MovieLens-1M diverged to NaN (docs/training.md, "Divergence")
    inner_grad_clip: Annotated[float, Field(ge=0)] = 10.0
    # machines in one training run; > 1: every node runs the train stage with the same rendezvous endpoint
    nnodes: PositiveInt = 1
    rdzv_endpoint: str = ""

    @model_validator(mode="after")
    def _support_range(self) -> TrainParams:
        if self.min_support > self.max_support:
            raise ValueError("min_support must be <= max_support")
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ValueError("nnodes > 1 needs rdzv_endpoint (host:port of the torchrun rendezvous)")
        return self


ModelName = Literal[
    "global_mean",
    "popularity",
    "most_popular",
    "linear_bias",
    "mf_foldin",
    "item_knn",
    "content",
    "cornac_retrain",
    "lightgbm",
    "lightgbm_rank",
    "finetune",
    "meta",
    "meta_no_text",
]


class MeluParams(_Section):
    """MeLU's tasks (Lee et al., KDD 2019): which (user, state) cells take part, and for protocol ``melu``
    which users and items are new."""

    # a (user, state) cell takes part when it holds min_ratings..max_ratings ratings
    min_ratings: PositiveInt = 13
    max_ratings: PositiveInt = 100
    query_size: PositiveInt = 10
    # protocol melu: items released in or after this year are new, earlier ones existing
    new_item_year: int = 1998
    existing_users: Annotated[float, Field(gt=0, lt=1)] = 0.8
    # protocol melu: each existing user's rating of an existing item is in warm_up with this probability
    warm_up: Annotated[float, Field(gt=0, lt=1)] = 0.1

    @model_validator(mode="after")
    def _range(self) -> MeluParams:
        if self.min_ratings > self.max_ratings:
            raise ValueError("min_ratings must be <= max_ratings")
        return self


class EvalParams(_Section):
    protocol: Literal["kfold", "melu", "melu_split"] = "kfold"
    # kfold: folds over users and over items (>= 2); melu, melu_split: repeats with new query draws
    folds: PositiveInt = 5
    # melu_split: the split file (user_id, item_id, state); null: <data.name>.melu_split.tsv next to the data
    split_file: str | None = None
    support_size: PositiveInt = 10
    # share of each training user's ratings held out as its warm query set
    warm_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.1
    # warm / new_item: at most this many of a known user's training ratings form its support set
    max_support: PositiveInt = 50
    shots: tuple[Annotated[int, Field(ge=0)], ...] = (0, 1, 3, 5, 10, 20)
    models: tuple[ModelName, ...] = get_args(ModelName)  # every model
    # training seeds per fold for the models whose fit is random (seeded); their results are averaged
    seeds: PositiveInt = 3
    ndcg_ks: tuple[PositiveInt, ...] = (1, 3, 5)
    top_k: PositiveInt = 10
    # top-k: at most this many seeded random query users per scenario and fold rank their candidates (0: all)
    topk_users: Annotated[int, Field(ge=0)] = 100
    # processes evaluating folds in parallel, splitting the cores between them (1: in the stage's process)
    workers: PositiveInt = 2
    melu: MeluParams = MeluParams()

    @model_validator(mode="after")
    def _distinct(self) -> EvalParams:
        if self.protocol == "kfold" and self.folds < 2:
            raise ValueError("protocol kfold needs folds >= 2")
        for name in ("shots", "models", "ndcg_ks"):
            values = getattr(self, name)
            if not values or len(set(values)) != len(values):
                raise ValueError(f"{name} must be a non-empty list without repeats")
        return self


class TaskParams(_Section):
    """What is predicted: explicit ratings, or implicit feedback (rated >= threshold vs sampled unrated)."""

    kind: Literal["explicit", "implicit"] = "explicit"
    # explicit: the relevance threshold of the top-k metrics; implicit: ratings >= it are positives
    positive_threshold: float = 4.0
    # implicit: unrated items sampled as negatives per positive, per user
    negatives: Annotated[int, Field(ge=0)] = 4


class RegisterParams(_Section):
    model_name: str = "metarec"
    experiment: str = "metarec"
    gate_metric: Literal["mae", "rmse"] = "mae"
    min_improvement: Annotated[float, Field(ge=0)] = 0.0
    # the paired test (over users, else folds) must give p below this for the champion to move
    max_p: Annotated[float, Field(gt=0, le=1)] = 0.05
    # how the served model scores the candidates: float, or int8 dynamic quantisation of the decision MLP
    compression: Literal["none", "int8"] = "none"
    # users whose query sets measure the served model's MAE (float beside compressed)
    sample_users: PositiveInt = 200


class FeedbackParams(_Section):
    # new ratings (feedback batches since the last retraining) that trigger a retraining run
    retrain_after: PositiveInt = 1000


warnings.filterwarnings("ignore", message='Field name "register"', category=UserWarning)


class Params(BaseModel):
    """All of ``params.yaml``; one section per stage (``validate`` is read as ``params.validation``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = 42
    data: DataParams = DataParams()
    validate_: ValidateParams = Field(default=ValidateParams(), alias="validate")
    features: FeaturesParams = FeaturesParams()
    train: TrainParams = TrainParams()
    eval: EvalParams = EvalParams()
    task: TaskParams = TaskParams()
    # `register` shadows only ABCMeta.register (a class attribute); the instance field wins on lookup.
    register: RegisterParams = RegisterParams()
    feedback: FeedbackParams = FeedbackParams()

    @property
    def validation(self) -> ValidateParams:
        return self.validate_

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)

    def digest(self) -> str:
        """Stable sha256 of the effective params (used as a lineage tag)."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ParamsError(f"--set {dotted}: '{key}' is not a section")
        node = child
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``section.key=value`` → (dotted key, YAML-parsed value)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ParamsError(f"--set {text!r}: expected section.key=value")
    return key.strip(), yaml.safe_load(raw) if raw.strip() else None


def _format_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid params in {source}:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        rule = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        shown = "" if e["type"] == "extra_forbidden" else f" (got {e.get('input')!r})"
        lines.append(f"  {key}: {rule}{shown}")
    return "\n".join(lines)


def load_params(path: str | Path | None = "params.yaml", overrides: list[str] | None = None) -> Params:
    """Read ``path`` (missing → defaults), apply overrides, validate."""
    tree: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        p = Path(path)
        if p.exists():
            source = str(p)
            try:
                loaded = yaml.safe_load(p.read_text()) or {}
            except yaml.YAMLError as exc:
                raise ParamsError(f"{p}: not valid YAML: {exc}") from None
            if not isinstance(loaded, dict):
                raise ParamsError(f"{p}: the top level must be a mapping of sections")
            tree = loaded
        elif str(p) != "params.yaml":
            raise ParamsError(f"params file not found: {p}")
    for text in overrides or []:
        key, value = parse_override(text)
        _set_dotted(tree, key, value)
    if overrides:
        source += " with --set " + " ".join(overrides)
    try:
        return Params.model_validate(tree)
    except ValidationError as err:
        raise ParamsError(_format_error(err, source)) from None
