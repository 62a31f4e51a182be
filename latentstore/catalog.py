"""The catalog: `catalog.duckdb` in the store, with run and error records and views over the Parquet data.

DuckDB allows one read-write process per database file, so every write goes through `writer()`, which
holds the file lock `catalog.lock` for the few milliseconds of one transaction and then closes the
database again; long runs (ingest) open it briefly per batch of records instead of holding it.
Readers use `reader()`, which opens the file read-only, so a query can never change data.

Tables come from the DDL files in `schemas/` (`runs.sql`, `errors.sql`). Each Parquet dataset of the store
(`store.DATASETS`: `slices`, `latents`) has a view over its published part files (never `_staging/`);
views are refreshed by every writer.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator

from .errors import StoreError
from .schema import ddl
from .store import DATASETS, Store

CATALOG = "catalog.duckdb"
TABLES = ("runs", "errors")
LOCK_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class ErrorRow:
    """One rejected input, as stored in `errors` (the run id and time are added on write).

    Args:
        source: the file or series folder, relative to the archive root.
        stage: where it failed ("scan", "load", "cut", "publish", ...).
        reason: one readable line, free of patient data.
        scan_id: the scan, when known.
        level: the VerSe label number when only one vertebra was rejected.
    """

    source: str
    stage: str
    reason: str
    scan_id: str | None = None
    level: int | None = None


def utcnow() -> datetime:
    """Naive UTC timestamp, as stored in TIMESTAMP columns."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def new_run_id(stage: str) -> str:
    """`ingest-20261125T083455-1a2b3c4d`: sortable by start time, unique without coordination."""
    return f"{stage}-{utcnow():%Y%m%dT%H%M%S}-{secrets.token_hex(4)}"


@contextmanager
def writer(store: Store, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator["duckdb.DuckDBPyConnection"]:  # noqa: F821
    """A read-write connection inside one transaction, under the catalog lock; tables and views exist.

    Commits when the block ends, rolls back when it raises. Waits up to `timeout_s` for another writer
    (or for a process that holds the file open read-only).
    """
    deadline = time.monotonic() + timeout_s
    with store.lock("catalog", timeout_s=timeout_s):
        path = store.local_path(CATALOG)
        path.parent.mkdir(parents=True, exist_ok=True)
        con = _connect(path, read_only=False, deadline=deadline)
        try:
            con.execute("BEGIN")
            _ensure_tables(con)
            _refresh_views(con, store)
            yield con
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        finally:
            con.close()


def reader(store: Store, timeout_s: float = 10.0) -> "duckdb.DuckDBPyConnection":  # noqa: F821
    """A read-only connection to the catalog (StoreError when there is none yet, or when a writer holds
    it for longer than `timeout_s`)."""
    path = store.local_path(CATALOG)
    if not path.exists():
        raise StoreError(f"no catalog at {path}; run `latentstore ingest` first")
    return _connect(path, read_only=True, deadline=time.monotonic() + timeout_s)


def _connect(path: Path, read_only: bool, deadline: float):
    """Open the DuckDB file, waiting while another process has it open in a conflicting mode.

    DuckDB locks the file itself: a writer excludes everyone, readers exclude a writer. Writers keep it
    open for milliseconds, so waiting briefly is enough for them; a reader left open (a notebook) makes
    a writer wait until `deadline` and then fail with a message saying so.
    """
    import duckdb

    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as e:
            if "lock" not in str(e).lower():
                raise StoreError(f"cannot open {path}: {e}") from None
            if time.monotonic() >= deadline:
                who = "a writer" if read_only else "another process (a notebook or `latentstore sql` left open?)"
                raise StoreError(f"cannot open {path}: it is held by {who}") from None
            time.sleep(0.05)


def _ensure_tables(con) -> None:
    existing = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    for table in TABLES:
        if table not in existing:
            con.execute(ddl(table))


def _refresh_views(con, store: Store) -> None:
    """One view per Parquet dataset of the store (`DATASETS`): `slices`, and `latents` with its Hive
    partition column `model_id`.

    A glob that matches nothing makes every query on the view fail, so a dataset without parts gets an
    empty view with the same columns and types as the DDL; the first writer after a publish swaps in the
    glob. Listing a big dataset on every write would be slow, so a view that already globs this store's
    folder is left alone (it also follows the store when the folder was moved).
    """
    if not store.local:
        return  # DuckDB cannot glob an object store offline (no httpfs): `sql` registers Arrow datasets instead
    for name, spec in DATASETS.items():
        view = dataset_view_sql(store, name)
        current = con.execute("SELECT sql FROM duckdb_views() WHERE view_name = ?", [name]).fetchone()
        if current and view in current[0]:
            continue
        if not _has_parts(store, name):
            view = _empty_select(name, spec.partition)
        con.execute(f"CREATE OR REPLACE VIEW {name} AS {view}")


def dataset_view_sql(store: Store, name: str) -> str:
    """The `SELECT` a dataset's view runs: `read_parquet` over its published parts (never `_staging/`)."""
    spec = DATASETS[name]
    if spec.partition:
        glob = store.path(name, "*", "*.parquet").replace("'", "''")
        return (f"SELECT * FROM read_parquet('{glob}', hive_partitioning = true, "
                f"hive_types = {{'{spec.partition}': VARCHAR}})")
    glob = store.path(name, "*.parquet").replace("'", "''")
    return f"SELECT * FROM read_parquet('{glob}')"


def _has_parts(store: Store, name: str) -> bool:
    if DATASETS[name].partition:
        return any(store.dataset(name, model_id=m).parts() for m in store.latent_models())
    return bool(store.dataset(name).parts())


def _empty_select(table: str, partition: str | None = None) -> str:
    import duckdb

    scratch = duckdb.connect(":memory:")
    try:
        scratch.execute(ddl(table))
        columns = scratch.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = ? ORDER BY ordinal_position",
            [table],
        ).fetchall()
    finally:
        scratch.close()
    if partition:
        columns.append((partition, "VARCHAR"))
    cols = ", ".join(f'CAST(NULL AS {dtype}) AS "{name}"' for name, dtype in columns)
    return f"SELECT {cols} WHERE false"


def start_run(store: Store, stage: str, args: dict) -> str:
    """Record the start of a run; return its id."""
    run_id = new_run_id(stage)
    with writer(store) as con:
        con.execute(
            "INSERT INTO runs (run_id, stage, started, status, args) VALUES (?, ?, ?, 'running', ?)",
            [run_id, stage, utcnow(), json.dumps(args, sort_keys=True, default=str)],
        )
    return run_id


def close_dead_runs(store: Store, stage: str) -> int:
    """Mark runs of `stage` still "running" as "killed"; return how many. Call it only while holding
    the stage's lock: then no such run can be alive, and a row left "running" was a killed process."""
    with writer(store) as con:
        n = con.execute("SELECT count(*) FROM runs WHERE stage = ? AND status = 'running'", [stage]).fetchone()[0]
        con.execute("UPDATE runs SET status = 'killed' WHERE stage = ? AND status = 'running'", [stage])
    return n


def record_errors(store: Store, run_id: str, rows: Iterable[ErrorRow]) -> int:
    """Append error rows for `run_id`; return how many."""
    now = utcnow()
    values = [[run_id, r.source, r.scan_id, r.level, r.stage, _one_line(r.reason), now] for r in rows]
    if values:
        with writer(store) as con:
            con.executemany("INSERT INTO errors VALUES (?, ?, ?, ?, ?, ?, ?)", values)
    return len(values)


def finish_run(store: Store, run_id: str, status: str, counts: dict) -> None:
    """Record the end of a run (`status`: "ok", "partial" or "failed") and its summary counts."""
    with writer(store) as con:
        con.execute(
            "UPDATE runs SET finished = ?, status = ?, counts = ? WHERE run_id = ?",
            [utcnow(), status, json.dumps(counts, sort_keys=True, default=str), run_id],
        )


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", str(text)).strip()[:2000]
