"""Cut one 96x96 sagittal slice per vertebral body, and resample whole volumes to an isotropic grid.

Both work the same way: an *output grid* is a shape plus an affine (output index -> world RAS+ mm), and
every output voxel is interpolated from the source array at `inv(source_affine) @ output_affine @ idx`
(`scipy.ndimage.affine_transform`). Reorientation, resampling and the centroid mapping are thus one
world-coordinate transform: no `size - c` mirroring, no half-voxel shift from rescaling about the origin
(medical.md section 2, step 4). Outside the source's field of view the output is `pad_hu` (-1024 HU, air).

A slice grid is world-aligned, not aligned with the (possibly oblique) scanner axes:

    row i    (0 .. size-1) runs superior -> inferior   (world -S), `spacing_mm` apart
    column j (0 .. size-1) runs anterior -> posterior  (world -A), `spacing_mm` apart
    plane k  (0 .. n-1)    runs left -> right          (world +R), 1 mm apart, averaged into one image

The centroid sits at pixel (size // 2, size // 2) (row 48, column 48 for 96: the same convention as a
crop `vol[c - 48 : c + 48]`) and in the middle plane. Patient position on the table (supine, prone)
does not matter: world RAS+ is patient-based.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from ..levels import NAMES, ORDER
from ..schema import SLICE_PX

if TYPE_CHECKING:
    from .load import Volume

_INT16 = np.iinfo(np.int16)
# Sacrum and coccyx are not graded (VerSe does not annotate them either).
_NOT_GRADED = {26: "sacrum is not graded", 27: "coccyx is not graded"}


@dataclass(frozen=True)
class SlicingConfig:
    """How slices are cut; recorded (as `to_json()` and its `hash`) with every slice.

    Args:
        size: slice side in pixels (96).
        spacing_mm: pixel size in mm, in-plane (1.0).
        thickness_mm: number of 1 mm sagittal planes averaged into the slice, centred on the centroid;
            an odd whole number (1 = a single plane, 3 or 5 reduce noise and endplate partial volume).
        order: spline interpolation order (0 nearest, 1 linear, 3 cubic).
        pad_hu: value outside the scan's field of view, in HU (-1024, air).
        method: names the grid convention above; change it whenever the maths change, so that the
            hash of old and new slices differ.
    """

    size: int = SLICE_PX
    spacing_mm: float = 1.0
    thickness_mm: float = 1.0
    order: int = 1
    pad_hu: int = -1024
    method: str = "world-sagittal-v1"

    def __post_init__(self):
        if not (isinstance(self.size, int) and 8 <= self.size <= 1024):
            raise ValueError(f"size must be an int in 8..1024, got {self.size!r}")
        if not 0.1 <= self.spacing_mm <= 10:
            raise ValueError(f"spacing_mm must be in [0.1, 10] mm, got {self.spacing_mm!r}")
        t = self.thickness_mm
        if not (t >= 1 and float(t).is_integer() and int(t) % 2 == 1):
            raise ValueError(f"thickness_mm must be an odd whole number of 1 mm planes, got {t!r}")
        if self.order not in range(6):
            raise ValueError(f"order must be 0..5, got {self.order!r}")
        if not _INT16.min <= self.pad_hu <= _INT16.max:
            raise ValueError(f"pad_hu must fit int16, got {self.pad_hu!r}")
        # One canonical type per field, so that equal configs give the same JSON and hash (1 vs 1.0
        # would otherwise make a rerun with `--thickness 1` store every slice again).
        for name, kind in (("spacing_mm", float), ("thickness_mm", float), ("order", int), ("pad_hu", int)):
            object.__setattr__(self, name, kind(getattr(self, name)))

    @classmethod
    def from_dict(cls, data: dict) -> "SlicingConfig":
        """From a dict (TOML table or `json.loads(to_json())`); unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown slicing option(s): {', '.join(sorted(unknown))}")
        return cls(**data)

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no spaces): the same config always gives the same text."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @property
    def hash(self) -> str:
        """sha256 hex digest of `to_json()`."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()


@dataclass(frozen=True)
class CutSlice:
    """One vertebra's sagittal slice.

    Args:
        level: VerSe label number (20 = L1).
        image: (size, size) int16 HU; row 0 superior, column 0 anterior.
        centroid_mm: (3,) world RAS+ mm of the vertebral-body centroid, at pixel (size // 2, size // 2).
    """

    level: int
    image: np.ndarray
    centroid_mm: np.ndarray


def slice_affine(centroid_mm: np.ndarray, cfg: SlicingConfig) -> np.ndarray:
    """(4, 4) affine from slice index (plane k, row i, column j) to world RAS+ mm (see module doc)."""
    n = int(cfg.thickness_mm)
    c = cfg.size // 2
    axes = np.array([[1.0, 0, 0], [0, 0, -cfg.spacing_mm], [0, -cfg.spacing_mm, 0]]).T  # columns: k, i, j
    aff = np.eye(4)
    aff[:3, :3] = axes
    aff[:3, 3] = np.asarray(centroid_mm, float) - axes @ np.array([(n - 1) / 2, c, c])
    return aff


def resample_to(
    array: np.ndarray,
    affine: np.ndarray,
    out_affine: np.ndarray,
    out_shape: tuple[int, ...],
    order: int = 1,
    pad: float = -1024,
) -> np.ndarray:
    """Sample `array` (voxel -> world by `affine`) on the grid (`out_shape`, `out_affine`); float32.

    Only the block of `array` that the output grid touches is interpolated, so a 96x96 slice from a
    512x512x600 scan costs a few thousand voxels, not a full-volume spline prefilter.
    """
    m = np.linalg.inv(affine) @ out_affine  # output index -> source voxel index
    corners = np.array(np.meshgrid(*[[0, s - 1] for s in out_shape], indexing="ij")).reshape(3, -1)
    src = m[:3, :3] @ corners + m[:3, 3:4]
    # Margin: the interpolation support, plus room for the spline prefilter's boundary handling.
    margin = order + 1 if order <= 1 else order + 6
    lo = np.maximum(np.floor(src.min(axis=1)).astype(int) - margin, 0)
    hi = np.minimum(np.ceil(src.max(axis=1)).astype(int) + margin + 1, array.shape)
    if np.any(hi <= lo):  # the grid misses the volume entirely
        return np.full(out_shape, pad, np.float32)
    block = np.asarray(array[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]], dtype=np.float32)
    matrix = m[:3, :3]
    if np.allclose(matrix, np.diag(np.diag(matrix)), atol=1e-9):
        matrix = np.diag(matrix)  # axis-aligned: scipy's faster separable path, same result
    return ndimage.affine_transform(
        block, matrix, offset=m[:3, 3] - lo, output_shape=tuple(out_shape),
        output=np.float32, order=order, mode="constant", cval=float(pad),
    )


def to_int16(values: np.ndarray) -> np.ndarray:
    """Round and clip to int16 (HU)."""
    return np.clip(np.rint(values), _INT16.min, _INT16.max).astype(np.int16)


def cut_slices(vol: "Volume", cfg: SlicingConfig = SlicingConfig()) -> tuple[list[CutSlice], list[tuple[int, str]]]:
    """One sagittal slice per vertebral-body centroid of `vol`, superior to inferior (VerSe label order).

    Returns `(slices, skipped)`; `skipped` lists `(level, reason)` for levels without a slice: centroid
    outside the image, sacrum/coccyx, and whatever the loader already skipped (`vol.skipped`).
    """
    skipped = list(vol.skipped)
    inv = np.linalg.inv(vol.affine)
    shape = np.array(vol.hu.shape[:3])
    out_shape = (int(cfg.thickness_mm), cfg.size, cfg.size)
    slices = []
    rank = {label: i for i, label in enumerate(ORDER)}
    for level in sorted(vol.centroids_mm, key=lambda lab: rank.get(lab, len(ORDER))):
        c = np.asarray(vol.centroids_mm[level], float)
        if level not in NAMES:
            skipped.append((level, f"label {level} is not a VerSe vertebra label"))
            continue
        if level in _NOT_GRADED:
            skipped.append((level, _NOT_GRADED[level]))
            continue
        ijk = inv[:3, :3] @ c + inv[:3, 3]
        # Voxel i covers [i - 0.5, i + 0.5]: a centroid beyond that lies outside the scanned volume.
        if np.any(ijk < -0.5) or np.any(ijk > shape - 0.5):
            where = ", ".join(f"{v:.1f}" for v in c)
            skipped.append((level, f"centroid ({where}) mm lies outside the image"))
            continue
        planes = resample_to(vol.hu, vol.affine, slice_affine(c, cfg), out_shape, cfg.order, cfg.pad_hu)
        slices.append(CutSlice(level, to_int16(planes.mean(axis=0)), c.copy()))  # (size, size)
    return slices, skipped


def resample_iso(
    img_or_vol, spacing_mm: float = 1.0, order: int = 1, pad: float = -1024
) -> tuple[np.ndarray, np.ndarray]:
    """Reorient and resample a whole volume to a world-aligned RAS+ grid of `spacing_mm` mm voxels.

    Args:
        img_or_vol: a `Volume`, a nibabel image, or an `(array, affine)` pair.
        spacing_mm: output voxel size in mm.
        order: spline order; 0 for label masks.
        pad: value outside the field of view (-1024 HU for CT, 0 for masks).

    Returns `(array, affine)`: axes R, A, S (array[x, y, z]); the grid covers the input's voxel centres.
    Integer input gives the same dtype back (rounded, clipped); float input gives float32. Oblique
    scans come out axis-aligned, on the same world grid convention that `cut_slices` samples.
    """
    if hasattr(img_or_vol, "hu"):
        array, affine = img_or_vol.hu, img_or_vol.affine
    elif hasattr(img_or_vol, "dataobj"):
        array, affine = np.asanyarray(img_or_vol.dataobj), img_or_vol.affine
    else:
        array, affine = img_or_vol
    if array.ndim != 3:
        raise ValueError(f"expected a 3D volume, got shape {array.shape}")
    corners = np.array(np.meshgrid(*[[0, s - 1] for s in array.shape], indexing="ij")).reshape(3, -1)
    world = affine[:3, :3] @ corners + affine[:3, 3:4]
    lo, hi = world.min(axis=1), world.max(axis=1)
    out_shape = tuple(int(n) for n in np.floor((hi - lo) / spacing_mm + 1e-6).astype(int) + 1)
    out_affine = np.diag([spacing_mm, spacing_mm, spacing_mm, 1.0])
    out_affine[:3, 3] = lo
    out = resample_to(array, affine, out_affine, out_shape, order, pad)
    if np.issubdtype(array.dtype, np.integer):
        info = np.iinfo(array.dtype)
        out = np.clip(np.rint(out), info.min, info.max).astype(array.dtype)
    return out, out_affine
