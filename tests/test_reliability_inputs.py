"""Bad input through the real CLI: non-zero exit, one clear message, raw input untouched, outputs whole.

Every case of ``tests/data/bad/`` (:mod:`tests.reliability_cases`) runs ``metarec ingest`` (and, where the
rule lives in the Great Expectations suite, ``metarec validate``) in a project that already holds the
complete outputs of a good run; the failed run must leave those outputs exactly as they were.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from click.testing import Result
from typer.testing import CliRunner

from flows.cli import app
from pipeline.data import source
from pipeline.data.source import Archive
from pipeline.paths import Paths
from tests.project import BIN, REPO, env_with_bin, make_project, stages_run
from tests.reliability_cases import BAD, BY_FOLDER, CASES, BadInput

pytestmark = pytest.mark.reliability

GOOD = Path(__file__).parent / "data" / "fixtures" / "ml-100k"
OUTPUTS = ("data/ingested", "data/validated", "data/quarantine", "metrics")
"""What ``ingest`` and ``validate`` publish (``reports/validation`` describes every run, failed ones too)."""


def cli(root: Path, *args: str, monkeypatch: pytest.MonkeyPatch) -> Result:
    monkeypatch.chdir(root)
    return CliRunner().invoke(app, list(args))


def sets(overrides: list[str]) -> list[str]:
    return [arg for value in overrides for arg in ("--set", value)]


def digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def outputs(root: Path) -> dict[str, str]:
    return {f"{out}/{name}": h for out in OUTPUTS for name, h in digest(root / out).items()}


def leftovers(root: Path) -> list[str]:
    """Temporary files or folders of an atomic write that did not finish."""
    return [str(p.relative_to(root)) for p in root.rglob(".*") if p.name.endswith(".tmp")]


def one_message(result: Result, stage: str) -> str:
    """The one error message on stderr (without the ``--debug`` hint); fails on tracebacks or several."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    head = f"metarec {stage} failed: "
    assert result.stderr.count(head) == 1, result.stderr
    message = result.stderr.split(head, 1)[1]
    return message.split("(run again with --debug", 1)[0].strip()


@pytest.fixture(scope="module")
def previous(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project with the complete ingest and validate outputs of good data."""
    root = tmp_path_factory.mktemp("previous")
    with pytest.MonkeyPatch.context() as mp:
        for stage in ("ingest", "validate"):
            done = cli(root, stage, "--set", f"data.path={GOOD}", monkeypatch=mp)
            assert done.exit_code == 0, done.output
    return root


@pytest.fixture
def project(previous: Path, tmp_path: Path) -> Path:
    """A copy of :func:`previous` for one test."""
    root = tmp_path / "project"
    for out in OUTPUTS:
        shutil.copytree(previous / out, root / out)
    return root


def serve_archive(case: BadInput, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Make the ml-100k download come from the case's zip (a ``file://`` URL with its real sha256)."""
    archive = BAD / case.folder / "ml-100k.zip"
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    monkeypatch.setitem(source.ARCHIVES, "ml-100k", Archive(archive.as_uri(), sha, "u.data"))
    empty = tmp_path / "no-mirror"
    empty.mkdir()
    monkeypatch.setenv(source.MIRROR_ENV, str(empty))
    return archive


@pytest.mark.parametrize("case", CASES, ids=[c.folder for c in CASES])
def test_bad_input_fails_with_one_clear_message(
    case: BadInput, project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, record_property
) -> None:
    """{case.what} → `metarec {case.stage}` exits 1 with one message (file, row or column, rule); input
    and previous outputs untouched."""
    if case.source == "archive":
        serve_archive(case, tmp_path, monkeypatch)
    raw = digest(BAD / case.folder)
    before = outputs(project)
    args = sets(case.overrides())

    ingested = cli(project, "ingest", *args, monkeypatch=monkeypatch)
    if case.stage == "ingest":
        message = one_message(ingested, "ingest")
        assert outputs(project) == before  # the previous complete version, not half of a new one
    else:
        assert ingested.exit_code == 0, ingested.output
        message = one_message(cli(project, "validate", *args, monkeypatch=monkeypatch), "validate")
        kept = {k: v for k, v in before.items() if not k.startswith("data/ingested/")}
        assert {k: v for k, v in outputs(project).items() if not k.startswith("data/ingested/")} == kept
        result = json.loads((project / "reports" / "validation" / "result.json").read_text())
        assert result["success"] is False
    record_property("message", message)
    assert case.location() + ": " in message
    assert case.rule in message
    assert digest(BAD / case.folder) == raw
    assert leftovers(project) == []
    if case.source == "archive":
        assert not list(tmp_path.rglob("escaped.txt"))
        assert not (Paths(project).raw / "ml-100k").exists()


def test_every_layout_and_kind_of_defect_is_covered(record_property) -> None:
    """The corpus: at least 15 cases, over the GroupLens ml-100k and ml-1m layouts, RecBole atomic files
    and the zip download, each folder with its case."""
    assert sorted(p.name for p in BAD.iterdir()) == sorted(BY_FOLDER)
    assert len(CASES) >= 15
    by_layout = {layout: [c for c in CASES if c.folder.startswith(layout)] for layout in ("atomic", "ml100k")}
    by_layout["ml1m"] = [c for c in CASES if c.source == "movielens-1m"]
    assert all(len(cases) >= 5 for cases in by_layout.values())
    assert [c.source for c in CASES].count("archive") == 1
    assert {c.stage for c in CASES} == {"ingest", "validate"}
    counts = {layout: len(cases) for layout, cases in by_layout.items()}
    by_validate = sum(c.stage == "validate" for c in CASES)
    record_property("message", f"{len(CASES)} cases: {counts}, 1 archive; {by_validate} rejected by validate")


def test_the_installed_command_prints_no_traceback_unless_debug(tmp_path: Path, record_property) -> None:
    """A bad file through the real `metarec` executable: exit 1 and one line; `--debug` adds the traceback."""
    case = BY_FOLDER["ml1m-nan-rating"]
    command = [str(BIN / "metarec"), "ingest", *sets(case.overrides())]
    plain = subprocess.run(command, cwd=tmp_path, env=env_with_bin(), capture_output=True, text=True)
    assert plain.returncode == 1
    errors = [line for line in plain.stderr.splitlines() if "failed:" in line]
    assert errors == [f"metarec ingest failed: {case.location()}: {case.rule}"]
    assert "Traceback" not in plain.stderr + plain.stdout
    debug = subprocess.run(
        [*command, "--debug"], cwd=tmp_path, env=env_with_bin(), capture_output=True, text=True
    )
    assert debug.returncode == 1
    assert "Traceback" in debug.stderr and "DataError: ratings.dat line 3, column rating" in debug.stderr
    assert not (tmp_path / "data" / "ingested").exists()
    record_property("message", f"{errors[0]} / with --debug: {debug.stderr.strip().splitlines()[-1]}")


def test_quarantine_moves_bad_rows_aside_and_continues(
    project: Path, monkeypatch: pytest.MonkeyPatch, record_property
) -> None:
    """Quarantine, 1 bad row of 15 under max_bad_fraction 0.1: validate passes, the row is kept aside with
    its reason, the count is a metric, ingest's table is not rewritten."""
    case = BY_FOLDER["ml100k-unknown-item"]
    args = sets([*case.overrides(), "validate.on_error=quarantine", "validate.max_bad_fraction=0.1"])
    assert cli(project, "ingest", *args, monkeypatch=monkeypatch).exit_code == 0
    ingested = digest(project / "data" / "ingested")
    done = cli(project, "validate", *args, monkeypatch=monkeypatch)
    assert done.exit_code == 0, done.output
    assert "1 ratings quarantined" in done.stdout
    paths = Paths(project)
    moved = pd.read_parquet(paths.quarantine / "ratings.parquet")
    assert moved[["user_id", "item_id", "reason"]].values.tolist() == [["2", "77", "unknown item_id"]]
    assert len(pd.read_parquet(paths.validated_table("ratings"))) == 14
    assert digest(paths.ingested) == ingested
    assert json.loads((paths.validation_reports / "result.json").read_text())["quarantined"] == 1
    assert json.loads(paths.validation_metrics.read_text())["quarantined"] == 1
    record_property("message", done.stdout.strip())


def test_quarantine_refuses_more_bad_rows_than_allowed(
    project: Path, monkeypatch: pytest.MonkeyPatch, record_property
) -> None:
    """Quarantine, 1 bad row of 15 over max_bad_fraction 0.05: validate fails, nothing is quarantined and
    the previous outputs stay."""
    case = BY_FOLDER["ml100k-unknown-item"]
    args = sets([*case.overrides(), "validate.on_error=quarantine", "validate.max_bad_fraction=0.05"])
    before = outputs(project)
    assert cli(project, "ingest", *args, monkeypatch=monkeypatch).exit_code == 0
    message = one_message(cli(project, "validate", *args, monkeypatch=monkeypatch), "validate")
    assert message.startswith(
        "ratings: 1 of 15 rows (6.67%) fail, more than validate.max_bad_fraction=0.05; "
        "nothing was quarantined"
    )
    assert "u.data line 4, column item_id" in message
    after = outputs(project)
    assert {k: v for k, v in after.items() if "ingested" not in k} == {
        k: v for k, v in before.items() if "ingested" not in k
    }
    record_property("message", message.splitlines()[0])


@pytest.fixture(scope="module")
def flow_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One git + DVC project that every case's `metarec run` reuses (only the data params change)."""
    return make_project(tmp_path_factory.mktemp("flow") / "project")


FLOW_CASES = [c for c in CASES if c.source != "archive"]
"""The archive case's download URL is patched in this process; under the flow, stages run in their own."""


@pytest.mark.slow
@pytest.mark.parametrize("case", FLOW_CASES, ids=[c.folder for c in FLOW_CASES])
def test_bad_input_through_metarec_run_fails_once_with_one_message(
    case: BadInput,
    flow_project: Path,
    prefect_harness: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    record_property,
) -> None:
    """{case.what} → `metarec run`: exit 1, one summary naming the stage and the user's file, line, column
    and rule; no traceback, no retry, no later stage, input untouched, nothing registered."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    raw = digest(BAD / case.folder)
    shutil.copy(REPO / "params.yaml", flow_project / "params.yaml")
    result = cli(flow_project, "run", *sets(case.overrides()), monkeypatch=monkeypatch)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    head = f"metarec run failed: stage '{case.stage}': "
    assert result.output.count("metarec run failed") == 1 and head in result.stderr, result.output
    message = result.stderr.split(head, 1)[1].split("(run again with --debug", 1)[0].strip()
    assert case.location() + ": " in message and case.rule in message, message
    ran = stages_run(result.stdout)
    assert ran == ["source", "ingest", *(["validate"] if case.stage == "validate" else [])], ran
    assert digest(BAD / case.folder) == raw
    assert not (tmp_path / "mlflow.db").exists() and not Paths(flow_project).registration.exists()
    record_property("message", message)
