"""Stage ``validate``: run the suites on the ingested tables and publish the tables that pass.

``ingest``'s tables are only read. The stage's own outputs: ``paths.validated`` (the three tables that
``features`` reads; with ``validate.on_error: quarantine``, the ratings without the failing rows),
``paths.quarantine/ratings.parquet`` (those rows, each with its ``reason``; empty when none), the GX
result and data docs under ``paths.validation_reports``, and the metric ``paths.validation_metrics``.
The validated folder is checked before it is swapped in: a failure leaves the previous one in place.
"""

from __future__ import annotations

import logging
import shutil
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.data.schema import TABLES, table_schemas
from pipeline.io import atomic_dir, write_json, write_parquet
from pipeline.params import Params
from pipeline.paths import Paths
from pipeline.validation.quarantine import rating_problems
from pipeline.validation.report import DataValidationError, ExpectationFailure, ValidationReport, jsonable

logger = logging.getLogger(__name__)

# Failures that removing rows of the ratings table can cure; any other failure is fatal.
ROW_LEVEL = {
    "expect_column_values_to_not_be_null",
    "expect_column_values_to_be_between",
    "expect_compound_columns_to_be_unique",
    "expect_column_values_to_be_in_set",
}
QUARANTINE_FILE = "ratings.parquet"


def _read(paths: Paths) -> dict[str, pd.DataFrame]:
    missing = [str(paths.table(name)) for name in TABLES if not paths.table(name).is_file()]
    if missing:
        raise FileNotFoundError(f"ingested tables missing (run ingest first): {', '.join(missing)}")
    return {name: pd.read_parquet(paths.table(name)) for name in TABLES}


def _id_sets(tables: dict[str, pd.DataFrame]) -> dict[str, list[str]]:
    """Known user and item ids, the value sets of the rated-ids-are-known expectations."""
    sets = {}
    for key, table, column in (("user_ids", "users", "user_id"), ("item_ids", "items", "item_id")):
        frame = tables[table]
        sets[key] = frame[column].dropna().astype(str).tolist() if column in frame else []
    return sets


def _origins(paths: Paths) -> dict[str, pd.DataFrame]:
    """Per table, the raw file and line of each row, as ``ingest`` recorded them (none: synthetic data)."""
    if not paths.origins.is_file():
        return {}
    rows = pd.read_parquet(paths.origins)
    return {
        str(name): table.sort_values("row")[["file", "line"]].reset_index(drop=True)
        for name, table in rows.groupby("table")
    }


def _locate(failure: ExpectationFailure, origins: dict[str, pd.DataFrame]) -> ExpectationFailure:
    """``failure`` naming the raw file and lines of its rows, when all of them came from one file."""
    rows = origins.get(failure.table)
    if rows is None or not failure.rows or max(failure.rows) >= len(rows):
        return failure
    picked = rows.iloc[list(failure.rows)]
    files = picked["file"].unique()
    if len(files) != 1:
        return failure
    lines = [str(n) for n in picked["line"] if not pd.isna(n)]
    more = ", ..." if (failure.unexpected_count or 0) > len(failure.rows) else ""
    label = "lines" if len(lines) > 1 else "line"
    where = Path(str(files[0])).name + (f" {label} {', '.join(lines)}{more}" if lines else "")
    return replace(failure, source=where)


def _curable(failures: list[ExpectationFailure]) -> bool:
    return all(f.table == "ratings" and f.expectation in ROW_LEVEL and f.error is None for f in failures)


def validate(params: Params, paths: Paths) -> ValidationReport:
    """Validate ``paths.table(...)`` and publish the tables that pass to ``paths.validated``.

    Raises :class:`DataValidationError` listing every failed expectation (file, rows, column, rule), unless
    ``validate.on_error`` is ``quarantine``, the only failures are bad ratings rows, and they are at most
    ``validate.max_bad_fraction`` of the rows: then those rows go to the quarantine table, and the ratings
    without them, validated again, are published.
    """
    from pipeline.validation import suites as gx_suites  # GX takes seconds to import: only when needed

    settings = params.validation
    tables = _read(paths)
    suites = gx_suites.build_expectations(
        table_schemas(params.data.source),
        {name: {str(c): str(t) for c, t in df.dtypes.items()} for name, df in tables.items()},
        settings.rating_min,
        settings.rating_max,
    )
    id_sets = _id_sets(tables)

    def check(folder: Path) -> tuple[Any, list[ExpectationFailure]]:
        with atomic_dir(paths.validation_reports / "docs") as docs:
            result = gx_suites.run_checkpoint(folder, suites, id_sets, docs)
        return result, gx_suites.failures(result)

    origins = {name: rows for name, rows in _origins(paths).items() if len(rows) == len(tables[name])}
    result, found = check(paths.ingested)
    found = [_locate(f, origins) for f in found]
    ratings = tables["ratings"]
    reasons = pd.Series("", index=ratings.index, dtype="str")
    if settings.on_error == "quarantine" and found and _curable(found):
        reasons = _reasons(params, paths, tables, result, found)
    bad = (reasons != "").to_numpy()
    moved = ratings[bad].assign(reason=reasons[bad].astype("str")).reset_index(drop=True)
    counts = dict(sorted(Counter(moved["reason"]).items()))
    published = {**tables, "ratings": ratings[~bad].reset_index(drop=True)}
    with atomic_dir(paths.validated) as staging:
        for name in TABLES:
            if name == "ratings" and bad.any():
                published[name].to_parquet(staging / f"{name}.parquet", index=False)
            else:
                shutil.copyfile(paths.table(name), staging / f"{name}.parquet")
        before: list[ExpectationFailure] = []
        if bad.any():
            before = found
            result, found = check(staging)
            if "ratings" in origins:
                origins["ratings"] = origins["ratings"][~bad].reset_index(drop=True)
            found = [_locate(f, origins) for f in found]
        report = _finish(paths, result, published, found, counts, before)
        if not report.success:
            raise DataValidationError(report.summary(), report)
        write_parquet(moved, paths.quarantine / QUARANTINE_FILE)
        write_json(
            {
                "ratings": len(ratings),
                "quarantined": len(moved),
                "quarantined_fraction": len(moved) / max(len(ratings), 1),
                "expectations": report.evaluated,
            },
            paths.validation_metrics,
        )
    if counts:
        logger.warning("quarantined %d of %d ratings: %s", len(moved), len(ratings), counts)
    logger.info(report.summary())
    return report


def _reasons(
    params: Params,
    paths: Paths,
    tables: dict[str, pd.DataFrame],
    result: Any,
    found: list[ExpectationFailure],
) -> pd.Series:
    """Per ratings row, why it fails (``""`` when it passes); refuses when more than
    ``validate.max_bad_fraction`` of the rows fail (then nothing is quarantined)."""
    settings = params.validation
    ratings = tables["ratings"]
    users, items = tables["users"]["user_id"], tables["items"]["item_id"]
    reasons = rating_problems(ratings, users, items, settings.rating_min, settings.rating_max)
    n_bad, n_rows = int((reasons != "").sum()), len(ratings)
    if n_bad > settings.max_bad_fraction * n_rows:
        report = _finish(paths, result, tables, found)
        raise DataValidationError(
            f"ratings: {n_bad} of {n_rows} rows ({n_bad / n_rows:.2%}) fail, more than "
            f"validate.max_bad_fraction={settings.max_bad_fraction:g}; nothing was quarantined\n"
            + report.summary(),
            report,
        )
    return reasons


def _finish(
    paths: Paths,
    result: Any,
    tables: dict[str, pd.DataFrame],
    found: list[ExpectationFailure],
    quarantine_reasons: dict[str, int] | None = None,
    before: list[ExpectationFailure] | None = None,
) -> ValidationReport:
    """Build the report and write it, with the full GX result, to ``result.json``."""
    quarantine_reasons = quarantine_reasons or {}
    result_path = paths.validation_reports / "result.json"
    report = ValidationReport(
        success=bool(result.success),
        rows={name: len(df) for name, df in tables.items()},
        evaluated=sum(len(v.results) for v in result.run_results.values()),
        failures=tuple(found),
        quarantined=sum(quarantine_reasons.values()),
        quarantine_reasons=quarantine_reasons,
        failures_before_quarantine=tuple(before or ()),
        result_path=result_path,
        docs_path=paths.validation_reports / "docs" / "index.html",
    )
    write_json({**report.to_dict(), "great_expectations": jsonable(result.describe_dict())}, result_path)
    return report
