"""Rasterise a planned patient into a CT volume (HU) and a VerSe label mask.

The volume lives on the scan's own grid in canonical RAS order (array axes = world x, y, z); the writer
reorients it afterwards. Edges get analytic partial volume: every structure is a signed distance field
(mm), and a voxel takes the fraction `clip(0.5 - sdf / L, 0, 1)` of it, where `L` is the voxel's extent
along the surface normal, so a 1 mm cortex in a 3 mm slice is a third as bright, as on a real scanner.
Structures are painted from the outside in (air, body, fat, muscle, organs, canal, discs, posterior
elements, bodies: shell, endplates, trabecular core), then the PSF blur and the noise are applied.

Intensities (HU): air -1024, fat about -90, soft tissue 30-45, muscle 35-60, discs 75-95, CSF 15,
trabecular bone 90-230 by age and sex (Pickhardt's norms), cortex 700-1200, endplates brighter;
Gaussian PSF sigma 0.5-1 mm, Gaussian noise sigma 10-30 HU.

The mask holds the VerSe label of each visible vertebra (body and posterior elements) at voxels whose
centre is inside it; context vertebrae cut by the field of view are drawn but not labelled.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from .anatomy import (A_ANT, WALL, Vertebra, body_extent, body_layers, canal_sdf, local_extent, posterior_sdf,
                      radial_sdf, rim_heights, smax, surfaces)
from .patient import Patient
from .tissue import background, paint

CSF = 15.0


@dataclass
class Volumes:
    """A rasterised scan on its canonical RAS grid.

    Args:
        hu: int16 CT in HU, shape (nx, ny, nz).
        labels: uint8 VerSe label mask, same shape.
        affine: voxel -> world (RAS mm) of the canonical grid.
        centroids: label -> vertebral-body centroid, world RAS mm (mean of the body's voxel centres).
    """

    hu: np.ndarray
    labels: np.ndarray
    affine: np.ndarray
    centroids: dict[int, tuple[float, float, float]]


class _Grid:
    def __init__(self, origin, spacing, shape):
        self.sp = np.asarray(spacing, float)
        self.shape = tuple(shape)
        self.axes = [np.float32(o) + np.arange(n, dtype=np.float32) * np.float32(s)
                     for o, s, n in zip(origin, spacing, shape)]

    def box(self, vb_centre, axes, ext) -> tuple[tuple[slice, ...], list[np.ndarray]] | None:
        """Index box covering a local box `ext` ((w0,w1),(u0,u1),(v0,v1)) of a frame, and its world axes."""
        corners = np.array([np.asarray(vb_centre) + axes[0] * a + axes[1] * b + axes[2] * c
                            for a in ext[0] for b in ext[1] for c in ext[2]])
        sl = []
        for k in range(3):
            lo = int(np.floor((corners[:, k].min() - self.axes[k][0]) / self.sp[k]))
            hi = int(np.ceil((corners[:, k].max() - self.axes[k][0]) / self.sp[k])) + 1
            lo, hi = max(lo, 0), min(hi, self.shape[k])
            if hi - lo < 1:
                return None
            sl.append(slice(lo, hi))
        return tuple(sl), [self.axes[k][sl[k]] for k in range(3)]

    def sub(self, lo, hi) -> tuple[tuple[slice, ...], list[np.ndarray]] | None:
        """Index box covering the world axis-aligned box [lo, hi] (mm), and its world axes."""
        return self.box(np.zeros(3), [np.eye(3)[k] for k in range(3)], list(zip(lo, hi)))


def local_coords(vb: Vertebra, ax: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(w, u, v) of box voxels in the vertebra's frame; w is (nx,1,1), u and v are (1,ny,nz)."""
    c = np.asarray(vb.centre, np.float32)
    s, co = np.float32(np.sin(vb.theta)), np.float32(np.cos(vb.theta))
    y = (ax[1] - c[1])[None, :, None]
    z = (ax[2] - c[2])[None, None, :]
    return (ax[0] - c[0])[:, None, None], y * co - z * s, y * s + z * co


def ramp(sdf: np.ndarray, sp: np.ndarray) -> np.ndarray | float:
    """Extent (mm) of each voxel along the local surface normal, from the SDF's gradient."""
    if min(sdf.shape) < 2:
        return float(np.mean(sp))
    g = np.gradient(sdf, *sp)
    n = np.sqrt(g[0] ** 2 + g[1] ** 2 + g[2] ** 2) + 1e-6
    return (np.abs(g[0]) * sp[0] + np.abs(g[1]) * sp[1] + np.abs(g[2]) * sp[2]) / n


def pv(sdf: np.ndarray, sp: np.ndarray, length=None) -> np.ndarray:
    """Partial-volume fraction of each voxel inside the shape, from its SDF (mm) and the voxel size;
    nested layers of one shape share the outer layer's `length` (their normals are parallel)."""
    length = ramp(sdf, sp) if length is None else length
    return np.clip(0.5 - sdf / length, 0.0, 1.0).astype(np.float32)


def rasterise(p: Patient, seed: int) -> Volumes:
    """CT volume and label mask of patient `p`; `seed` drives texture and noise only."""
    rng = np.random.default_rng([seed, p.index, 1])
    acq = p.acquisition
    grid = _Grid(acq.origin, acq.spacing, acq.shape)
    vol = background(p, grid, rng)
    labels = np.zeros(grid.shape, np.uint8)
    vs = p.vertebrae
    for vb in vs:
        ext, uc = local_extent(vb), vb.canal_centre()
        hit = grid.box(vb.centre, vb.axes(), ((-vb.canal_w - 3, vb.canal_w + 3),
                                              (uc - vb.canal_ap - 3, uc + vb.canal_ap + 3), ext[2]))
        if hit:
            w, u, v = local_coords(vb, hit[1])
            paint(vol[hit[0]], pv(canal_sdf(vb, w, u), grid.sp), CSF)
    for a, b in zip(vs[:-1], vs[1:]):
        _disc(vol, grid, a, b)
    centroids = {}
    for vb in vs:
        _posterior(vol, labels, grid, vb, rng)
        c = _body(vol, labels, grid, vb, rng)
        if vb.visible and c is not None:
            centroids[vb.label] = c
    sigma = [acq.blur_mm / s for s in acq.spacing]
    vol = ndimage.gaussian_filter(vol, sigma, mode="nearest", truncate=3.0)
    vol += rng.standard_normal(vol.shape, dtype=np.float32) * np.float32(acq.noise_hu)
    hu = np.clip(np.rint(vol), -1024, 3071).astype(np.int16)
    affine = np.diag([*acq.spacing, 1.0])
    affine[:3, 3] = acq.origin
    return Volumes(hu, labels, affine, centroids)


def _texture(shape, sp, rng, corr_mm: float = 0.7) -> np.ndarray:
    """Unit-variance Gaussian random field with correlation length ~`corr_mm` (trabecular pattern)."""
    f = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), [corr_mm / s for s in sp])
    return f / (float(f.std()) + 1e-6)


def _body(vol, labels, grid, vb: Vertebra, rng) -> tuple[float, float, float] | None:
    hit = grid.box(vb.centre, vb.axes(), body_extent(vb))
    if hit is None:
        return None
    sl, ax = hit
    w, u, v = local_coords(vb, ax)
    L = body_layers(vb, w, u, v)
    box = vol[sl]
    length = ramp(L["outer"], grid.sp)
    frac_core = pv(L["core"], grid.sp, length)
    paint(box, pv(L["outer"], grid.sp, length), vb.cort_hu + 180.0)  # endplates: the brightest layer
    paint(box, pv(L["no_ep"], grid.sp, length), vb.cort_hu)
    # Texture at ~1 mm; coarse voxels average it out, hence the amplitude falls with voxel volume.
    amp = (0.3 * vb.trab_hu + 20.0) * min(1.0, 1.0 / np.sqrt(np.prod(grid.sp)))
    core = vb.trab_hu + amp * _texture(frac_core.shape, grid.sp, rng, 1.1)
    if vb.shape and vb.d > 0.08:  # sclerotic band under a collapsed endplate (healing fracture)
        band = 180.0 * min(vb.d / 0.3, 1.0)
        core = core + band * (vb.f_sup * np.exp(np.minimum(L["top"], 0) / 3.0)
                              + (1 - vb.f_sup) * np.exp(np.minimum(L["bot"], 0) / 3.0))
    paint(box, frac_core, core)
    inside = L["outer"] < 0
    if not vb.visible or not inside.any():
        return None
    labels[sl][inside] = vb.label
    n = float(inside.sum())
    return tuple(float((inside.sum(axis=tuple(j for j in range(3) if j != k)) * ax[k]).sum() / n) for k in range(3))


def _posterior(vol, labels, grid, vb: Vertebra, rng) -> None:
    ext = local_extent(vb)
    hit = grid.box(vb.centre, vb.axes(), (ext[0], (ext[1][0], -WALL * vb.depth + 4.0), ext[2]))
    if hit is None:
        return
    sl, ax = hit
    w, u, v = local_coords(vb, ax)
    sdf = posterior_sdf(vb, w, u, v)
    box = vol[sl]
    length = ramp(sdf, grid.sp)
    paint(box, pv(sdf, grid.sp, length), 0.85 * vb.cort_hu)
    inner = pv(sdf + 1.3, grid.sp, length)
    paint(box, inner, vb.trab_hu + 60.0 + 0.2 * vb.trab_hu * _texture(inner.shape, grid.sp, rng))
    if vb.visible:
        labels[sl][sdf < 0] = vb.label


def _disc(vol, grid, a: Vertebra, b: Vertebra) -> None:
    """The disc between bodies a (above) and b (below): the space between a's inferior and b's
    superior endplate, inside a slightly bulging cross-section."""
    ta = rim_heights(a)
    tb = rim_heights(b)
    ea, eb = a.axes(), b.axes()
    pa = np.asarray(a.centre) + ea[1] * (A_ANT - 0.5) * a.depth + ea[2] * 0.5 * (ta[2] + ta[3])
    pb = np.asarray(b.centre) + eb[1] * (A_ANT - 0.5) * b.depth + eb[2] * 0.5 * (tb[0] + tb[1])
    mid = 0.5 * (pa + pb)
    theta = 0.5 * (a.theta + b.theta)
    frame = replace(a, theta=theta, depth=0.5 * (a.depth + b.depth), width=0.5 * (a.width + b.width))
    # The bodies' origin is 0.06 D anterior of mid-depth; put the disc frame's origin likewise.
    frame = replace(frame, centre=tuple(mid - frame.axes()[1] * (A_ANT - 0.5) * frame.depth))
    half = 0.5 * np.linalg.norm(pb - pa) + 0.5 * max(a.height, b.height)
    hw = 0.55 * frame.width + 2
    hit = grid.box(frame.centre, frame.axes(), ((-hw, hw), (-WALL * frame.depth - 3, A_ANT * frame.depth * 1.05 + 3),
                                                (-half, half)))
    if hit is None:
        return
    sl, ax = hit
    w, u, _ = local_coords(frame, ax)
    wa, ua, va = local_coords(a, ax)
    wb, ub, vb_ = local_coords(b, ax)
    bot_a = surfaces(a, ua, wa)[1]
    top_b = surfaces(b, ub, wb)[0]
    d_rad = radial_sdf(frame, u, w, scale=1.03)
    sdf = smax(d_rad, va - bot_a, top_b - vb_)
    box = vol[sl]
    length = ramp(sdf, grid.sp)
    paint(box, pv(sdf, grid.sp, length), 92.0)
    paint(box, pv(np.maximum(d_rad + 0.3 * frame.depth, sdf + 1.5), grid.sp, length), 76.0)  # softer nucleus
