"""Feedback batches: read a CSV or JSONL file of new ratings, store it once as an immutable batch file.

A batch is ``<feedback>/<seq>-<hash>.parquet``: ``seq`` orders the batches (a later rating of the same
item wins when they are merged), ``hash`` is the sha256 of the batch's rows in canonical form (sorted,
typed), so adding the same ratings again (the same file, or the same rows reordered or in the other
format) finds the existing batch and adds nothing. Batches are never rewritten or deleted: every earlier
data version is a prefix of the current one.

The ledger (``Paths.feedback_state``) remembers up to which batch the last retraining run went, so the
number of ratings that arrived since then is known without reading the ingested tables.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from pipeline.data.errors import DataError
from pipeline.data.schema import RATINGS, frame
from pipeline.data.textfile import Table, parse_fields, read_text, split_lines
from pipeline.io import read_json, write_json, write_parquet
from pipeline.paths import Paths

COLUMNS = tuple(RATINGS)
"""user_id, item_id, rating, timestamp: the ratings table's columns, in its order."""
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
BATCH_NAME = re.compile(r"^(\d{6})-([0-9a-f]{16})\.parquet$")
MAX_FILE_MB = 256.0


@dataclass(frozen=True)
class Batch:
    """One stored feedback batch."""

    seq: int
    digest: str
    rows: int
    path: Path

    @property
    def name(self) -> str:
        return self.path.name


def _csv_table(path: Path, text: str) -> Table:
    lines = split_lines(text)
    header, header_line = lines.first()
    names = [name.strip() for name in header.split(",")]
    missing = [c for c in COLUMNS if c not in names]
    extra = [c for c in names if c not in COLUMNS]
    if missing or extra or len(names) != len(set(names)):
        raise DataError(
            path,
            header_line,
            next(iter(missing or extra), None),
            f"header must name the columns {', '.join(COLUMNS)} once each, comma-separated (got {header!r})",
        )
    if len(lines) == 1:
        raise DataError(path, None, None, "header only: no ratings")
    return parse_fields(path, lines.rest(), ",", names)


def _jsonl_table(path: Path, text: str) -> Table:
    lines = split_lines(text)
    rows: dict[str, list[str]] = {c: [] for c in COLUMNS}
    for raw, number in zip(lines.text.to_pylist(), lines.numbers, strict=True):
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise DataError(path, int(number), None, f"not valid JSON: {exc.msg}") from None
        if not isinstance(record, dict):
            raise DataError(path, int(number), None, "each line must be a JSON object")
        unknown = sorted(set(record) - set(COLUMNS))
        if unknown:
            raise DataError(path, int(number), unknown[0], f"unknown field (expected {', '.join(COLUMNS)})")
        for column in COLUMNS:
            value = record.get(column)
            if isinstance(value, dict | list | bool):
                raise DataError(path, int(number), column, f"must be a string or number (got {value!r})")
            rows[column].append("" if value is None else str(value))
    return Table(path, {c: pd.Series(v, dtype=str) for c, v in rows.items()}, lines.numbers)


def read_feedback(path: Path, problems: list[DataError] | None = None) -> tuple[pd.DataFrame, np.ndarray]:
    """The ratings of a feedback file, typed like the ratings table (``RATINGS``), and the 1-based line
    of the file each row came from.

    CSV: a header line naming the four columns, then comma-separated values. JSONL: one object per line
    with those four fields. A defect of the file's structure raises a :class:`DataError` naming the file,
    line and column. A bad value does too, unless ``problems`` is given: then every bad value is added to
    it (one :class:`DataError` each) and its row left out, so that all of a file's problems are reported.
    """
    path = Path(path)
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise DataError(path, None, None, f"unknown format: expected one of {', '.join(FORMATS)}")
    text = read_text(path, "utf-8", MAX_FILE_MB).removeprefix("\ufeff")
    table = _csv_table(path, text) if kind == "csv" else _jsonl_table(path, text)
    found: list[DataError] = []
    for column in COLUMNS:
        empty = (table.columns[column] == "").to_numpy().nonzero()[0]
        found += [table.error(int(k), column, "missing value") for k in empty]
    rating, rating_bad = _numbers(table, "rating", integer=False)
    timestamp, timestamp_bad = _numbers(table, "timestamp", integer=True)
    found += rating_bad + timestamp_bad
    if found and problems is None:
        raise min(found, key=lambda e: (e.row or 0, COLUMNS.index(e.column or "user_id")))
    keep = ~np.isin(table.lines, [e.row for e in found if e.row is not None])
    if problems is not None:
        problems += found
    columns = {
        "user_id": table.columns["user_id"][keep],
        "item_id": table.columns["item_id"][keep],
        "rating": rating[keep],
        "timestamp": timestamp[keep],
    }
    return frame(columns, RATINGS), np.asarray(table.lines, dtype=np.int64)[keep]


def _numbers(table: Table, column: str, integer: bool) -> tuple[pd.Series, list[DataError]]:
    """``column`` as float64 (``integer``: whole numbers only), and an error per value that is neither."""
    raw = table.columns[column]
    values = pd.to_numeric(raw.mask(raw == ""), errors="coerce").astype("float64").reset_index(drop=True)
    bad = np.array(values.isna() & (raw != "").to_numpy())
    kind = "a number"
    if integer:
        bad |= np.array(values.notna() & (values != np.floor(values)))
        kind = "an integer"
    errors = [table.error(int(k), column, f"not {kind} ({raw.iloc[k]!r})") for k in np.flatnonzero(bad)]
    return (values.round().astype("Int64") if integer else values), errors


def canonical(ratings: pd.DataFrame) -> pd.DataFrame:
    """The rows sorted by every column, with a fresh index: the form that is hashed and stored."""
    return ratings.loc[:, list(COLUMNS)].sort_values(list(COLUMNS), kind="stable").reset_index(drop=True)


def content_hash(ratings: pd.DataFrame) -> str:
    """sha256 of the canonical rows (column names, then one line of values per row)."""
    rows = canonical(ratings)
    digest = hashlib.sha256(",".join(COLUMNS).encode())
    for values in rows.itertuples(index=False):
        digest.update(("\n" + "\x1f".join(repr(v) for v in values)).encode())
    return digest.hexdigest()


def list_batches(folder: Path) -> list[Batch]:
    """The stored batches, in ``seq`` order; any other file in the folder is ignored."""
    batches = []
    for path in sorted(Path(folder).glob("*.parquet")):
        match = BATCH_NAME.match(path.name)
        if match:
            rows = pq.ParquetFile(path).metadata.num_rows
            batches.append(Batch(int(match.group(1)), match.group(2), rows, path))
    return batches


def add_batch(ratings: pd.DataFrame, folder: Path) -> tuple[Batch, bool]:
    """Store ``ratings`` as the next batch, unless a batch with the same rows exists: (batch, added)."""
    if ratings.empty:
        raise ValueError("no ratings to add")
    digest = content_hash(ratings)[:16]
    existing = list_batches(folder)
    for batch in existing:
        if batch.digest == digest:
            return batch, False
    seq = max((b.seq for b in existing), default=0) + 1
    path = Path(folder) / f"{seq:06d}-{digest}.parquet"
    write_parquet(canonical(ratings), path)
    return Batch(seq, digest, len(ratings), path), True


def read_batches(folder: Path) -> pd.DataFrame:
    """Every batch's rows, in batch order (empty, with the ratings columns, when there is none)."""
    frames = [pd.read_parquet(b.path) for b in list_batches(folder)]
    if not frames:
        return frame({c: [] for c in COLUMNS}, RATINGS)
    return pd.concat(frames, ignore_index=True)


def trained_through(paths: Paths) -> int:
    """The last batch ``seq`` that a retraining run started after (0: none yet)."""
    state = paths.feedback_state
    return int(read_json(state)["trained_through"]) if state.exists() else 0


def pending_ratings(paths: Paths) -> int:
    """Ratings in the batches added since the last retraining run."""
    since = trained_through(paths)
    return sum(b.rows for b in list_batches(paths.feedback) if b.seq > since)


def mark_trained(paths: Paths, through: int) -> None:
    """Record that a retraining run included every batch up to ``through``."""
    write_json({"trained_through": through}, paths.feedback_state)
