"""Rasterise a planned patient into a CT volume (HU) and a VerSe label mask.

The volume lives on the scan's own grid in canonical RAS order (array axes = world x, y, z); the writer
reorients it afterwards. Edges get analytic partial volume: every structure is a signed distance field
(mm), and a voxel takes the fraction `clip(0.5 - sdf / L, 0, 1)` of it, where `L` is the voxel's extent
along the surface normal, so a 1 mm cortex in a 3 mm slice is a third as bright, as on a real scanner.
Structures are painted from the outside in (air, body, fat, muscle, organs, canal with epidural fat,
discs, posterior elements, bodies: shell, endplates, trabecular core; then osteophytes, Schmorl's nodes
and pedicle screws), then the PSF blur, metal streaks and the noise are applied.

Intensities (HU): air -1024, fat about -90, soft tissue 30-45, muscle 35-60 (fat-infiltrated with age),
discs 30-120 by degeneration (vacuum gas -700 in some), CSF 15, trabecular bone 90-230 by age and sex
(Pickhardt's norms) with vertical streaks (vertical trabeculae; a field correlated ~3 mm along z and
~0.55 mm across), cortex 700-1200 with irregular thickness, endplates brighter, sclerotic bands under
fractured or degenerated endplates; metal 3000+ (saturating at the 3071 ceiling, as on a scanner without
extended HU). Gaussian PSF sigma 0.5-1 mm; CT noise SD 16-40 HU, correlated over `grain_mm`
(0.35-0.5 mm: fine grain), a little stronger where the field is dense, much stronger beside metal.

The mask holds the VerSe label of each visible vertebra (body and posterior elements) at voxels whose
centre is inside it; context vertebrae cut by the field of view are drawn but not labelled. Osteophytes,
Schmorl's nodes, vacuum gas and implants are CT only: the mask, hence the measured heights, stay the
body's own outline.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from .anatomy import (A_ANT, WALL, Vertebra, body_extent, body_layers, canal_sdf, capsule_sdf, local_extent,
                      posterior_sdf, radial_sdf, rim_heights, smax, smin, surfaces)
from .patient import Patient
from .tissue import FAT, background, lowfreq, paint

CSF = 15.0
METAL = 3400.0
GAS = -750.0


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
            sdf = canal_sdf(vb, w, u)
            length = ramp(sdf, grid.sp)
            paint(vol[hit[0]], pv(sdf, grid.sp, length), FAT)  # epidural fat, thickest dorsally
            sac = smax(sdf + 1.0, -(u - uc) - 0.55 * vb.canal_ap)
            paint(vol[hit[0]], pv(sac, grid.sp, length), CSF)
    for a, b in zip(vs[:-1], vs[1:]):
        _disc(vol, grid, a, b, rng)
    centroids = {}
    for vb in vs:
        _posterior(vol, labels, grid, vb, rng)
        c = _body(vol, labels, grid, vb, rng)
        _osteophytes(vol, grid, vb)
        if vb.visible and c is not None:
            centroids[vb.label] = c
    metal = [_screws(vol, grid, vb) for vb in vs if vb.implant]
    sigma = [acq.blur_mm / s for s in acq.spacing]
    vol = ndimage.gaussian_filter(vol, sigma, mode="nearest", truncate=3.0)
    boost = _streaks(vol, grid, [m for m in metal if m is not None], rng) if metal else None
    vol += ct_noise(grid, acq.noise_hu, p.tissue.get("grain_mm", 0.4), rng, boost)
    hu = np.clip(np.rint(vol), -1024, 3071).astype(np.int16)
    affine = np.diag([*acq.spacing, 1.0])
    affine[:3, 3] = acq.origin
    return Volumes(hu, labels, affine, centroids)


def _texture(shape, sp, rng, corr_mm=0.7) -> np.ndarray:
    """Unit-variance Gaussian random field with correlation length ~`corr_mm` (one value, or one per
    world axis x, y, z: (0.55, 0.55, 3) makes the vertical streaks of trabecular bone)."""
    corr = np.broadcast_to(np.asarray(corr_mm, float), (3,))
    f = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), [c / s for c, s in zip(corr, sp)])
    return f / (float(f.std()) + 1e-6)


def ct_noise(grid, sigma_hu: float, grain_mm: float, rng, boost: np.ndarray | None = None) -> np.ndarray:
    """CT noise: white noise correlated over `grain_mm` (a Gaussian kernel), scaled to SD `sigma_hu`
    HU after filtering, modulated +-20 % along z by a smooth curve (denser slices are noisier) and
    multiplied by `boost` (per axial slice, near metal)."""
    sig = [g if int(3.0 * g + 0.5) > 0 else 0.0 for g in (grain_mm / s for s in grid.sp)]  # skip 1-tap axes
    n = ndimage.gaussian_filter(rng.standard_normal(grid.shape, dtype=np.float32), sig, truncate=3.0)
    # SD of the filtered unit white noise: the root sum of squares of the (separable) discrete kernels.
    gain = np.prod([np.sqrt(np.sum(_kernel(s) ** 2)) for s in sig])
    # Per axial slice: +-20 % along z (denser slices are noisier), times the metal boost.
    scale = np.float32(sigma_hu / gain) * (1.0 + 0.2 * lowfreq((1, 1, grid.shape[2]), grid.sp, rng, 60.0)[0, 0])
    if boost is not None:
        scale = scale * boost
    n *= scale.astype(np.float32)[None, None, :]
    return n


def _kernel(sigma: float, truncate: float = 3.0) -> np.ndarray:
    """The normalised 1-D Gaussian kernel `ndimage.gaussian_filter` uses (a delta for sigma 0)."""
    if sigma <= 0:
        return np.ones(1)
    r = int(truncate * sigma + 0.5)
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    return k / k.sum()


def _body(vol, labels, grid, vb: Vertebra, rng) -> tuple[float, float, float] | None:
    hit = grid.box(vb.centre, vb.axes(), body_extent(vb))
    if hit is None:
        return None
    sl, ax = hit
    w, u, v = local_coords(vb, ax)
    L = body_layers(vb, w, u, v)
    box = vol[sl]
    length = ramp(L["outer"], grid.sp)
    # Irregular shell: its thickness and density vary over the surface (a smooth field, ~3 mm patches).
    rough = _texture(box.shape, grid.sp, rng, 1.5)
    frac_core = pv(L["core"] + 0.45 * vb.cortex * rough, grid.sp, length)
    ep_hu = vb.cort_hu + 260.0 + 0.5 * (vb.band_sup + vb.band_inf)  # endplates: the brightest layer
    paint(box, pv(L["outer"], grid.sp, length), ep_hu * (1 + 0.12 * rough))
    paint(box, pv(L["no_ep"] + 0.3 * rough, grid.sp, length), vb.cort_hu * (1 + 0.12 * rough))
    # Vertical streaks (the vertical trabeculae; the horizontal ones thin first in osteoporosis), at
    # ~1 mm; coarse voxels average them out, hence the amplitude falls with voxel volume.
    amp = (0.3 * vb.trab_hu + 30.0) * min(1.0, 1.0 / np.sqrt(np.prod(grid.sp)))
    core = vb.trab_hu + amp * _texture(frac_core.shape, grid.sp, rng, (0.55, 0.55, 3.0))
    band_sup, band_inf = vb.band_sup, vb.band_inf
    if vb.shape and vb.d > 0.08:  # sclerotic band under a collapsed endplate (healing fracture)
        band = vb.band_frac * min(vb.d / 0.3, 1.0)
        band_sup, band_inf = band_sup + band * vb.f_sup, band_inf + band * (1 - vb.f_sup)
    if band_sup or band_inf:
        core = core + (band_sup * np.exp(np.minimum(L["top"], 0) / 3.0)
                       + band_inf * np.exp(np.minimum(L["bot"], 0) / 3.0))
    # Basivertebral vein: a dark horizontal channel entering the posterior wall at mid-height.
    vein = np.exp(-((v / 1.2) ** 2) - (w / 2.5) ** 2) * (u < -WALL * vb.depth + 9.0)
    core = core - 0.6 * vb.trab_hu * vein
    paint(box, frac_core, core)
    if vb.schmorl:
        _schmorl(box, grid, vb, (w, u, v), L["outer"], length)
    inside = L["outer"] < 0
    if not vb.visible or not inside.any():
        return None
    labels[sl][inside] = vb.label
    n = float(inside.sum())
    return tuple(float((inside.sum(axis=tuple(j for j in range(3) if j != k)) * ax[k]).sum() / n) for k in range(3))


def _schmorl(box, grid, vb: Vertebra, wuv, outer: np.ndarray, length) -> None:
    """Schmorl's node: disc tissue herniated into an endplate, a rounded pit of disc density open to
    the disc with a sclerotic rim, inside the body only (`outer`: the body's SDF); CT only."""
    w, u, v = wuv
    uu = A_ANT * vb.depth - vb.schmorl_un * vb.depth
    top, bot = surfaces(vb, np.array([uu]), np.zeros(1))
    vc = float(top[0]) if vb.schmorl == 1 else float(bot[0])
    d = np.sqrt(w * w + (u - uu) ** 2 + ((v - vc) / 0.8) ** 2) - vb.schmorl_r
    paint(box, pv(np.maximum(d - 1.2, outer), grid.sp, length), vb.cort_hu * 0.8)
    paint(box, pv(np.maximum(d, outer), grid.sp, length), 0.8 * vb.disc_hu)


def _osteophytes(vol, grid, vb: Vertebra) -> None:
    """Anterior lipping: bony beaks growing from the anterior rims toward the disc, CT only."""
    for size, sign in ((vb.osteo_sup, 1.0), (vb.osteo_inf, -1.0)):
        if size <= 0:
            continue
        u0 = A_ANT * vb.depth - 1.0
        top, bot = surfaces(vb, np.array([u0]), np.zeros(1))  # the rim as it is (wedged, fractured)
        v0 = float(top[0] if sign > 0 else bot[0]) - sign * 1.0
        tip = (u0 + 0.8 * size, v0 + sign * 0.7 * size)
        ext = ((-0.4 * vb.width, 0.4 * vb.width), (u0 - 3, tip[0] + 3),
               tuple(sorted((v0 - sign * 3, tip[1] + sign * 3))))
        hit = grid.box(vb.centre, vb.axes(), ext)
        if hit is None:
            continue
        sl, ax = hit
        w, u, v = local_coords(vb, ax)
        sdf = capsule_sdf((u, v), (u0, v0), tip, 2.2, 0.8)
        sdf = np.maximum(sdf, np.abs(w) - 0.35 * vb.width)
        length = ramp(sdf, grid.sp)
        paint(vol[sl], pv(sdf, grid.sp, length), 0.9 * vb.cort_hu)
        paint(vol[sl], pv(sdf + 1.0, grid.sp, length), vb.trab_hu + 80.0)


def _screws(vol, grid, vb: Vertebra) -> tuple[float, float, float] | None:
    """Two pedicle screws (6.5 mm, converging 12 degrees medially) and the rods' stretch at this level;
    returns the world point the metal streaks radiate from."""
    uc = vb.canal_centre()
    ext = local_extent(vb)
    hit = grid.box(vb.centre, vb.axes(), (ext[0], (uc - vb.canal_ap - 25.0, A_ANT * vb.depth), ext[2]))
    if hit is None:
        return None
    sl, ax = hit
    w, u, v = local_coords(vb, ax)
    parts = []
    for side in (-1.0, 1.0):
        entry = (side * (vb.canal_w + 0.5 * vb.arch + 4.0), uc - vb.canal_ap - 8.0, 0.1 * vb.height)
        tip = (side * 4.0, 0.25 * vb.depth, 0.0)
        parts.append(capsule_sdf((w, u, v), entry, tip, 3.25, 2.5))
        head = (entry[0], entry[1] - 6.0, entry[2])
        parts.append(capsule_sdf((w, u, v), head, (head[0], head[1], head[2] + 1e-3), 5.5, 5.5))
        rod = np.maximum(np.hypot(w - head[0], u - head[1]) - 3.0, np.abs(v) - 0.5 * vb.height - 0.6 * vb.disc_below)
        parts.append(rod)
    sdf = smin(*parts)
    paint(vol[sl], pv(sdf, grid.sp), METAL)
    return tuple(float(x) for x in np.asarray(vb.centre) + vb.axes()[1] * (uc - vb.canal_ap))


def _streaks(vol, grid, sources, rng) -> np.ndarray:
    """Metal artefacts in the axial planes that cut the screws: bright and dark streaks radiating from
    the metal (beam hardening, photon starvation), strongest close to it; returns the per-slice noise
    boost (1 far from metal)."""
    x, y, z = grid.axes
    boost = np.ones(len(z), np.float32)
    for cx, cy, cz in sources:
        k = np.flatnonzero(np.abs(z - cz) < 14.0)
        if k.size == 0:
            continue
        ang = rng.uniform(0, np.pi, 9)
        amp = rng.uniform(-450, 300, 9)
        dx, dy = x[:, None] - cx, y[None, :] - cy
        r = np.hypot(dx, dy) + 1.0
        art = np.zeros((len(x), len(y)), np.float32)
        for a, h in zip(ang, amp):
            dist = np.abs(dx * np.sin(a) - dy * np.cos(a))  # distance to the line through the metal
            art += (h * np.exp(-0.5 * (dist / 1.5) ** 2) * np.minimum(1.0, 25.0 / r)).astype(np.float32)
        fall = np.exp(-0.5 * ((z[k] - cz) / 7.0) ** 2).astype(np.float32)
        vol[:, :, k] += art[:, :, None] * fall[None, None, :]
        boost[k] = np.maximum(boost[k], 1.0 + 1.5 * fall)
    return boost


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


def _disc(vol, grid, a: Vertebra, b: Vertebra, rng) -> None:
    """The disc between bodies a (above) and b (below): the space between a's inferior and b's
    superior endplate, inside a slightly bulging cross-section. Its density is a's `disc_hu`; a
    degenerated disc has a darker, patchy nucleus, and with `a.vacuum` a gas cleft."""
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
    paint(box, pv(sdf, grid.sp, length), a.disc_hu)
    nucleus = pv(np.maximum(d_rad + 0.3 * frame.depth, sdf + 1.5), grid.sp, length)
    patch = _texture(box.shape, grid.sp, rng, 1.5)
    paint(box, nucleus, a.disc_hu - 16.0 * (1 - a.disc_deg) + 25.0 * a.disc_deg * patch)
    if a.vacuum:  # a horizontal gas cleft in the nucleus, mid-way between the endplates
        gap = 0.5 * np.abs((bot_a - va) - (vb_ - top_b))  # distance to the disc's mid-plane
        cleft = np.maximum(gap - 0.6 - 0.6 * a.disc_deg, d_rad + 0.22 * frame.depth)
        paint(box, pv(cleft, grid.sp, length), GAS)
