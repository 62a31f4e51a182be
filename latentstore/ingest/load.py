"""Load one scanned CT (`ScanSource`) as a `Volume`: HU array, voxel -> world affine, body centroids in world mm."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError
from . import dicom, nifti, totalseg
from .centroids import body_centroids_from_mask, check_level_order, check_on_mask, read_centroid_file
from .sources import ScanSource

MIN_SPACING_MM = 0.1
MAX_SPACING_MM = 10.0
HU_FLOOR = -1024  # air; lower values are padding or noise and are clipped to it
# Every CT of a body holds fat (about -100 HU) or air (-1000 HU); an image whose lowest value is above
# this is not in Hounsfield units (MR, PET, a mask, a CT stored without its rescale intercept).
NON_CT_MIN_HU = -50
# What a CT looks like, measured on a subsample of every 4th voxel per axis (gates on volumes that load
# fine but are not CT: random voxels, a wrong scl_slope, a segmentation or an MR saved as the CT):
MAX_HU = 4000  # after rescale; metal reaches ~3071 (12-bit) and beyond only in a tiny share of voxels
MAX_ABOVE_SHARE = 0.001
MIN_SOFT_SHARE = 0.05  # soft tissue, fat and discs (-200..300 HU) surround every spine
MIN_NEIGHBOUR_CORR = 0.3  # neighbouring voxels of an image are alike; noise is not


@dataclass
class Volume:
    """A loaded CT.

    Args:
        hu: HU, as stored (any orientation): int16, or float32 for non-integer HU; (I, J, K).
        affine: (4, 4) voxel index -> world RAS+ mm.
        centroids_mm: VerSe label -> (3,) world RAS+ mm of the vertebral-body centroid.
        source: what was loaded.
        skipped: (label, reason) for vertebrae named in the centroid source but not usable (NaN
            centroid in the file, a mask fragment too small); `cut_slices` passes them on.
    """

    hu: np.ndarray
    affine: np.ndarray
    centroids_mm: dict[int, np.ndarray]
    source: ScanSource
    skipped: list[tuple[int, str]] = field(default_factory=list)

    @property
    def spacing_mm(self) -> np.ndarray:
        """(3,) voxel size in mm along array axes 0, 1, 2."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)


def load_scan(src: ScanSource) -> Volume:
    """Read the CT and its centroids; raise `InputError` with a one-line reason when the scan is unusable.

    Rejected: missing, empty, truncated or corrupt files; images that are not 3D; NaN/inf voxels;
    voxel spacing outside 0.1-10 mm; values that are not CT HU (lowest value above -50 HU) and non-CT
    DICOM; missing or unparsable centroid files and masks. HU below -1024 are clipped to -1024.
    """
    if src.format == "nifti":
        hu, affine = nifti.read_ct(src.ct)
    elif src.format == "dicom":
        hu, affine = dicom.read_series(src.files)
    else:
        raise InputError(f"{src.ct}: unknown scan format {src.format!r}")
    name = src.ct.name
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    if np.any(spacing < MIN_SPACING_MM) or np.any(spacing > MAX_SPACING_MM):
        shown = " x ".join(f"{s:.3g}" for s in spacing)
        raise InputError(f"{name}: absurd voxel spacing {shown} mm (expected {MIN_SPACING_MM}-{MAX_SPACING_MM} mm)")
    low, high = float(hu.min()), float(hu.max())
    if low > NON_CT_MIN_HU:
        raise InputError(f"{name}: values {low:.0f} to {high:.0f} hold no air or fat: not a CT in HU")
    check_ct_values(hu, name)
    hu = np.maximum(hu, HU_FLOOR).astype(hu.dtype, copy=False)  # a new array: never write into a memmap
    mask = None
    if src.mask is not None:
        mask = read_label_mask(src)
    if src.centroids is not None:
        centroids, skipped = read_centroid_file(src.centroids, affine, hu.shape)
    elif mask is not None:
        try:
            centroids, skipped = body_centroids_from_mask(*mask)
        except InputError as e:
            raise InputError(f"{src.mask.name}: {e}") from None
    else:
        raise InputError(f"{name}: no centroid file and no vertebra mask")
    # A vertebra is stored under its own level or not at all.
    check_level_order(centroids)
    if mask is not None and src.centroids is not None:
        centroids, off = check_on_mask(centroids, *mask)
        skipped = skipped + off
        if not centroids:
            raise InputError(f"no centroid lies on its own label in the mask ({off[0][1]}; and {len(off) - 1} more)")
    return Volume(hu, affine, centroids, src, skipped)


def read_label_mask(src: ScanSource) -> tuple[np.ndarray, np.ndarray]:
    """The scan's vertebra mask as (VerSe-numbered labels, affine), whatever wrote it."""
    if src.mask_format == "totalseg":
        return totalseg.read_folder(src.mask)
    if src.mask_format == "totalseg-ml":
        return totalseg.read_multilabel(src.mask)
    return nifti.read_mask(src.mask)


def check_ct_values(hu: np.ndarray, name: str) -> None:
    """Raise `InputError` with the measured reason when the values are not CT-like (see the constants)."""
    sample = np.asarray(hu[::4, ::4, ::4] if min(hu.shape) >= 8 else hu, dtype=np.float32)
    above = float(np.mean(sample > MAX_HU))
    if above > MAX_ABOVE_SHARE:
        raise InputError(f"{name}: {above:.1%} of voxels above {MAX_HU} HU (max {float(sample.max()):.0f}): not CT "
                         "values (a wrong rescale slope, or random data?)")
    soft = float(np.mean((sample >= -200) & (sample <= 300)))
    if soft < MIN_SOFT_SHARE:
        raise InputError(f"{name}: only {soft:.1%} of voxels in -200..300 HU (soft tissue, fat, discs): not a CT of a body")
    full = np.asarray(hu[: min(hu.shape[0], 64), ::4, ::4], dtype=np.float32)  # adjacent voxels along axis 0
    a, b = full[:-1].ravel(), full[1:].ravel()
    if a.std() > 0 and b.std() > 0:
        corr = float(np.corrcoef(a, b)[0, 1])
        if corr < MIN_NEIGHBOUR_CORR:
            raise InputError(f"{name}: neighbouring voxels correlate at {corr:.2f} (CT > {MIN_NEIGHBOUR_CORR}): "
                             "noise, not an image")
