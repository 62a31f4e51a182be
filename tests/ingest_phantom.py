"""Tiny VerSe-layout phantom archives for the ingest run tests (a few hundred KB, built in milliseconds).

A scan is an elliptic soft-tissue cylinder in air with three box-shaped vertebral bodies (L1-L3,
300 HU marrow inside an 800 HU rim) stacked along S, written as `rawdata/<sub>/<sub>_ct.nii.gz` with its
centroids in `derivatives/<sub>/<sub>_seg-subreg_ctd.json` (voxel indices, direction R, A, S).
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

SHAPE = (40, 56, 100)  # R, A, S voxels of 1 mm
LEVELS = (20, 21, 22)  # L1-L3
CENTRES_Z = (80, 50, 20)  # L1 on top: S grows with the z index


def phantom(seed: int) -> tuple[np.ndarray, dict[int, tuple[float, float, float]]]:
    """(40, 56, 100) int16 HU and the body centroids in voxel indices; `seed` moves and scales bodies."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")
    hu = np.full(SHAPE, -1000, np.int16)
    hu[((x - 20) / 19.0) ** 2 + ((y - 28) / 27.0) ** 2 <= 1] = 40
    centroids = {}
    for label, cz in zip(LEVELS, CENTRES_Z):
        cx, cy = 20 + rng.integers(-2, 3), 24 + rng.integers(-3, 4)
        h = int(rng.integers(9, 12))  # half height in mm
        body = (abs(x - cx) <= 12) & (abs(y - cy) <= 10) & (abs(z - cz) <= h)
        inner = (abs(x - cx) <= 10) & (abs(y - cy) <= 8) & (abs(z - cz) <= h - 2)
        hu[body] = 800
        hu[inner] = 300 + int(rng.integers(-40, 40))
        centroids[label] = (float(cx), float(cy), float(cz))
    return hu, centroids


def write_scan(root: Path, sub: str, seed: int, affine: np.ndarray | None = None, hu: np.ndarray | None = None,
               centroids: dict | None = None) -> Path:
    """Write one phantom scan of subject `sub` into the archive `root`; return the CT path."""
    ph_hu, ph_ctd = phantom(seed)
    hu = ph_hu if hu is None else hu
    centroids = ph_ctd if centroids is None else centroids
    ct = root / "rawdata" / sub / f"{sub}_ct.nii.gz"
    ct.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(hu, np.eye(4) if affine is None else affine), ct)
    write_centroids(root, sub, centroids)
    return ct


def write_centroids(root: Path, sub: str, centroids: dict, direction=("R", "A", "S")) -> Path:
    path = root / "derivatives" / sub / f"{sub}_seg-subreg_ctd.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    entries = [{"direction": list(direction)}] + [{"label": k, "X": v[0], "Y": v[1], "Z": v[2]} for k, v in centroids.items()]
    path.write_text(json.dumps(entries))
    return path


def make_archive(root: Path, n: int = 3, start: int = 0) -> Path:
    """`n` good phantom scans `sub-p000`.. (seeded by their number) in `root`; return `root`."""
    for i in range(start, start + n):
        write_scan(root, f"sub-p{i:03d}", seed=i)
    return root


def write_dicom_scan(folder: Path, seed: int, patient_id: str, patient_name: str, modality: str = "CT") -> Path:
    """The phantom of `seed` as an axial CT DICOM series (one file per 1 mm slice) in `folder`, with a
    world-coordinate `centroids.json` (RAS) beside it. Carries `patient_id`/`patient_name` in its
    headers so tests can check they never reach the store."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    hu, centroids = phantom(seed)
    folder.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    for k in range(hu.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.PatientID, ds.PatientName = patient_id, patient_name
        ds.Modality, ds.ImageType = modality, ["ORIGINAL", "PRIMARY", "AXIAL"]
        # LPS: rows run along +x (L), columns along +y (P); pixel (r, c) of slice k is voxel (c, r, k).
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0.0, 0.0, float(k)]
        ds.PixelSpacing, ds.SliceThickness = [1.0, 1.0], 1.0
        ds.InstanceNumber = k + 1
        ds.Rows, ds.Columns = hu.shape[1], hu.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.PixelData = np.ascontiguousarray(hu[:, :, k].T).astype("<i2").tobytes()
        ds.save_as(folder / f"IM{k:04d}", enforce_file_format=True)
    # Voxel (i, j, k) sits at LPS (i, j, k), i.e. RAS (-i, -j, k).
    rows = [{"label": lab, "x": -c[0], "y": -c[1], "z": c[2]} for lab, c in centroids.items()]
    (folder / "centroids.json").write_text(json.dumps({"space": "RAS", "centroids": rows}))
    return folder


def sigkill_ingest_after(archive: Path, store: Path, parts: int, whole_group: bool) -> None:
    """Run `jobs/ingest.py` in its own session and SIGKILL it once `parts` slice parts are published: only
    the driver (`whole_group=False`: its local Ray must follow it alone) or its whole process group."""
    import os
    import signal
    import subprocess
    import sys
    import time

    job = Path(__file__).resolve().parents[1] / "jobs" / "ingest.py"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen([sys.executable, str(job), str(archive), "--store", str(store), "--workers", "1", "--json"],
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 120
        while len(list((store / "slices").glob("*.parquet"))) < parts:
            assert proc.poll() is None and time.monotonic() < deadline, "the job ended before it could be killed"
            time.sleep(0.05)
    finally:
        if whole_group:
            os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started: nothing cleans up
        else:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
