"""The catalog: `catalog.duckdb` in the store, with run and error records and views over the Parquet data.

DuckDB allows one read-write process per database file, so every write goes through `writer()`, which
holds the file lock `catalog.lock` for the few milliseconds of one transaction and then closes the
database again; long runs (ingest) open it briefly per batch of records instead of holding it.
Readers use `reader()`, which opens the file read-only, so a query can never change data.

Tables come from the DDL files in `schemas/` (`runs.sql`, `errors.sql`, `label_imports.sql`,
`label_rows.sql`, `latent_stats.sql`, `labelled_latents.sql`, `hyperplanes.sql`, `calibrations.sql`, `grades.sql`; the view `labels` shows each label
source's latest import, `current_grades` each model's grades under its latest calibration). Each Parquet dataset of the store
(`store.DATASETS`: `slices`, `latents`) has a view over its published part files (never `_staging/`);
views are refreshed by every writer.
"""

from __future__ import annotations

import json
import os
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
TABLES = ("runs", "errors", "label_imports", "label_rows", "latent_stats", "labelled_latents", "hyperplanes",
          "calibrations", "grades")
# The current labels: the rows of each source's latest import (`labels.py`); older imports stay in label_rows.
LABELS_VIEW = """CREATE VIEW IF NOT EXISTS labels AS
SELECT r.*, i.imported_at FROM label_rows r JOIN label_imports i USING (import_id)
WHERE r.import_id IN (SELECT arg_max(import_id, imported_at) FROM label_imports GROUP BY source)"""
# Each model's grades under its latest calibration (`grade.py`); older calibrations' grades stay in `grades`.
CURRENT_GRADES_VIEW = """CREATE VIEW IF NOT EXISTS current_grades AS
SELECT g.* FROM grades g JOIN (SELECT model_id, max(calibration_version) AS v FROM calibrations GROUP BY model_id) c
ON g.model_id = c.model_id AND g.calibration_version = c.v"""
LOCK_TIMEOUT_S = 120.0
TIMEOUT_ENV = "LATENTSTORE_CATALOG_TIMEOUT_S"  # how long a writer waits for a busy catalog
JOURNALS = "journal"  # <store>/journal/<run_id>.jsonl: a run's error rows and end, on disk before the catalog


def lock_timeout() -> float:
    return float(os.environ.get(TIMEOUT_ENV) or LOCK_TIMEOUT_S)


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
def writer(store: Store, timeout_s: float | None = None) -> Iterator["duckdb.DuckDBPyConnection"]:  # noqa: F821
    """A read-write connection inside one transaction, under the catalog lock; tables and views exist.

    Commits when the block ends, rolls back when it raises. Waits up to `timeout_s` (default
    `$LATENTSTORE_CATALOG_TIMEOUT_S`, else 120 s) for another writer (or for a process that holds the
    file open read-only).
    """
    timeout_s = lock_timeout() if timeout_s is None else timeout_s
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
            try:
                con.execute("ROLLBACK")
            except Exception:  # noqa: BLE001 - e.g. no transaction after a full disk: keep the real error
                pass
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
    # Catalogs written before `errors.seq` existed gain the column (NULL for their old rows).
    con.execute("ALTER TABLE errors ADD COLUMN IF NOT EXISTS seq INTEGER")
    con.execute(LABELS_VIEW)
    con.execute(CURRENT_GRADES_VIEW)


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
        if view_state(con, store, name) == "here":
            continue
        view = dataset_view_sql(store, name) if _has_parts(store, name) else _empty_select(name, spec.partition)
        con.execute(f"CREATE OR REPLACE VIEW {name} AS {view}")


def view_state(con, store: Store, name: str) -> str | None:
    """Where a dataset's catalog view reads: "here" (this store's parts), "elsewhere" (another folder's: the
    store was copied or moved and no writer has refreshed it yet), "empty" (no parts when it was made), or
    None (no such view)."""
    rows = con.execute("SELECT sql FROM duckdb_views() WHERE view_name = ?", [name]).fetchall()
    if not rows:
        return None
    if dataset_view_sql(store, name) in rows[0][0]:
        return "here"
    return "elsewhere" if "read_parquet" in rows[0][0] else "empty"


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


@contextmanager
def recorded(store: Store, summary, t0: float, done: str, rate: str) -> Iterator[None]:
    """A run's outcome on its summary and in `runs`: `status` "ok" when the block ends, "interrupted" on
    Ctrl-C, "failed" on an exception (re-raised); either way the seconds since `t0` and the rate
    `summary.<done> / seconds` (into the field `rate`) are set and the run's end is recorded."""
    try:
        yield
        summary.status = "ok"
    except BaseException as e:
        summary.status = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
        _finish(store, summary, t0, done, rate)
        raise
    _finish(store, summary, t0, done, rate)


def _finish(store: Store, summary, t0: float, done: str, rate: str) -> None:
    """A failure to record the run's end is raised only for a run that succeeded (else the first error wins)."""
    from dataclasses import asdict

    summary.seconds = round(time.monotonic() - t0, 3)
    setattr(summary, rate, round(getattr(summary, done) / summary.seconds, 2) if summary.seconds else 0.0)
    try:
        finish_run(store, summary.run_id, summary.status, asdict(summary))
    except Exception:
        if summary.status == "ok":
            raise


def close_dead_runs(store: Store, stage: str) -> int:
    """Mark runs of `stage` still "running" as "killed"; return how many. Call it only while holding
    the stage's lock: then no such run can be alive, and a row left "running" was a killed process."""
    with writer(store) as con:
        n = con.execute("SELECT count(*) FROM runs WHERE stage = ? AND status = 'running'", [stage]).fetchone()[0]
        con.execute("UPDATE runs SET status = 'killed' WHERE stage = ? AND status = 'running'", [stage])
    return n


def record_errors(store: Store, run_id: str, rows: Iterable[ErrorRow], first_seq: int | None = None,
                  timeout_s: float | None = None) -> int:
    """Append error rows for `run_id`; return how many were new. With `first_seq`, row i has number
    `first_seq + i` and rows already stored under the same (run_id, seq) are skipped: loads are exactly once."""
    now = utcnow()
    values = [[run_id, r.source, r.scan_id, r.level, r.stage, _one_line(r.reason), now, None if first_seq is None else first_seq + i]
              for i, r in enumerate(rows)]
    if not values:
        return 0
    with writer(store, timeout_s) as con:
        return _insert_errors(con, run_id, values)


def _insert_errors(con, run_id: str, values: list) -> int:
    cols = "(run_id, source, scan_id, level, stage, reason, time, seq)"
    if values[0][7] is not None:
        have = {r[0] for r in con.execute("SELECT seq FROM errors WHERE run_id = ? AND seq IS NOT NULL", [run_id]).fetchall()}
        values = [v for v in values if v[7] not in have]
    if values:
        con.executemany(f"INSERT INTO errors {cols} VALUES (?, ?, ?, ?, ?, ?, ?, ?)", values)
    return len(values)


def finish_run(store: Store, run_id: str, status: str, counts: dict, timeout_s: float | None = None) -> None:
    """Record the end of a run (`status`: "ok", "partial" or "failed") and its summary counts."""
    with writer(store, timeout_s) as con:
        con.execute(
            "UPDATE runs SET finished = ?, status = ?, counts = ? WHERE run_id = ?",
            [utcnow(), status, json.dumps(counts, sort_keys=True, default=str), run_id],
        )


class Journal:
    """A run's error rows and its end, appended to `<store>/journal/<run_id>.jsonl` before they reach the
    catalog. A killed run, or one whose catalog stayed busy, loses nothing: `apply_journals` loads what
    the catalog lacks (rows are numbered, so exactly once) at the next run, and removes the file.

    `add` writes through to the OS at once (a SIGKILL of this process loses nothing written); `sync`
    fsyncs, and is called before a part whose error rows these are is published."""

    def __init__(self, store: Store, run_id: str):
        self.run_id = run_id
        self.path = store.local_path(JOURNALS, f"{run_id}.jsonl")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a", encoding="utf-8")
        self.rows = 0

    def add(self, row: ErrorRow) -> int:
        seq = self.rows
        self._f.write(json.dumps({"seq": seq, "time": utcnow().isoformat(), **row.__dict__}) + "\n")
        self._f.flush()
        self.rows += 1
        return seq

    def finish(self, status: str, counts: dict) -> None:
        self._f.write(json.dumps({"finish": status, "counts": counts, "time": utcnow().isoformat()}, default=str) + "\n")
        self.sync()

    def sync(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self, remove: bool = False) -> None:
        self._f.close()
        if remove:
            self.path.unlink(missing_ok=True)


def read_journal(path: Path) -> tuple[list[dict], dict | None]:
    """(error rows, finish record or None) of one journal; a torn last line (a kill mid-write) is dropped."""
    rows, finish = [], None
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "finish" in item:
            finish = item
        elif "seq" in item:
            rows.append(item)
    return rows, finish


def apply_journals(store: Store, stage: str = "ingest", timeout_s: float | None = None) -> int:
    """Load the journals that runs of `stage` left behind (killed, or their catalog was busy) into the
    catalog and remove them; return how many error rows were new. Call it while holding the stage's
    lock, so no live run is writing to them. A run with a finish record gets its status and counts;
    one without is left for `close_dead_runs` to mark killed."""
    folder = store.local_path(JOURNALS)
    if not folder.is_dir():
        return 0
    paths = sorted(folder.glob(f"{stage}-*.jsonl"))
    if not paths:
        return 0
    added = 0
    with writer(store, timeout_s) as con:
        for path in paths:
            run_id = path.stem
            rows, finish = read_journal(path)
            values = [[run_id, r["source"], r.get("scan_id"), r.get("level"), r["stage"], _one_line(r["reason"]),
                       datetime.fromisoformat(r["time"]), int(r["seq"])] for r in rows]
            if values:
                added += _insert_errors(con, run_id, values)
            if finish:
                con.execute("UPDATE runs SET finished = ?, status = ?, counts = ? WHERE run_id = ? AND status = 'running'",
                            [datetime.fromisoformat(finish["time"]), finish["finish"],
                             json.dumps(finish["counts"], sort_keys=True, default=str), run_id])
    for path in paths:
        path.unlink(missing_ok=True)
    return added


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", str(text)).strip()[:2000]
