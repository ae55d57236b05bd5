"""The raw files are a real DVC dependency: ``source`` links exactly the files ``ingest`` reads, so a file
edited in place shows in ``dvc status`` and is re-ingested, and the raw data is never touched."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from flows.params_file import write_overrides
from pipeline.data.snapshot import MANIFEST, snapshot_source, source_digest
from pipeline.params import load_params
from pipeline.paths import Paths
from tests.project import BIN, make_project, sh, stages_run

pytestmark = pytest.mark.reliability

FIXTURE = Path(__file__).parent / "data" / "fixtures" / "ml-100k"
DVC = str(BIN / "dvc")


def raw_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "raw" / "ml-100k"
    shutil.copytree(FIXTURE, folder)
    (folder / "README.txt").write_text("not read by ingest\n")
    return folder


def test_snapshot_links_the_files_ingest_reads_with_their_sha256(tmp_path: Path) -> None:
    raw = raw_copy(tmp_path)
    params = load_params(None, [f"data.path={raw}"])
    paths = Paths(tmp_path / "project")
    manifest = snapshot_source(params, paths)
    expected = {n: hashlib.sha256((raw / n).read_bytes()).hexdigest() for n in ("u.data", "u.item", "u.user")}
    assert manifest == {"source": "movielens-100k", "layout": "grouplens", "files": expected}
    links = sorted(p.name for p in paths.source.iterdir() if p.is_symlink())
    assert links == ["u.data", "u.item", "u.user"]  # README.txt is not read, so not a dependency
    assert all((paths.source / n).resolve() == (raw / n).resolve() for n in links)
    assert json.loads((paths.source / MANIFEST).read_text()) == manifest
    assert source_digest(paths) == hashlib.sha256((paths.source / MANIFEST).read_bytes()).hexdigest()


def test_synthetic_source_has_a_manifest_and_no_files(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    manifest = snapshot_source(load_params(None, ["data.source=synthetic"]), paths)
    assert manifest == {"source": "synthetic", "layout": "synthetic", "files": {}}
    assert [p.name for p in paths.source.iterdir()] == [MANIFEST]


@pytest.mark.slow
def test_a_source_file_edited_in_place_is_re_ingested(tmp_path: Path, record_property) -> None:
    """A raw file edited in place (a rating appended): `dvc status` names ingest's changed dependency, the
    next `dvc repro` re-ingests it; a file ingest never reads changes nothing; the raw data is untouched."""
    raw = raw_copy(tmp_path)
    root = make_project(tmp_path / "project")
    write_overrides(root / "params.yaml", [f"data.path={raw}"])
    assert stages_run(sh(DVC, "repro", "ingest", cwd=root)) == ["source", "ingest"]
    assert "up to date" in sh(DVC, "status", "ingest", cwd=root)
    ratings = pd.read_parquet(root / "data" / "ingested" / "ratings.parquet")

    with (raw / "u.data").open("a") as f:  # the export job appends a rating
        f.write("5\t2\t5\t884000000\n")
    status = sh(DVC, "status", "ingest", cwd=root)
    assert "ingest:" in status and "modified:" in status and "data/source" in status, status
    record_property("message", " ".join(status.split()))
    assert stages_run(sh(DVC, "repro", "ingest", cwd=root)) == ["source", "ingest"]
    assert len(pd.read_parquet(root / "data" / "ingested" / "ratings.parquet")) == len(ratings) + 1

    (raw / "README.txt").write_text("edited, still not read\n")
    assert stages_run(sh(DVC, "repro", "ingest", cwd=root)) == []  # a file ingest never reads
    assert (raw / "u.data").read_text().endswith("5\t2\t5\t884000000\n")  # DVC never touched the raw data


@pytest.mark.slow
def test_a_failed_stage_leaves_its_previous_outputs_in_place(tmp_path: Path, record_property) -> None:
    """DVC removes a stage's outputs before running it; when the stage fails, the flow checks the previous
    ones out again, so a bad refresh of the raw data never leaves the project without ingested tables."""
    from flows.errors import StageFailed
    from flows.retrain import reproduce

    raw = raw_copy(tmp_path)
    root = make_project(tmp_path / "project")
    write_overrides(root / "params.yaml", [f"data.path={raw}"])
    sh(DVC, "repro", "ingest", cwd=root)
    tables = root / "data" / "ingested"
    before = {p.name: p.read_bytes() for p in tables.iterdir()}

    with (raw / "u.data").open("a") as f:
        f.write("5\t2\tfive\t884000000\n")
    reproduce("source", root, force=True)
    with pytest.raises(StageFailed) as failed:
        reproduce("ingest", root)
    assert failed.value.message == "u.data line 16, column rating: not a number ('five')"
    assert not failed.value.transient
    assert {p.name: p.read_bytes() for p in tables.iterdir()} == before
    record_property("message", f"{failed.value}; data/ingested as before")
