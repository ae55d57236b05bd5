"""The Great Expectations 1.x suites for the three ingested tables, and one checkpoint that runs them.

Each table is a parquet asset of a pandas filesystem datasource over a folder of table files (the
ingested tables; after quarantine, the validated ones before they are published), so the suite checks
exactly the files the next stage will read. The contexts are ephemeral: nothing GX-specific is
kept between runs except the JSON result and the data docs this module renders.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import great_expectations as gx
import great_expectations.expectations as gxe
import numpy as np
from great_expectations.data_context.store.store import DataDocsSiteConfigTypedDict
from great_expectations.data_context.types.base import ProgressBarsConfig

from pipeline.data.schema import TableSchema
from pipeline.validation.report import MAX_EXAMPLES, ExpectationFailure

# GX compares the numpy scalar type of a pandas dtype: "int64" accepts Int64 (and int64) columns.
GX_TYPES = {"str": "str", "float64": "float64", "Int64": "int64"}
ID_COLUMN = {"users": "user_id", "items": "item_id"}
YEAR_RANGE = (1800, 2100)
DOCS_SITE = "metarec"


def build_expectations(
    schemas: Mapping[str, TableSchema],
    dtypes: Mapping[str, Mapping[str, str]],
    rating_min: float,
    rating_max: float,
) -> dict[str, list[gxe.Expectation]]:
    """Expectations per table; ``dtypes`` are the tables' actual pandas dtypes (by column name).

    A column beyond the schema's required ones must have one of its ``extra_dtypes``: its type
    expectation names the observed dtype when that is allowed, else the first allowed one (so it fails).
    The rated-ids-are-known expectations take their value sets from the ``user_ids``/``item_ids``
    expectation parameters at run time, so the suites themselves hold no data.
    """
    suites: dict[str, list[gxe.Expectation]] = {}
    for table, schema in schemas.items():
        expected = dict(schema.required)
        for column, dtype in dtypes[table].items():
            if column not in expected and schema.extra_dtypes:
                expected[column] = dtype if dtype in schema.extra_dtypes else schema.extra_dtypes[0]
        suites[table] = [
            gxe.ExpectTableColumnsToMatchSet(column_set=list(schema.required), exact_match=schema.exact),
            *(gxe.ExpectColumnValuesToBeOfType(column=c, type_=GX_TYPES[d]) for c, d in expected.items()),
        ]
    suites["ratings"] += [
        *(gxe.ExpectColumnValuesToNotBeNull(column=c) for c in ("user_id", "item_id", "rating")),
        gxe.ExpectColumnValuesToBeBetween(column="rating", min_value=rating_min, max_value=rating_max),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=["user_id", "item_id"]),
        gxe.ExpectColumnValuesToBeInSet(column="user_id", value_set={"$PARAMETER": "user_ids"}),
        gxe.ExpectColumnValuesToBeInSet(column="item_id", value_set={"$PARAMETER": "item_ids"}),
    ]
    for table, id_column in ID_COLUMN.items():
        suites[table] += [
            gxe.ExpectColumnValuesToNotBeNull(column=id_column),
            gxe.ExpectColumnValuesToBeUnique(column=id_column),
        ]
    suites["items"].append(
        gxe.ExpectColumnValuesToBeBetween(column="year", min_value=YEAR_RANGE[0], max_value=YEAR_RANGE[1])
    )
    return suites


def run_checkpoint(
    folder: Path,
    suites: Mapping[str, list[gxe.Expectation]],
    parameters: Mapping[str, Any],
    docs_dir: Path | None = None,
) -> Any:
    """Validate ``folder/<table>.parquet`` against each suite in one checkpoint; render data docs into
    ``docs_dir`` when given. Returns the GX ``CheckpointResult``."""
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    datasource = context.data_sources.add_pandas_filesystem("ingested", base_directory=folder)
    definitions = []
    for table, expectations in suites.items():
        batch = datasource.add_parquet_asset(table).add_batch_definition_path(table, path=f"{table}.parquet")
        fresh = [copy.copy(e) for e in expectations]  # an expectation binds to the first suite it joins
        suite = context.suites.add(gx.ExpectationSuite(name=table, expectations=fresh))
        definitions.append(
            context.validation_definitions.add(gx.ValidationDefinition(name=table, data=batch, suite=suite))
        )
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(name="ingested_tables", validation_definitions=definitions, result_format="SUMMARY")
    )
    result = checkpoint.run(expectation_parameters=dict(parameters))
    if docs_dir is not None:
        site = DataDocsSiteConfigTypedDict(
            class_name="SiteBuilder",
            site_index_builder={"class_name": "DefaultSiteIndexBuilder"},
            store_backend={"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
        )
        context.add_data_docs_site(site_name=DOCS_SITE, site_config=site)
        context.build_data_docs(site_names=[DOCS_SITE])
    return result


def failures(result: Any) -> list[ExpectationFailure]:
    """The failed expectations of a ``CheckpointResult``."""
    found: list[ExpectationFailure] = []
    for validation in result.run_results.values():
        missing_columns: set[str] = set()
        for outcome in validation.results:
            if outcome.expectation_config.type == "expect_table_columns_to_match_set" and not outcome.success:
                missing_columns.update(outcome.result["details"]["mismatched"].get("missing", []))
        for outcome in validation.results:
            if not outcome.success:
                found.append(_failure(validation.suite_name, outcome, missing_columns))
    return found


def _failure(table: str, outcome: Any, missing_columns: set[str]) -> ExpectationFailure:
    config = outcome.expectation_config
    kwargs = config.kwargs
    column = kwargs.get("column") or ",".join(kwargs.get("column_list") or []) or None
    info = outcome.exception_info or {}
    error = None
    if info.get("raised_exception"):
        error = "column not in the table" if column in missing_columns else info.get("exception_message")
    result = outcome.result or {}
    examples: list[Any] = []
    for value in result.get("partial_unexpected_list") or []:
        value = None if isinstance(value, float) and math.isnan(value) else value
        if value not in examples and len(examples) < MAX_EXAMPLES:
            examples.append(value)
    indexes = result.get("partial_unexpected_index_list") or []
    rows = tuple(int(r) for r in indexes if isinstance(r, int | np.integer))[:MAX_EXAMPLES]
    observed = result.get("observed_value")
    if config.type == "expect_table_columns_to_match_set":
        observed = result.get("details", {}).get("mismatched", observed)
    bounds = None
    if "min_value" in kwargs or "max_value" in kwargs:
        bounds = f"[{kwargs.get('min_value')}, {kwargs.get('max_value')}]"
    return ExpectationFailure(
        table=table,
        column=column,
        expectation=config.type,
        detail=bounds,
        unexpected_count=result.get("unexpected_count"),
        element_count=result.get("element_count"),
        examples=tuple(examples),
        observed=observed,
        error=error,
        rows=rows,
    )
