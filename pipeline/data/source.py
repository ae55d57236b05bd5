"""Where the raw files come from: ``data.path``, the local mirror, or a checksummed GroupLens download."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import stat
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from pipeline.data.errors import DataError
from pipeline.io import atomic_dir, atomic_path
from pipeline.params import DataParams
from pipeline.paths import Paths
from pipeline.progress import Progress

logger = logging.getLogger(__name__)

MIRROR_ENV = "METAREC_DATA_MIRROR"
CHUNK = 1 << 20


@dataclass(frozen=True)
class Archive:
    url: str
    sha256: str
    marker: str  # a file of the official layout, to find the data folder inside the archive


# sha256 as published in tensorflow/datasets (tensorflow_datasets/url_checksums/movielens.txt); GroupLens
# itself publishes only MD5 (0e33842e24a9c977be4e0107933c0723 and c4d9eecfca2ab87c1945afe126590906).
ARCHIVES = {
    "ml-100k": Archive(
        "https://files.grouplens.org/datasets/movielens/ml-100k.zip",
        "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",
        "u.data",
    ),
    "ml-1m": Archive(
        "https://files.grouplens.org/datasets/movielens/ml-1m.zip",
        "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20",
        "ratings.dat",
    ),
}


def dataset_name(data: DataParams) -> str:
    """``data.name``, except that movielens-1m with the name left at ml-100k (the default) means ``ml-1m``."""
    if data.source == "movielens-1m" and data.name == DataParams.model_fields["name"].default:
        return "ml-1m"
    return data.name


def mirror_folder(name: str) -> Path | None:
    mirror = os.environ.get(MIRROR_ENV)
    if mirror and (Path(mirror) / name).is_dir():
        return Path(mirror) / name
    return None


def locate(data: DataParams, paths: Paths) -> Path:
    """The folder holding the raw files of ``data``: ``data.path``, the mirror, or the download cache."""
    name = dataset_name(data)
    if data.path is not None:
        folder = Path(data.path).expanduser()
        if not folder.is_dir():
            raise DataError(folder, None, None, "data.path is not a folder")
        return folder
    mirrored = mirror_folder(name)
    if mirrored is not None:
        return mirrored
    archive = ARCHIVES.get(name) if data.source.startswith("movielens") else None
    hint = f"set data.path to a folder holding the {name} files, or {MIRROR_ENV} to a folder holding {name}/"
    if archive is None:
        raise DataError(name, None, None, f"no local copy of {name} and no known download; {hint}")
    cached = _data_folder(paths.raw / name, archive.marker)
    if cached is not None:
        return cached
    if not data.download:
        raise DataError(name, None, None, f"no local copy of {name} and data.download is false; {hint}")
    max_bytes = int(data.max_file_mb * 2**20)
    try:
        zip_path = fetch_archive(archive.url, archive.sha256, paths.raw / f"{name}.zip", max_bytes)
    except OSError as exc:
        raise DataError(archive.url, None, None, f"download failed ({exc}); {hint}") from None
    extracted = extract_zip(zip_path, paths.raw / name, max_bytes)
    unpacked = _data_folder(extracted, archive.marker)
    if unpacked is None:
        raise DataError(zip_path, None, None, f"archive holds no {archive.marker}")
    return unpacked


def _data_folder(root: Path, marker: str) -> Path | None:
    """``root`` or its one subfolder (archives unpack into ``ml-100k/``) that holds ``marker``."""
    if (root / marker).is_file():
        return root
    if root.is_dir():
        for child in sorted(root.iterdir()):
            if (child / marker).is_file():
                return child
    return None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_archive(url: str, sha256: str, target: Path, max_bytes: int) -> Path:
    """Download ``url`` to ``target`` (atomically) unless a copy with the right sha256 is there already."""
    if target.is_file() and sha256_of(target) == sha256:
        return target
    logger.info("downloading %s", url)
    with (
        atomic_path(target) as tmp,
        urllib.request.urlopen(url, timeout=60) as response,
        tmp.open("wb") as out,
    ):
        digest = hashlib.sha256()
        size = 0
        total = int(response.headers.get("Content-Length") or 0) or None
        with Progress(total, target.name, "B", unit_scale=True) as bar:
            while chunk := response.read(CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise DataError(url, None, None, f"download exceeds data.max_file_mb ({max_bytes} bytes)")
                digest.update(chunk)
                out.write(chunk)
                bar.update(len(chunk))
        if digest.hexdigest() != sha256:
            raise DataError(url, None, None, f"sha256 mismatch: expected {sha256}, got {digest.hexdigest()}")
    return target


def extract_zip(archive: Path, dest: Path, max_bytes: int) -> Path:
    """Unpack ``archive`` into ``dest`` (atomically), refusing links, oversized members and any member
    whose path would land outside ``dest``."""
    with zipfile.ZipFile(archive) as zf, atomic_dir(dest) as tmp:
        root = tmp.resolve()
        for info in zf.infolist():
            member = PurePosixPath(info.filename.replace("\\", "/"))
            target = (root / member).resolve()
            if member.is_absolute() or ".." in member.parts or not target.is_relative_to(root):
                raise DataError(
                    archive, None, None, f"unsafe member {info.filename!r} escapes the target folder"
                )
            if stat.S_ISLNK(info.external_attr >> 16):
                raise DataError(archive, None, None, f"member {info.filename!r} is a symbolic link")
            if info.file_size > max_bytes:
                raise DataError(archive, None, None, f"member {info.filename!r} exceeds data.max_file_mb")
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, target.open("wb") as out:
                shutil.copyfileobj(src, out, CHUNK)
    return dest
