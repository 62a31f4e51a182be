"""`latentstore sql`: read-only SQL over the catalog (runs, errors) and the views over the Parquet data.

The catalog is opened read-only, so a query cannot change stored data.
"""

from __future__ import annotations

import csv
import io
import json

import pyarrow as pa

from .catalog import reader
from .errors import InputError
from .store import Store

FORMATS = ("table", "csv", "json")


def query(store: Store, sql: str) -> pa.Table:
    """Run `sql` on a read-only connection to the store's catalog and return the result as Arrow."""
    import duckdb

    con = reader(store)
    try:
        return con.sql(sql).to_arrow_table()
    except duckdb.Error as e:
        raise InputError(f"query failed: {str(e).splitlines()[0]}") from None
    finally:
        con.close()


def render(table: pa.Table, fmt: str) -> str:
    """`table` as CSV or JSON lines (the `table` format is drawn by the CLI with rich)."""
    rows = table.to_pylist()
    if fmt == "json":
        return "\n".join(json.dumps(r, default=str) for r in rows)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(table.column_names)
        w.writerows([[r[c] for c in table.column_names] for r in rows])
        return buf.getvalue().rstrip("\n")
    raise InputError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
