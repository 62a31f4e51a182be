"""DICOM: series written here with pydicom (shuffled InstanceNumber, per-slice rescale, a localizer,
decoy series) must load with the right geometry and HU and give the same slices as the phantom as
NIfTI; bad studies give error records; the real JPEG 2000 series loads with its real geometry."""

import hashlib
import json
import logging
import random
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

from latentstore.ingest import dicom
from latentstore.errors import InputError
from latentstore.ingest import ScanSource, SlicingConfig, Volume, cut_slices, load_scan, scan_archive
from latentstore.ingest.dicom import read_series
from test_slicing import BODY, BODY_C, assert_body_centred, phantom_array, phantom_hu

PATIENT = "PAT-SECRET-0042"  # must never show up in logs, error reasons or scan ids
LPS = np.array([-1.0, -1.0, 1.0])
BODY_LPS = BODY_C * LPS
X_RAY_DOSE_SR = "1.2.840.10008.5.1.4.1.1.88.67"


def write_series(
    folder: Path,
    study: str,
    *,
    n: int = 40,
    iop=(1, 0, 0, 0, 1, 0),
    pixel_mm=(1.5, 1.5),  # (between rows, between columns)
    step: float = 2.5,
    size=(64, 64),  # (rows, columns)
    modality: str = "CT",
    image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
    sop_class=CTImageStorage,
    series: str | None = None,
) -> list[Path]:
    """Write the phantom as a DICOM series centred on the body (LPS), files in shuffled order with
    InstanceNumber running against position, alternating rescale (slope 1 / 2, intercept -1024 / -1000)."""
    folder.mkdir(parents=True, exist_ok=True)
    series = series or generate_uid()
    row_dir, col_dir = np.array(iop[:3], float), np.array(iop[3:], float)
    normal = np.cross(row_dir, col_dir)
    rows, cols = size
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    half = row_dir * pixel_mm[1] * (cols - 1) / 2 + col_dir * pixel_mm[0] * (rows - 1) / 2 + normal * step * (n - 1) / 2
    first = BODY_LPS - half  # IPP of the lowest slice
    order = list(range(n))
    random.Random(n).shuffle(order)
    paths = []
    for k in order:
        ipp = first + normal * step * k
        lps = ipp + c[..., None] * pixel_mm[1] * row_dir + r[..., None] * pixel_mm[0] * col_dir  # (rows, cols, 3)
        hu = phantom_hu(lps * LPS).astype(np.int32)
        slope, intercept = (1, -1024) if k % 2 == 0 else (2, -1000)
        stored = ((hu - intercept) // slope).astype(np.uint16)
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = sop_class
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.PatientID, ds.Modality, ds.ImageType = PATIENT, modality, list(image_type)
        ds.InstanceNumber = n - k  # against position, on purpose
        ds.ImageOrientationPatient = [float(v) for v in iop]
        ds.ImagePositionPatient = [round(float(v), 4) for v in ipp]
        ds.PixelSpacing = list(pixel_mm)
        ds.SliceThickness = step
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.PixelData = stored.tobytes()
        path = folder / f"IM{len(paths):04d}"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_sidecar(folder: Path, space: str = "LPS"):
    """The sidecar as `latentstore synth --dicom` writes it (extra keys are ignored by the reader)."""
    c = BODY_LPS if space == "LPS" else BODY_C
    sidecar = {"format": "latentstore-synth-centroids/1", "space": space, "units": "mm",
               "centroids": [{"label": 20, "level": "L1", "x": c[0], "y": c[1], "z": c[2]}]}
    (folder / "centroids.json").write_text(json.dumps(sidecar))


def write_dose_report(path: Path, study: str):
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = X_RAY_DOSE_SR
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality, ds.PatientID = study, generate_uid(), "SR", PATIENT
    ds.save_as(path, enforce_file_format=True)


@pytest.fixture
def study(tmp_path) -> tuple[Path, list[Path]]:
    """One study: the CT (40 x 2.5 mm), a localizer, an MR decoy, a thicker CT with fewer slices, a
    DERIVED reformat with more slices, a dose report; the world-coordinate sidecar at the study folder."""
    root = tmp_path / "dicom" / "sub-1"
    uid = generate_uid()
    ct = write_series(root / "ct", uid)
    localizer = ("ORIGINAL", "PRIMARY", "LOCALIZER")
    write_series(root / "scout", uid, n=3, iop=(0, 1, 0, 0, 0, -1), size=(64, 80), image_type=localizer)
    write_series(root / "mr", uid, n=12, modality="MR", sop_class=MRImageStorage)
    write_series(root / "thick", uid, n=20, step=5.0)
    write_series(root / "mpr", uid, n=50, step=2.0, image_type=("DERIVED", "SECONDARY", "MPR"))
    write_dose_report(root / "dose.dcm", uid)
    write_sidecar(root)
    return root, ct


def test_scan_chooses_the_original_axial_series(study, caplog):
    root, ct = study
    with caplog.at_level(logging.DEBUG):
        sources, errors = scan_archive(root.parent.parent)
    assert errors == []
    (src,) = sources
    first = pydicom.dcmread(ct[0], stop_before_pixels=True)
    assert src.format == "dicom" and src.ct == root / "ct" and src.files == tuple(sorted(ct))
    assert src.name == "dicom-series:" + first.SeriesInstanceUID
    assert src.centroids == root / "centroids.json" and src.mask is None and src.patient == PATIENT
    digests = b"".join(hashlib.sha256(p.read_bytes()).digest() for p in sorted(ct))
    assert src.content_hash == hashlib.sha256(digests).hexdigest()
    assert "chose series " + dicom.hashed_uid(first.SeriesInstanceUID) in caplog.text
    assert PATIENT not in caplog.text and first.SeriesInstanceUID not in caplog.text


def test_series_loads_with_geometry_hu_and_matches_nifti(study):
    root, ct = study
    (src,), _ = scan_archive(root)
    vol = load_scan(src)
    assert vol.hu.shape == (64, 64, 40) and vol.hu.dtype == np.int16
    np.testing.assert_allclose(vol.spacing_mm, [1.5, 1.5, 2.5], atol=1e-6)
    assert nib.aff2axcodes(vol.affine) == ("L", "P", "S")
    # Every voxel holds the phantom's HU at its world position: slope/intercept applied per slice,
    # slices ordered by position (InstanceNumber runs the other way).
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in vol.hu.shape], indexing="ij"), axis=-1)
    expected = phantom_hu(ijk @ vol.affine[:3, :3].T + vol.affine[:3, 3])
    np.testing.assert_array_equal(vol.hu, expected)
    np.testing.assert_allclose(vol.centroids_mm[20], BODY_C)
    # The same anatomy stored as NIfTI (PIR, 1x1x2 mm) gives the same slice within interpolation.
    (dcm_slice,), _ = cut_slices(vol)
    hu, aff = phantom_array("PIR", (1, 1, 2))
    (nii_slice,), _ = cut_slices(Volume(hu, aff, {20: BODY_C}, src))
    assert_body_centred(dcm_slice.image, blur_mm=2.5)
    differ = np.abs(dcm_slice.image.astype(int) - nii_slice.image) > 200
    assert differ.mean() < 0.05  # only pixels on box edges, where the two grids sample differently


def test_coronal_series(tmp_path):
    """Non-axial series: positions sorted along the slice normal, not along z."""
    root = tmp_path / "sub-2"
    write_series(root, generate_uid(), n=40, iop=(1, 0, 0, 0, 0, -1), step=2.0, size=(72, 48))
    write_sidecar(root, space="RAS")
    (src,), errors = scan_archive(tmp_path)
    vol = load_scan(src)
    np.testing.assert_allclose(vol.spacing_mm, [1.5, 1.5, 2.0], atol=1e-6)
    (cut,), _ = cut_slices(vol, SlicingConfig())
    assert errors == [] and abs(int(cut.image[48, 48]) - BODY) < 5
    assert_body_centred(cut.image, blur_mm=2.0)


def test_missing_slice_duplicate_and_truncated_files(tmp_path):
    gap = write_series(tmp_path / "gap" / "s", generate_uid(), n=10)
    middle = sorted(gap, key=lambda p: pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2])[5]
    middle.unlink()
    write_sidecar(tmp_path / "gap")
    ok = write_series(tmp_path / "dup" / "s", generate_uid(), n=10)
    (tmp_path / "dup" / "zz_copy.dcm").write_bytes(ok[0].read_bytes())
    last = sorted(ok, key=lambda p: pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2])[-1]
    last.write_bytes(last.read_bytes()[:-500])  # pixel data cut short: the series loses its top slice
    (tmp_path / "dup" / "empty.dcm").write_bytes(b"")
    (tmp_path / "dup" / "junk.dcm").write_bytes(b"this is no dicom" * 20)
    write_sidecar(tmp_path / "dup")
    sources, errors = scan_archive(tmp_path)
    reasons = {Path(e.source).name: e.reason for e in errors}
    assert "not uniform" in reasons["s"] and "1 slice(s) missing" in reasons["s"]
    assert reasons["zz_copy.dcm"].startswith("duplicate") and "0 bytes" in reasons["empty.dcm"]
    assert "not a DICOM file" in reasons["junk.dcm"] and "truncated" in reasons[last.name]
    (src,) = sources
    assert len(src.files) == 9 and last not in src.files and ok[0] in src.files
    assert load_scan(src).hu.shape == (64, 64, 9)


def test_localizer_only_non_ct_and_no_sidecar_studies(tmp_path):
    write_series(tmp_path / "scout", generate_uid(), n=3, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    write_series(tmp_path / "mr", generate_uid(), n=8, modality="MR", sop_class=MRImageStorage)
    write_series(tmp_path / "nosidecar", generate_uid(), n=8)
    write_sidecar(tmp_path / "scout")
    write_sidecar(tmp_path / "mr")
    sources, errors = scan_archive(tmp_path)
    assert sources == []
    reasons = {Path(e.source).name: e.reason for e in errors}
    assert reasons["scout"].startswith("no usable CT series") and "localizer" in reasons["scout"]
    assert "modality MR" in reasons["mr"]
    assert "no centroid sidecar" in reasons["nosidecar"]
    assert all(PATIENT not in e.reason for e in errors)


def test_load_rejects_non_ct_and_mixed_files(tmp_path):
    mr = write_series(tmp_path / "mr", generate_uid(), n=4, modality="MR", sop_class=MRImageStorage)
    with pytest.raises(InputError, match="modality MR"):
        read_series(sorted(mr))
    a = write_series(tmp_path / "a", generate_uid(), n=4)
    b = write_series(tmp_path / "b", generate_uid(), n=4)
    with pytest.raises(InputError, match="more than one series"):
        read_series(sorted(a) + sorted(b))
    src = ScanSource("x", "dicom", tmp_path / "a", tuple(sorted(a)), tmp_path / "missing.json", None, "p")
    with pytest.raises(InputError, match="cannot read centroid file"):
        load_scan(src)


def test_real_jpeg2000_series(real_data):
    """The real Siemens series: JPEG 2000 decoded through pylibjpeg, 0.977 mm pixels, 2 mm step, axial."""
    files = sorted((real_data / "dicom-ct").glob("CT.*"))
    hu, affine = read_series(files)
    assert hu.shape == (512, 512, 20) and hu.dtype == np.int16
    np.testing.assert_allclose(np.linalg.norm(affine[:3, :3], axis=0), [0.9765625, 0.9765625, 2.0])
    # IOP (1,0,0,0,1,0) in LPS: array axes run to the patient's left, posterior, and (sorted) superior.
    np.testing.assert_allclose(affine[:3, :3], np.diag([-0.9765625, -0.9765625, 2.0]))
    ipp_lowest = min(float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) for f in files)
    assert affine[2, 3] == pytest.approx(ipp_lowest)
    assert hu.min() == -1024 and 1000 < hu.max() < 3500  # air, and bone
    body = hu[hu > -500]
    assert 0.05 < body.size / hu.size < 0.9 and -150 < np.median(body) < 150  # soft tissue dominates
    sources, errors = scan_archive(real_data / "dicom-ct")
    assert sources == [] and len(errors) == 1 and "no centroid sidecar" in errors[0].reason
    assert errors[0].name.startswith("dicom-")


def test_synth_archive_dicom_and_nifti_agree(tmp_path):
    """`latentstore synth --dicom` writes each scan twice (VerSe NIfTI, DICOM study): both load to the
    same centroids and the same slices, within the centroid files' rounding."""
    synth = pytest.importorskip("latentstore.synth.archive")
    synth.synth_archive(tmp_path, patients=1, seed=3, dicom=True, levels="L1-L3", workers=1, progress=False,
                        sheet=False)
    sources, errors = scan_archive(tmp_path)
    assert errors == [] and sorted(s.format for s in sources) == ["dicom", "nifti"]
    nii, dcm = sorted(sources, key=lambda s: s.format, reverse=True)
    assert dcm.patient == nii.patient  # PatientID is the BIDS subject
    cuts = {}
    for src in (nii, dcm):
        slices, skipped = cut_slices(load_scan(src))
        assert skipped == []
        cuts[src.format] = slices
    assert [c.level for c in cuts["nifti"]] == [c.level for c in cuts["dicom"]] == [20, 21, 22]
    for a, b in zip(cuts["nifti"], cuts["dicom"]):
        assert np.linalg.norm(a.centroid_mm - b.centroid_mm) < 0.2  # 0.1 voxel vs 0.01 mm rounding
        assert np.abs(a.image.astype(int) - b.image).max() < 80
