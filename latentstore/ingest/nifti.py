"""Read NIfTI volumes (CT in HU, vertebra label masks) with one-line `InputError`s for broken files."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from ..errors import InputError

_INT16 = np.iinfo(np.int16)
# Voxels a volume may have, judged on its header before any data is decompressed: 600 M is a 512 x 512 x
# 2300 whole-body CT (1.2 GB as int16). A 2 MB gzip whose header claims 30000^3 voxels is refused here.
MAX_VOXELS = int(os.environ.get("LATENTSTORE_MAX_VOXELS", 600_000_000))
# What nibabel and gzip raise on truncated or corrupt files.
_BROKEN = (OSError, EOFError, ValueError, zlib.error, ImageFileError, HeaderDataError)


def read_volume(path: Path, what: str = "CT") -> tuple[np.ndarray, np.ndarray]:
    """`(array, affine)` of a 3D NIfTI (a 4D file with one volume counts as 3D); affine voxel -> RAS+ mm.

    The array is the stored data with scl_slope/scl_inter applied. Raises `InputError` for a missing,
    empty, truncated or corrupt file, a non-3D image, or non-finite voxels (NaN, inf).
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise InputError(f"{path.name}: cannot read {what} file ({e.strerror})") from None
    if size == 0:
        raise InputError(f"{path.name}: empty {what} file (0 bytes)")
    try:
        img = nib.load(path)
        shape = img.shape
        if len(shape) == 4 and shape[3] == 1:
            shape = shape[:3]
        if len(shape) != 3:
            dims = f"{len(img.shape)} dimensions {tuple(img.shape)}"
            raise InputError(f"{path.name}: {what} has {dims}, expected a 3D volume")
        if min(shape) < 2:
            raise InputError(f"{path.name}: {what} is a single slice {tuple(shape)}, expected a 3D volume")
        voxels = int(np.prod(shape, dtype=np.int64))
        if voxels > MAX_VOXELS:
            raise InputError(f"{path.name}: header claims {' x '.join(map(str, shape))} = {voxels:,} voxels, over the cap "
                             f"of {MAX_VOXELS:,} ($LATENTSTORE_MAX_VOXELS); not decompressed")
        _check_raw_zooms(path, what)
        data = np.asanyarray(img.dataobj).reshape(shape)
    except InputError:
        raise
    except _BROKEN as e:
        raise InputError(f"{path.name}: truncated or corrupt NIfTI ({_one_line(e)})") from None
    if np.issubdtype(data.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(data)))
        if bad:
            raise InputError(f"{path.name}: {what} has {bad} NaN/inf voxel(s)")
    affine = np.asarray(img.affine, float)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise InputError(f"{path.name}: {what} has a degenerate or non-finite affine")
    return data, affine


def _check_raw_zooms(path: Path, what: str) -> None:
    """nibabel repairs zero voxel sizes to 1 mm when it loads a header; a qform-only (or no-form) header
    with zero or non-finite pixdim would then be cut at the wrong scale. Judge the bytes as written."""
    from nibabel.openers import ImageOpener

    with ImageOpener(path) as f:
        raw = nib.Nifti1Header.from_fileobj(f, check=False)
    if int(raw["sform_code"]) > 0:
        return  # the sform carries the geometry; its spacing is checked on the affine
    zooms = np.asarray(raw["pixdim"][1:4], float)
    if not np.all(np.isfinite(zooms)) or np.any(zooms <= 0):
        shown = " x ".join(f"{z:g}" for z in zooms)
        raise InputError(f"{path.name}: {what} header has voxel size {shown} mm (zero or invalid pixdim without an sform)")


def read_ct(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """CT as `(hu, affine)`: int16 HU when the values are whole numbers in int16 range (the usual case,
    half the memory of float32), else float32."""
    data, affine = read_volume(path, "CT")
    if np.issubdtype(data.dtype, np.integer):
        if data.min() >= _INT16.min and data.max() <= _INT16.max:
            return data.astype(np.int16, copy=False), affine
        return data.astype(np.float32), affine
    data = data.astype(np.float32, copy=False)
    if data.min() >= _INT16.min and data.max() <= _INT16.max and np.array_equal(np.rint(data), data):
        return data.astype(np.int16), affine
    return data, affine


def read_mask(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Vertebra label mask as `(labels, affine)`, labels int16 (VerSe masks are often stored as float64)."""
    data, affine = read_volume(path, "mask")
    labels = np.rint(data).astype(np.int16)
    if np.issubdtype(data.dtype, np.floating) and not np.allclose(labels, data, atol=1e-3):
        raise InputError(f"{Path(path).name}: mask holds non-integer values: not a label mask")
    return labels, affine


def _one_line(e: Exception) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:160]
