"""The store's building blocks without Ray: ids, part naming, staging and publishing, locks, the salt,
and the catalog (tables from the DDL, views, one writer, read-only readers)."""

from __future__ import annotations

import hashlib
import hmac
import os
import subprocess
import sys
import threading
import time

import duckdb
import pyarrow as pa
import pytest

from latentstore import catalog
from latentstore.catalog import ErrorRow
from latentstore.errors import StoreError
from latentstore.schema import arrow_schema
from latentstore.store import Store, part_name, patient_key, slice_id


pytestmark = pytest.mark.usefixtures("no_env_salt")


def tiny_table(n: int = 2) -> pa.Table:
    schema = arrow_schema("slices")
    values = {
        "slice_id": list(range(n)), "scan_id": ["s"] * n, "patient_key": ["k"] * n, "site": ["site-t"] * n, "level": [20] * n,
        "level_name": ["L1"] * n, "source_uri": ["a.nii.gz"] * n, "source_format": ["nifti"] * n,
        "content_hash": ["c"] * n, "centroid_mm": [[0.0, 0.0, 0.0]] * n, "spacing_mm": [[1.0, 1.0, 1.0]] * n,
        "slicing": ["{}"] * n, "slicing_hash": ["h"] * n, "image": [[7] * 9216] * n,
    }  # fmt: skip
    return pa.table({f.name: pa.array(values[f.name], f.type) for f in schema}, schema=schema)


def test_ids_are_stable_63_bit_and_depend_on_every_part():
    a = slice_id("c" * 64, 20, "s" * 64)
    assert a == slice_id("c" * 64, 20, "s" * 64) and 0 <= a < 2**63
    assert len({a, slice_id("d" * 64, 20, "s" * 64), slice_id("c" * 64, 21, "s" * 64), slice_id("c" * 64, 20, "t" * 64)}) == 4
    # Pinned: a changed formula would silently orphan every stored latent and FAISS id.
    digest = hashlib.sha256(b"abc\x0020\x00def").digest()
    assert slice_id("abc", 20, "def") == int.from_bytes(digest[:8], "big") & (2**63 - 1)
    assert part_name("abc", "def") != part_name("abc", "deg") and part_name("abc", "def").endswith(".parquet")


def test_staged_parts_are_invisible_until_published_and_never_published_twice(tmp_path):
    st = Store(tmp_path / "store")
    name = part_name("c", "h")
    st.slices.write_staged(tiny_table(), "run-1", name)
    assert st.slices.parts() == [] and not st.slices.has_part(name)
    assert st.slices.publish("run-1", name) is True
    assert st.slices.parts() == [name]
    # A second copy of the same part (a concurrent duplicate) is dropped, the published file kept.
    before = (tmp_path / "store/slices" / name).read_bytes()
    st.slices.write_staged(tiny_table(3), "run-2", name)
    assert st.slices.publish("run-2", name) is False
    assert (tmp_path / "store/slices" / name).read_bytes() == before
    assert not (tmp_path / "store/slices/_staging/run-2" / name).exists()
    # Listing ignores staging, hidden files and non-Parquet files.
    (tmp_path / "store/slices/.part-x.parquet").write_bytes(b"")
    (tmp_path / "store/slices/notes.txt").write_text("x")
    st.slices.write_staged(tiny_table(), "run-3", part_name("x", "y"))
    assert st.slices.parts() == [name]
    assert st.slices.clear_staging() == 1 and not (tmp_path / "store/slices/_staging").exists()


def test_parts_use_zstd_and_keep_the_schema(tmp_path):
    import pyarrow.parquet as pq

    st = Store(tmp_path)
    path = st.slices.write_staged(tiny_table(), "r", "p.parquet")
    meta = pq.ParquetFile(path).metadata
    assert {meta.row_group(0).column(i).compression for i in range(meta.num_columns)} == {"ZSTD"}
    assert pq.read_table(path).column("image").type.list_size == 9216


def test_ingest_lock_is_exclusive_across_processes(tmp_path):
    st = Store(tmp_path)
    code = (
        "import sys, time; from latentstore.store import Store\n"
        "with Store(sys.argv[1]).lock('ingest'):\n    print('locked', flush=True); time.sleep(30)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(StoreError, match="held by another process"):
            with st.lock("ingest"):
                pass
    finally:
        holder.kill()
        holder.wait()
    with st.lock("ingest"):  # released when its holder died: a killed run never blocks the store
        pass


def test_salt_file_is_private_stable_and_guarded(tmp_path, monkeypatch):
    st = Store(tmp_path)
    salt = st.salt()
    assert len(salt) == 64 and st.salt() == salt and Store(tmp_path).salt() == salt
    assert (tmp_path / "salt").stat().st_mode & 0o777 == 0o600
    assert patient_key("MRN 123", salt) == hmac.new(salt, b"\0MRN 123", hashlib.sha256).hexdigest()
    # The site is part of the key: two sites' "sub-001" are two patients.
    assert patient_key("MRN 123", salt, "site-a") == hmac.new(salt, b"site-a\0MRN 123", hashlib.sha256).hexdigest()
    assert patient_key("sub-001", salt, "site-a") != patient_key("sub-001", salt, "site-b")
    assert patient_key(" MRN 123 ", salt) == patient_key("MRN 123", salt) != patient_key("MRN 124", salt)
    assert b"MRN" not in (tmp_path / "salt.id").read_bytes() and salt not in (tmp_path / "salt.id").read_bytes()
    # A different salt from the environment would give different keys for the same patients: refused.
    monkeypatch.setenv("LATENTSTORE_SALT", "x" * 40)
    with pytest.raises(StoreError, match="salt differs"):
        st.salt()
    monkeypatch.delenv("LATENTSTORE_SALT")
    os.chmod(tmp_path / "salt", 0o644)
    with pytest.raises(StoreError, match="readable by other users"):
        st.salt()


def test_salt_from_environment_needs_no_file(tmp_path, monkeypatch):
    monkeypatch.setenv("LATENTSTORE_SALT", "a-long-secret-from-a-secret-manager-0123")
    st = Store(tmp_path)
    assert st.salt() == b"a-long-secret-from-a-secret-manager-0123"
    assert not (tmp_path / "salt").exists() and (tmp_path / "salt.id").exists()


def test_catalog_tables_views_and_read_only_readers(tmp_path):
    st = Store(tmp_path)
    run_id = catalog.start_run(st, "ingest", {"archive": "/a"})
    catalog.record_errors(st, run_id, [ErrorRow("x/y.nii.gz", "load", "bad\nfile", scan_id="y", level=20)])
    catalog.finish_run(st, run_id, "partial", {"errors": 1})
    con = catalog.reader(st)
    try:
        assert con.execute("SELECT status, finished IS NOT NULL FROM runs").fetchall() == [("partial", True)]
        assert con.execute("SELECT source, stage, reason, scan_id, level FROM errors").fetchall() == [("x/y.nii.gz", "load", "bad file", "y", 20)]
        # Before any slice is published the view exists, empty, with the DDL's columns.
        assert con.execute("SELECT count(*) FROM slices").fetchone() == (0,)
        assert [r[0] for r in con.execute("DESCRIBE slices").fetchall()] == arrow_schema("slices").names
        with pytest.raises(duckdb.Error):
            con.execute("DELETE FROM errors")
    finally:
        con.close()
    # After a publish the next writer points the view at the Parquet files.
    st.slices.write_staged(tiny_table(3), "r", part_name("c", "h"))
    st.slices.publish("r", part_name("c", "h"))
    catalog.finish_run(st, run_id, "partial", {"errors": 1})
    con = catalog.reader(st)
    try:
        assert con.execute("SELECT count(*), min(level_name) FROM slices").fetchone() == (3, "L1")
    finally:
        con.close()


def test_catalog_writers_take_turns(tmp_path):
    st = Store(tmp_path)
    catalog.start_run(st, "ingest", {})
    order = []

    def slow_writer():
        with catalog.writer(st) as con:
            order.append("slow-in")
            time.sleep(0.5)
            con.execute("INSERT INTO runs VALUES ('slow', 'x', now(), NULL, 'ok', '{}', NULL)")
            order.append("slow-out")

    t = threading.Thread(target=slow_writer)
    t.start()
    while not order:
        time.sleep(0.01)
    with pytest.raises(StoreError, match="held by another process"):
        with catalog.writer(st, timeout_s=0.1):
            pass
    catalog.record_errors(st, "r", [ErrorRow("a", "scan", "b")])  # waits for the slow writer, then writes
    order.append("second")
    t.join()
    assert order == ["slow-in", "slow-out", "second"]
    con = catalog.reader(st)
    assert con.execute("SELECT count(*) FROM runs").fetchone() == (2,)
    con.close()


def test_writer_waits_for_a_reader_left_open_then_says_who_holds_the_catalog(tmp_path):
    st = Store(tmp_path)
    catalog.start_run(st, "ingest", {})
    code = (
        "import sys, time, duckdb\n"
        "con = duckdb.connect(sys.argv[1], read_only=True)\nprint('open', flush=True)\n"
        "time.sleep(float(sys.argv[2]))\ncon.close()\n"
    )
    path = str(tmp_path / "catalog.duckdb")
    holder = subprocess.Popen([sys.executable, "-c", code, path, "30"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(StoreError, match="held by another process"):
            _write_with(st, timeout_s=0.3)
    finally:
        holder.kill()
        holder.wait()
    # A reader that closes soon only delays the writer.
    holder = subprocess.Popen([sys.executable, "-c", code, path, "0.5"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "open"
    _write_with(st, timeout_s=20)
    holder.wait()
    con = catalog.reader(st)
    assert con.execute("SELECT count(*) FROM errors").fetchone() == (1,)
    con.close()


def _write_with(st: Store, timeout_s: float) -> None:
    with catalog.writer(st, timeout_s=timeout_s) as con:
        con.execute("INSERT INTO errors VALUES ('r', 'a', NULL, NULL, 'scan', 'b', now(), NULL)")
