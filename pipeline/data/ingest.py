"""Stage ``ingest``: raw files (or the synthetic generator) → three typed parquet tables."""

from __future__ import annotations

import logging

import pandas as pd

from pipeline.data.atomic import read_atomic
from pipeline.data.errors import DataError
from pipeline.data.movielens import read_ml1m, read_ml100k
from pipeline.data.schema import TABLES, Tables
from pipeline.data.source import dataset_name, locate
from pipeline.data.synthetic import generate_synthetic
from pipeline.io import atomic_dir
from pipeline.params import Params
from pipeline.paths import Paths

logger = logging.getLogger(__name__)

OFFICIAL = {"movielens-100k": ("u.data", read_ml100k), "movielens-1m": ("ratings.dat", read_ml1m)}


def read_tables(params: Params, paths: Paths) -> Tables:
    """Parse the configured source into typed tables; nothing is written, the raw files are only read."""
    data = params.data
    if data.source == "synthetic":
        return generate_synthetic(data.synthetic, params.seed).tables
    name = dataset_name(data)
    folder = locate(data, paths)
    if data.source in OFFICIAL:
        marker, reader = OFFICIAL[data.source]
        if (folder / marker).is_file():
            logger.info("reading %s (GroupLens layout) from %s", name, folder)
            return reader(folder, data.max_file_mb)
    if (folder / f"{name}.inter").is_file():
        logger.info("reading %s (RecBole atomic layout) from %s", name, folder)
        return read_atomic(folder, name, data.max_file_mb)
    atomic = f"{name}.inter (RecBole atomic layout)"
    if data.source in OFFICIAL:
        raise DataError(
            folder, None, None, f"found neither {OFFICIAL[data.source][0]} (GroupLens layout) nor {atomic}"
        )
    raise DataError(folder, None, None, f"found no {atomic}")


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
    logger.info("ingested %s", ", ".join(f"{n} {name}" for name, n in counts.items()))
    return counts


def load_tables(paths: Paths) -> Tables:
    """The ingested tables as written by :func:`ingest` (``validate`` never rewrites them)."""
    return Tables(*(pd.read_parquet(paths.table(name)) for name in TABLES))
