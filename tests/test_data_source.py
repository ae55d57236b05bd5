"""Where raw data comes from: data.path, the mirror, or a checksummed, safely unpacked download.

Downloads use ``file://`` URLs to archives built here, so the tests run offline.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from pipeline.data import DataError, ingest, source
from pipeline.data.source import Archive, dataset_name, extract_zip, fetch_archive, locate
from pipeline.params import DataParams, Params
from pipeline.paths import Paths

FIXTURES = Path(__file__).parent / "data" / "fixtures"
MB = 2**20


def make_zip(path: Path, members: dict[str, bytes]) -> str:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fixture_zip(path: Path) -> str:
    members = {f"ml-100k/{p.name}": p.read_bytes() for p in (FIXTURES / "ml-100k").iterdir()}
    return make_zip(path, members)


@pytest.fixture
def no_mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty-mirror"
    empty.mkdir()
    monkeypatch.setenv("METAREC_DATA_MIRROR", str(empty))


def test_dataset_name_defaults_per_source() -> None:
    assert dataset_name(DataParams()) == "ml-100k"
    assert dataset_name(DataParams(source="movielens-1m")) == "ml-1m"
    assert dataset_name(DataParams(source="movielens-1m", name="ml-100k")) == "ml-1m"  # params.yaml
    assert dataset_name(DataParams(source="movielens-1m", name="ml-1m-copy")) == "ml-1m-copy"


def test_published_checksums_are_pinned() -> None:
    assert (
        source.ARCHIVES["ml-100k"].sha256
        == "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229"
    )
    assert source.ARCHIVES["ml-1m"].url == "https://files.grouplens.org/datasets/movielens/ml-1m.zip"


def test_mirror_folder_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "ml-100k").mkdir()
    monkeypatch.setenv("METAREC_DATA_MIRROR", str(tmp_path))
    assert locate(DataParams(), Paths(tmp_path / "work")) == tmp_path / "ml-100k"


def test_data_path_must_be_a_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data\.path is not a folder"):
        locate(DataParams(path=str(tmp_path / "nowhere")), Paths(tmp_path))


@pytest.mark.usefixtures("no_mirror")
def test_no_local_copy_and_download_off_says_what_to_set(tmp_path: Path) -> None:
    with pytest.raises(DataError) as caught:
        locate(DataParams(source="movielens-1m", download=False), Paths(tmp_path))
    message = str(caught.value)
    assert message.startswith("ml-1m: no local copy of ml-1m and data.download is false")
    assert "data.path" in message and "METAREC_DATA_MIRROR" in message


@pytest.mark.usefixtures("no_mirror")
def test_failed_download_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = (tmp_path / "missing.zip").as_uri()
    monkeypatch.setitem(source.ARCHIVES, "ml-100k", Archive(url, "0" * 64, "u.data"))
    with pytest.raises(DataError) as caught:
        locate(DataParams(), Paths(tmp_path))
    assert caught.value.file == url
    assert "download failed" in caught.value.rule
    assert "set data.path" in caught.value.rule and "METAREC_DATA_MIRROR" in caught.value.rule


@pytest.mark.usefixtures("no_mirror")
def test_download_verify_unpack_ingest_then_reuse_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = tmp_path / "served" / "ml-100k.zip"
    archive.parent.mkdir()
    sha = fixture_zip(archive)
    monkeypatch.setitem(source.ARCHIVES, "ml-100k", Archive(archive.as_uri(), sha, "u.data"))
    paths = Paths(tmp_path / "work")
    assert ingest(Params(), paths) == {"ratings": 15, "users": 5, "items": 6}
    assert (paths.raw / "ml-100k.zip").read_bytes() == archive.read_bytes()
    assert (paths.raw / "ml-100k" / "ml-100k" / "u.data").is_file()
    archive.unlink()  # the unpacked cache is enough from now on
    assert locate(DataParams(), paths) == paths.raw / "ml-100k" / "ml-100k"


def test_checksum_mismatch_keeps_nothing(tmp_path: Path) -> None:
    archive = tmp_path / "a.zip"
    fixture_zip(archive)
    target = tmp_path / "cache" / "a.zip"
    with pytest.raises(DataError, match="sha256 mismatch"):
        fetch_archive(archive.as_uri(), "0" * 64, target, 10 * MB)
    assert list(target.parent.iterdir()) == []


def test_download_larger_than_the_limit_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "a.zip"
    sha = make_zip(archive, {"big.bin": bytes(4096)})
    with pytest.raises(DataError, match=r"exceeds data\.max_file_mb"):
        fetch_archive(archive.as_uri(), sha, tmp_path / "cache" / "a.zip", 100)


@pytest.mark.parametrize("member", ["../evil.txt", "/tmp/evil.txt", "ml-100k/../../evil.txt"])
def test_unpacking_rejects_members_that_escape(member: str, tmp_path: Path) -> None:
    archive = tmp_path / "evil.zip"
    make_zip(archive, {"ml-100k/u.data": b"1\t1\t5\t1\n", member: b"gotcha"})
    dest = tmp_path / "out" / "ml-100k"
    with pytest.raises(DataError, match="escapes the target folder"):
        extract_zip(archive, dest, 10 * MB)
    assert not dest.exists()
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "out" / "evil.txt").exists()


def test_unpacking_rejects_oversized_members(tmp_path: Path) -> None:
    archive = tmp_path / "big.zip"
    make_zip(archive, {"ml-100k/u.data": bytes(5000)})
    with pytest.raises(DataError, match=r"exceeds data\.max_file_mb"):
        extract_zip(archive, tmp_path / "out", 1000)
