"""Validate new ratings with the ratings table's own Great Expectations suite before they are stored.

The suite is the one ``validate`` builds (:func:`pipeline.validation.suites.build_expectations`), run on
the new rows alone: types, no nulls, the rating range, one rating per (user, item), and item ids known to
the ingested items table. Users may be new (that is the cold start): the batch's own users join the known
ones. On failure the error lists the failed expectations and, for each bad row, its line in the file.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.data.schema import table_schemas
from pipeline.io import write_parquet
from pipeline.params import Params
from pipeline.paths import Paths
from pipeline.validation.quarantine import rating_problems
from pipeline.validation.report import DataValidationError, ValidationReport

MAX_BAD_ROWS_SHOWN = 5


def known_ids(paths: Paths) -> tuple[pd.Series, pd.Series]:
    """User and item ids of the ingested tables (``ingest`` must have run: it fixes the item catalogue)."""
    tables = {name: paths.table(name) for name in ("users", "items")}
    missing = [str(p) for p in tables.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{', '.join(missing)} not found: run the 'ingest' stage first")
    users = pd.read_parquet(tables["users"], columns=["user_id"])["user_id"].astype(str)
    items = pd.read_parquet(tables["items"], columns=["item_id"])["item_id"].astype(str)
    return users, items


def validate_feedback(
    ratings: pd.DataFrame, lines: np.ndarray, source: Path, params: Params, paths: Paths
) -> ValidationReport:
    """Run the ratings suite on ``ratings`` (row k from line ``lines[k]`` of ``source``); raise
    :class:`DataValidationError` on any failure, naming the expectations and the offending lines."""
    from pipeline.validation import suites as gx_suites  # GX takes seconds to import: only when needed

    settings = params.validation
    users, items = known_ids(paths)
    schemas = table_schemas(params.data.source)
    dtypes = {name: dict(schema.required) for name, schema in schemas.items()}
    dtypes["ratings"] = {str(c): str(t) for c, t in ratings.dtypes.items()}
    suite = gx_suites.build_expectations(schemas, dtypes, settings.rating_min, settings.rating_max)["ratings"]
    all_users = pd.concat([users, ratings["user_id"].dropna().astype(str)]).unique()
    ids = {"user_ids": list(all_users), "item_ids": items.tolist()}
    with tempfile.TemporaryDirectory(prefix="feedback-") as folder:
        write_parquet(ratings, Path(folder) / "ratings.parquet")
        result = gx_suites.run_checkpoint(Path(folder), {"ratings": suite}, ids)
    found = gx_suites.failures(result)
    report = ValidationReport(
        success=bool(result.success),
        rows={"ratings": len(ratings)},
        evaluated=sum(len(v.results) for v in result.run_results.values()),
        failures=tuple(found),
    )
    if report.success:
        return report
    problems = rating_problems(ratings, pd.Series(all_users), items, settings.rating_min, settings.rating_max)
    bad = [(i, reason) for i, reason in enumerate(problems) if reason]
    message = [f"{source}: the new ratings fail the ratings suite", report.summary()]
    message += [f"  {source.name} line {lines[i]}: {reason}" for i, reason in bad[:MAX_BAD_ROWS_SHOWN]]
    if len(bad) > MAX_BAD_ROWS_SHOWN:
        message.append(f"  ... and {len(bad) - MAX_BAD_ROWS_SHOWN} more rows")
    raise DataValidationError("\n".join(message), report)
