"""The body around the spine: air, skin and subcutaneous fat, back muscles (fat-infiltrated with age),
a prevertebral fat layer, organs and bowel with mesenteric fat and gas, aorta, psoas, lungs.
Intensities in HU, lengths in mm.

Texture comes from two smooth random fields: `field` (~12 mm features: organs, fat islands) and `fine`
(~5 mm across, ~10 mm along z: bowel loops, gas, fat streaks between muscle fibres). The patient's
`adiposity` (0..1) sets the share of fat among the organs (8-35 %) and the prevertebral fat's thickness;
`muscle_fat` the fatty infiltration of the back muscles; `gas_share` the bowel gas below the diaphragm;
`enhance_hu` the organs' enhancement in contrast scans.

These boundaries run mostly along the body's long axis, so each is drawn per axial position from
per-slice parameters that follow the spine (its AP and lateral position, body size), and only inside
the structure's own bounding box: the full grid is touched by the torso alone.
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtri

from .anatomy import A_ANT, WALL, ellipse_sdf

AIR, FAT = -1024.0, -90.0


def background(p, grid, rng: np.random.Generator) -> np.ndarray:
    """Float32 HU volume of patient `p`'s soft tissue on `grid` (a `phantom._Grid`)."""
    t = p.tissue
    x, y, z = grid.axes
    vs = sorted(p.vertebrae, key=lambda v: v.centre[2])
    zc = np.array([v.centre[2] for v in vs])

    def along(values) -> np.ndarray:  # a per-vertebra quantity interpolated to every slice, shape (nz,)
        return np.interp(z, zc, np.asarray(values, float)).astype(np.float32)

    xs, ys = along([v.centre[0] for v in vs]), along([v.centre[1] for v in vs])
    depth, width = along([v.depth for v in vs]), along([v.width for v in vs])
    reach = along([WALL * v.depth + 2 * v.canal_ap + v.arch + v.spinous_len * np.cos(v.spinous_angle)
                   + v.spinous_r for v in vs])
    skin = ys - reach - t["back_gap_mm"]
    front = ys + A_ANT * depth
    wall = ys - WALL * depth
    a, b = t["torso_a"], t["torso_b"]
    ramp = np.float32(0.5 * (grid.sp[0] + grid.sp[1]))  # boundaries run along z: in-plane voxel size

    def frac(sdf):
        return np.clip(0.5 - sdf / ramp, 0, 1)

    vol = np.full(grid.shape, AIR, np.float32)
    torso = ellipse_sdf(x[:, None, None] - xs[None, None, :], y[None, :, None] - (skin + b)[None, None, :], a, b)
    paint(vol, frac(torso), FAT)
    inner = frac(torso + t["fat_mm"])
    field = lowfreq(grid.shape, grid.sp, rng)
    fine = lowfreq(grid.shape, grid.sp, rng, (5.0, 5.0, 10.0))
    adip = t.get("adiposity", 0.0)
    thoracic = [v for v in vs if v.label <= 19]
    z_d = min(v.centre[2] for v in thoracic) - 5.0 if thoracic else np.inf  # the diaphragm

    prefat = 3.0 + 9.0 * adip  # prevertebral / retroperitoneal fat in front of the bodies
    box = grid.sub((x[0], float(front.min()) + prefat, z[0]), (x[-1], y[-1], z[-1]))
    if box:
        sl, (bx, by, bz) = box
        f, g = field[sl], fine[sl]
        # Mesenteric / retroperitoneal fat: a share 8-35 % by adiposity, soft-edged.
        t_fat = 0.33 * ndtri(1.0 - (0.08 + 0.27 * adip))
        fat = f + 0.5 * g
        fat -= np.float32(t_fat)
        fat *= np.float32(10.0)
        np.clip(fat, 0, 1, out=fat)
        # Organs and bowel wall; with contrast they enhance, unevenly (vessels, parenchyma, mucosa).
        enh = t.get("enhance_hu", 0.0) * t["contrast"]
        organ = 12 * f
        organ += (15 + 0.5 * enh) * g
        organ += np.float32(t["soft_hu"] + enh)
        paint(organ, fat, FAT)
        if "gas_share" in t and t["gas_share"] > 0:  # bowel gas in the abdomen, away from the bodies
            t_gas = 0.3 * ndtri(1.0 - t["gas_share"])
            far = (by[None, :, None] > front[sl[2]][None, None, :] + prefat + 8) & (bz[None, None, :] < z_d)
            gas_f = np.clip((g - np.float32(t_gas)) * np.float32(25.0), 0, 1) * far
            paint(organ, gas_f, AIR)
        paint(vol[sl], inner[sl] * (by[None, :, None] > front[sl[2]][None, None, :] + prefat), organ)

    box = grid.sub((x[0], y[0], z[0]), (x[-1], float(wall.max()), z[-1]))
    if box:  # erector spinae and multifidus either side of the spinous processes
        sl, (bx, by, bz) = box
        zs = sl[2]
        half = 0.5 * (wall[zs] - (skin[zs] + t["fat_mm"]))
        for side in (-1, 1):
            m = ellipse_sdf(bx[:, None, None] - (xs[zs] + side * (0.5 * width[zs] + 4))[None, None, :],
                            by[None, :, None] - (wall[zs] - half)[None, None, :],
                            (0.5 * width[zs] + 6)[None, None, :], (half - 2)[None, None, :])
            # Fatty infiltration: fat streaks between the fibres, a share `muscle_fat` of the muscle.
            mf = t.get("muscle_fat", 0.0)
            streak = np.clip((fine[sl] - 0.3 * ndtri(1.0 - max(mf, 1e-3))) / 0.08, 0, 1) if mf > 0 else 0.0
            paint(vol[sl], inner[sl] * frac(m), (t["muscle_hu"] + 10 * fine[sl]) * (1 - streak) + FAT * streak)

    lumbar = [v for v in vs if v.label >= 20]
    if lumbar:  # psoas: grows from L1 down
        top = max(v.centre[2] + 0.5 * v.height for v in lumbar)
        grow = (np.clip((top - z) / 120.0, 0, 1) * 18 + 4).astype(np.float32)
        box = grid.sub((x[0], float((ys - 0.1 * depth - grow).min()), z[0]),
                       (x[-1], float((ys - 0.1 * depth + grow).max()), top))
        if box:
            sl, (bx, by, bz) = box
            zs = sl[2]
            for side in (-1, 1):
                ps = ellipse_sdf(bx[:, None, None] - (xs[zs] + side * (0.5 * width[zs] + grow[zs]))[None, None, :],
                                 by[None, :, None] - (ys[zs] - 0.1 * depth[zs])[None, None, :],
                                 grow[zs][None, None, :], grow[zs][None, None, :])
                paint(vol[sl], frac(ps) * (grow[zs] > 5)[None, None, :], t["muscle_hu"])

    r = t["aorta_r"]  # descending aorta, left-anterior of the bodies (RAS: left is -x)
    box = grid.sub((float(xs.min()) - 18 - r - 3, float(front.min()) + 1, z[0]),
                   (float(xs.max()) - 18 + r + 3, float(front.max()) + 2 * r + 6, z[-1]))
    if box:
        sl, (bx, by, bz) = box
        zs = sl[2]
        d = np.sqrt((bx[:, None, None] - (xs[zs] - 18)[None, None, :]) ** 2
                    + (by[None, :, None] - (front[zs] + r + 3)[None, None, :]) ** 2) - r
        paint(vol[sl], frac(d), 230.0 if t["contrast"] else 42.0)

    if thoracic:  # lungs beside the thoracic bodies; the diaphragm behind the lowest thoracic body
        z_d = min(v.centre[2] for v in thoracic) - 5.0
        box = grid.sub((x[0], y[0], z_d - 2 * grid.sp[2]), (x[-1], y[-1], z[-1]))
        if box:
            sl, (bx, by, bz) = box
            zs = sl[2]
            for side in (-1, 1):
                lung = ellipse_sdf(bx[:, None, None] - (xs[zs] + side * (0.5 * width[zs] + 52))[None, None, :],
                                   by[None, :, None] - (ys[zs] + 10)[None, None, :], 50.0,
                                   (WALL * depth[zs] + 35)[None, None, :])
                lung = np.maximum(lung, (z_d - bz)[None, None, :])
                paint(vol[sl], frac(lung), -850.0 + 40 * field[sl])
    gas(vol, grid, p, front, rng)
    return vol


def paint(vol: np.ndarray, frac: np.ndarray, hu) -> None:
    """vol <- vol (1 - frac) + hu frac, in place (vol may be a view)."""
    vol *= 1.0 - frac
    vol += frac * hu


def lowfreq(shape, sp, rng: np.random.Generator, feature_mm=12.0) -> np.ndarray:
    """Smooth random field in [-1, 1] (SD about 0.31) with ~`feature_mm` features (one value or one per
    axis; organ texture, fat islands): uniform noise on a coarse lattice, interpolated linearly one axis
    at a time as small matrix products (the last one writes the full volume in a single pass)."""
    feat = np.broadcast_to(np.asarray(feature_mm, float), (3,))
    coarse = [max(int(np.ceil(n * s / fm)) + 2, 2) for n, s, fm in zip(shape, sp, feat)]
    f = rng.uniform(-1, 1, coarse).astype(np.float32)
    w = [_lerp_matrix(n, c) for n, c in zip(shape, coarse)]
    f = np.tensordot(w[0], f, axes=(1, 0))  # (nx, cy, cz)
    f = np.tensordot(w[1], f, axes=(1, 1)).transpose(1, 0, 2)  # (nx, ny, cz)
    return (f.reshape(-1, coarse[2]) @ w[2].T).reshape(shape)


def _lerp_matrix(n: int, c: int) -> np.ndarray:
    """(n, c) weights interpolating c lattice values linearly at n evenly spread points."""
    pos = np.linspace(0, c - 1.001, n)
    i0 = pos.astype(int)
    m = np.zeros((n, c), np.float32)
    m[np.arange(n), i0] = 1 - (pos - i0)
    m[np.arange(n), i0 + 1] = pos - i0
    return m


def gas(vol, grid, p, front, rng: np.random.Generator) -> None:
    """Bowel gas: a few air pockets in front of the lumbar spine (none in the chest)."""
    x, y, z = grid.axes
    for _ in range(int(p.tissue["gas"])):
        k = int(rng.integers(0, len(z)))
        c = np.array([rng.uniform(x[0], x[-1]), float(front[k]) + rng.uniform(30, 80), z[k]])
        r = rng.uniform(3, 12)
        if any(v.label <= 19 and abs(v.centre[2] - c[2]) < 15 for v in p.vertebrae):
            continue
        box = grid.sub(c - r - 2, c + r + 2)
        if box is None:
            continue
        sl, (bx, by, bz) = box
        d = np.sqrt((bx[:, None, None] - c[0]) ** 2 + (by[None, :, None] - c[1]) ** 2
                    + (bz[None, None, :] - c[2]) ** 2) - r
        paint(vol[sl], np.clip(0.5 - d / np.float32(np.mean(grid.sp)), 0, 1), AIR)
