"""Ingest of a hospital archive, case by case (issue 10): each case at the level where it happens, the
library (scan, load) and the run (error row, summary, exit status, the rest of the archive and the store
intact). One local Ray (2 CPUs) serves the module."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from ingest_phantom import CENTRES_Z, LEVELS, make_archive, phantom, sigkill_ingest_after, write_centroids, write_scan
from latentstore import catalog
from latentstore.cli import app
from latentstore.errors import InputError, StoreError
from latentstore.ingest import load_scan, scan_archive
from latentstore.ingest.privacy import locate, pseudonym_map
from latentstore.ingest.run import MAX_ERRORS_PER_SCAN, ingest
from latentstore.slices import read_slices
from latentstore.store import Store

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("ray_local", "no_env_salt")


def run(archive: Path, store: Path, **kw):
    return ingest(store, archive, progress=False, **kw)


def error_rows(store: Path, run_id: str | None = None) -> list[tuple]:
    con = catalog.reader(Store(store))
    try:
        where = f"WHERE run_id = '{run_id}'" if run_id else ""
        return con.execute(f"SELECT run_id, source, stage, reason, scan_id, level, seq FROM errors {where} ORDER BY run_id, seq").fetchall()
    finally:
        con.close()


def names(store: Path, archive: Path) -> dict:
    return {k: v[1] for k, v in pseudonym_map(Store(store), archive).items()}


def store_bytes(store: Path) -> dict[str, bytes]:
    """Every file of the store: what a backup of it would hold."""
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()}


def label_mask(seed: int, labels=LEVELS) -> np.ndarray:
    """The phantom's vertebral bodies as a VerSe-numbered label mask (same grid as its CT)."""
    hu, _ = phantom(seed)
    z = np.arange(hu.shape[2])[None, None, :]
    mask = np.zeros(hu.shape, np.int16)
    for label, cz in zip(labels, CENTRES_Z):
        mask[(hu >= 250) & (np.abs(z - cz) <= 8)] = label
    return mask


# -- 1. a byte-identical bare copy that sorts first never displaces the annotated scan ---------------------


def test_bare_backup_copy_sorting_first_loses_to_the_annotated_scan(tmp_path):
    archive = make_archive(tmp_path / "archive", 2)
    (archive / "backup").mkdir()
    shutil.copy(archive / "rawdata/sub-p000/sub-p000_ct.nii.gz", archive / "backup/aaa_ct.nii.gz")  # sorts first
    (archive / "0link_ct.nii.gz").symlink_to(archive / "rawdata/sub-p001/sub-p001_ct.nii.gz")  # a link, sorts first
    sources, errors = scan_archive(archive)
    assert sorted(s.name for s in sources) == ["sub-p000", "sub-p001"]
    dups = [e for e in errors if e.duplicate]
    assert len(dups) == 2 and all(e.related and "rawdata" in e.related for e in dups)

    s = run(archive, tmp_path / "store")
    assert (s.scans_ingested, s.duplicates_rejected, s.status) == (2, 2, "partial")
    assert any("backup/aaa_ct.nii.gz -> rawdata/sub-p000/sub-p000_ct.nii.gz" in d for d in s.duplicates)
    assert "duplicate copies rejected" in "".join(str(c) for c in s.__rich__().renderables[0].columns[0]._cells)


# -- 2. error rows are as durable as the slices -----------------------------------------------------------


def _hold_catalog(store: Path, seconds: float) -> subprocess.Popen:
    code = ("import sys, time, duckdb; con = duckdb.connect(sys.argv[1]); print('open', flush=True); "
            "time.sleep(float(sys.argv[2]))")
    proc = subprocess.Popen([sys.executable, "-c", code, str(store / "catalog.duckdb"), str(seconds)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "open"
    return proc


def test_catalog_busy_from_the_start_is_a_clear_error_and_nothing_is_left_running(tmp_path, monkeypatch):
    archive, store = make_archive(tmp_path / "archive", 2), tmp_path / "store"
    run(archive, store)
    make_archive(archive, 1, start=5)
    before = store_bytes(store)
    monkeypatch.setenv("LATENTSTORE_CATALOG_TIMEOUT_S", "1")
    holder = _hold_catalog(store, 60)
    try:
        with pytest.raises(StoreError, match="held by another process"):
            run(archive, store)
    finally:
        holder.kill()
        holder.wait()
    assert store_bytes(store) == before  # nothing written, nothing lost
    s = run(archive, store)
    assert (s.scans_ingested, s.scans_skipped) == (1, 2)


def test_catalog_busy_at_the_end_keeps_every_row_in_the_journal_and_the_rerun_loads_them_once(tmp_path, monkeypatch):
    archive, store = make_archive(tmp_path / "archive", 2), tmp_path / "store"
    run(archive, store)
    for i in range(3):
        (archive / f"rawdata/sub-bad{i}").mkdir(parents=True)
        (archive / f"rawdata/sub-bad{i}/sub-bad{i}_ct.nii.gz").write_bytes(b"")
    make_archive(archive, 1, start=5)

    def busy(*a, **k):
        raise StoreError("cannot open catalog.duckdb: it is held by another process")

    monkeypatch.setattr(catalog, "record_errors", busy)  # the catalog turns busy once the run is under way
    with pytest.raises(StoreError, match="enter the catalog at the next ingest"):
        run(archive, store)
    monkeypatch.undo()
    assert len(Store(store).slices.parts()) == 3  # the new scan's part is published all the same
    journals = list((store / "journal").glob("*.jsonl"))
    assert len(journals) == 1
    busy_run = journals[0].stem

    again = run(archive, store)
    assert again.journal_rows_loaded == 3 and again.scans_skipped == 3 and not list((store / "journal").glob("*.jsonl"))
    rows = error_rows(store)
    assert len([r for r in rows if r[0] == busy_run]) == 3 and len([r for r in rows if r[0] == again.run_id]) == 3
    con = catalog.reader(Store(store))
    try:
        statuses = dict(con.execute("SELECT run_id, status FROM runs").fetchall())
    finally:
        con.close()
    assert statuses[busy_run] == "partial" and "running" not in statuses.values()
    run(archive, store)  # a third run loads nothing twice
    assert len([r for r in error_rows(store) if r[0] == busy_run]) == 3


def _ray_processes() -> set[int]:
    import psutil

    out = set()
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "ray/" in cmd and ("raylet" in cmd or "gcs_server" in cmd or "agent" in cmd.lower() or "default_worker" in cmd):
            out.add(p.info["pid"])
    return out


def test_sigkill_keeps_every_error_row_and_takes_ray_with_it(tmp_path):
    """Only the driver is killed (not its process group): its local Ray must follow within seconds."""
    archive, store = make_archive(tmp_path / "archive", 8), tmp_path / "store"
    (archive / "rawdata/sub-empty").mkdir(parents=True)
    (archive / "rawdata/sub-empty/sub-empty_ct.nii.gz").write_bytes(b"")  # one error row, at the start
    before = _ray_processes()
    sigkill_ingest_after(archive, store, parts=1, whole_group=False)
    deadline = time.monotonic() + 15
    while _ray_processes() - before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not (_ray_processes() - before), "a Ray process outlived the killed ingest by 15 s"

    rerun = run(archive, store)
    assert rerun.journal_rows_loaded == 1 and rerun.scans_ingested + rerun.scans_skipped == 8
    rows = error_rows(store)
    killed = [r for r in rows if r[0] != rerun.run_id]
    assert len(killed) == 1 and "empty" in killed[0][3]


# -- 3. nothing identifying in the store ------------------------------------------------------------------


NAME = "Doe^John_MRN123456"


def test_names_in_folder_and_file_names_never_reach_the_store(tmp_path):
    archive, store = tmp_path / NAME / "archive", tmp_path / "store"  # the archive root too
    make_archive(archive, 1)
    ct = write_scan(archive, NAME, seed=3)  # rawdata/<NAME>/<NAME>_ct.nii.gz: not a BIDS name, the stem is
    (ct.parent / f"{NAME}_notes_ct.nii.gz").write_bytes(b"")  # an error row about a file with the name
    bad = archive / "rawdata" / f"{NAME}-2"
    bad.mkdir()
    (bad / f"{NAME}-2_ct.nii.gz").write_bytes(b"not a nifti at all" * 10)
    write_centroids(archive, f"{NAME}-2", phantom(4)[1])
    s = run(archive, store)
    assert s.scans_ingested == 2 and s.errors >= 2

    blobs = store_bytes(store)
    for rel, data in blobs.items():
        for needle in ("Doe", "John", "MRN123456"):
            assert needle not in rel and needle.encode() not in data, (needle, rel)
    # Compressed bytes hide text from a grep: read every table back as text too.
    con = catalog.reader(Store(store))
    try:
        for table in ("runs", "errors", "slices"):
            text = json.dumps(con.execute(f"SELECT * EXCLUDE ({'image' if table == 'slices' else 'run_id'}) FROM {table}").fetchall(), default=str)
            for needle in ("Doe", "John", "MRN123456", str(tmp_path)):
                assert needle not in text, (needle, table)
    finally:
        con.close()
    # The operator still finds the file behind every error row.
    for _, source, *_ in error_rows(store):
        hit = locate(Store(store), source, archive)
        assert len(hit) == 1 and NAME in hit[0]["path"]
    result = runner.invoke(app, ["locate", error_rows(store)[0][1], str(archive), "--store", str(store)])
    assert result.exit_code == 0 and NAME in result.stdout


def test_two_sites_sub_001_are_two_patients_and_another_mount_is_the_same_one(tmp_path):
    store = tmp_path / "store"
    site_a, site_b = tmp_path / "a", tmp_path / "b"
    write_scan(site_a, "sub-001", seed=1)
    write_scan(site_b, "sub-001", seed=2)
    ra, rb = run(site_a, store), run(site_b, store)
    assert ra.site != rb.site
    rows = read_slices(store, columns=["scan_id", "patient_key", "site"]).to_pylist()
    assert len({r["patient_key"] for r in rows}) == 2 and len({r["scan_id"] for r in rows}) == 2
    mount = tmp_path / "mnt" / "a-again"
    mount.parent.mkdir()
    shutil.copytree(site_a, mount)  # the same archive seen from another mount point
    again = run(mount, store)
    assert again.site == ra.site and again.scans_skipped == 1 and again.scans_ingested == 0
    named = run(site_b, tmp_path / "store2", site="hospital-b")
    assert named.site == "hospital-b"
    with pytest.raises(InputError, match="--site"):
        run(site_b, tmp_path / "store3", site="Doe^John")


# -- 4. a vertebra is stored under its own level or not at all -------------------------------------------


def _verse(archive: Path, sub: str, seed: int, direction=("R", "A", "S"), entries=None) -> Path:
    ct = write_scan(archive, sub, seed=seed)
    ctd = archive / "derivatives" / sub / f"{sub}_seg-subreg_ctd.json"
    if entries is not None:
        ctd.write_text(json.dumps(entries))
    else:
        write_centroids(archive, sub, phantom(seed)[1], direction=direction)
    return ct


@pytest.mark.parametrize("case, match", [
    ("flipped", "level order check failed"),  # S/I flipped in the direction code
    ("swapped", "spine axis check failed"),  # two axes swapped
    ("two_directions", "two different direction entries"),
    ("boolean", "boolean"),
    ("fraction", "not an integer"),
])
def test_wrong_geometry_or_labels_are_refused_not_stored_under_a_wrong_level(tmp_path, case, match):
    archive = make_archive(tmp_path / "archive", 1)
    ctd = phantom(7)[1]
    points = [{"label": k, "X": v[0], "Y": v[1], "Z": v[2]} for k, v in ctd.items()]
    if case == "flipped":
        _verse(archive, "sub-x", 7, direction=("R", "A", "I"))
    elif case == "swapped":
        _verse(archive, "sub-x", 7, direction=("S", "A", "R"))
    elif case == "two_directions":
        _verse(archive, "sub-x", 7, entries=[{"direction": ["R", "A", "S"]}, {"direction": ["R", "A", "I"]}, *points])
    elif case == "boolean":
        _verse(archive, "sub-x", 7, entries=[{"direction": ["R", "A", "S"]}, {**points[0], "label": True}, *points[1:]])
    else:
        _verse(archive, "sub-x", 7, entries=[{"direction": ["R", "A", "S"]}, {**points[0], "label": 20.5}, *points[1:]])
    src = next(s for s in scan_archive(archive)[0] if s.name == "sub-x")
    with pytest.raises(InputError, match=match):
        load_scan(src)
    store = tmp_path / "store"
    s = run(archive, store)
    assert (s.scans_ingested, s.scans_rejected, s.status) == (1, 1, "partial")
    rows = error_rows(store)
    assert len(rows) == 1 and match in rows[0][3] and rows[0][2] == "load"
    assert len(read_slices(store, columns=["slice_id"])) == len(LEVELS)  # only sub-p000's


def test_centroids_must_lie_on_their_own_label_in_the_mask(tmp_path):
    archive = make_archive(tmp_path / "archive", 1)
    _verse(archive, "sub-m", 7)
    mask = label_mask(7)
    mask[mask == 22] = 0  # L3 absent from the mask
    mask[mask == 21] = 0
    mask[label_mask(7) == 21] = 0  # L2's body painted over by nothing: its centroid lies off any L2 voxel
    moved = np.zeros_like(mask)
    moved[:, :, :-40][label_mask(7)[:, :, 40:] == 21] = 21  # L2 labelled 40 mm inferior of its centroid
    mask = np.where(moved > 0, moved, mask)
    nib.save(nib.Nifti1Image(mask, np.eye(4)), archive / "derivatives/sub-m/sub-m_seg-vert_msk.nii.gz")
    vol = load_scan(next(s for s in scan_archive(archive)[0] if s.name == "sub-m"))
    assert sorted(vol.centroids_mm) == [20]
    why = dict(vol.skipped)
    assert "mask check failed" in why[21] and "mm from its own label" in why[21]
    assert "absent from the mask" in why[22]

    store = tmp_path / "store"
    s = run(archive, store)
    assert s.levels_rejected == 2 and s.slices_written == len(LEVELS) + 1
    assert sorted(r[5] for r in error_rows(store)) == [21, 22]


def test_real_verse_centroids_lie_on_their_own_mask_labels(real_data):
    """The tolerance of the mask check, measured: the real VerSe JSON centroids against the real mask."""
    from latentstore.ingest.centroids import MASK_TOLERANCE_MM, check_level_order, check_on_mask, read_centroid_file
    from latentstore.ingest.nifti import read_mask

    labels, affine = read_mask(real_data / "verse-sample/sub-verse004_seg-vert_msk.nii.gz")
    ctd, _ = read_centroid_file(real_data / "verse-sample/sub-verse004_seg-subreg_ctd.json", affine, labels.shape)
    check_level_order(ctd)
    kept, skipped = check_on_mask(ctd, labels, affine)
    assert sorted(kept) == list(range(16, 25)) and not skipped
    inv = np.linalg.inv(affine)
    for label, xyz in ctd.items():  # each lies on its own label outright (0.4-0.9 mm from a voxel centre)
        assert labels[tuple(np.rint(inv[:3, :3] @ xyz + inv[:3, 3]).astype(int))] == label
    assert MASK_TOLERANCE_MM >= 2.0


# -- 5. one bad file never stops or hangs a run -----------------------------------------------------------


def test_loops_fifos_sockets_and_bad_names_are_error_rows_and_the_run_goes_on(tmp_path):
    import socket

    archive = make_archive(tmp_path / "archive", 2)
    weird = archive / "rawdata/weird"
    weird.mkdir()
    (weird / "loop_ct.nii.gz").symlink_to(weird / "loop_ct.nii.gz")
    (weird / "dangling_ct.nii.gz").symlink_to(weird / "nowhere.nii.gz")
    os.mkfifo(weird / "fifo_ct.nii.gz")
    os.mkfifo(weird / "IM0001")  # an extension-less DICOM-like name: opened to look for the magic, if it were
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(weird / "sock.dcm"))
    os.makedirs(os.fsencode(archive) + b"/rawdata/bad-\xff-name")
    with open(os.fsencode(archive) + b"/rawdata/file-\xfe_ct.nii.gz", "wb") as f:
        f.write(b"x")
    (archive / "rawdata/locked").mkdir()
    (archive / "rawdata/locked/locked_ct.nii.gz").write_bytes(b"x")
    os.chmod(archive / "rawdata/locked", 0)
    try:
        t0 = time.monotonic()
        sources, errors = scan_archive(archive)
        assert time.monotonic() - t0 < 30
        reasons = " | ".join(e.reason for e in errors)
        for expect in ("symlink loop", "dangling symlink", "FIFO", "socket", "not valid UTF-8"):
            assert expect in reasons, expect
        store = tmp_path / "store"
        s = run(archive, store)
        assert s.scans_ingested == 2 and s.status == "partial" and s.errors == len(errors)
    finally:
        os.chmod(archive / "rawdata/locked", 0o755)
        sock.close()
    if os.geteuid() != 0:  # root reads a mode-000 folder anyway
        assert "cannot list folder" in reasons


# -- 6. DICOM: a gap in the primary series is an error, not a silent switch to a derived series -----------


def test_primary_series_with_a_gap_is_an_error_row_naming_it_not_a_derived_series(tmp_path):
    from ingest_phantom import write_dicom_scan
    import pydicom

    folder = write_dicom_scan(tmp_path / "archive/study/primary", seed=1, patient_id="P1", patient_name="X^Y")
    derived = tmp_path / "archive/study/derived"
    derived.mkdir()
    uid = pydicom.uid.generate_uid()
    for k, path in enumerate(sorted(folder.glob("IM*"))[::3]):  # a thick (3 mm) derived series of the same study
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID, ds.ImageType = uid, ["DERIVED", "SECONDARY", "AXIAL"]
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        ds.save_as(derived / f"D{k:04d}", enforce_file_format=True)
    (folder / "IM0050").unlink()  # one slice of the primary series missing
    sources, errors = scan_archive(tmp_path / "archive")
    assert not sources
    assert any("primary series" in e.reason and "1 slice(s) missing" in e.reason for e in errors), errors
    assert any("derived series" in e.reason and "not used in its place" in e.reason for e in errors)


# -- 7. plausibility gates --------------------------------------------------------------------------------


def _raw_nifti(path: Path, hu: np.ndarray, slope: float = 1.0, pixdim=None, qform_only=False) -> None:
    img = nib.Nifti1Image(hu, np.eye(4))
    img.header.set_slope_inter(slope, 0)
    nib.save(img, path)
    data = bytearray(path.read_bytes() if path.suffix == ".nii" else gzip.decompress(path.read_bytes()))
    if pixdim is not None:
        data[80:92] = struct.pack("<3f", *pixdim)
    if qform_only:
        data[252:254], data[254:256] = struct.pack("<h", 1), struct.pack("<h", 0)
    path.write_bytes(bytes(data) if path.suffix == ".nii" else gzip.compress(bytes(data)))


@pytest.mark.parametrize("case, match", [
    ("random", "noise, not an image"),
    ("slope", "above 4000 HU"),
    ("zero_voxels", "voxel size 0 x 0 x 0"),
    ("not_a_body", "not a CT of a body"),
])
def test_volumes_that_are_not_ct_are_refused_with_the_measured_reason(tmp_path, case, match):
    archive = make_archive(tmp_path / "archive", 1)
    ct = write_scan(archive, "sub-q", seed=5)
    hu = phantom(5)[0]
    if case == "random":
        _raw_nifti(ct, np.random.default_rng(0).integers(-1024, 3000, hu.shape).astype(np.int16))
    elif case == "slope":
        _raw_nifti(ct, hu, slope=1000.0)
    elif case == "zero_voxels":
        _raw_nifti(ct, hu, pixdim=(0, 0, 0), qform_only=True)
    else:
        _raw_nifti(ct, np.where(hu > -500, 1500, -1000).astype(np.int16))  # bone and air only: a mask-like image
    src = next(s for s in scan_archive(archive)[0] if s.name == "sub-q")
    with pytest.raises(InputError, match=match):
        load_scan(src)
    store = tmp_path / "store"
    s = run(archive, store)
    assert (s.scans_ingested, s.scans_rejected) == (1, 1) and match in error_rows(store)[0][3]


def test_a_header_claiming_30000_cubed_voxels_is_refused_before_decompressing(tmp_path):
    archive = make_archive(tmp_path / "archive", 1)
    ct = write_scan(archive, "sub-huge", seed=6)
    header = nib.Nifti1Header()
    header.set_data_shape((30000, 30000, 30000))
    header.set_data_dtype(np.int16)
    header.set_qform(np.eye(4), code=1)
    raw = header.binaryblock + b"\0" * 4 + b"\0" * (2 * 1024**2)  # 2 MB of zeros, far short of 54 TB
    ct.write_bytes(gzip.compress(raw))
    code = ("import sys; from latentstore.ingest import load_scan, scan_archive\n"
            "src = next(s for s in scan_archive(sys.argv[1])[0] if s.name == 'sub-huge')\n"
            "try:\n    load_scan(src)\nexcept Exception as e:\n    print(e)\n"
            # VmHWM is this process's own peak: ru_maxrss survives execve and would carry the
            # pytest parent's peak over to the child (it did in CI, 2146 MB)
            "print(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')) // 1024)")
    from pathlib import Path as _P

    out = subprocess.run([sys.executable, "-c", code, str(archive)], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(_P(__file__).resolve().parents[1])})
    message, peak_mb = out.stdout.strip().splitlines()
    assert "over the cap" in message and "not decompressed" in message
    assert int(peak_mb) < 1000  # MB: the header alone was read


# -- 8. bounded everything --------------------------------------------------------------------------------


def test_a_centroid_file_of_10000_entries_gives_a_bounded_number_of_rows(tmp_path):
    archive = make_archive(tmp_path / "archive", 1)
    ctd = phantom(8)[1]
    entries = [{"direction": ["R", "A", "S"]}] + [{"label": k, "X": v[0], "Y": v[1], "Z": v[2]} for k, v in ctd.items()]
    entries += [{"label": 20 + i % 5, "X": 0.0, "Y": 0.0, "Z": float(i)} for i in range(10_000)]
    _verse(archive, "sub-many", 8, entries=entries)
    store = tmp_path / "store"
    s = run(archive, store)
    assert s.scans_ingested == 1 and len(error_rows(store)) <= MAX_ERRORS_PER_SCAN + 1


def test_sql_timeout_interrupts_with_a_clear_message(tmp_path):
    store = make_store_with_rows(tmp_path)
    t0 = time.monotonic()
    result = runner.invoke(app, ["sql", "SELECT count(*) FROM range(100000000000)", "--store", str(store), "--timeout", "1"])
    assert time.monotonic() - t0 < 30
    assert result.exit_code == 2 and "timeout" in result.stderr.lower()


def make_store_with_rows(tmp_path: Path) -> Path:
    archive, store = make_archive(tmp_path / "archive", 1), tmp_path / "store"
    run(archive, store)
    return store


def test_disk_full_shows_the_real_error_not_a_rollback_message(tmp_path, monkeypatch):
    import duckdb

    store = make_store_with_rows(tmp_path)
    real_connect = catalog._connect

    class Full:  # a connection on a full disk: COMMIT fails, and then there is no transaction to roll back
        def __init__(self, con):
            self.con = con

        def execute(self, sql, *a):
            if sql == "COMMIT":
                raise duckdb.IOException('IO Error: Could not write file "catalog.duckdb.wal": No space left on device')
            if sql == "ROLLBACK":
                raise duckdb.TransactionException("cannot rollback - no transaction is active")
            return self.con.execute(sql, *a)

        def __getattr__(self, name):
            return getattr(self.con, name)

    monkeypatch.setattr(catalog, "_connect", lambda *a, **k: Full(real_connect(*a, **k)))
    with pytest.raises(duckdb.IOException, match="No space left on device"):
        catalog.record_errors(Store(store), "run-x", [catalog.ErrorRow("file-0", "load", "x")])


# -- 9. TotalSegmentator output as the mask ----------------------------------------------------------------


TS_NAMES = {20: "L1", 21: "L2", 22: "L3"}


def test_totalsegmentator_folder_gives_body_centroids_and_verse_levels(tmp_path):
    archive = tmp_path / "archive"
    hu, ctd = phantom(9)
    folder = archive / "case-9"
    (folder / "case-9_totalseg").mkdir(parents=True)
    nib.save(nib.Nifti1Image(hu, np.eye(4)), folder / "case-9.nii.gz")
    mask = label_mask(9)
    for label, name in TS_NAMES.items():
        nib.save(nib.Nifti1Image((mask == label).astype(np.uint8), np.eye(4)), folder / f"case-9_totalseg/vertebrae_{name}.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros(hu.shape, np.uint8), np.eye(4)), folder / "case-9_totalseg/liver.nii.gz")
    sources, errors = scan_archive(archive)
    assert [s.mask_format for s in sources] == ["totalseg"] and not errors  # no structure mask taken for a CT
    vol = load_scan(sources[0])
    assert sorted(vol.centroids_mm) == [20, 21, 22]
    for label, xyz in vol.centroids_mm.items():
        assert min(ctd, key=lambda k: np.linalg.norm(xyz - np.asarray(ctd[k]))) == label  # its own level, 30 mm from the next
    s = run(archive, tmp_path / "store")
    assert s.slices_written == 3 and s.errors == 0


@pytest.mark.parametrize("version", ["v2", "v1"])
def test_totalsegmentator_multilabel_file_maps_ids_to_verse_levels(tmp_path, version):
    from latentstore.ingest.totalseg import V1_IDS, V2_IDS

    archive = tmp_path / "archive"
    hu, ctd = phantom(10)
    archive.mkdir()
    nib.save(nib.Nifti1Image(hu, np.eye(4)), archive / "ct.nii.gz")
    ids = {name: i for i, name in (V2_IDS if version == "v2" else V1_IDS).items()}
    mask = label_mask(10)
    ml = np.zeros(mask.shape, np.uint8)
    ml[mask > 0] = 5  # "gallbladder": not a vertebra, ignored
    for label, name in TS_NAMES.items():
        ml[mask == label] = ids[name]
    img = nib.Nifti1Image(ml, np.eye(4))
    if version == "v1":  # v1.5+ writes its label map into the header extension
        xml = "".join(f'<Label Key="{i}" Red="1" Green="0" Blue="0" Alpha="1"><![CDATA[vertebrae_{n}]]></Label>'
                      for n, i in ids.items())
        img.header.extensions.append(nib.nifti1.Nifti1Extension(0, xml.encode()))
    nib.save(img, archive / "segmentations.nii.gz")
    sources, errors = scan_archive(archive)
    assert [s.mask_format for s in sources] == ["totalseg-ml"] and not errors
    vol = load_scan(sources[0])
    assert sorted(vol.centroids_mm) == [20, 21, 22]
    for label, xyz in vol.centroids_mm.items():
        assert min(ctd, key=lambda k: np.linalg.norm(xyz - np.asarray(ctd[k]))) == label  # its own level, 30 mm from the next
