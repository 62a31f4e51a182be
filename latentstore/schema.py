"""The data contract: one DuckDB DDL file per table in `schemas/`, loaded by code and tests alike.

The DDL is the single source of truth. Its Arrow schema is derived by creating the table in an
in-memory DuckDB and reading its (empty) Arrow result, so the Parquet files we write and the tables
DuckDB reads can never drift apart.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path

import pyarrow as pa

# The one name of the stored slice size: `slices.image` is SMALLINT[IMAGE_PX], a row-major SLICE_PX^2 grid of 1 mm.
SLICE_PX = 96
IMAGE_PX = SLICE_PX * SLICE_PX


def schema_dir() -> Path:
    """`schemas/` in a source checkout, `latentstore/_schemas` in an installed wheel."""
    packaged = resources.files("latentstore") / "_schemas"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[1] / "schemas"


def ddl(table: str) -> str:
    """The `CREATE TABLE` statement of `table` (e.g. `"slices"`)."""
    path = schema_dir() / f"{table}.sql"
    if not path.exists():
        raise KeyError(f"no schema for table {table!r} in {schema_dir()}")
    return path.read_text()


@cache
def arrow_schema(table: str) -> pa.Schema:
    """The Arrow schema of `table`, derived from its DDL."""
    import duckdb

    con = duckdb.connect(":memory:")
    try:
        con.execute(ddl(table))
        raw = con.sql(f"SELECT * FROM {table}").to_arrow_table().schema
        nullable = dict(
            con.execute(
                "SELECT column_name, is_nullable = 'YES' FROM information_schema.columns WHERE table_name = ?",
                [table],
            ).fetchall()
        )
    finally:
        con.close()
    return pa.schema([pa.field(f.name, _named_items(f.type), nullable=nullable[f.name]) for f in raw])


def _named_items(t: pa.DataType) -> pa.DataType:
    # DuckDB names list children ""; Parquet readers elsewhere expect the conventional "item".
    if pa.types.is_fixed_size_list(t):
        return pa.list_(pa.field("item", _named_items(t.value_type)), t.list_size)
    if pa.types.is_list(t):
        return pa.list_(pa.field("item", _named_items(t.value_type)))
    return t
