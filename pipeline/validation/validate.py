"""Stage ``validate``: run the suites on the ingested tables, write the result and data docs, and either
fail or (``validate.on_error: quarantine``) move failing ratings aside and continue."""

from __future__ import annotations

import logging
from collections import Counter
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


def _curable(failures: list[ExpectationFailure]) -> bool:
    return all(f.table == "ratings" and f.expectation in ROW_LEVEL and f.error is None for f in failures)


def validate(params: Params, paths: Paths) -> ValidationReport:
    """Validate ``paths.table(...)``; write ``result.json`` and data docs under ``paths.validation_reports``.

    Raises :class:`DataValidationError` listing every failed expectation, unless ``validate.on_error`` is
    ``quarantine``, the only failures are bad ratings rows, and they are at most
    ``validate.max_bad_fraction`` of the rows: then those rows go to ``paths.quarantine/ratings.parquet``
    (with a ``reason`` column) and the cleaned ratings table replaces the ingested one.
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

    def check() -> tuple[Any, list[ExpectationFailure]]:
        with atomic_dir(paths.validation_reports / "docs") as docs:
            result = gx_suites.run_checkpoint(paths.ingested, suites, id_sets, docs)
        return result, gx_suites.failures(result)

    result, found = check()
    before: list[ExpectationFailure] = []
    quarantined: dict[str, int] = {}
    if settings.on_error == "quarantine":
        quarantined = _quarantine(params, paths, tables, result, found)
        if quarantined:
            before = found
            result, found = check()
    report = _finish(paths, result, tables, found, quarantined, before)
    if not report.success:
        raise DataValidationError(report.summary(), report)
    logger.info(report.summary())
    return report


def _quarantine(
    params: Params,
    paths: Paths,
    tables: dict[str, pd.DataFrame],
    result: Any,
    found: list[ExpectationFailure],
) -> dict[str, int]:
    """Move the failing ratings rows to the quarantine table and rewrite the ratings table without them.

    Returns the number of rows moved per reason (empty when nothing was moved). Only failures of row-level
    ratings expectations are curable this way; with any other failure nothing is moved.
    """
    settings = params.validation
    ratings = tables["ratings"]
    reasons = pd.Series("", index=ratings.index, dtype="str")
    if found and _curable(found):
        reasons = rating_problems(
            ratings,
            tables["users"]["user_id"],
            tables["items"]["item_id"],
            settings.rating_min,
            settings.rating_max,
        )
    bad = (reasons != "").to_numpy()
    n_bad, n_rows = int(bad.sum()), len(ratings)
    if n_bad > settings.max_bad_fraction * n_rows:
        report = _finish(paths, result, tables, found)
        raise DataValidationError(
            f"ratings: {n_bad} of {n_rows} rows ({n_bad / n_rows:.2%}) fail, more than "
            f"validate.max_bad_fraction={settings.max_bad_fraction:g}; nothing was quarantined\n"
            + report.summary(),
            report,
        )
    moved = ratings[bad].assign(reason=reasons[bad].astype("str"))
    write_parquet(moved.reset_index(drop=True), paths.quarantine / "ratings.parquet")
    if not n_bad:
        return {}
    write_parquet(ratings[~bad].reset_index(drop=True), paths.table("ratings"))
    tables["ratings"] = ratings[~bad]
    counts = dict(sorted(Counter(moved["reason"]).items()))
    logger.warning("quarantined %d of %d ratings: %s", n_bad, n_rows, counts)
    return counts


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
