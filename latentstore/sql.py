"""`latentstore sql`: read-only SQL over the catalog (runs, errors) and the views over the Parquet data.

The catalog is opened read-only, so a query cannot change stored data.
"""

from __future__ import annotations

import csv
import io
import json
import threading

import pyarrow as pa

from .catalog import reader, view_state
from .errors import InputError
from .store import DATASETS, Store

FORMATS = ("table", "csv", "json", "jsonl")


def query(store: Store, sql: str, timeout_s: float | None = 60.0) -> pa.Table:
    """Run `sql` on a read-only connection to the store's catalog and return the result as Arrow.

    Read-only covers the catalog file only: DuckDB could still `COPY ... TO` a file (over a published
    part, say) or read any file (the salt). So only SELECT statements run, file access is limited to
    the store's Parquet datasets, and the configuration is locked before the user's SQL runs.
    """
    import duckdb

    try:
        kinds = {s.type for s in duckdb.extract_statements(sql)}
    except duckdb.Error as e:
        raise InputError(f"query failed: {str(e).splitlines()[0]}") from None
    if not kinds or kinds != {duckdb.StatementType.SELECT}:
        raise InputError("latentstore sql runs SELECT queries only (the catalog is read-only)")
    con = reader(store)
    timer = None
    try:
        if not store.local or view_state(con, store, "slices") == "elsewhere":
            register_datasets(con, store)
        dirs = ", ".join("'" + store.path(d).rstrip("/").replace("'", "''") + "/'" for d in DATASETS)
        con.execute(f"SET allowed_directories = [{dirs}]")
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        timer = threading.Timer(timeout_s, con.interrupt) if timeout_s else None
        if timer:
            timer.daemon = True
            timer.start()
        try:
            return con.sql(sql).to_arrow_table()
        finally:
            if timer:
                timer.cancel()
    except duckdb.Error as e:
        if timer and not timer.is_alive() and "interrupt" in str(e).lower():
            raise InputError(f"query interrupted after {timeout_s:g} s (--timeout); narrow it or raise the limit") from None
        raise InputError(f"query failed: {str(e).splitlines()[0]}") from None
    finally:
        con.close()


def register_datasets(con, store: Store) -> None:
    """Views `slices` and `latents` (with `model_id`) over the published parts of an object-store store, as
    Arrow datasets DuckDB scans through pyarrow's filesystem (DuckDB's own httpfs would need a download)."""
    import pyarrow as pa
    import pyarrow.dataset as pads

    from .catalog import _empty_select

    con.register("slices", store.slices.arrow() if store.slices.parts() else con.sql(_empty_select("slices")).arrow())
    if any(store.latents(m).parts() for m in store.latent_models()):
        from .schema import arrow_schema

        schema = arrow_schema("latents").append(pa.field("model_id", pa.string()))
        hive = pads.partitioning(pa.schema([("model_id", pa.string())]), flavor="hive")
        # `_staging/` folders are skipped by the dataset's default ignore prefixes ("_", ".")
        con.register("latents", pads.dataset(store.path("latents"), filesystem=store.fs, format="parquet",
                                             partitioning=hive, schema=schema))
    else:
        con.register("latents", con.sql(_empty_select("latents", "model_id")).arrow())


def render(table: pa.Table, fmt: str) -> str:
    """`table` as CSV, one JSON array (`json`) or JSON Lines (`jsonl`); the `table` format is drawn by the CLI."""
    rows = table.to_pylist()
    if fmt == "json":
        return json.dumps(rows, default=str)
    if fmt == "jsonl":
        return "\n".join(json.dumps(r, default=str) for r in rows)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(table.column_names)
        w.writerows([[r[c] for c in table.column_names] for r in rows])
        return buf.getvalue().rstrip("\n")
    raise InputError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
