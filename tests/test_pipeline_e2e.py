"""The whole pipeline, for real, on small synthetic data: Prefect flow, DVC, torchrun, MLflow registry."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.params import load_params
from tests.project import BIN, REPO, SMOKE, env_with_bin, make_project, sh, stages_run

pytestmark = pytest.mark.slow


@pytest.fixture
def mlflow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    yield uri


def test_flow_runs_every_stage_and_leaves_dvc_clean(
    tmp_path: Path, mlflow_store: str, prefect_harness: None
) -> None:
    from flows.retrain import retrain

    root = make_project(tmp_path / "project")
    result = retrain(params_file="params.yaml", overrides=SMOKE, root=str(root))

    cv = json.loads((root / "metrics" / "cv.json").read_text())
    models = cv["scenarios"]["new_user"]
    assert set(models) == set(load_params(root / "params.yaml").eval.models)
    for name, metrics in models.items():
        assert set(metrics) >= {"ndcg@3", "recall@10"}
        if name not in ("lightgbm_rank", "most_popular"):  # ranking scores only
            assert set(metrics) >= {"mae", "rmse"}
            assert 0 < metrics["mae"]["mean"] < 4
    assert "meta" in result["table"] and "linear_bias" in result["table"]
    assert result["table_printed"]  # by the evaluate stage: `metarec run` does not print it again
    assert result["registration"]["alias"] == "champion"
    assert load_params(root / "params.yaml").data.source == "synthetic"  # overrides recorded for DVC

    # The flow and `dvc repro` share one cache: nothing is left to reproduce.
    assert "up to date" in sh(str(BIN / "dvc"), "status", cwd=root)
    assert stages_run(sh(str(BIN / "dvc"), "repro", cwd=root)) == []

    import mlflow

    mlflow.set_tracking_uri(mlflow_store)
    model = mlflow.pyfunc.load_model("models:/metarec@champion")
    vocab = json.loads((root / "data" / "features" / "vocab.json").read_text())
    rated = [{"item_id": vocab["item_ids"][i], "rating": 5.0} for i in range(5)]
    [answer] = model.predict([{"user_id": "brand-new", "ratings": rated, "k": 5}])
    assert len(answer["items"]) == 5
    assert not set(answer["items"]) & {r["item_id"] for r in rated}
    # the fold-in's ranking head orders the answer; the scores are predicted ratings (not sorted)
    assert all(1.0 <= s <= 5.0 for s in answer["scores"]) and len(set(answer["items"])) == 5
    scored = model.predict([{"user_id": "brand-new", "ratings": rated, "candidates": answer["items"]}])[0]
    assert scored["items"] == answer["items"]  # the same order among any candidates

    # a broken split file: one line naming file, line and column; the evaluation's outputs stay as they were
    split = root / "bad.melu_split.tsv"
    split.write_text(f"user_id\titem_id\tstate\n{vocab['user_ids'][0]}\tno-such-item\tmeta_training\n")
    before = (root / "metrics" / "cv.json").read_bytes()
    failed = subprocess.run(
        [
            str(BIN / "metarec"),
            "evaluate",
            "--set",
            "eval.protocol=melu_split",
            "--set",
            f"eval.split_file={split}",
        ],
        cwd=root,
        env=env_with_bin(),
        capture_output=True,
        text=True,
    )
    assert failed.returncode == 1
    assert failed.stderr.splitlines()[0] == (
        "metarec evaluate failed: bad.melu_split.tsv line 2, column item_id: unknown item 'no-such-item': "
        "not in the data"
    )
    assert "Traceback" not in failed.stderr
    assert (root / "metrics" / "cv.json").read_bytes() == before


def test_dvc_repro_runs_the_stages_and_the_flow_reuses_them(
    tmp_path: Path, mlflow_store: str, prefect_harness: None
) -> None:
    from flows.params_file import write_overrides
    from flows.retrain import retrain

    root = make_project(tmp_path / "project")
    write_overrides(root / "params.yaml", SMOKE)
    ran = stages_run(sh(str(BIN / "dvc"), "repro", cwd=root))
    assert ran == ["source", "ingest", "validate", "features", "train", "evaluate", "register"]
    first = json.loads((root / "reports" / "registration.json").read_text())

    result = retrain(params_file="params.yaml", overrides=[], root=str(root))
    assert result["registration"] == first  # nothing re-ran, nothing re-registered
    assert not result["table_printed"]  # evaluate was skipped: `metarec run` prints the table

    # Two commits with different evaluations: `dvc metrics diff` and `dvc plots diff` compare them. The
    # first commits the project under the repo's .gitignore, then what the README says to commit after a
    # run; that leaves nothing else for git.
    git = ("git", "-c", "user.name=metarec", "-c", "user.email=metarec@example.com")
    shutil.copy(REPO / ".gitignore", root / ".gitignore")
    sh(*git, "add", ".gitignore", ".dvc", "dvc.yaml", "params", "pipeline", "feedback", cwd=root)
    sh(*git, "add", "params.yaml", "dvc.lock", "metrics/", "plots/", cwd=root)
    sh(*git, "commit", "-qm", "first evaluation", cwd=root)
    assert sh("git", "status", "--porcelain", "--untracked-files=all", cwd=root) == ""
    # `dvc metrics show` prints the headline (MAE per scenario and model), the training and validation
    # metrics: a table a person reads, whatever the number of users; cv.json holds every metric.
    shown = sh(str(BIN / "dvc"), "metrics", "show", cwd=root)
    header, *rows = [line.split() for line in shown.splitlines() if line.strip()]
    metric_files = ["metrics/headline.json", "metrics/train.json", "metrics/validation.json"]
    assert sorted(row[0] for row in rows) == metric_files, shown
    headline = json.loads((root / "metrics" / "headline.json").read_text())["mae"]
    assert len(headline) == 4 and all(len(m) == len(headline["new_user"]) >= 7 for m in headline.values())
    assert sum(c.startswith("mae.") for c in header) == 4 * len(headline["new_user"])
    assert len(header) < 60, header
    before = json.loads((root / "metrics" / "cv.json").read_text())
    write_overrides(root / "params.yaml", ["eval.support_size=3"])
    assert stages_run(sh(str(BIN / "dvc"), "repro", "evaluate", cwd=root)) == ["evaluate"]
    cv_diff = ("metrics", "diff", "HEAD", "--json", "--targets", "metrics/cv.json")
    diff = json.loads(sh(str(BIN / "dvc"), *cv_diff, cwd=root))
    key = "scenarios.new_user.meta.mae.mean"
    after = json.loads((root / "metrics" / "cv.json").read_text())
    assert diff["metrics/cv.json"][key]["old"] == before["scenarios"]["new_user"]["meta"]["mae"]["mean"]
    assert diff["metrics/cv.json"][key]["new"] == after["scenarios"]["new_user"]["meta"]["mae"]["mean"]
    plots = json.loads(sh(str(BIN / "dvc"), "plots", "diff", "HEAD", "--json", cwd=root))
    shown = json.dumps(plots)
    assert "new_user support-size curve" in shown and "plots/evaluation/new_user.json" in shown
    assert "plots/train_curve.json" in shown
