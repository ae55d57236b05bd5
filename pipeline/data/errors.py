"""The one error every ingest problem raises: it names the file, line, column and the rule broken."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """Raw input that cannot be ingested.

    ``row`` is the 1-based line number in ``file`` (the header is line 1 where there is one), ``column``
    the offending column; either is ``None`` where the problem is not tied to one.
    """

    def __init__(self, file: str | Path, row: int | None, column: str | None, rule: str) -> None:
        self.file = str(file)
        self.row = row
        self.column = column
        self.rule = rule
        super().__init__(self._message())

    def _message(self) -> str:
        where = Path(self.file).name or self.file
        if self.row is not None:
            where += f" line {self.row}"
        if self.column is not None:
            where += f", column {self.column}"
        return f"{where}: {self.rule}"

    def __reduce__(self) -> tuple[type[DataError], tuple[str, int | None, str | None, str]]:
        return type(self), (self.file, self.row, self.column, self.rule)
