"""Vertebral-body heights and the Genant grade, measured on a label mask.

Genant's semiquantitative grade comes from the largest relative loss of the anterior, middle or
posterior height (Ha, Hm, Hp) of the vertebral body on its mid-sagittal plane:

    loss = max(1 - Ha/Hp, 1 - Hm/max(Ha, Hp), 1 - Hp/Href)

wedge (anterior), biconcave (middle) and crush (posterior height against `Href`, the mean posterior
height of the neighbouring vertebrae, because a uniformly crushed body has no internal reference).
G0 loss < 20 %, G1 20-25 %, G2 25-40 %, G3 > 40 % (the band edges belong to the higher grade, except
exactly 40 % which is still G2).

Heights follow the 6-point morphometry idea: the body's extent along its own anterior-posterior axis
is measured on the plane, and the heights are the body's extent along its superior axis at 10 %,
50 % and 90 % of that depth from the anterior edge. Everything here is in mm.

Two entry points: `heights_from_plane` for a 2-D body mask already in the body's frame (what the
phantom generator rasterises at 0.1 mm), and `measure_scan` for a 3-D VerSe-style label mask plus body
centroids in world coordinates (what an evaluation has).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..levels import ORDER

THRESHOLDS = (0.20, 0.25, 0.40)
SHAPES = ("none", "wedge", "biconcave", "crush")  # index = VerSe "case" code
FRACTIONS = (0.1, 0.5, 0.9)  # anterior, middle, posterior measuring positions (fraction of depth)


@dataclass(frozen=True)
class Heights:
    """Body heights on the mid-sagittal plane, in mm.

    Args:
        ha: anterior height (at 10 % of the depth from the anterior edge).
        hm: middle height (50 %).
        hp: posterior height (90 %).
        depth: anterior-posterior extent of the body.
    """

    ha: float
    hm: float
    hp: float
    depth: float


@dataclass(frozen=True)
class Measurement:
    """Heights plus the reference height and the resulting loss and grade of one vertebra."""

    heights: Heights
    href: float
    loss: float
    parts: tuple[float, float, float]  # (wedge, biconcave, crush) losses
    grade: int


def genant_grade(loss: float) -> int:
    """Genant grade 0-3 from a relative height loss (0.23 -> 1)."""
    if loss < THRESHOLDS[0]:
        return 0
    if loss < THRESHOLDS[1]:
        return 1
    if loss <= THRESHOLDS[2]:
        return 2
    return 3


def height_loss(h: Heights, href: float | None = None) -> tuple[float, tuple[float, float, float]]:
    """`(loss, (wedge, biconcave, crush))`; without `href` the crush term is 0."""
    wedge = 1.0 - h.ha / h.hp if h.hp > 0 else 1.0
    top = max(h.ha, h.hp)
    biconcave = 1.0 - h.hm / top if top > 0 else 1.0
    crush = 1.0 - h.hp / href if href else 0.0
    parts = (float(wedge), float(biconcave), float(crush))
    return max(parts), parts


def measure(h: Heights, href: float | None) -> Measurement:
    """Loss and grade of heights `h` against the neighbours' mean posterior height `href` (mm)."""
    loss, parts = height_loss(h, href)
    return Measurement(h, float(href or h.hp), loss, parts, genant_grade(loss))


def heights_from_plane(body: np.ndarray, step: float, seed: tuple[int, int] | None = None) -> Heights:
    """Heights of the body in a 2-D mask sampled in the body's frame.

    Args:
        body: boolean array (v, u): rows run inferior -> superior, columns posterior -> anterior.
        step: pixel size in mm (both axes).
        seed: (row, col) of a pixel inside the body; only its connected component counts, so the
            posterior elements of a whole-vertebra mask are ignored. Default: the largest component.
    """
    comp = _component(body, seed)
    cols = np.flatnonzero(comp.any(axis=0))
    if cols.size == 0:
        raise ValueError("no body pixels on the plane")
    c0, c1 = int(cols[0]), int(cols[-1])
    depth_px = c1 - c0 + 1
    counts = comp.sum(axis=0)
    # Position measured from the anterior pixel edge (c1 + 0.5) toward posterior.
    hs = [float(counts[min(max(int(np.floor(c1 + 0.5 - f * depth_px)), c0), c1)]) * step for f in FRACTIONS]
    return Heights(hs[0], hs[1], hs[2], depth_px * step)


def sample_plane(
    mask: np.ndarray,
    affine: np.ndarray,
    label: int,
    centre: np.ndarray,
    axis: np.ndarray | None = None,
    half: float = 40.0,
    step: float = 0.25,
) -> np.ndarray:
    """The mid-sagittal plane of one vertebra, resampled (nearest neighbour) in the body's frame.

    Args:
        mask: 3-D label mask (VerSe label numbers).
        affine: voxel -> world (RAS mm) of `mask`.
        label: the vertebra's label.
        centre: body centroid in world mm; the plane passes through it.
        axis: the body's superior direction in world coordinates (e.g. from the neighbouring
            centroids); default world superior.
        half: half-size of the sampled square (mm).
        step: sampling step (mm).

    Returns a boolean (v, u) array as `heights_from_plane` expects; the centre is pixel (n//2, n//2).
    """
    v_axis = np.asarray(axis if axis is not None else (0.0, 0.0, 1.0), float)
    v_axis = v_axis / np.linalg.norm(v_axis)
    ant = np.array([0.0, 1.0, 0.0]) - v_axis[1] * v_axis  # anterior, made orthogonal to the axis
    u_axis = ant / np.linalg.norm(ant)
    t = np.arange(-half, half + step / 2, step)
    vv, uu = np.meshgrid(t, t, indexing="ij")
    world = np.asarray(centre, float)[:, None] + u_axis[:, None] * uu.ravel() + v_axis[:, None] * vv.ravel()
    inv = np.linalg.inv(affine)
    vox = inv[:3, :3] @ world + inv[:3, 3:4]
    sampled = ndimage.map_coordinates(mask, vox, order=0, mode="constant", cval=0)
    return (sampled == label).reshape(uu.shape)


def neighbours(labels: list[int] | set[int], label: int) -> list[int]:
    """Labels adjacent to `label` in the spine among those present. T13 and L6 are optional vertebrae:
    they separate T12 from L1 (L5 from the sacrum) only when present; any other gap means no neighbour."""
    present = set(labels)
    order = [lab for lab in ORDER if lab not in (25, 28) or lab in present]
    i = order.index(label)
    return [order[j] for j in (i - 1, i + 1) if 0 <= j < len(order) and order[j] in present]


def measure_scan(
    mask: np.ndarray, affine: np.ndarray, centroids: dict[int, tuple[float, float, float]], step: float = 0.25
) -> dict[int, Measurement]:
    """Heights, loss and grade of every vertebra with a centroid.

    Args:
        mask: 3-D VerSe label mask (whole vertebrae; posterior elements are dropped by connectivity).
        affine: voxel -> world (RAS mm).
        centroids: label -> body centroid in world mm (RAS).
        step: plane sampling step in mm; finer than the voxels gains nothing but smoothness.

    The body's superior axis is first the chord between its neighbours' centroids (or to the one
    neighbour present), which follows kyphosis and lordosis, then refined from the body's own posterior
    wall on the plane (a wedged vertebra tilts away from the chord; its posterior wall stays straight).
    `Href` is the mean `Hp` of the adjacent vertebrae present. Expect errors of about half a voxel
    per endplate: at 1 mm, heights within ~1 mm; with 3 mm slices, G1 (a 1.25 mm band on a 25 mm
    body) cannot be told reliably from G0/G2.
    """
    labels = sorted(centroids)
    heights: dict[int, Heights] = {}
    for lab in labels:
        c = np.asarray(centroids[lab], float)
        axis = _axis(centroids, labels, lab)
        for _ in range(3):  # the chord is a first guess; the body's own posterior wall refines it
            plane = sample_plane(mask, affine, lab, c, axis, step=step)
            n = plane.shape[0] // 2
            comp = _component(plane, (n, n) if plane[n, n] else None)
            axis, tilt = _wall_axis(comp, axis)
            if abs(tilt) < np.deg2rad(0.5):
                break
        heights[lab] = heights_from_plane(comp, step)
    out = {}
    for lab in labels:
        nb = neighbours(labels, lab)
        href = float(np.mean([heights[n].hp for n in nb])) if nb else None
        out[lab] = measure(heights[lab], href)
    return out


def _axis(centroids: dict[int, tuple[float, float, float]], labels: list[int], label: int) -> np.ndarray | None:
    """Superior direction at `label`: chord from the inferior to the superior neighbour present."""
    nb = neighbours(labels, label)
    if not nb:
        return None
    by_order = sorted(nb + [label], key=ORDER.index)  # superior first
    axis = np.asarray(centroids[by_order[0]], float) - np.asarray(centroids[by_order[-1]], float)
    return axis / np.linalg.norm(axis)


def _wall_axis(comp: np.ndarray, axis: np.ndarray | None) -> tuple[np.ndarray, float]:
    """The body's superior axis (world) from the posterior wall seen on the plane, and the tilt (rad)
    between it and the plane's axis. The wall is fitted on the middle 60 % of the body's rows, away from
    the rounded corners; wedge, biconcave and crush deformations all keep it straight."""
    v_axis = np.asarray(axis if axis is not None else (0.0, 0.0, 1.0), float)
    v_axis = v_axis / np.linalg.norm(v_axis)
    rows = np.flatnonzero(comp.any(axis=1))
    if rows.size < 8:
        return v_axis, 0.0
    lo, hi = rows[0] + 0.2 * rows.size, rows[-1] - 0.2 * rows.size
    sel = rows[(rows >= lo) & (rows <= hi)]
    post = np.array([np.flatnonzero(comp[r])[0] for r in sel], float)
    slope = float(np.polyfit(sel, post, 1)[0])  # columns (anterior) per row (superior)
    ant = np.array([0.0, 1.0, 0.0]) - v_axis[1] * v_axis
    u_axis = ant / np.linalg.norm(ant)
    new = v_axis + slope * u_axis
    return new / np.linalg.norm(new), float(np.arctan(slope))


def _component(mask: np.ndarray, seed: tuple[int, int] | None) -> np.ndarray:
    lab, n = ndimage.label(mask)
    if n == 0:
        return mask.astype(bool)
    if seed is not None and lab[seed]:
        return lab == lab[seed]
    sizes = np.bincount(lab.ravel())[1:]
    return lab == (int(np.argmax(sizes)) + 1)
