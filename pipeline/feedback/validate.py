"""Validate new ratings with the ratings table's own Great Expectations suite before they are stored.

The suite is the one ``validate`` builds (:func:`pipeline.validation.suites.build_expectations`), run on
the new rows alone: types, no nulls, the rating range, one rating per (user, item), and item ids known to
the ingested items table. Users may be new (that is the cold start): the batch's own users join the known
ones. On failure the error lists every bad line of the file (unparsable values too) and the failed
expectations.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.data.errors import DataError
from pipeline.data.schema import table_schemas
from pipeline.io import write_parquet
from pipeline.params import Params
from pipeline.paths import Paths
from pipeline.validation.quarantine import rating_problems
from pipeline.validation.report import DataValidationError, ValidationReport

MAX_BAD_ROWS_SHOWN = 20


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
    ratings: pd.DataFrame,
    lines: np.ndarray,
    source: Path,
    params: Params,
    paths: Paths,
    problems: Sequence[DataError] = (),
) -> ValidationReport:
    """Run the ratings suite on ``ratings`` (row k from line ``lines[k]`` of ``source``); raise
    :class:`DataValidationError` on any failure, or any of the reader's ``problems`` (rows already left
    out), naming every offending line of the file and the failed expectations."""
    settings = params.validation
    users, items = known_ids(paths)
    all_users = pd.concat([users, ratings["user_id"].dropna().astype(str)]).unique()
    report = ValidationReport(success=True, rows={"ratings": len(ratings)}, evaluated=0)
    if len(ratings):
        report = _run_suite(ratings, params, users, items, all_users)
    if report.success and not problems:
        return report
    found = [(int(e.row or 0), f"{source.name} line {e.row}, column {e.column}: {e.rule}") for e in problems]
    reasons = rating_problems(ratings, pd.Series(all_users), items, settings.rating_min, settings.rating_max)
    found += [(int(lines[i]), f"{source.name} line {lines[i]}: {r}") for i, r in enumerate(reasons) if r]
    found.sort(key=lambda pair: pair[0])
    message = [f"{source}: {len(found)} problem(s) in the new ratings; nothing was stored"]
    message += [f"  {text}" for _, text in found[:MAX_BAD_ROWS_SHOWN]]
    if len(found) > MAX_BAD_ROWS_SHOWN:
        message.append(f"  ... and {len(found) - MAX_BAD_ROWS_SHOWN} more")
    if report.failures:
        names = sorted({f"{f.expectation} ({f.column})" for f in report.failures})
        message.append(f"failed expectations of the ratings suite: {', '.join(names)}")
    raise DataValidationError("\n".join(message), replace(report, success=False))


def _run_suite(
    ratings: pd.DataFrame, params: Params, users: pd.Series, items: pd.Series, all_users: np.ndarray
) -> ValidationReport:
    from pipeline.validation import suites as gx_suites  # GX takes seconds to import: only when needed

    settings = params.validation
    schemas = table_schemas(params.data.source)
    dtypes = {name: dict(schema.required) for name, schema in schemas.items()}
    dtypes["ratings"] = {str(c): str(t) for c, t in ratings.dtypes.items()}
    suite = gx_suites.build_expectations(schemas, dtypes, settings.rating_min, settings.rating_max)["ratings"]
    ids = {"user_ids": list(all_users), "item_ids": items.tolist()}
    with tempfile.TemporaryDirectory(prefix="feedback-") as folder:
        write_parquet(ratings, Path(folder) / "ratings.parquet")
        result = gx_suites.run_checkpoint(Path(folder), {"ratings": suite}, ids)
    return ValidationReport(
        success=bool(result.success),
        rows={"ratings": len(ratings)},
        evaluated=sum(len(v.results) for v in result.run_results.values()),
        failures=tuple(gx_suites.failures(result)),
    )
