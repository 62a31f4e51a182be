"""One vertebra in its own frame: body, endplates, fracture deformation, posterior elements.

Local frame (mm), origin at the body's centre: `w` lateral (= world x), `u` anterior, `v` the body's
superior axis. The world placement (`centre`, tilt `theta` about the x axis) is done by `patient.py`.

Shapes are signed distance functions (negative inside, approximately mm near the surface), so the
rasteriser gets analytic partial volume and cortical shells (a shell is `-t < sdf < 0`).

Body: a super-ellipse cross-section (lateral semi-axis W/2, anterior 0.56 D, posterior cut flat at
0.44 D behind the centre), between a superior and an inferior endplate surface whose heights follow the
phantom spec (`reference/medical.md` 4.2). With `un` in [0, 1] the AP position from the anterior edge:

- normal: h(un) = H (1 - wedge0 (1 - un)), endplates slightly concave (`concavity` mm at the centre);
- wedge: h loses H d (1 - un) (anterior height lost by d, posterior kept);
- biconcave: h loses H d sin^2(pi un) cos^2(pi wn / 2) (central depression, rims kept);
- crush: h loses h d everywhere (compare with the neighbours).

The lost height is taken from the superior endplate by the share `f_sup` and from the inferior one by
the rest.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

A_ANT = 0.56  # anterior extent / depth
WALL = 0.44  # posterior wall distance / depth
POWER = 2.4  # super-ellipse exponent: vertebral bodies are rounder than a box, squarer than an ellipse


@dataclass(frozen=True)
class Vertebra:
    """Geometry and density of one vertebra (lengths in mm, angles in rad, densities in HU).

    Args:
        label: VerSe label number.
        visible: inside the field of view and labelled; context vertebrae cut by the FOV are not.
        height: nominal posterior body height H.
        depth: anterior-posterior body depth D.
        width: lateral body width W.
        wedge0: physiological wedging (fraction of H missing anteriorly; negative = anterior taller).
        concavity: normal endplate depression at the centre.
        rounding: radius of the rounded body edges.
        cortex: cortical shell thickness.
        endplate: endplate thickness.
        trab_hu: trabecular density; cort_hu: cortical density.
        shape: 0 none, 1 wedge, 2 biconcave, 3 crush.
        d: deformation parameter (fractional height loss of the generating model, not the grade).
        f_sup: share of the lost height taken by the superior endplate.
        canal_w, canal_ap: spinal canal semi-axes; arch: neural arch thickness.
        spinous_len, spinous_angle, spinous_r: spinous process length, downward angle, half-height.
        tp_len, tp_back: transverse process length and posterior sweep.
        waist: depth of the concave anterior and lateral walls at mid-height.
        disc_above, disc_below: heights of the adjacent discs (for the articular processes).
        centre: world position (RAS mm) of the body centre; theta: tilt of the superior axis toward
            anterior (rad).

    Degenerative changes, look-alikes and implants (drawn in CT only; none of them is in the label
    mask, so the measured heights and grade ignore them, as Genant morphometry ignores osteophytes
    and Schmorl's nodes):
        osteo_sup, osteo_inf: length (mm) of the anterior osteophyte (lipping) at the superior /
            inferior rim, 0 = none.
        schmorl: Schmorl's node: 0 none, 1 in the superior endplate, 2 in the inferior one;
            schmorl_un: its AP position (0 anterior .. 1 posterior); schmorl_r: its radius (mm).
        disc_hu: density of the disc below (annulus; the nucleus is darker when degenerated);
            disc_deg: its degeneration 0..1; vacuum: gas cleft in the disc below.
        band_sup, band_inf: sclerosis (HU) under the superior / inferior endplate (degenerative,
            Modic-like); band_frac: the sclerotic band of a fracture at full collapse (HU).
        lookalike: 0 none, 1 short vertebra (all heights reduced alike), 2 developmental wedge.
        implant: pedicle screws in this vertebra.
    """

    label: int
    visible: bool
    height: float
    depth: float
    width: float
    wedge0: float
    concavity: float
    rounding: float
    cortex: float
    endplate: float
    trab_hu: float
    cort_hu: float
    canal_w: float
    canal_ap: float
    arch: float
    spinous_len: float
    spinous_angle: float
    spinous_r: float
    tp_len: float
    tp_back: float
    waist: float = 1.5
    disc_above: float = 6.0
    disc_below: float = 6.0
    shape: int = 0
    d: float = 0.0
    f_sup: float = 0.5
    osteo_sup: float = 0.0
    osteo_inf: float = 0.0
    schmorl: int = 0
    schmorl_un: float = 0.5
    schmorl_r: float = 0.0
    disc_hu: float = 92.0
    disc_deg: float = 0.0
    vacuum: bool = False
    band_sup: float = 0.0
    band_inf: float = 0.0
    band_frac: float = 180.0
    lookalike: int = 0
    implant: bool = False
    centre: tuple[float, float, float] = (0.0, 0.0, 0.0)
    theta: float = 0.0

    def __post_init__(self):
        # numpy float64 scalars would silently promote float32 volumes to float64 (NEP 50).
        for k, val in self.__dict__.items():
            if isinstance(val, np.floating):
                object.__setattr__(self, k, float(val))
        object.__setattr__(self, "centre", tuple(float(c) for c in self.centre))

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World unit vectors (e_w, e_u, e_v) of the local frame."""
        s, c = np.sin(self.theta), np.cos(self.theta)
        return np.array([1.0, 0, 0]), np.array([0, c, -s]), np.array([0, s, c])

    def canal_centre(self) -> float:
        """u coordinate (mm) of the spinal canal's centre."""
        return -WALL * self.depth - self.canal_ap - 0.5


def surfaces(vb: Vertebra, u: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Superior and inferior endplate heights v_top(u, w), v_bot(u, w) in mm."""
    D, H = vb.depth, vb.height
    un = np.clip((A_ANT * D - u) / D, 0.0, 1.0)
    wn = np.clip(w / (0.5 * vb.width), -1.0, 1.0)
    hn = H * (1.0 - vb.wedge0 * (1.0 - un))
    bump = np.sin(np.pi * un) ** 2 * np.cos(0.5 * np.pi * wn) ** 2
    if vb.shape == 1:
        loss = hn * (vb.d * (1.0 - un))
    elif vb.shape == 2:
        loss = H * vb.d * bump
    elif vb.shape == 3:
        loss = hn * vb.d
    else:
        loss = 0.0
    conc = vb.concavity * bump
    return hn / 2 - conc - vb.f_sup * loss, -hn / 2 + conc + (1.0 - vb.f_sup) * loss


def rim_heights(vb: Vertebra) -> tuple[float, float, float, float]:
    """(top, bottom) endplate heights at 10 % and 90 % depth on the midline: (t10, t90, b10, b90)."""
    u = A_ANT * vb.depth - np.array([0.1, 0.9]) * vb.depth
    top, bot = surfaces(vb, u, np.zeros(2))
    return float(top[0]), float(top[1]), float(bot[0]), float(bot[1])


def radial_sdf(vb: Vertebra, u: np.ndarray, w: np.ndarray, v: np.ndarray | None = None,
               scale: float = 1.0) -> np.ndarray:
    """Distance (mm, first order) to the body's side wall; `scale` enlarges the cross-section (discs).
    With `v`, the anterior and lateral walls are concave (the body's `waist`, deepest at mid-height)."""
    D = vb.depth * scale
    aw = 0.5 * vb.width * scale
    b = A_ANT * D
    if v is not None:
        pinch = vb.waist * np.clip(1.0 - (2.0 * v / vb.height) ** 2, 0.0, 1.0)
        aw, b = aw - pinch, b - pinch
    b = np.where(u >= 0, b, (WALL + 0.06) * D)
    x = np.abs(w) / aw + 1e-6
    y = np.abs(u) / b + 1e-6
    xp, yp = x**POWER, y**POWER
    f = xp + yp
    g = f ** (1.0 / POWER)
    gp = g / f  # g^(1-p)
    grad = np.hypot(gp * xp / (x * aw), gp * yp / (y * b))
    d = (g - 1.0) / np.maximum(grad, 1e-6)
    return np.maximum(d, -WALL * D - u)  # flat posterior wall


def radial_sdf_midline(vb: Vertebra, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """`radial_sdf` restricted to the mid-sagittal plane w = 0, where the super-ellipse distance is
    exactly |u| - semi-axis (the ground-truth planes are evaluated many times, so this matters)."""
    pinch = vb.waist * np.clip(1.0 - (2.0 * v / vb.height) ** 2, 0.0, 1.0)
    d = np.where(u >= 0, u - (A_ANT * vb.depth - pinch), -u - (WALL + 0.06) * vb.depth)
    return np.maximum(d, -WALL * vb.depth - u)


def round_intersect(a: np.ndarray, b: np.ndarray, r: float) -> np.ndarray:
    """SDF of the intersection of two shapes with edges rounded by radius `r` (mm)."""
    qa = np.maximum(a + r, 0.0)
    qb = np.maximum(b + r, 0.0)
    return np.sqrt(qa * qa + qb * qb) + np.minimum(np.maximum(a, b) + r, 0.0) - r


def body_layers(vb: Vertebra, w: np.ndarray, u: np.ndarray, v: np.ndarray) -> dict[str, np.ndarray]:
    """SDFs of the body (`outer`), of the body without its endplates (`no_ep`) and of the trabecular
    core (`core`), plus the signed distance below the superior / above the inferior endplate
    (`top`, `bot`, negative inside) for the sclerotic band of fractures."""
    top, bot = surfaces(vb, u, w)
    d_top, d_bot = v - top, bot - v
    d_ep = np.maximum(d_top, d_bot)
    d_rad = radial_sdf(vb, u, w, v)
    r = vb.rounding
    return {
        "outer": round_intersect(d_rad, d_ep, r),
        "no_ep": round_intersect(d_rad, d_ep + vb.endplate, max(r - vb.endplate, 0.3)),
        "core": round_intersect(d_rad + vb.cortex, d_ep + vb.endplate, max(r - vb.cortex, 0.3)),
        "top": d_top,
        "bot": d_bot,
    }


def ellipse_sdf(x: np.ndarray, y: np.ndarray, a: float, b: float) -> np.ndarray:
    """First-order distance (mm) to the ellipse (x/a)^2 + (y/b)^2 = 1."""
    g = np.sqrt((x / a) ** 2 + (y / b) ** 2) + 1e-6
    grad = np.sqrt((x / (a * a)) ** 2 + (y / (b * b)) ** 2) / g
    return (g - 1.0) / np.maximum(grad, 1e-6)


def capsule_sdf(p: tuple[np.ndarray, ...], a: tuple[float, ...], b: tuple[float, ...], r0: float,
                r1: float) -> np.ndarray:
    """Distance (mm) to a cone-capsule from point a (radius r0) to b (radius r1); p, a, b in any dims."""
    ba = [bj - aj for aj, bj in zip(a, b)]
    bb = sum(x * x for x in ba)
    pa = [pj - aj for pj, aj in zip(p, a)]
    h = np.clip(sum(x * y for x, y in zip(pa, ba)) / bb, 0.0, 1.0)
    dist = np.sqrt(sum((x - y * h) ** 2 for x, y in zip(pa, ba)))
    return dist - (r0 + (r1 - r0) * h)


def canal_sdf(vb: Vertebra, w: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Distance (mm) to the spinal canal's wall (an elliptic tube along v)."""
    return ellipse_sdf(w, u - vb.canal_centre(), vb.canal_w, vb.canal_ap)


def posterior_sdf(vb: Vertebra, w: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """SDF (mm) of the posterior elements: pedicles, laminae, spinous, transverse and articular processes.

    They sit behind the body and the canal, so the body centroid lies anterior to the whole
    vertebra's centre of mass, as in VerSe (`reference/medical.md` 1.3).
    """
    H, t = vb.height, vb.arch
    uc = vb.canal_centre()
    cw, ca = vb.canal_w, vb.canal_ap
    aw = np.abs(w)
    wall = -WALL * vb.depth
    lamina = smax(
        ellipse_sdf(w, u - uc, cw + t, ca + t),
        -ellipse_sdf(w, u - uc, cw, ca),
        u - uc,
        v - 0.40 * H,
        -0.45 * H - v,
    )
    pedicle = smax(ellipse_sdf(aw - (cw + 0.5 * t), v - 0.15 * H, 0.5 * t + 0.5, 0.28 * H),
                   uc - u, u - (wall + 3.0))
    p0 = (uc - ca - 0.5 * t, -0.05 * H)
    p1 = (p0[0] - vb.spinous_len * np.cos(vb.spinous_angle), p0[1] - vb.spinous_len * np.sin(vb.spinous_angle))
    spinous = np.maximum(capsule_sdf((u, v), p0, p1, vb.spinous_r, 0.75 * vb.spinous_r), aw - 3.0)
    tp = capsule_sdf((aw, u, v), (cw + t, uc, 0.25 * H), (cw + t + vb.tp_len, uc - vb.tp_back, 0.2 * H), 4.5, 3.5)
    sup = capsule_sdf((aw, u, v), (cw + 0.9 * t, uc - 1.0, 0.3 * H),
                      (cw + 0.9 * t, uc - 2.0, 0.5 * H + 0.7 * vb.disc_above), 4.0, 3.5)
    inf = capsule_sdf((aw, u, v), (cw + 0.1 * t, uc - 3.0, -0.3 * H),
                      (cw + 0.1 * t, uc - 4.0, -0.5 * H - 0.6 * vb.disc_below), 4.0, 3.0)
    return smin(lamina, pedicle, spinous, tp, sup, inf)


def smax(*sdfs: np.ndarray) -> np.ndarray:
    """Intersection of shapes (broadcasting max of their SDFs)."""
    return functools.reduce(np.maximum, sdfs)


def smin(*sdfs: np.ndarray) -> np.ndarray:
    """Union of shapes (broadcasting min of their SDFs)."""
    return functools.reduce(np.minimum, sdfs)


def local_extent(vb: Vertebra) -> tuple[tuple[float, float], tuple[float, float], tuple[float, float]]:
    """Bounding box (w, u, v ranges in mm) of the whole vertebra with its canal and disc halves."""
    uc = vb.canal_centre()
    reach_u = vb.spinous_len * np.cos(vb.spinous_angle) + vb.spinous_r
    reach_v = vb.spinous_len * np.sin(vb.spinous_angle) + vb.spinous_r
    wmax = vb.canal_w + vb.arch + vb.tp_len + 6.0
    u0 = uc - vb.canal_ap - 0.5 * vb.arch - reach_u - 2.0
    v0 = -0.5 * vb.height - max(vb.disc_below, reach_v) - 3.0
    return (-wmax, wmax), (u0, A_ANT * vb.depth + 3.0), (v0, 0.5 * vb.height + vb.disc_above + 3.0)


def body_extent(vb: Vertebra) -> tuple[tuple[float, float], tuple[float, float], tuple[float, float]]:
    """Bounding box (w, u, v ranges in mm) of the body alone, with 2 mm to spare."""
    hw = 0.5 * vb.width + 2.0
    hh = 0.5 * vb.height * (1.0 + abs(vb.wedge0)) + 2.0
    return (-hw, hw), (-WALL * vb.depth - 2.0, A_ANT * vb.depth + 2.0), (-hh, hh)
