"""Load one scanned CT (`ScanSource`) as a `Volume`: HU array, voxel -> world affine, body centroids in world mm."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError
from . import dicom, nifti
from .centroids import body_centroids_from_mask, read_centroid_file
from .sources import ScanSource

MIN_SPACING_MM = 0.1
MAX_SPACING_MM = 10.0
HU_FLOOR = -1024  # air; lower values are padding or noise and are clipped to it
# Every CT of a body holds fat (about -100 HU) or air (-1000 HU); an image whose lowest value is above
# this is not in Hounsfield units (MR, PET, a mask, a CT stored without its rescale intercept).
NON_CT_MIN_HU = -50


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
    hu = np.maximum(hu, HU_FLOOR).astype(hu.dtype, copy=False)  # a new array: never write into a memmap
    if src.centroids is not None:
        centroids, skipped = read_centroid_file(src.centroids, affine, hu.shape)
    elif src.mask is not None:
        labels, mask_affine = nifti.read_mask(src.mask)
        try:
            centroids, skipped = body_centroids_from_mask(labels, mask_affine)
        except InputError as e:
            raise InputError(f"{src.mask.name}: {e}") from None
    else:
        raise InputError(f"{name}: no centroid file and no vertebra mask")
    return Volume(hu, affine, centroids, src, skipped)
