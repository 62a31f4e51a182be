"""The ingest run end to end on tiny phantom archives: rows and schema, idempotent reruns, a grown
archive, a crash midway, bad inputs, and patient privacy. One local Ray (2 CPUs) serves the module."""

from __future__ import annotations

import hashlib
import hmac
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from ingest_phantom import LEVELS, make_archive, phantom, sigkill_ingest_after, write_centroids, write_dicom_scan, write_scan
from latentstore import catalog
from latentstore.cli import app
from latentstore.errors import InputError, StoreError
from latentstore.ingest import SlicingConfig
from latentstore.ingest.privacy import pseudonym_map
from latentstore.ingest.run import ingest
from latentstore.schema import arrow_schema
from latentstore.slices import read_slices
from latentstore.store import Dataset, Store, part_name, slice_id

CFG = SlicingConfig()


pytestmark = pytest.mark.usefixtures("ray_local", "no_env_salt")


def run(archive: Path, store: Path, **kw):
    return ingest(store, archive, progress=False, **kw)


def contents(store: Path) -> list[tuple[int, bytes]]:
    """(slice_id, image bytes) of every published slice, sorted: what "the same store" means."""
    t = read_slices(store, columns=["slice_id", "image"])
    ids = t.column("slice_id").to_pylist()
    images = t.column("image").combine_chunks().values.to_numpy()
    rows = [(i, images[k * 9216 : (k + 1) * 9216].tobytes()) for k, i in enumerate(ids)]
    return sorted(rows)


def real_names(store, archive) -> dict:
    """pseudonym -> the archive-relative path or raw scan name it stands for (as `latentstore locate`)."""
    return {k: v[1] for k, v in pseudonym_map(Store(store), archive).items()}


def errors_of(store: Path, run_id: str, archive: Path | None = None) -> list[tuple]:
    """A run's error rows; with `archive`, pseudonyms translated back to paths and scan names."""
    con = catalog.reader(Store(store))
    try:
        rows = con.execute(f"SELECT source, stage, reason, scan_id, level FROM errors WHERE run_id = '{run_id}' ORDER BY source, level").fetchall()
    finally:
        con.close()
    if archive is None:
        return rows
    m = real_names(store, archive)
    return sorted(((m.get(src, src), stage, reason, m.get(sid, sid), lvl) for src, stage, reason, sid, lvl in rows),
                  key=lambda r: (r[0], r[4] or 0))


def test_ingest_small_archive_writes_expected_rows(tmp_path):
    archive, store = make_archive(tmp_path / "archive", 3), tmp_path / "store"
    s = run(archive, store, workers=2)
    assert (s.scans_seen, s.scans_ingested, s.scans_skipped, s.slices_written, s.errors, s.status) == (3, 3, 0, 9, 0, "ok")

    st = Store(store)
    parts = st.slices.parts()
    cts = sorted(archive.glob("rawdata/*/*_ct.nii.gz"))
    hashes = {ct.name.split("_")[0]: hashlib.sha256(ct.read_bytes()).hexdigest() for ct in cts}
    assert parts == sorted(part_name(h, CFG.hash) for h in hashes.values())  # one part per scan, named by content
    # The Parquet files carry the DDL's schema (column names, types, list sizes, nullability).
    want = arrow_schema("slices")
    got = pq.read_schema(str(store / "slices" / parts[0]))
    assert got.names == want.names
    for g, w in zip(got, want):
        assert g.nullable == w.nullable, g.name
        assert (g.type.value_type, g.type.list_size) == (w.type.value_type, w.type.list_size) if hasattr(w.type, "list_size") else g.type == w.type

    t = read_slices(store)
    assert t.num_rows == 9
    rows = t.to_pylist()
    assert len({r["slice_id"] for r in rows}) == 9
    names = real_names(store, archive)
    for r in rows:
        name = names[r["scan_id"]]
        ch = hashes[name]
        assert r["content_hash"] == ch
        assert r["slice_id"] == slice_id(ch, r["level"], CFG.hash) and 0 <= r["slice_id"] < 2**63
        assert r["level_name"] == {20: "L1", 21: "L2", 22: "L3"}[r["level"]]
        assert names[r["source_uri"]] == f"rawdata/{name}/{name}_ct.nii.gz"  # a pseudonym of the path
        assert json.loads(r["slicing"]) == json.loads(CFG.to_json()) and r["slicing_hash"] == CFG.hash
        assert r["spacing_mm"] == [1.0, 1.0, 1.0]
        # Identity affine: the centroid in mm is the voxel centroid of the phantom.
        seed = int(name[-3:])
        assert r["centroid_mm"] == list(phantom(seed)[1][r["level"]])
        image = np.asarray(r["image"], np.int16).reshape(96, 96)
        assert 200 < image[48, 48] < 400  # the body's marrow is at the centre pixel
        assert image[0, 0] == -1024 or image[0, 0] <= -1000  # air / outside the scan in the corner

    con = catalog.reader(st)
    try:
        assert con.execute("SELECT count(*) FROM slices").fetchone()[0] == 9
        status, counts = con.execute(f"SELECT status, counts FROM runs WHERE run_id = '{s.run_id}'").fetchone()
    finally:
        con.close()
    assert status == "ok" and json.loads(counts)["slices_written"] == 9
    assert not list((store / "slices").glob("_staging/*/*"))


def test_rerun_adds_nothing_and_grown_archive_adds_only_the_new_scan(tmp_path):
    archive, store = make_archive(tmp_path / "archive", 3), tmp_path / "store"
    run(archive, store)
    before = {p.name: p.stat().st_mtime_ns for p in (store / "slices").glob("*.parquet")}
    rows_before = contents(store)

    again = run(archive, store)
    assert (again.scans_ingested, again.scans_skipped, again.slices_written, again.errors) == (0, 3, 0, 0)
    assert {p.name: p.stat().st_mtime_ns for p in (store / "slices").glob("*.parquet")} == before
    assert contents(store) == rows_before

    make_archive(archive, 1, start=3)  # a new patient arrives
    grown = run(archive, store)
    assert (grown.scans_seen, grown.scans_ingested, grown.scans_skipped, grown.slices_written) == (4, 1, 3, 3)
    after = {p.name: p.stat().st_mtime_ns for p in (store / "slices").glob("*.parquet")}
    assert len(after) == 4 and all(after[name] == t for name, t in before.items())  # old parts untouched
    assert len(contents(store)) == 12 and set(rows_before) <= set(contents(store))


def test_crash_midway_then_rerun_gives_the_store_of_one_clean_run(tmp_path, monkeypatch):
    archive = make_archive(tmp_path / "archive", 4)
    clean, crashed = tmp_path / "clean", tmp_path / "crashed"
    run(archive, clean)

    real_publish, calls = Dataset.publish, []

    def publish_then_die(self, run_id, name):
        calls.append(name)
        if len(calls) == 2:
            raise RuntimeError("simulated crash of the driver")
        return real_publish(self, run_id, name)

    monkeypatch.setattr(Dataset, "publish", publish_then_die)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(archive, crashed)
    monkeypatch.setattr(Dataset, "publish", real_publish)

    # What a reader sees after the crash: exactly the one published scan, no staged leftovers.
    assert len(Store(crashed).slices.parts()) == 1
    assert len(contents(crashed)) == 3
    con = catalog.reader(Store(crashed))
    assert con.execute("SELECT status FROM runs").fetchall() == [("failed",)]
    con.close()
    # Plus a half-written part of a run killed harder (no cleanup at all), under a real part's name.
    missing = sorted(set(Store(clean).slices.parts()) - set(Store(crashed).slices.parts()))[0]
    dead = crashed / "slices" / "_staging" / "ingest-killed"
    dead.mkdir(parents=True)
    (dead / missing).write_bytes((clean / "slices" / missing).read_bytes()[:1000])
    assert len(contents(crashed)) == 3  # readers ignore _staging

    rerun = run(archive, crashed)
    assert rerun.scans_ingested == 3 and rerun.scans_skipped == 1 and rerun.staging_dropped >= 1
    assert Store(crashed).slices.parts() == Store(clean).slices.parts()
    assert contents(crashed) == contents(clean)
    assert not (crashed / "slices" / "_staging" / "ingest-killed").exists()


def _gz_truncated(src: Path, dst: Path) -> None:
    data = src.read_bytes()
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(data[: len(data) // 2])


def bad_archive(root: Path) -> dict[str, str]:
    """Two good scans, one scan with one bad level, and one scan per kind of bad input.
    Returns subject -> the stage at which it must be rejected."""
    make_archive(root, 2)
    hu, ctd = phantom(7)
    # One level outside the volume, one NaN centroid entry: the scan is kept, two levels are not.
    # L2 outside the field of view (12 mm beyond its side), yet below L1 as a real L2 is: the level checks pass.
    write_scan(root, "sub-partial", seed=7, centroids={20: ctd[20], 21: (-12.0, 24.0, ctd[20][2] - 30.0)})
    with open(root / "derivatives/sub-partial/sub-partial_seg-subreg_ctd.json", "r+") as f:
        entries = json.load(f)
        entries.append({"label": 22, "X": float("nan"), "Y": float("nan"), "Z": float("nan")})
        f.seek(0)
        f.write(json.dumps(entries))
        f.truncate()
    expected = {}
    # Truncated gzip stream.
    write_scan(root, "sub-trunc", seed=8)
    ct = root / "rawdata/sub-trunc/sub-trunc_ct.nii.gz"
    _gz_truncated(ct, ct)
    expected["sub-trunc"] = "load"
    # Zero-byte file.
    write_scan(root, "sub-empty", seed=9)
    (root / "rawdata/sub-empty/sub-empty_ct.nii.gz").write_bytes(b"")
    expected["sub-empty"] = "scan"
    # Wrong dimensionality: a 4D series of two volumes.
    ct = write_scan(root, "sub-fourd", seed=10)
    nib.save(nib.Nifti1Image(np.stack([hu, hu], axis=-1), np.eye(4)), ct)
    expected["sub-fourd"] = "load"
    # Missing centroid file (and no mask).
    write_scan(root, "sub-noctd", seed=11)
    (root / "derivatives/sub-noctd/sub-noctd_seg-subreg_ctd.json").unlink()
    expected["sub-noctd"] = "scan"
    # Unparsable centroid file.
    write_scan(root, "sub-badjson", seed=12)
    (root / "derivatives/sub-badjson/sub-badjson_seg-subreg_ctd.json").write_text("[{'direction': oops")
    expected["sub-badjson"] = "load"
    # Every centroid outside the volume.
    write_scan(root, "sub-outside", seed=13, centroids={20: (500.0, 24.0, 60.0), 21: (500.0, 24.0, 30.0)})
    expected["sub-outside"] = "cut"
    # NaN voxels.
    nan_hu = phantom(14)[0].astype(np.float32)
    nan_hu[10:12, 10:12, 10:12] = np.nan
    write_scan(root, "sub-nan", seed=14, hu=nan_hu)
    expected["sub-nan"] = "load"
    # Absurd spacing: 40 mm voxels.
    write_scan(root, "sub-spacing", seed=15, affine=np.diag([40.0, 40.0, 40.0, 1.0]))
    expected["sub-spacing"] = "load"
    # The same file twice (a copy of sub-p000 under another subject).
    (root / "rawdata/sub-zdup").mkdir(parents=True)
    shutil.copy(root / "rawdata/sub-p000/sub-p000_ct.nii.gz", root / "rawdata/sub-zdup/sub-zdup_ct.nii.gz")
    write_centroids(root, "sub-zdup", phantom(0)[1])
    expected["sub-zdup"] = "scan"
    return expected


def test_bad_inputs_each_get_an_error_row_and_the_rest_is_ingested(tmp_path):
    archive, store = tmp_path / "archive", tmp_path / "store"
    expected = bad_archive(archive)
    s = run(archive, store)

    names = real_names(store, archive)
    stored = read_slices(store, columns=["scan_id", "level"]).to_pylist()
    assert sorted({names[r["scan_id"]] for r in stored}) == ["sub-p000", "sub-p001", "sub-partial"]
    assert sorted(r["level"] for r in stored if names[r["scan_id"]] == "sub-partial") == [20]
    assert s.slices_written == 2 * len(LEVELS) + 1 and s.status == "partial"

    errors = errors_of(store, s.run_id, archive)
    by_subject: dict[str, list] = {}
    for source, stage, reason, scan_id, level in errors:
        assert not source.startswith("/") and str(tmp_path) not in reason  # archive-relative, no host paths
        by_subject.setdefault(source.split("/")[1], []).append((stage, reason, scan_id, level))
    for sub, stage in expected.items():
        assert sub in by_subject, f"no error row for {sub}"
        assert [e[0] for e in by_subject[sub]] == [stage], (sub, by_subject[sub])
    # The partial scan: one row per rejected level, naming it.
    partial = sorted(by_subject["sub-partial"], key=lambda e: e[3])
    assert [(e[0], e[2], e[3]) for e in partial] == [("cut", "sub-partial", 21), ("cut", "sub-partial", 22)]
    assert "outside" in partial[0][1] and "NaN" in partial[1][1]
    kept = next(k for k, v in names.items() if v == "rawdata/sub-p000/sub-p000_ct.nii.gz")  # the kept file's pseudonym
    assert "duplicate" in by_subject["sub-zdup"][0][1] and kept in by_subject["sub-zdup"][0][1]
    assert s.duplicates_rejected == 1 and s.files_rejected == 2  # the empty file, no centroids; the copy apart
    assert set(by_subject) == set(expected) | {"sub-partial"}
    assert s.errors == len(errors) == len(expected) + 2
    assert sum(s.errors_by_reason.values()) == s.errors

    # The CLI rerun: summary as JSON, exit status 4 (partial failure), nothing new stored. The bad files
    # are reported again; the two levels of sub-partial are not (the run that stored it recorded them).
    result = CliRunner().invoke(app, ["ingest", str(archive), "--store", str(store), "--json"])
    assert result.exit_code == 4, result.output
    summary = json.loads(result.stdout)
    assert (summary["scans_ingested"], summary["scans_skipped"], summary["errors"]) == (0, 3, len(expected))
    assert "rejected" in result.stderr


def test_patient_keys_are_salted_hashes_and_no_identifier_reaches_the_store(tmp_path, monkeypatch):
    archive, store = tmp_path / "archive", tmp_path / "store"
    make_archive(archive, 2)
    # A second scan of patient sub-p000 (BIDS entity dir-ax): same patient, same key.
    hu, ctd = phantom(21)
    ct = archive / "rawdata/sub-p000/sub-p000_dir-ax_ct.nii.gz"
    nib.save(nib.Nifti1Image(hu, np.eye(4)), ct)
    entries = [{"direction": ["R", "A", "S"]}] + [{"label": k, "X": v[0], "Y": v[1], "Z": v[2]} for k, v in ctd.items()]
    (archive / "derivatives/sub-p000/sub-p000_dir-ax_seg-subreg_ctd.json").write_text(json.dumps(entries))
    # A DICOM study whose headers carry a name and an MRN.
    write_dicom_scan(archive / "study-a" / "series-1", seed=22, patient_id="MRN-4711-0042", patient_name="DOE^JANE")
    s = run(archive, store)
    assert s.scans_ingested == 4 and s.errors == 0

    salt = (store / "salt").read_bytes().strip()
    assert (store / "salt").stat().st_mode & 0o777 == 0o600
    names = real_names(store, archive)
    rows = read_slices(store, columns=["scan_id", "patient_key", "site"]).to_pylist()
    keys = {names[r["scan_id"]]: r["patient_key"] for r in rows}
    (site,) = {r["site"] for r in rows}
    dicom_scan = next(k for k in keys if k.startswith("dicom-"))
    expect = {"sub-p000": "sub-p000", "sub-p000_dir-ax": "sub-p000", "sub-p001": "sub-p001", dicom_scan: "MRN-4711-0042"}
    for scan, raw in expect.items():
        assert keys[scan] == hmac.new(salt, f"{site}\0{raw}".encode(), hashlib.sha256).hexdigest()
        assert raw not in keys[scan]
    assert keys["sub-p000"] == keys["sub-p000_dir-ax"] != keys["sub-p001"]
    # The DICOM identifiers appear nowhere in the store's files (Parquet, catalog, anything else).
    for path in store.rglob("*"):
        if path.is_file() and path.name != "salt":
            data = path.read_bytes()
            for phi in (b"MRN-4711-0042", b"DOE^JANE", b"DOE"):
                assert phi not in data, (path, phi)
    # Without the salt the keys cannot be recomputed: a different salt is refused, not silently used.
    monkeypatch.setenv("LATENTSTORE_SALT", "another-secret-that-is-long-enough-0123456789")
    make_archive(archive, 1, start=2)
    with pytest.raises(StoreError, match="salt"):
        run(archive, store)


@pytest.mark.slow
def test_driver_killed_with_sigkill_then_rerun_gives_the_store_of_one_clean_run(tmp_path):
    """The real thing: `jobs/ingest.py` in its own process group, SIGKILLed once parts are published."""
    archive, killed, clean = make_archive(tmp_path / "archive", 10), tmp_path / "killed", tmp_path / "clean"
    sigkill_ingest_after(archive, killed, parts=2, whole_group=True)
    published = len(Store(killed).slices.parts())
    assert 2 <= published < 10

    rerun = run(archive, killed)
    assert rerun.scans_ingested == 10 - published and rerun.scans_skipped == published and rerun.errors == 0
    run(archive, clean)
    assert Store(killed).slices.parts() == Store(clean).slices.parts()
    assert contents(killed) == contents(clean)
    con = catalog.reader(Store(killed))
    try:
        assert [r[0] for r in con.execute("SELECT status FROM runs ORDER BY started").fetchall()] == ["killed", "ok"]
    finally:
        con.close()


def test_bad_dicom_inputs_each_get_an_error_row_and_the_rest_is_ingested(tmp_path):
    archive, store = tmp_path / "archive", tmp_path / "store"
    write_dicom_scan(archive / "good", seed=30, patient_id="P1", patient_name="A^B")
    write_dicom_scan(archive / "mr", seed=31, patient_id="P2", patient_name="C^D", modality="MR")  # not a CT
    write_dicom_scan(archive / "nocentroids", seed=32, patient_id="P3", patient_name="E^F")
    (archive / "nocentroids" / "centroids.json").unlink()
    write_dicom_scan(archive / "truncated", seed=33, patient_id="P4", patient_name="G^H")
    victim = archive / "truncated" / "IM0050"
    victim.write_bytes(victim.read_bytes()[:-500])  # pixel data cut short
    (archive / "stray").mkdir()
    (archive / "stray" / "empty.dcm").write_bytes(b"")
    s = run(archive, store)

    assert s.scans_ingested == 1 and s.slices_written == len(LEVELS) and s.status == "partial"
    errors = errors_of(store, s.run_id, archive)
    folders = {source.split("/")[0] for source, *_ in errors}
    assert folders == {"mr", "nocentroids", "truncated", "stray"}, errors
    assert all(not source.startswith("/") for source, *_ in errors)
    assert any("empty" in reason for source, _, reason, *_ in errors if source.startswith("stray"))
    assert any("centroid" in reason for source, _, reason, *_ in errors if source.startswith("nocentroids"))


def test_synthetic_archive_gives_one_row_per_ground_truth_vertebra(tmp_path):
    """On the synth generator's archive (2 patients): the stored (scan, level) pairs and centroids are
    those of its ground-truth table."""
    import csv

    synth = pytest.importorskip("latentstore.synth")
    archive, store = tmp_path / "archive", tmp_path / "store"
    synth.synth_archive(archive, patients=2, seed=3, workers=1, progress=False)  # in-process: no fork under Ray
    with open(archive / "ground_truth.csv") as f:
        truth = {(r["scan"], int(r["level"])): [float(r[f"centroid_{a}"]) for a in "xyz"] for r in csv.DictReader(f)}

    s = run(archive, store)
    assert s.errors == 0 and s.scans_ingested == 2 and s.slices_written == len(truth)
    rows = read_slices(store, columns=["scan_id", "level", "centroid_mm", "image"]).to_pylist()
    names = real_names(store, archive)
    assert {(names[r["scan_id"]], r["level"]) for r in rows} == set(truth)
    for r in rows:
        assert np.allclose(r["centroid_mm"], truth[(names[r["scan_id"]], r["level"])], atol=0.5)  # JSON keeps 0.1 voxel
        centre = np.asarray(r["image"], np.int16).reshape(96, 96)[40:56, 40:56]
        assert 50 < np.median(centre) < 400  # trabecular bone at the centre, not air or cortex


def test_a_second_slicing_config_is_refused_and_nothing_changes(tmp_path):
    archive, store = make_archive(tmp_path / "archive", 2), tmp_path / "store"
    run(archive, store)
    rows_before = contents(store)
    with pytest.raises(InputError, match="needs its own store"):
        ingest(store, archive, slicing=SlicingConfig(thickness_mm=3), progress=False)
    assert contents(store) == rows_before
