"""Stage ``ingest``: MovieLens (GroupLens or RecBole atomic layouts), RecBole atomic files or synthetic data
→ typed ``ratings``/``users``/``items`` parquet tables."""

from pipeline.data.errors import DataError
from pipeline.data.ingest import ingest, load_tables, read_tables
from pipeline.data.schema import TABLES, Tables, TableSchema, table_schemas
from pipeline.data.synthetic import SyntheticData, generate_synthetic

__all__ = [
    "TABLES",
    "DataError",
    "SyntheticData",
    "TableSchema",
    "Tables",
    "generate_synthetic",
    "ingest",
    "load_tables",
    "read_tables",
    "table_schemas",
]
