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

from pipeline.paths import Paths

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
TUNED_FILE = "params/tuned.yaml"
TUNED_SECTIONS = ("models", "train")
"""The sections a tuned-params file may set."""


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


class FoldInParams(_Section):
    """``train.model: foldin``: an item tower (id + text + attributes) meta-trained so that a closed-form
    ridge solve on a user's support predicts the user's other ratings (pipeline/meta/foldin.py)."""

    factors: PositiveInt = 32
    hidden: PositiveInt = 128
    epochs: PositiveInt = 30
    batch: PositiveInt = 128
    learning_rate: PositiveFloat = 3e-3
    item_dropout: Annotated[float, Field(ge=0, lt=1)] = 0.5
    max_support: PositiveInt = 100
    max_query: PositiveInt = 100
    init_precision: PositiveFloat = 5.0
    # weight of the ranking head's loss (a softmax over the items, from the user's implicit fold-in); 0: no
    # ranking head, top-k ranks by predicted rating
    rank_weight: Annotated[float, Field(ge=0)] = 1.0


class TrainParams(_Section):
    # the meta-learner `meta`: foldin (a meta-learned fold-in) | melu (MeLU's MLP, adapted by gradient
    # steps; the fields below `foldin` are its hyperparameters)
    model: Literal["foldin", "melu"] = "foldin"
    foldin: FoldInParams = FoldInParams()
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
    "melu",
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


class PopularityParams(_Section):
    # pseudo-ratings at the global mean added to each item's ratings
    damping: PositiveFloat = 10.0


class LinearBiasParams(_Section):
    l2_user: Annotated[float, Field(ge=0)] = 5.0
    l2_item: Annotated[float, Field(ge=0)] = 10.0
    iterations: PositiveInt = 400
    learning_rate: PositiveFloat = 0.1


class MFFoldInParams(_Section):
    factors: PositiveInt = 16
    ridge: PositiveFloat = 10.0
    sweeps: PositiveInt = 12
    init_scale: Annotated[float, Field(ge=0)] = 0.1


class ItemKNNParams(_Section):
    k: PositiveInt = 40
    shrink: Annotated[float, Field(ge=0)] = 100.0
    l2_user: Annotated[float, Field(ge=0)] = 5.0
    l2_item: Annotated[float, Field(ge=0)] = 10.0


class ContentParams(_Section):
    l2_user: Annotated[float, Field(ge=0)] = 5.0
    l2_item: Annotated[float, Field(ge=0)] = 10.0
    sweeps: PositiveInt = 10
    text_taste: bool = True
    taste_ridge: PositiveFloat = 3.0
    item_text_bias: bool = False
    item_ridge: PositiveFloat = 10.0


class CornacRetrainParams(_Section):
    k: PositiveInt = 16
    max_iter: PositiveInt = 40
    learning_rate: PositiveFloat = 0.01
    lambda_reg: Annotated[float, Field(ge=0)] = 0.05
    use_bias: bool = True


class LightGBMParams(_Section):
    n_estimators: PositiveInt = 200
    learning_rate: PositiveFloat = 0.05
    num_leaves: Annotated[int, Field(ge=2)] = 31
    min_child_samples: PositiveInt = 100
    text_components: Annotated[int, Field(ge=0)] = 8
    item_shrinkage: Annotated[float, Field(ge=0)] = 10.0
    user_shrinkage: Annotated[float, Field(ge=0)] = 5.0
    stat_folds: Annotated[int, Field(ge=2)] = 5
    new_item_share: Annotated[float, Field(ge=0, lt=1)] = 0.2


class ModelsParams(_Section):
    """The baselines' hyperparameters, one section per model (the meta-learner family reads ``train``)."""

    popularity: PopularityParams = PopularityParams()
    linear_bias: LinearBiasParams = LinearBiasParams()
    mf_foldin: MFFoldInParams = MFFoldInParams()
    item_knn: ItemKNNParams = ItemKNNParams()
    content: ContentParams = ContentParams()
    cornac_retrain: CornacRetrainParams = CornacRetrainParams()
    lightgbm: LightGBMParams = LightGBMParams()
    lightgbm_rank: LightGBMParams = LightGBMParams()

    def of(self, name: str) -> dict[str, Any]:
        """Model ``name``'s hyperparameters as constructor keywords; ``{}`` for a model without a section."""
        section = getattr(self, name, None)
        return section.model_dump() if isinstance(section, BaseModel) else {}


class TuneParams(_Section):
    """``metarec tune``: Optuna search on validation users carved from the training users of the folds."""

    trials: PositiveInt = 20
    # null: every model of eval.models that has hyperparameters (pipeline/tuning/spaces.py)
    models: tuple[ModelName, ...] | None = None
    validation_share: Annotated[float, Field(gt=0, lt=1)] = 0.2
    sample_users: Annotated[int, Field(ge=0)] = 0
    epochs_scale: PositiveFloat = 1.0
    folds: PositiveInt = 1
    storage: str | None = None
    study_prefix: str = "metarec"
    pruner: Literal["median", "none"] = "median"
    seed: int | None = None
    metric: Annotated[str, Field(pattern=r"^(auto|mae|rmse|auc|ndcg@[1-9][0-9]*)$")] = "auto"
    experiment: str = "metarec-tune"

    @model_validator(mode="after")
    def _distinct(self) -> TuneParams:
        if self.models is not None and (not self.models or len(set(self.models)) != len(self.models)):
            raise ValueError("models must be null or a non-empty list without repeats")
        return self


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
    models: ModelsParams = ModelsParams()
    tune: TuneParams = TuneParams()
    # the tuned-params file (``metarec tune``), relative to the project root; null: none
    tuned: str | None = TUNED_FILE
    # `register` shadows only ABCMeta.register (a class attribute); the instance field wins on lookup.
    register: RegisterParams = RegisterParams()
    feedback: FeedbackParams = FeedbackParams()

    @model_validator(mode="after")
    def _compression_fits_the_model(self) -> Params:
        if self.register.compression == "int8" and self.train.model != "melu":
            raise ValueError(
                "register.compression int8 quantises MeLU's decision MLP (train.model melu); the fold-in "
                f"(train.model {self.train.model}) serves in float: set register.compression none"
            )
        return self

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


def _read_mapping(p: Path, what: str) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ParamsError(f"{p}: not valid YAML: {exc}") from None
    if not isinstance(loaded, dict):
        raise ParamsError(f"{p}: the top level must be a mapping of {what}")
    return loaded


def _merge(tree: dict[str, Any], update: dict[str, Any]) -> None:
    """Set every leaf of ``update`` in ``tree``, keeping the keys of ``tree`` that ``update`` lacks."""
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(tree.get(key), dict):
            _merge(tree[key], value)
        else:
            tree[key] = value


def tuned_file(path: str | Path, tuned: str | None) -> Path | None:
    """The tuned-params file ``tuned`` names, relative to the project root of the params file ``path``:
    the nearest folder at or above ``path``'s that holds a params.yaml (``params/ml1m.yaml`` →
    the repository), else ``path``'s folder. ``metarec tune`` writes it there too."""
    if not tuned:
        return None
    folder = Path(path).absolute().parent
    root = next((f for f in (folder, *folder.parents) if (f / "params.yaml").is_file()), folder)
    return Paths(root).tuned_params(tuned)


def read_tuned(path: Path) -> dict[str, Any]:
    """The overrides of the tuned-params file ``path`` (``{}`` when it is missing or empty); only the
    sections :data:`TUNED_SECTIONS` may be set."""
    if not path.is_file():
        return {}
    tree = _read_mapping(path, "sections")
    for key, value in tree.items():
        if key not in TUNED_SECTIONS or not isinstance(value, dict):
            raise ParamsError(
                f"{path}: '{key}': a tuned-params file holds only the sections {', '.join(TUNED_SECTIONS)}"
            )
    return tree


def _tuned_overrides(
    path: str | Path, tree: dict[str, Any], parsed: list[tuple[str, Any]]
) -> tuple[Path | None, dict[str, Any]]:
    """The tuned-params file that the params ``tree`` read from ``path`` names (after the overrides
    ``parsed``), and its overrides."""
    named = dict(parsed).get("tuned", tree.get("tuned", TUNED_FILE))
    tuned = tuned_file(path, named if isinstance(named, str) else None)
    return tuned, read_tuned(tuned) if tuned is not None else {}


def _leaves(tree: dict[str, Any], prefix: str = "") -> list[str]:
    out: list[str] = []
    for key, value in tree.items():
        out += _leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}"]
    return out


def tuned_conflicts(path: str | Path, overrides: list[str]) -> list[str]:
    """The keys of ``overrides`` that the tuned-params file of the params file ``path`` also sets: saved
    into ``path`` (``metarec run --set``) they would lose to it."""
    p = Path(path)
    tree = _read_mapping(p, "sections") if p.is_file() else {}
    parsed = [parse_override(text) for text in overrides]
    _, update = _tuned_overrides(p, tree, parsed)
    tuned = _leaves(update)
    return [key for key, _ in parsed if any(t == key or t.startswith(f"{key}.") for t in tuned)]


def load_params(path: str | Path | None = "params.yaml", overrides: list[str] | None = None) -> Params:
    """Read ``path`` (missing → defaults), apply the tuned-params file it names (``tuned``), then the
    overrides; validate."""
    tree: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        p = Path(path)
        if p.exists():
            source = str(p)
            tree = _read_mapping(p, "sections")
        elif str(p) != "params.yaml":
            raise ParamsError(f"params file not found: {p}")
    parsed = [parse_override(text) for text in overrides or []]
    if path is not None:
        tuned, update = _tuned_overrides(path, tree, parsed)
        if update:
            _merge(tree, update)
            source += f" + {tuned}"
    for key, value in parsed:
        _set_dotted(tree, key, value)
    if overrides:
        source += " with --set " + " ".join(overrides)
    try:
        return Params.model_validate(tree)
    except ValidationError as err:
        raise ParamsError(_format_error(err, source)) from None
