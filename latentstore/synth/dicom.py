"""The same scans as CT DICOM studies, written with pydicom, plus a world-coordinate centroid sidecar.

Layout: one flat folder per patient, `dicom/sub-synthNNNN/`, holding every file of the study under
extension-less names `IM00001`, `IM00002`, ... in shuffled order (series interleaved), and the sidecar
`centroids.json`. The study has three series:

- series 1, a localizer (`ImageType` ORIGINAL\\PRIMARY\\LOCALIZER): one coronal projection image, not HU;
- series 2, the scan: axial CT slices (`ImageType` ORIGINAL\\PRIMARY\\AXIAL, kernel BONE), one per NIfTI
  slice along z, `InstanceNumber` a random permutation (so only `ImagePositionPatient` orders them);
- series 3, a decoy: the same volume as ~5 mm thick averaged slices at half the in-plane resolution
  (`ImageType` DERIVED\\SECONDARY\\AXIAL, kernel STANDARD), which a reader should not pick for grading.

Pixels: HU = stored * RescaleSlope + RescaleIntercept with slope 1 and, per scan (`scans.csv`
dicom_dtype / dicom_intercept), stored uint16 with intercept -1024, int16 with intercept -1024, or int16
with intercept 0. Uncompressed, explicit VR little endian. Patient tags are synthetic
(PatientID = the scan id, PatientName SYNTH^PATIENTNNNN, no birth date, PatientIdentityRemoved YES).

Geometry: `ImageOrientationPatient` [1, 0, 0, 0, 1, 0] (rows run to the patient's left, columns to
posterior), `PixelSpacing` [row spacing = y, column spacing = x], `ImagePositionPatient` in LPS mm.
Axial pixel (row r, column c) of slice k is the NIfTI canonical (RAS) voxel (nx-1-c, ny-1-r, k).

Sidecar `centroids.json` (world coordinates, the DICOM patient system):

    {"format": "latentstore-synth-centroids/1", "space": "LPS", "units": "mm",
     "study_instance_uid": "2.25...", "series_instance_uid": "2.25..." (series 2),
     "centroids": [{"label": 20, "level": "L1", "x": -12.3, "y": 96.1, "z": 138.9}, ...]}

`label` is the VerSe label number; (x, y, z) the vertebral-body centroid in LPS mm (x = -RAS x,
y = -RAS y, z = RAS z), the same points as the NIfTI centroid files, so the two archives agree.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from ..levels import level_name
from .patient import Patient
from .phantom import Volumes


def write_dicom(out: Path, p: Patient, vols: Volumes, seed: int) -> Path:
    """Write patient `p`'s study under `out/dicom/<scan>/`; returns that folder."""
    folder = out / "dicom" / p.scan
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, p.index, 2])

    def uid(*parts) -> str:  # deterministic: the same seed gives the same UIDs
        return generate_uid(prefix=None, entropy_srcs=["latentstore-synth", str(seed), p.scan, *map(str, parts)])

    study, frame = uid("study"), uid("frame")
    base = _base(p, study, frame, rng)
    hu = vols.hu
    nx, ny, nz = hu.shape
    sx, sy, sz = p.acquisition.spacing
    ox, oy, oz = p.acquisition.origin
    series = uid("series", 2)
    images: list[tuple[Dataset, np.ndarray]] = []

    # Series 2: the scan. LPS of pixel (0, 0) of slice k is the RAS voxel (nx-1, ny-1, k) with x, y negated.
    order = rng.permutation(nz) + 1
    for k in range(nz):
        pos = [-(ox + (nx - 1) * sx), -(oy + (ny - 1) * sy), oz + k * sz]
        ds = _image(base, series, 2, "Spine bone", ["ORIGINAL", "PRIMARY", "AXIAL"], "BONE", uid("sop", 2, k),
                    int(order[k]), pos, [1, 0, 0, 0, 1, 0], [sy, sx], sz)
        images.append((ds, hu[::-1, ::-1, k].T))

    # Series 3: decoy, ~5 mm averaged slices at half resolution.
    step = max(int(round(5.0 / sz)), 2)
    dseries = uid("series", 3)
    for j, k0 in enumerate(range(0, nz - step + 1, step)):
        slab = hu[::-1, ::-1, k0:k0 + step].mean(axis=2)[::2, ::2]  # (nx/2, ny/2)
        pos = [-(ox + (nx - 1) * sx), -(oy + (ny - 1) * sy), oz + (k0 + 0.5 * (step - 1)) * sz]
        ds = _image(base, dseries, 3, "Abdomen soft 5 mm", ["DERIVED", "SECONDARY", "AXIAL"], "STANDARD",
                    uid("sop", 3, j), j + 1, pos, [1, 0, 0, 0, 1, 0], [2 * sy, 2 * sx], step * sz)
        images.append((ds, np.rint(slab.T).astype(np.int16)))

    # Series 1: localizer, a coronal projection (rows run inferior, columns to the patient's left).
    proj = np.clip((hu.astype(np.float32) + 1024).mean(axis=1) * 2, 0, 4095)  # (nx, nz)
    pos = [-(ox + (nx - 1) * sx), -(oy + 0.5 * (ny - 1) * sy), oz + (nz - 1) * sz]
    ds = _image(base, uid("series", 1), 1, "Topogram", ["ORIGINAL", "PRIMARY", "LOCALIZER"], "T80f",
                uid("sop", 1, 0), 1, pos, [1, 0, 0, 0, 0, -1], [sz, sx], sy * ny)
    images.append((ds, proj[::-1, ::-1].T.astype(np.int16) - 1024))

    names = rng.permutation(len(images)) + 1
    for (ds, hu_img), n in zip(images, names):
        _pixels(ds, hu_img, p.acquisition.dicom_dtype, p.acquisition.dicom_intercept)
        ds.save_as(folder / f"IM{n:05d}", enforce_file_format=True)
    _sidecar(folder / "centroids.json", vols, study, series)
    return folder


def _base(p: Patient, study: str, frame: str, rng) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.Modality = "CT"
    ds.PatientName = f"SYNTH^PATIENT{p.index + 1:04d}"
    ds.PatientID = p.scan
    ds.PatientBirthDate = ""
    ds.PatientSex = p.sex
    ds.PatientAge = f"{int(p.age):03d}Y"
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "synthetic phantom (latentstore synth); no real patient"
    ds.StudyInstanceUID = study
    ds.FrameOfReferenceUID = frame
    ds.StudyID = "1"
    ds.StudyDate = f"2020{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}"
    ds.StudyTime = "120000"
    ds.StudyDescription = "CT spine (synthetic)"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.Manufacturer = "latentstore"
    ds.ManufacturerModelName = "synth"
    ds.BodyPartExamined = "SPINE"
    ds.PatientPosition = "HFS"
    ds.KVP = 120
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    ds.WindowCenter = 400
    ds.WindowWidth = 1800
    return ds


def _image(base: Dataset, series: str, number: int, description: str, image_type: list[str], kernel: str,
           sop: str, instance: int, ipp, iop, spacing, thickness: float) -> Dataset:
    ds = Dataset()
    ds.update(base)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPInstanceUID = sop
    ds.SeriesInstanceUID = series
    ds.SeriesNumber = number
    ds.SeriesDescription = description
    ds.ImageType = image_type
    ds.ConvolutionKernel = kernel
    ds.InstanceNumber = instance
    ds.AcquisitionNumber = 1
    ds.ImagePositionPatient = [round(float(v), 4) for v in ipp]
    ds.ImageOrientationPatient = [float(v) for v in iop]
    ds.PixelSpacing = [round(float(v), 4) for v in spacing]
    ds.SliceThickness = round(float(thickness), 4)
    if number != 1:
        ds.SliceLocation = round(float(ipp[2]), 4)
    return ds


def _pixels(ds: Dataset, hu: np.ndarray, dtype: str, intercept: int) -> None:
    """Store HU image `hu` (rows, cols) as `dtype` with slope 1 and `intercept`."""
    stored = hu.astype(np.int32) - intercept
    if dtype == "uint16":
        arr, ds.PixelRepresentation, ds.BitsStored = np.clip(stored, 0, 4095).astype(np.uint16), 0, 12
    else:
        arr, ds.PixelRepresentation, ds.BitsStored = stored.astype(np.int16), 1, 16
    ds.BitsAllocated = 16
    ds.HighBit = ds.BitsStored - 1
    ds.Rows, ds.Columns = arr.shape
    ds.RescaleIntercept = intercept
    ds.PixelData = np.ascontiguousarray(arr).tobytes()


def _sidecar(path: Path, vols: Volumes, study: str, series: str) -> None:
    cents = [{"label": int(lab), "level": level_name(lab), "x": round(-c[0], 2), "y": round(-c[1], 2),
              "z": round(c[2], 2)} for lab, c in sorted(vols.centroids.items())]
    path.write_text(json.dumps({"format": "latentstore-synth-centroids/1", "space": "LPS", "units": "mm",
                                "study_instance_uid": study, "series_instance_uid": series,
                                "centroids": cents}, indent=1))
