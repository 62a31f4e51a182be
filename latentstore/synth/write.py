"""Write one scan in the VerSe layout, and the archive's tables.

Per scan (subject-based VerSe naming, `reference/medical.md` 1.2-1.3):

    rawdata/sub-synthNNNN/sub-synthNNNN_ct.nii.gz               int16 HU, oriented as `scans.csv` says
    derivatives/sub-synthNNNN/sub-synthNNNN_seg-vert_msk.nii.gz uint8 VerSe labels (whole vertebrae)
    derivatives/sub-synthNNNN/sub-synthNNNN_seg-subreg_ctd.json direction entry, then body centroids in
                                                                voxel coordinates of the files above
    derivatives/sub-synthNNNN/sub-synthNNNN_seg-vert_snp.png    annotated mid-sagittal preview

The NIfTI affines are exact: voxel (i, j, k) lies at `affine @ (i, j, k, 1)` in RAS+ mm (qform and
sform code 1, scanner), with no obliquity; only the axis order and signs vary between scans.

Tables (CSV, one row per vertebra or scan, written as patients finish, in patient order):

- `ground_truth.csv`: scan, patient, split (train/val/test, by patient), level (VerSe label), level_name,
  grade (Genant 0-3 from the measured loss), shape (none/wedge/biconcave/crush: the deformation drawn, even where
  a --boundary one measures below 20 %), shape_code (0-3),
  ha_mm, hm_mm, hp_mm (heights at 10/50/90 % of the body's depth from the anterior edge, mid-sagittal
  plane rasterised at 0.1 mm), href_mm (mean hp of the visible neighbours), depth_mm, height_loss
  (= max of loss_wedge, loss_biconcave, loss_crush), target_loss, deformation (the generating `d`,
  not the grade), centroid_x/y/z (body centroid, world RAS mm), trabecular_hu; then what is no
  fracture (drawn in the CT only, not in the mask, so the heights and grade above ignore it):
  lookalike (none / short: all heights reduced alike, 9-16 % below the neighbours' / developmental_wedge:
  anterior height 9-16 % lower; both measure G0, loss at most 0.17), osteophyte (1 = anterior lipping at
  either rim), schmorl (1 = a Schmorl's node in an endplate), vacuum_disc (1 = gas in the disc below this
  vertebra), implant (1 = pedicle screws in this vertebra).
- `grades.csv`: VerSe'19-style wide table: verse_ID, dataset (training/validation/test), one
  `<LEVEL>_fx-g` column per level T1..L6 (plus any cervical levels asked for) holding 0-3, then one
  `<LEVEL>_fx-s` shape column per level (0 none, 1 wedge, 2 biconcave, 3 crush); `x` where the level is
  not visible.
- `scans.csv`: scan, patient, split, age, sex, levels, n_vertebrae, orientation, spacing_x/y/z (world
  axes, mm), shape (array shape as stored), acquisition, noise_hu (SD of the correlated CT noise),
  blur_mm, trabecular_hu, contrast, dicom_dtype, dicom_intercept, implant (none / pedicle_screws: screws
  and rods with metal streaks, in about 4 % of the scans).
"""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, ornt_transform

from ..levels import level_name
from ..verse import Centroids, write_centroids
from .measure import SHAPES
from .patient import LOOKALIKES, Patient
from .phantom import Volumes

GT_COLUMNS = ["scan", "patient", "split", "level", "level_name", "grade", "shape", "shape_code", "ha_mm", "hm_mm",
              "hp_mm", "href_mm", "depth_mm", "height_loss", "loss_wedge", "loss_biconcave", "loss_crush",
              "target_loss", "deformation", "centroid_x", "centroid_y", "centroid_z", "trabecular_hu",
              "lookalike", "osteophyte", "schmorl", "vacuum_disc", "implant"]
SCAN_COLUMNS = ["scan", "patient", "split", "age", "sex", "levels", "n_vertebrae", "orientation", "spacing_x",
                "spacing_y", "spacing_z", "shape", "acquisition", "noise_hu", "blur_mm", "trabecular_hu", "contrast",
                "dicom_dtype", "dicom_intercept", "implant"]
DATASET = {"train": "training", "val": "validation", "test": "test"}


def grade_levels(labels: tuple[int, ...]) -> list[int]:
    """Levels with columns in the wide grade table: T1..L6 as in VerSe'19, plus cervical ones asked for."""
    return sorted({lab for lab in labels if lab <= 7}) + list(range(8, 26))


def reorient(vols: Volumes, axcodes: tuple[str, str, str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hu, labels, affine) with array axes permuted/flipped to `axcodes`; the world stays put."""
    t = ornt_transform(axcodes2ornt(("R", "A", "S")), axcodes2ornt(axcodes))
    affine = vols.affine @ inv_ornt_aff(t, vols.hu.shape)
    hu = np.ascontiguousarray(apply_orientation(vols.hu, t))
    labels = np.ascontiguousarray(apply_orientation(vols.labels, t))
    return hu, labels, affine


def _nifti(data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    img = nib.Nifti1Image(data, affine)
    img.header.set_data_dtype(data.dtype)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, path)


def write_verse(out: Path, p: Patient, vols: Volumes) -> dict:
    """Write the scan's CT, mask and centroid file; returns the paths and the written affine."""
    sub = p.scan
    raw, der = out / "rawdata" / sub, out / "derivatives" / sub
    raw.mkdir(parents=True, exist_ok=True)
    der.mkdir(parents=True, exist_ok=True)
    codes = p.acquisition.axcodes
    hu, labels, affine = reorient(vols, codes)
    assert nib.aff2axcodes(affine) == codes
    paths = {"ct": raw / f"{sub}_ct.nii.gz", "mask": der / f"{sub}_seg-vert_msk.nii.gz",
             "centroids": der / f"{sub}_seg-subreg_ctd.json", "preview": der / f"{sub}_seg-vert_snp.png"}
    _nifti(hu, affine, paths["ct"])
    _nifti(labels, affine, paths["mask"])
    inv = np.linalg.inv(affine)
    points = {lab: tuple(float(x) for x in inv[:3, :3] @ np.asarray(c) + inv[:3, 3])
              for lab, c in vols.centroids.items()}
    write_centroids(paths["centroids"], Centroids(codes, points))
    return {"paths": paths, "affine": affine, "shape": hu.shape}


def gt_rows(p: Patient, vols: Volumes, split: str) -> list[dict]:
    """Ground-truth rows (one per visible vertebra) of a patient."""
    rows = []
    for vb in p.visible:
        m = p.measured[vb.label]
        c = vols.centroids.get(vb.label, (np.nan,) * 3)
        rows.append({
            "scan": p.scan, "patient": p.scan, "split": split, "level": vb.label, "level_name": level_name(vb.label),
            "grade": m.grade, "shape": SHAPES[vb.shape], "shape_code": vb.shape,
            "ha_mm": round(m.heights.ha, 2), "hm_mm": round(m.heights.hm, 2), "hp_mm": round(m.heights.hp, 2),
            "href_mm": round(m.href, 2), "depth_mm": round(m.heights.depth, 2), "height_loss": round(m.loss, 4),
            "loss_wedge": round(m.parts[0], 4), "loss_biconcave": round(m.parts[1], 4),
            "loss_crush": round(m.parts[2], 4), "target_loss": round(p.targets[vb.label][1], 4),
            "deformation": round(vb.d, 4), "centroid_x": round(c[0], 2), "centroid_y": round(c[1], 2),
            "centroid_z": round(c[2], 2), "trabecular_hu": round(vb.trab_hu, 1),
            "lookalike": LOOKALIKES[vb.lookalike], "osteophyte": int(vb.osteo_sup > 0 or vb.osteo_inf > 0),
            "schmorl": int(vb.schmorl > 0), "vacuum_disc": int(vb.vacuum), "implant": int(vb.implant),
        })
    return rows


def scan_row(p: Patient, split: str, shape: tuple[int, ...]) -> dict:
    """The scans-table row of a patient."""
    a = p.acquisition
    vis = p.visible
    return {
        "scan": p.scan, "patient": p.scan, "split": split, "age": round(p.age, 1), "sex": p.sex,
        "levels": f"{level_name(vis[0].label)}-{level_name(vis[-1].label)}", "n_vertebrae": len(vis),
        "orientation": "".join(a.axcodes), "spacing_x": a.spacing[0], "spacing_y": a.spacing[1],
        "spacing_z": a.spacing[2], "shape": "x".join(str(n) for n in shape), "acquisition": a.kind,
        "noise_hu": round(a.noise_hu, 1), "blur_mm": round(a.blur_mm, 2), "trabecular_hu": round(p.trab_hu, 1),
        "contrast": int(p.tissue["contrast"]), "dicom_dtype": a.dicom_dtype, "dicom_intercept": a.dicom_intercept,
        "implant": p.implant,
    }


def wide_row(rows: list[dict], scan: str, split: str, levels: list[int]) -> dict:
    """The VerSe-style wide grade row of a scan from its ground-truth rows."""
    by = {r["level"]: r for r in rows}
    row = {"verse_ID": scan, "dataset": DATASET[split]}
    row.update({f"{level_name(lab)}_fx-g": by[lab]["grade"] if lab in by else "x" for lab in levels})
    # A deformation measured below 20 % (possible with --boundary) is no fracture: case 0, as in VerSe.
    row.update({f"{level_name(lab)}_fx-s": (by[lab]["shape_code"] if by[lab]["grade"] else 0) if lab in by else "x"
                for lab in levels})
    return row


class Tables:
    """The three CSV tables, appended to as patients finish (so memory stays flat)."""

    def __init__(self, out: Path, levels: list[int]):
        self.levels = levels
        wide = ["verse_ID", "dataset"] + [f"{level_name(lab)}_fx-g" for lab in levels] + [
            f"{level_name(lab)}_fx-s" for lab in levels]
        self._files = [open(out / name, "w", newline="") for name in ("ground_truth.csv", "grades.csv", "scans.csv")]
        self._writers = [csv.DictWriter(f, cols) for f, cols in zip(self._files, (GT_COLUMNS, wide, SCAN_COLUMNS))]
        for w in self._writers:
            w.writeheader()

    def add(self, gt: list[dict], scan: dict) -> None:
        self._writers[0].writerows(gt)
        self._writers[1].writerow(wide_row(gt, scan["scan"], scan["split"], self.levels))
        self._writers[2].writerow(scan)
        for f in self._files:
            f.flush()

    def close(self) -> None:
        for f in self._files:
            f.close()
