"""`metarec tune`: validation users from the folds' training users only, Optuna studies, the tuned-params
file and how load_params applies it, the MLflow runs, and the one-line storage errors."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml
from mlflow import MlflowClient
from typer.testing import CliRunner

from flows.cli import app
from flows.params_file import overrides_from, write_overrides
from pipeline.evaluation.cv import cross_validate, protocol_folds
from pipeline.evaluation.protocols import make_folds
from pipeline.evaluation.splits import SCENARIO_NAMES, Role
from pipeline.features.store import FeatureSet, save_feature_set
from pipeline.params import Params, ParamsError, load_params, tuned_conflicts
from pipeline.paths import Paths
from pipeline.tuning.spaces import SPACES, current, section, space, tunable, with_values
from pipeline.tuning.study import (
    StudyStorageError,
    finished_trials,
    load_study,
    open_storage,
    optimize,
)
from pipeline.tuning.tune import tune
from pipeline.tuning.tuned import tuned_tree
from pipeline.tuning.validation import tuning_rows, validation_split
from tests.eval_fixtures import planted_feature_set

REPO = Path(__file__).resolve().parents[1]
SMALL = [
    "seed=5",
    "eval.folds=2",
    "eval.support_size=4",
    "train.epochs=2",
    "train.meta_batch=8",
    "train.hidden=[16, 8]",
    "train.query_size=5",
    "train.min_support=2",
    "train.max_support=4",
    "train.device=cpu",
    "tune.epochs_scale=0.5",
]


@pytest.fixture(scope="module")
def fs() -> FeatureSet:
    return planted_feature_set(n_users=40, n_items=30, per_user=(8, 20), seed=4)[0]


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One sqlite MLflow store for the module (creating one takes seconds); each test its own experiment."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlruns.db'}"
    MlflowClient(tracking_uri=uri).search_experiments()
    return uri


def _project(root: Path, fs: FeatureSet, monkeypatch: pytest.MonkeyPatch, mlflow_uri: str) -> Paths:
    """A project folder holding the feature set, tracking to ``mlflow_uri``."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    paths = Paths(root)
    save_feature_set(fs, paths.features)
    return paths


def _keys(tree: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in tree.items():
        out |= _keys(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v}
    return out


def test_validation_users_are_training_users_of_the_fold(fs: FeatureSet, tmp_path: Path) -> None:
    """Validation users: a seeded fifth of the fold's training users, never its new (test) users; their
    rows are the fold's training rows, split support/query, and have left the trial's training rows."""
    params = load_params(None, SMALL)
    folds = protocol_folds(params, Paths(tmp_path), fs).folds
    roles_of = {}
    for fold in folds:
        split = validation_split(fold, 0.2, support_size=4, sample_users=0, seed=5)
        training_users = np.unique(fold.train["user_index"])
        assert split.users.size == round(0.2 * training_users.size)
        assert np.isin(split.users, training_users).all()
        assert not np.isin(split.users, fold.new_users).any()
        assert not np.isin(split.train["user_index"], split.users).any()
        s, q = split.scenario.support, split.scenario.query
        # support, query and trial training rows are exactly the fold's training rows
        key = lambda t: set(zip(t["user_index"].tolist(), t["item_index"].tolist(), strict=True))  # noqa: E731
        assert key(s) | key(q) | key(split.train) == key(fold.train)
        assert len(key(s)) + len(key(q)) + len(key(split.train)) == fold.train["rating"].size
        # each validation user reveals min(4, n - 1) ratings and is scored on the rest
        n = np.bincount(fold.train["user_index"], minlength=fs.n_users)[split.users]
        assert (np.bincount(s["user_index"], minlength=fs.n_users)[split.users] == np.minimum(4, n - 1)).all()
        # no row a trial sees is a query (or support) row of any of this fold's scenarios
        roles_of = {
            (u, i): r
            for u, i, r in zip(fs.ratings["user_index"], fs.ratings["item_index"], fold.roles, strict=True)
        }
        seen = key(s) | key(q) | key(split.train)
        assert {roles_of[row] for row in seen} == {Role.TRAIN}
        for name in SCENARIO_NAMES:
            assert not seen & key(fold.scenarios[name].query)
    assert roles_of  # the loop ran


def test_melu_protocols_tune_on_rows_that_train_in_every_fold(fs: FeatureSet) -> None:
    """melu redraws the test states' support and query rows per repeat: tuning takes only the rows that
    train in every repeat, so no row a trial sees (training, validation support or query) is a test row
    of any reported fold, the warm rows included; validation users are never new users. Under kfold no
    row trains in every fold."""
    params = load_params(
        None, ["eval.protocol=melu", "eval.folds=3", "eval.melu.min_ratings=3", "eval.melu.query_size=2"]
    )
    year = np.where(np.arange(fs.n_items) % 3 == 0, 1999.0, 1990.0)
    folds = make_folds(params.eval, fs.ratings, fs.n_items, 5, item_year=year)
    rows = tuning_rows(fs.ratings, folds)
    assert rows is not None
    split = validation_split(folds[0], 0.2, support_size=4, sample_users=0, seed=5, rows=rows)
    seen = np.concatenate(
        [
            t["user_index"] * fs.n_items + t["item_index"]
            for t in (split.train, split.scenario.support, split.scenario.query)
        ]
    )
    keys = fs.ratings["user_index"] * fs.n_items + fs.ratings["item_index"]
    assert split.users.size > 0 and seen.size == rows["rating"].size
    for fold in folds:
        assert fold.new_users.size > 0 and not np.isin(split.users, fold.new_users).any()
        tested = keys[fold.roles != Role.TRAIN]
        assert (fold.roles == Role.WARM_QUERY).any() and not np.isin(seen, tested).any()
    kfold = load_params(None, SMALL)
    assert tuning_rows(fs.ratings, make_folds(kfold.eval, fs.ratings, fs.n_items, 5)) is None


def test_sample_users_caps_the_validation_users(fs: FeatureSet, tmp_path: Path) -> None:
    fold = protocol_folds(load_params(None, SMALL), Paths(tmp_path), fs).folds[0]
    assert validation_split(fold, 0.5, 4, sample_users=3, seed=1).users.size == 3
    again = validation_split(fold, 0.5, 4, sample_users=3, seed=1)
    assert np.array_equal(again.users, validation_split(fold, 0.5, 4, 3, seed=1).users)  # seeded
    with pytest.raises(ValueError, match="too few"):
        validation_split(fold, 0.99, 4, sample_users=0, seed=1)


def test_protocol_folds_are_the_folds_evaluate_reports(fs: FeatureSet, tmp_path: Path) -> None:
    params = load_params(None, [*SMALL, "eval.models=[global_mean]", "eval.workers=1", "eval.shots=[0, 2]"])
    folds = protocol_folds(params, Paths(tmp_path), fs).folds
    sizes = cross_validate(params, fs).cv["sizes"]
    assert [int(f.train["rating"].size) for f in folds] == sizes["train_rows"]
    assert [int(f.scenarios["new_user"].users.size) for f in folds] == sizes["new_user"]["query_users"]


def test_every_default_lies_in_its_search_space() -> None:
    for params in (Params(), load_params(None, ["train.model=melu"])):
        for model in (*SPACES, "meta", "melu"):
            values = current(params, model)
            for name, dim in space(model, params).items():
                assert values[name] in dim, (model, name, values[name], dim)


def test_meta_is_tuned_as_its_learner_and_each_learner_keeps_its_section() -> None:
    """``meta`` is tuned as the learner ``train.model`` names: the fold-in in ``train.foldin``, nested in
    MeLU's ``train``; tuning either replaces its own values only. ``melu`` is MeLU's study, left out when
    ``meta`` is MeLU too."""
    params = Params()
    foldin = {"factors": 16, "epochs": 9, "learning_rate": 0.01, "item_dropout": 0.2, "init_precision": 2.0}
    assert section("meta", params) == ("train", "foldin") and set(space("meta", params)) == set(foldin)
    assert section("melu", params) == ("train",) and "inner_lr" in space("melu", params)
    tree = tuned_tree({"models": {"popularity": {"damping": 3.0}}}, {"meta": {"values": foldin}}, params)
    assert tree == {"models": {"popularity": {"damping": 3.0}}, "train": {"foldin": foldin}}
    tree = tuned_tree(tree, {"melu": {"values": {"inner_lr": 0.5}}}, params)
    assert tree["train"] == {"foldin": foldin, "inner_lr": 0.5}
    tuned = with_values(params, "meta", foldin)
    assert current(tuned, "meta") == current(params, "meta") | foldin
    assert tuned.train.foldin.factors == 16 and tuned.train.inner_lr == params.train.inner_lr
    assert tunable(("popularity", "melu", "meta", "finetune"), params) == ["popularity", "melu", "meta"]
    melu = load_params(None, ["train.model=melu"])
    assert section("meta", melu) == ("train",) and tunable(("melu", "meta"), melu) == ["meta"]


def test_tune_writes_the_best_values_and_records_the_trials(
    fs: FeatureSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_uri: str
) -> None:
    """Two mf_foldin trials, then one trial each of MeLU (1 epoch) and of meta (the fold-in), end to end:
    the tuned file holds each model's best values, inside the space, in its own section; load_params
    applies it; MLflow holds a parent run per tuning and a child run per trial; a second run with the same
    settings resumes the finished studies."""
    paths = _project(tmp_path, fs, monkeypatch, mlflow_uri)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"train": {"epochs": 2, "foldin": {"epochs": 5}}}))
    base = load_params(tmp_path / "params.yaml", SMALL)
    first = tune(
        load_params(tmp_path / "params.yaml", [*SMALL, "tune.models=[mf_foldin]", "tune.trials=2"]), paths
    )
    second = tune(
        load_params(tmp_path / "params.yaml", [*SMALL, "tune.models=[melu, meta]", "tune.trials=1"]), paths
    )

    mf, melu, meta = first["models"]["mf_foldin"], second["models"]["melu"], second["models"]["meta"]
    studies = {
        m: optuna.load_study(study_name=r["models"][m]["study"], storage=open_storage(paths.tuning_storage))
        for m, r in (("mf_foldin", first), ("melu", second), ("meta", second))
    }
    for model, study in studies.items():  # each study starts from the values params.yaml sets
        assert study.trials[0].params == {k: current(base, model)[k] for k in space(model, base)}
    assert [(r["trials"], r["metric"]) for r in (mf, melu, meta)] == [(2, "mae"), (1, "mae"), (1, "mae")]
    assert all(0 < r["value"] < 4 for r in (mf, melu, meta))
    tuned = yaml.safe_load(paths.tuned_params("params/tuned.yaml").read_text())
    expected = {"models": {"mf_foldin": mf["values"]}, "train": {**melu["values"], "foldin": meta["values"]}}
    assert tuned == expected  # the second tuning kept the first one's section
    for model, values in (("mf_foldin", mf["values"]), ("melu", melu["values"]), ("meta", meta["values"])):
        assert set(values) == set(space(model, base))
        assert all(v in space(model, base)[k] for k, v in values.items())
    applied = load_params(tmp_path / "params.yaml", SMALL)
    assert applied.models.mf_foldin.model_dump() == base.models.mf_foldin.model_dump() | mf["values"]
    assert applied.train.foldin.model_dump() == base.train.foldin.model_dump() | meta["values"]
    assert applied.train.model_dump() == base.train.model_dump() | melu["values"] | {
        "foldin": applied.train.foldin.model_dump()
    }
    assert applied.train.epochs == 2  # MeLU's trials trained 1 epoch; the tuned file leaves epochs alone

    client = MlflowClient(tracking_uri=mlflow_uri)
    experiment = client.get_experiment_by_name("metarec-tune")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    by_parent = [[c for c in children if c.data.tags["mlflow.parentRunId"] == p.info.run_id] for p in parents]
    assert sorted(sorted(r.data.tags["model"] for r in c) for c in by_parent) == [
        ["melu", "meta"],
        ["mf_foldin", "mf_foldin"],
    ]
    mf_runs = [r for r in children if r.data.tags["model"] == "mf_foldin"]
    assert min(r.data.metrics["mae"] for r in mf_runs) == pytest.approx(mf["value"])
    assert all(set(r.data.params) == set(SPACES["mf_foldin"]) for r in mf_runs)
    assert {p.data.metrics.get("best.mf_foldin.mae") for p in parents} >= {mf["value"]}

    again = tune(
        load_params(tmp_path / "params.yaml", [*SMALL, "tune.models=[mf_foldin]", "tune.trials=2"]), paths
    )
    assert again["models"]["mf_foldin"] == mf  # same study, no new trial
    assert len(client.search_runs([experiment.experiment_id])) == len(runs) + 1  # a parent, no child


def test_the_cli_tunes_and_prints_the_best_values(
    fs: FeatureSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_uri: str
) -> None:
    """`metarec tune --set ...` in a project folder: exit 0, one line per model with its best values."""
    paths = _project(tmp_path, fs, monkeypatch, mlflow_uri)
    monkeypatch.chdir(tmp_path)
    overrides = [*SMALL, "tune.models=[linear_bias]", "tune.trials=2", "tune.experiment=cli"]
    done = CliRunner().invoke(app, ["tune", *[a for s in overrides for a in ("--set", s)]])
    assert done.exit_code == 0, done.output
    target = paths.tuned_params("params/tuned.yaml")
    values = yaml.safe_load(target.read_text())["models"]["linear_bias"]
    line = next(line for line in done.output.splitlines() if line.startswith("linear_bias: mae "))
    assert line.endswith(f"l2_user={values['l2_user']:.4g}, l2_item={values['l2_item']:.4g}")
    assert "of 2, 0 pruned, 0 failed" in line
    assert done.output.splitlines()[-1] == f"tuned values written to {target}"


@pytest.mark.parametrize(
    "url",
    ["sqlite:////nonexistent-dir/x.db", "postgresql://tuner:secret@127.0.0.1:1/optuna"],
    ids=["missing-dir", "closed-port"],
)
def test_an_unreachable_storage_fails_in_one_line_naming_it(
    url: str, fs: FeatureSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The storage is opened first: nothing is tuned, tracked or written."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    paths = Paths(tmp_path)
    save_feature_set(fs, paths.features)
    params = load_params(None, [*SMALL, "tune.models=[popularity]", "tune.trials=1", f"tune.storage={url}"])
    with pytest.raises(StudyStorageError) as err:
        tune(params, paths)
    shown = url.replace("secret", "***")
    assert str(err.value).startswith(f"optuna storage {shown}: ") and "\n" not in str(err.value)
    assert "secret" not in str(err.value)
    assert not paths.tuned_params("params/tuned.yaml").exists()

    monkeypatch.chdir(tmp_path)
    done = CliRunner().invoke(
        app, ["tune", "--set", f"tune.storage={url}", "--set", "tune.models=[popularity]"]
    )
    assert done.exit_code == 1
    assert done.output.splitlines()[0] == f"metarec tune failed: {err.value}"
    assert "Traceback" not in done.output and not paths.tuned_params("params/tuned.yaml").exists()
    assert not paths.mlflow_db.exists()


def test_load_params_applies_the_tuned_file_between_the_params_file_and_set(tmp_path: Path) -> None:
    f = tmp_path / "params.yaml"
    f.write_text("models:\n  mf_foldin:\n    factors: 8\ntrain:\n  inner_lr: 0.5\n  epochs: 3\n")
    (tmp_path / "params").mkdir()
    tuned = tmp_path / "params" / "tuned.yaml"
    tuned.write_text("# comment only\n")
    assert load_params(f).models.mf_foldin.factors == 8
    tuned.write_text("models:\n  mf_foldin:\n    ridge: 2.5\n    factors: 24\ntrain:\n  inner_steps: 3\n")
    p = load_params(f)
    assert (p.models.mf_foldin.factors, p.models.mf_foldin.ridge, p.models.mf_foldin.sweeps) == (24, 2.5, 12)
    assert (p.train.inner_lr, p.train.inner_steps, p.train.epochs) == (0.5, 3, 3)
    assert load_params(f, ["models.mf_foldin.factors=4"]).models.mf_foldin.factors == 4
    assert load_params(f, ["tuned=null"]).models.mf_foldin.factors == 8
    (tmp_path / "other.yaml").write_text("train:\n  inner_steps: 7\n")
    assert load_params(f, ["tuned=other.yaml"]).train.inner_steps == 7
    assert tuned_conflicts(f, ["models.mf_foldin.factors=4", "train.epochs=5", "models=null"]) == [
        "models.mf_foldin.factors",
        "models",
    ]
    assert tuned_conflicts(f, ["models.mf_foldin.factors=4", "tuned=null"]) == []

    tuned.write_text("models:\n  mf_foldin:\n    factors: -1\n")
    with pytest.raises(ParamsError, match=r"params\.yaml \+ .*tuned\.yaml:\n  models\.mf_foldin\.factors"):
        load_params(f)
    tuned.write_text("eval:\n  folds: 3\n")
    with pytest.raises(
        ParamsError, match=r"tuned\.yaml: 'eval': a tuned-params file holds only the sections"
    ):
        load_params(f)


def test_a_params_file_in_a_subfolder_reads_the_tuned_file_where_tune_writes_it(tmp_path: Path) -> None:
    """`--params params/run.yaml` (as params/ml1m.yaml): the tuned file is relative to the project root
    (the folder with params.yaml), where `metarec tune` writes it, not to params/."""
    project = tmp_path / "project"
    (project / "params").mkdir(parents=True)
    (project / "params.yaml").write_text("seed: 1\n")
    run = project / "params" / "run.yaml"
    run.write_text("tuned: params/tuned-run.yaml\n")
    (project / "params" / "tuned-run.yaml").write_text("train:\n  inner_steps: 9\n")
    assert load_params(run).train.inner_steps == 9
    assert Paths(project).tuned_params(load_params(run).tuned) == project / "params" / "tuned-run.yaml"
    alone = tmp_path / "alone"  # no params.yaml at or above it: the params file's own folder
    (alone / "params").mkdir(parents=True)
    (alone / "run.yaml").write_text("tuned: params/t.yaml\n")
    (alone / "params" / "t.yaml").write_text("train:\n  inner_steps: 4\n")
    assert load_params(alone / "run.yaml").train.inner_steps == 4
    shipped = yaml.safe_load((REPO / "params" / "tuned-ml1m.yaml").read_text()) or {}
    ml1m = load_params(REPO / "params" / "ml1m.yaml")
    train = dict(shipped.get("train", {}))
    assert ml1m.train.foldin.model_dump() == ml1m.train.foldin.model_dump() | train.pop("foldin", {})
    assert ml1m.train.model_dump() == ml1m.train.model_dump() | train
    for name, values in shipped.get("models", {}).items():
        assert ml1m.models.of(name) == ml1m.models.of(name) | values


def test_the_shipped_tuned_file_is_empty_and_run_configs_still_apply(tmp_path: Path) -> None:
    """params/tuned.yaml ships empty; `metarec run --params FILE` (FILE's keys as overrides saved into
    params.yaml) sets model sections too."""
    shipped, untuned = load_params(REPO / "params.yaml"), load_params(REPO / "params.yaml", ["tuned=null"])
    assert shipped.model_dump(exclude={"tuned"}) == untuned.model_dump(exclude={"tuned"})
    config = tmp_path / "config.yaml"
    config.write_text("models:\n  item_knn: {k: 20}\ntune: {trials: 5, models: [item_knn]}\n")
    overrides = overrides_from(config)
    assert overrides == ["models.item_knn.k=20", "tune.trials=5", "tune.models=[item_knn]"]
    f = tmp_path / "params.yaml"
    f.write_text((REPO / "params.yaml").read_text())
    write_overrides(f, overrides)
    p = load_params(f)
    assert (p.models.item_knn.k, p.models.item_knn.shrink, p.tune.trials, p.tune.models) == (
        20,
        100.0,
        5,
        ("item_knn",),
    )
    assert _keys(yaml.safe_load(f.read_text())).keys() == _keys(p.to_dict()).keys()


def test_a_locked_storage_fails_in_one_line_naming_it(tmp_path: Path) -> None:
    """Another process holds the sqlite file's write lock: after sqlite's 5 s wait, one line."""
    db = tmp_path / "optuna.db"
    url = f"sqlite:///{db}"
    open_storage(url)
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StudyStorageError) as err:
            load_study(open_storage(url), url, "metarec-x", "minimize", seed=0, median=True)
    finally:
        holder.close()
    assert str(err.value) == f"optuna storage {url}: database is locked"


def test_processes_sharing_a_study_stop_at_its_budget(tmp_path: Path) -> None:
    """Another process finishes trials of the same study while this one runs: this one stops once the
    study holds `trials` finished trials, not after its own count."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = load_study(open_storage(url), url, "metarec-x", "minimize", seed=0, median=False)
    other = optuna.load_study(study_name="metarec-x", storage=open_storage(url))
    calls: list[int] = []

    def objective(trial: optuna.Trial) -> float:
        if not calls:  # meanwhile, elsewhere: three trials finish
            other.optimize(lambda t: t.suggest_float("x", 0.0, 1.0), n_trials=3)
        calls.append(trial.number)
        return trial.suggest_float("x", 0.0, 1.0)

    optimize(study, url, objective, 5, (), [])
    assert len(calls) == 2
    assert finished_trials(study) == 5
    optimize(study, url, objective, 5, (), [])  # the budget is spent: nothing more runs
    assert len(calls) == 2


def test_a_process_joining_a_study_does_not_repeat_its_samples(tmp_path: Path) -> None:
    """The TPE sampler is seeded with the seed plus the trials the study holds: a fresh study samples
    the same values every time; a second process joining it samples others than the first one will."""

    def first_sample(url: str, study: optuna.Study | None = None) -> float:
        study = study or load_study(open_storage(url), url, "metarec-x", "minimize", seed=3, median=False)
        return study.ask().suggest_float("x", 0.0, 1.0)

    one, two = (f"sqlite:///{tmp_path / f'{n}.db'}" for n in ("one", "two"))
    assert first_sample(one) == first_sample(two)  # reproducible: each started its own study
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    starter = load_study(open_storage(url), url, "metarec-x", "minimize", seed=3, median=False)
    starter.enqueue_trial({"x": 0.5})  # as tune() starts a study: its first trial samples nothing
    assert first_sample(url, starter) == 0.5  # still running when the second process joins
    assert first_sample(url) != first_sample(url, starter)  # the joiner's first vs the starter's second
