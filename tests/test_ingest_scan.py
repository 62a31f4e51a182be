"""Archive scanning and NIfTI loading: the VerSe layout, plain NIfTI with sidecars or a mask only,
duplicates, and every kind of bad input giving an error record or a one-line InputError."""

import gzip
import hashlib
import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from latentstore.errors import InputError
from latentstore.ingest import ScanSource, body_centroids_from_mask, cut_slices, load_scan, scan_archive
from latentstore.ingest.centroids import read_centroid_file
from latentstore.ingest.nifti import read_mask
from latentstore.verse import Centroids, write_centroids
from test_slicing import BODY, BODY_C, grid_affine, phantom_array

PIR = ("P", "I", "R")


def save(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), path)
    return path


def voxel(affine: np.ndarray, world) -> tuple[float, float, float]:
    return tuple(np.linalg.inv(affine)[:3] @ [*world, 1])


def verse_subject(root: Path, name: str, ctd_name: str = "seg-subreg_ctd", wrapped: bool = False) -> Path:
    """A VerSe-layout subject: rawdata CT (PIR, 1x1x2 mm), derivatives centroid JSON and mask."""
    hu, aff = phantom_array("PIR", (1, 1, 2))
    hu = hu + int(name[-1])  # distinct bytes per subject (identical files are duplicates)
    sub = name.split("_")[0]
    ct = save(root / "rawdata" / sub / f"{name}_ct.nii.gz", hu, aff)
    deriv = root / "derivatives" / sub
    ctd = deriv / f"{name}_{ctd_name}.json"
    deriv.mkdir(parents=True, exist_ok=True)
    write_centroids(ctd, Centroids(PIR, {20: voxel(aff, BODY_C)}))
    if wrapped:  # the older {"vertebralCentroids": [...]} form
        ctd.write_text(json.dumps({"vertebralCentroids": json.loads(ctd.read_text())}))
    save(deriv / f"{name}_seg-vert_msk.nii.gz", (hu > BODY - 10).astype(np.uint8) * 20, aff)
    return ct


def test_verse_layout(tmp_path):
    ct1 = verse_subject(tmp_path, "sub-verse001")
    ct2 = verse_subject(tmp_path, "sub-verse002_dir-ax2", ctd_name="seg-vb_ctd", wrapped=True)
    sources, errors = scan_archive(tmp_path)
    assert errors == []
    by_id = {s.name: s for s in sources}
    assert sorted(by_id) == ["sub-verse001", "sub-verse002_dir-ax2"]
    s1, s2 = by_id["sub-verse001"], by_id["sub-verse002_dir-ax2"]
    assert s1.ct == ct1 and s1.files == (ct1,) and s1.format == "nifti" and s1.patient == "sub-verse001"
    assert s1.centroids == tmp_path / "derivatives/sub-verse001/sub-verse001_seg-subreg_ctd.json"
    assert s1.mask == tmp_path / "derivatives/sub-verse001/sub-verse001_seg-vert_msk.nii.gz"
    assert s2.ct == ct2 and s2.patient == "sub-verse002" and s2.centroids.name == "sub-verse002_dir-ax2_seg-vb_ctd.json"
    assert s1.content_hash == hashlib.sha256(ct1.read_bytes()).hexdigest()
    for src in (s1, s2):
        vol = load_scan(src)
        np.testing.assert_allclose(vol.centroids_mm[20], BODY_C, atol=0.06)  # JSON keeps one decimal
        (cut,), skipped = cut_slices(vol)
        assert skipped == [] and abs(cut.image[48, 48] - BODY) <= 2


def test_plain_nifti_sidecars(tmp_path):
    hu, aff = phantom_array("LPS", (1, 1, 1.5))
    # CSV with level names, LPS space.
    save(tmp_path / "a" / "scan1.nii.gz", hu, aff)
    x, y, z = BODY_C
    (tmp_path / "a" / "scan1_centroids.csv").write_text(f"label,x,y,z,space\nL1,{-x},{-y},{z},LPS\n")
    # World JSON (RAS by default) named <stem>_ctd.json.
    save(tmp_path / "b" / "scan2.nii", hu + 1, aff)
    (tmp_path / "b" / "scan2_ctd.json").write_text(json.dumps({"centroids": [{"label": 20, "x": x, "y": y, "z": z}]}))
    # A folder-level centroids.json beside a lone CT, inside a sub-X folder: the patient comes from it.
    save(tmp_path / "sub-77" / "ct.nii.gz", hu + 2, aff)
    world = {"space": "RAS", "centroids": [{"label": "L1", "x": x, "y": y, "z": z}]}
    (tmp_path / "sub-77" / "centroids.json").write_text(json.dumps(world))
    sources, errors = scan_archive(tmp_path)
    assert errors == []
    by_id = {s.name: s for s in sources}
    assert by_id["scan1"].centroids.name == "scan1_centroids.csv" and by_id["scan2"].centroids.name == "scan2_ctd.json"
    assert by_id["ct"].patient == "sub-77" and by_id["scan1"].patient == "scan1"
    for src in sources:
        vol = load_scan(src)
        assert list(vol.centroids_mm) == [20]
        np.testing.assert_allclose(vol.centroids_mm[20], BODY_C, atol=1e-6)


def test_mask_only_gives_body_not_whole_vertebra(tmp_path):
    """A mask with a body box and a posterior arch: the derived centroid is the body's centre."""
    hu, aff = phantom_array("RAS", (1, 1, 1))
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in hu.shape], indexing="ij"), axis=-1)
    d = ijk @ aff[:3, :3].T + aff[:3, 3] - BODY_C
    labels = np.zeros(hu.shape, np.uint8)
    body = (abs(d[..., 0]) <= 20) & (abs(d[..., 1]) <= 15) & (abs(d[..., 2]) <= 12)
    pedicles = (abs(abs(d[..., 0]) - 10) <= 3) & (d[..., 1] < -15) & (d[..., 1] >= -25) & (abs(d[..., 2]) <= 5)
    arch = (abs(d[..., 0]) <= 14) & (d[..., 1] < -25) & (d[..., 1] >= -45) & (abs(d[..., 2]) <= 10)
    labels[body | pedicles | arch] = 20
    save(tmp_path / "scan.nii.gz", hu, aff)
    save(tmp_path / "scan_seg.nii.gz", labels, aff)
    (src,), errors = scan_archive(tmp_path)
    assert errors == [] and src.centroids is None and src.mask.name == "scan_seg.nii.gz"
    vol = load_scan(src)
    whole = (np.argwhere(labels == 20) @ aff[:3, :3].T + aff[:3, 3]).mean(axis=0)
    assert np.linalg.norm(whole - BODY_C) > 8  # the naive centre of mass is far off ...
    assert np.linalg.norm(vol.centroids_mm[20] - BODY_C) < 1.0  # ... the body centroid is not


def test_real_mask_body_centroids_match_verse_json(real_data):
    """The real VerSe sample: mask-derived body centroids within 2.5 mm of the JSON ones (measured
    1.0-2.3 mm, mean 1.5), where the whole-vertebra centre of mass is 9-15 mm off."""
    folder = real_data / "verse-sample"
    labels, aff = read_mask(folder / "sub-verse004_seg-vert_msk.nii.gz")
    derived, skipped = body_centroids_from_mask(labels, aff)
    truth, _ = read_centroid_file(folder / "sub-verse004_seg-subreg_ctd.json", aff, labels.shape)
    assert sorted(derived) == sorted(truth) and skipped == []
    errors = {lab: np.linalg.norm(derived[lab] - truth[lab]) for lab in truth}
    assert max(errors.values()) < 2.5 and np.mean(list(errors.values())) < 2.0, errors
    whole = {lab: (np.argwhere(labels == lab) @ aff[:3, :3].T + aff[:3, 3]).mean(axis=0) for lab in truth}
    assert min(np.linalg.norm(whole[lab] - truth[lab]) for lab in truth) > 8


def test_verse_json_for_a_reoriented_copy(real_data, tmp_path):
    """A VerSe JSON whose direction differs from the image (written for an RAS copy) maps to the same world points."""
    folder = real_data / "verse-sample"
    labels, aff = read_mask(folder / "sub-verse004_seg-vert_msk.nii.gz")
    truth, _ = read_centroid_file(folder / "sub-verse004_seg-subreg_ctd.json", aff, labels.shape)
    ras = nib.as_closest_canonical(nib.Nifti1Image(labels, aff))
    ctd = Centroids(("R", "A", "S"), {lab: voxel(ras.affine, c) for lab, c in truth.items()})
    write_centroids(tmp_path / "x_ctd.json", ctd)  # rounds to 0.1 voxel
    mapped, _ = read_centroid_file(tmp_path / "x_ctd.json", aff, labels.shape)
    assert all(np.linalg.norm(mapped[lab] - truth[lab]) < 0.15 for lab in truth)
    # Read as if written for the PIR original, the same numbers would be wrong by centimetres.
    assert max(np.linalg.norm(aff[:3, :3] @ ctd.points[lab] + aff[:3, 3] - truth[lab]) for lab in truth) > 20


def test_duplicates_missing_sidecars_and_empty_files(tmp_path):
    hu, aff = phantom_array("RAS", (2, 2, 2))
    ct = save(tmp_path / "x" / "scan.nii.gz", hu, aff)
    (tmp_path / "x" / "scan_centroids.csv").write_text("label,x,y,z\n20,5,-10,20\n")
    (tmp_path / "y").mkdir()
    copy = tmp_path / "y" / "copy.nii.gz"
    copy.write_bytes(ct.read_bytes())
    save(tmp_path / "z" / "lonely.nii.gz", hu + 5, aff)  # no centroids, no mask
    (tmp_path / "z" / "empty.nii.gz").write_bytes(b"")
    (tmp_path / "z" / "notes.txt").write_text("ignored")
    sources, errors = scan_archive(tmp_path)
    assert [s.name for s in sources] == ["scan"]
    reasons = {Path(e.source).name: e.reason for e in errors}
    assert set(reasons) == {"copy.nii.gz", "lonely.nii.gz", "empty.nii.gz"}
    dup = next(e for e in errors if Path(e.source).name == "copy.nii.gz")
    assert dup.duplicate and dup.related == str(ct) and reasons["copy.nii.gz"].startswith("duplicate")
    assert "no centroid file" in reasons["lonely.nii.gz"] and "0 bytes" in reasons["empty.nii.gz"]
    assert all(e.stage == "scan" for e in errors)


def test_archive_inside_a_folder_named_derivatives(tmp_path):
    """Only folders *inside* the archive mark masks: an archive stored under .../derivatives/ is scanned."""
    root = tmp_path / "derivatives" / "archive"
    hu, aff = phantom_array("RAS", (2, 2, 2))
    save(root / "scan.nii.gz", hu, aff)
    (root / "scan_centroids.csv").write_text("label,x,y,z\n20,5,-10,20\n")
    save(root / "scan_seg.nii.gz", (hu == BODY).astype(np.uint8) * 20, aff)
    (src,), errors = scan_archive(root)
    assert errors == [] and src.name == "scan" and src.mask == root / "scan_seg.nii.gz"


def test_same_name_in_two_folders_gets_distinct_ids(tmp_path):
    hu, aff = phantom_array("RAS", (2, 2, 2))
    for k, folder in enumerate(("site1", "site2")):
        save(tmp_path / folder / "scan.nii.gz", hu + k, aff)
        (tmp_path / folder / "scan_centroids.csv").write_text("label,x,y,z\n20,5,-10,20\n")
    sources, errors = scan_archive(tmp_path)
    ids = [s.name for s in sources]
    assert errors == [] and len(set(ids)) == 2 and all(i.startswith("scan-") for i in ids)


def test_missing_root_raises(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        scan_archive(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        scan_archive(tmp_path / "file")


def _source(ct: Path, centroids: Path | None = None, mask: Path | None = None) -> ScanSource:
    return ScanSource(ct.name, "nifti", ct, (ct,), centroids, mask, "p")


@pytest.fixture
def good(tmp_path) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    hu, aff = phantom_array("RAS", (2, 2, 2))
    ct = save(tmp_path / "good.nii.gz", hu, aff)
    ctd = tmp_path / "good_centroids.csv"
    ctd.write_text("label,x,y,z\n20,5,-10,20\n")
    return ct, ctd, hu, aff


@pytest.mark.parametrize(
    "case, match",
    [
        ("truncated", "truncated or corrupt"),
        ("zero", "empty CT file"),
        ("2d", "2 dimensions"),
        ("4d", "4 dimensions"),
        ("nan", "NaN"),
        ("tiny_spacing", "absurd voxel spacing"),
        ("huge_spacing", "absurd voxel spacing"),
        ("not_ct", "not a CT"),
        ("no_centroids", "cannot read centroid file"),
        ("bad_json", "not valid JSON"),
        ("bad_csv", "label,x,y,z"),
        ("bad_label", "unknown vertebra level"),
        ("nothing", "no centroid file and no vertebra mask"),
    ],
)
def test_bad_inputs_raise_input_error(good, tmp_path, case, match):
    ct, ctd, hu, aff = good
    bad = tmp_path / f"{case}.nii.gz"
    centroids: Path | None = ctd
    if case == "truncated":
        data = ct.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    elif case == "zero":
        bad.write_bytes(b"")
    elif case == "2d":
        save(bad, hu[:, :, 0], aff)
    elif case == "4d":
        save(bad, np.stack([hu, hu], axis=-1), aff)
    elif case == "nan":
        f = hu.astype(np.float32)
        f[3, 4, 5] = np.nan
        save(bad, f, aff)
    elif case in ("tiny_spacing", "huge_spacing"):
        save(bad, hu, np.diag([0.01 if case == "tiny_spacing" else 50.0, 1, 1, 1]) @ aff)
    elif case == "not_ct":
        save(bad, (hu + 100).astype(np.int16), aff)  # all values >= 0: an MR-like image
    else:
        bad = ct
        centroids = tmp_path / "c.json" if case != "bad_csv" else tmp_path / "c.csv"
        if case == "bad_json":
            centroids.write_text('[{"direction": ["R", "A", "S"]}, {"label": 20, "X": 1,')
        elif case == "bad_csv":
            centroids.write_text("level;x;y;z\nL1;1;2;3\n")
        elif case == "bad_label":
            centroids.write_text(json.dumps({"centroids": [{"label": "L9", "x": 1, "y": 2, "z": 3}]}))
        elif case == "nothing":
            centroids = None
    with pytest.raises(InputError, match=match) as info:
        load_scan(_source(bad, centroids))
    assert "\n" not in str(info.value)


def test_truncated_gz_is_scanned_then_fails_to_load(good, tmp_path):
    ct, _, _, _ = good
    data = gzip.decompress(ct.read_bytes())
    broken = tmp_path / "broken" / "broken.nii.gz"
    broken.parent.mkdir()
    broken.write_bytes(gzip.compress(data)[:-200])
    (broken.parent / "broken_centroids.csv").write_text("label,x,y,z\n20,5,-10,20\n")
    (src,), errors = scan_archive(broken.parent)
    assert errors == []
    with pytest.raises(InputError, match="truncated or corrupt"):
        load_scan(src)


def test_nan_and_outside_centroids_are_skipped_levels(good, tmp_path, caplog):
    ct, _, _, _ = good
    ctd = tmp_path / "x.csv"
    ctd.write_text("label,x,y,z\n20,5,-10,20\n21,nan,nan,nan\n22,5,-90,-40\n")  # L3 in order, beyond the FOV
    vol = load_scan(_source(ct, ctd))
    slices, skipped = cut_slices(vol)
    assert [s.level for s in slices] == [20]
    assert dict(skipped).keys() == {21, 22}
    assert "NaN" in dict(skipped)[21] and "outside" in dict(skipped)[22]


def test_load_logs_nothing_identifying(good, caplog):
    ct, ctd, _, _ = good
    with caplog.at_level(logging.DEBUG):
        load_scan(ScanSource("s", "nifti", ct, (ct,), ctd, None, "PATIENT-SECRET-42"))
    assert "PATIENT-SECRET-42" not in caplog.text


def test_scan_is_deterministic(tmp_path):
    verse_subject(tmp_path, "sub-verse003")
    verse_subject(tmp_path, "sub-verse001")
    a, b = scan_archive(tmp_path), scan_archive(tmp_path)
    assert a == b and [s.name for s in a[0]] == ["sub-verse001", "sub-verse003"]
    aff, _ = grid_affine("PIR", (1, 1, 2))
    assert nib.aff2axcodes(aff) == PIR
