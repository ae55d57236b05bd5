"""What ``validate`` found, readable without Great Expectations installed or imported."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MAX_EXAMPLES = 5


@dataclass(frozen=True)
class ExpectationFailure:
    """One failed expectation: where, which, how many rows and a few of the offending values.

    ``rows`` are 0-based row numbers of the table's parquet file (the first few that fail); ``source``
    names the raw file and lines they came from, where ``ingest`` recorded it (``u.data lines 5, 13``).
    """

    table: str
    column: str | None
    expectation: str
    detail: str | None = None
    unexpected_count: int | None = None
    element_count: int | None = None
    examples: tuple[Any, ...] = ()
    observed: Any = None
    error: str | None = None
    rows: tuple[int, ...] = ()
    source: str | None = None

    def where(self) -> str:
        """``u.data lines 3, 10, column rating`` (else ``ratings.parquet rows 2, 9, ...``): the file,
        lines (rows) and column at fault."""
        where = f"{self.table}.parquet"
        if self.source:
            where = self.source
        elif self.rows:
            more = ", ..." if (self.unexpected_count or 0) > len(self.rows) else ""
            label = "rows" if len(self.rows) > 1 else "row"
            where += f" {label} {', '.join(str(r) for r in self.rows)}{more}"
        if self.column:
            columns = self.column.split(",")
            where += f", column{'s' if len(columns) > 1 else ''} {', '.join(columns)}"
        return where

    def line(self) -> str:
        head = f"{self.where()}: {self.expectation}" + (f" {self.detail}" if self.detail else "")
        if self.error is not None:
            return f"{head} could not run: {self.error}"
        if self.unexpected_count is not None:
            of = f" of {self.element_count}" if self.element_count is not None else ""
            shown = ", ".join(_show(v) for v in self.examples)
            return f"{head} failed for {self.unexpected_count}{of} rows, e.g. {shown}"
        return f"{head} failed: observed {_show(self.observed)}"


@dataclass(frozen=True)
class ValidationReport:
    """Outcome of the validate stage; ``failures`` are those of the final (post-quarantine) run."""

    success: bool
    rows: dict[str, int]
    evaluated: int
    failures: tuple[ExpectationFailure, ...] = ()
    quarantined: int = 0
    quarantine_reasons: dict[str, int] = field(default_factory=dict)
    failures_before_quarantine: tuple[ExpectationFailure, ...] = ()
    result_path: Path | None = None
    docs_path: Path | None = None

    def summary(self) -> str:
        if self.success:
            head = f"data validation passed ({self.evaluated} expectations"
            head += f", {self.quarantined} ratings quarantined)" if self.quarantined else ")"
            return head
        lines = [f"data validation failed ({len(self.failures)} of {self.evaluated} expectations):"]
        lines += [f"  {f.line()}" for f in self.failures]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("failures", "failures_before_quarantine"):
            out[key] = [{**asdict(f), "message": f.line()} for f in getattr(self, key)]
        return jsonable(out)


class DataValidationError(ValueError):
    """The ingested tables break the suite; the message lists each failed expectation on its own line."""

    def __init__(self, message: str, report: ValidationReport | None = None) -> None:
        super().__init__(message)
        self.report = report

    def __reduce__(self) -> tuple[type[DataValidationError], tuple[str, ValidationReport | None]]:
        return type(self), (str(self), self.report)


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "(" + ", ".join(f"{k}={_show(v)}" for k, v in value.items()) + ")"
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "null"
    return repr(value)


def jsonable(obj: Any) -> Any:
    """Plain JSON types; NaN becomes null (strict JSON has no NaN)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else str(obj)
    if hasattr(obj, "item") and not isinstance(obj, str | bytes):
        return jsonable(obj.item())
    return obj
