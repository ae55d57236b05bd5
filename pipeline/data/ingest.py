"""Stage ``ingest``: raw files (or the synthetic generator) → three typed parquet tables."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from pipeline.data.atomic import read_atomic
from pipeline.data.errors import DataError
from pipeline.data.movielens import conform_users, read_ml1m, read_ml100k
from pipeline.data.schema import TABLES, Tables
from pipeline.data.source import dataset_name, locate
from pipeline.data.synthetic import generate_synthetic
from pipeline.io import atomic_dir
from pipeline.params import DataParams, Params
from pipeline.paths import Paths

logger = logging.getLogger(__name__)

OFFICIAL: dict[str, tuple[tuple[str, ...], tuple[str, ...], Callable[[Path, float], Tables]]] = {
    "movielens-100k": (("u.data", "u.item", "u.user"), ("u.genre",), read_ml100k),
    "movielens-1m": (("ratings.dat", "movies.dat", "users.dat"), (), read_ml1m),
}
"""source → (files read, files read when present, reader) of the GroupLens layout."""
SPLIT_SUFFIX = ".melu_split.tsv"
"""A published MeLU split next to the data, ``<data.name>.melu_split.tsv`` (protocol ``melu_split``)."""


@dataclass(frozen=True)
class RawSource:
    """The raw files of one dataset: their folder, layout and names (none for ``synthetic``); ingest reads
    them all but a MeLU split file, which the evaluation reads."""

    layout: str
    folder: Path | None
    files: tuple[str, ...]


def resolve_source(params: Params, paths: Paths) -> RawSource:
    """Which files ``ingest`` will read: the layout found in the folder :func:`locate` gives, plus the
    dataset's MeLU split file when the folder has one (the evaluation reads it)."""
    data = params.data
    if data.source == "synthetic":
        return RawSource("synthetic", None, ())
    folder = locate(data, paths)
    raw = _layout(data, folder)
    split = f"{dataset_name(data)}{SPLIT_SUFFIX}"
    return replace(raw, files=(*raw.files, split)) if (folder / split).is_file() else raw


def _layout(data: DataParams, folder: Path) -> RawSource:
    name = dataset_name(data)
    if data.source in OFFICIAL:
        required, optional, _ = OFFICIAL[data.source]
        if (folder / required[0]).is_file():
            present = tuple(f for f in optional if (folder / f).is_file())
            return RawSource("grouplens", folder, required + present)
    if (folder / f"{name}.inter").is_file():
        user_file = (f"{name}.user",) if (folder / f"{name}.user").is_file() else ()
        return RawSource("atomic", folder, (f"{name}.inter", f"{name}.item", *user_file))
    atomic = f"{name}.inter (RecBole atomic layout)"
    if data.source in OFFICIAL:
        raise DataError(
            folder, None, None, f"found neither {OFFICIAL[data.source][0][0]} (GroupLens layout) nor {atomic}"
        )
    raise DataError(folder, None, None, f"found no {atomic}")


def read_tables(params: Params, paths: Paths) -> Tables:
    """Parse the configured source into typed tables; nothing is written, the raw files are only read."""
    data = params.data
    raw = resolve_source(params, paths)
    if raw.folder is None:
        return generate_synthetic(data.synthetic, params.seed).tables
    name = dataset_name(data)
    if raw.layout == "grouplens":
        logger.info("reading %s (GroupLens layout) from %s", name, raw.folder)
        return OFFICIAL[data.source][2](raw.folder, data.max_file_mb)
    logger.info("reading %s (RecBole atomic layout) from %s", name, raw.folder)
    tables = read_atomic(raw.folder, name, data.max_file_mb)
    return conform_users(tables, data.source) if data.source in OFFICIAL else tables


def ingest(params: Params, paths: Paths) -> dict[str, int]:
    """Write ``paths.table(t)`` for t in ratings, users, items; return the row count of each.

    The three tables are written into a temporary folder that replaces ``paths.ingested`` only when all
    are written: a failure leaves the previous complete set (or none), never a mix.
    """
    tables = read_tables(params, paths)
    # feedback loop: the stored feedback batches (paths.feedback) join the source's ratings
    from pipeline.feedback.merge import merge_feedback  # it reads files with this package's readers

    tables = merge_feedback(tables, paths.feedback)
    counts: dict[str, int] = {}
    with atomic_dir(paths.ingested) as staging:
        for name in TABLES:
            table: pd.DataFrame = getattr(tables, name)
            table.to_parquet(staging / paths.table(name).name, index=False)
            counts[name] = len(table)
        origins = [
            rows.assign(table=name, row=range(len(rows)))[["table", "row", "file", "line"]]
            for name, rows in tables.origins.items()
        ]
        if origins:
            pd.concat(origins, ignore_index=True).to_parquet(staging / paths.origins.name, index=False)
    logger.info("ingested %s", ", ".join(f"{n} {name}" for name, n in counts.items()))
    return counts


def load_tables(paths: Paths) -> Tables:
    """The ingested tables as written by :func:`ingest` (``validate`` never rewrites them)."""
    return Tables(*(pd.read_parquet(paths.table(name)) for name in TABLES))
