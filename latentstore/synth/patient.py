"""A patient's plan: anatomy, fractures with measured grades, spine layout and acquisition.

Everything is drawn from the patient's own generator, seeded from (seed, patient index), so patients
are independent of each other and of the patient count. No volume is made here: the grades are
measured on each body's mid-sagittal plane rasterised at 0.1 mm in the body's own frame (`body_plane`),
which is the same geometry the rasteriser writes at the scan's spacing.

Grades: the Genant grade of every visible vertebra is drawn from the prevalence; a fractured one gets a
shape (wedge 55 %, biconcave 30 %, crush 15 %) and a target height loss inside its grade's band kept
`margin` away from the 20/25/40 % thresholds; the deformation `d` is then solved so that the loss
*measured* on the rasterised plane hits the target. With `boundary`, targets lie within 2 % of one of
the grade's thresholds and the grade is whatever is measured.

Fracture risk is not uniform: a vertebra's chance of being fractured is the prevalence's
1 - P(G0) times a relative risk, higher at T11-L2 and with low trabecular density (osteoporosis),
normalised so that the mean over the archive's population stays at the prevalence (`fracture_risk`).

A second generator, seeded from (seed, patient index, 2), draws what is no fracture: degenerated
discs (some with vacuum gas), osteophytes, Schmorl's nodes, endplate sclerosis, look-alikes (a
uniformly short vertebra, a developmental wedge, both measuring G0 against their neighbours) and, in
`IMPLANT_P` of the scans (a third generator, (seed, patient index, 3)), pedicle screws with rods.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace

import numpy as np

from .anatomy import A_ANT, WALL, Vertebra, radial_sdf_midline, rim_heights, round_intersect, surfaces
from .measure import THRESHOLDS, Heights, Measurement, heights_from_plane, measure

PLANE_STEP = 0.1  # mm: the resolution the ground-truth heights are measured at
SHAPE_P = (0.55, 0.30, 0.15)  # wedge, biconcave, crush among fractures
D_MAX = 0.9
IMPLANT_P = 0.04  # share of scans with pedicle screws and rods
LOOKALIKE_MAX = 0.17  # largest measured loss of a look-alike (G0, clear of the 20 % threshold)
LOOKALIKES = ("none", "short", "developmental_wedge")
SPINE = [*range(1, 25), 26]  # C1..L5 then the sacrum (context only)
# label: (posterior height H, depth D, width W) in mm, interpolated between anchors
_SIZE = {3: (14, 16, 22), 8: (17, 17, 27), 13: (19, 22, 31), 19: (23, 29, 40), 20: (25.5, 31, 42),
         24: (28.5, 35, 50), 26: (30, 38, 52)}


@dataclass(frozen=True)
class Acquisition:
    """How the scan was taken.

    Args:
        spacing: voxel size along world x, y, z (mm).
        axcodes: orientation of the written array (nibabel codes, e.g. ("P", "I", "R")).
        origin: world position (RAS mm) of the canonical voxel (0, 0, 0).
        shape: canonical (RAS) array shape.
        kind: "axial", "sagittal" or "isotropic" (which axis is coarse).
        noise_hu: CT noise SD (HU) after its grain filter (see `phantom.ct_noise`); blur_mm: PSF sigma (mm).
        dicom_dtype, dicom_intercept: how the DICOM series stores HU (slope 1).
    """

    spacing: tuple[float, float, float]
    axcodes: tuple[str, str, str]
    origin: tuple[float, float, float]
    shape: tuple[int, int, int]
    kind: str
    noise_hu: float
    blur_mm: float
    dicom_dtype: str
    dicom_intercept: int


@dataclass
class Patient:
    """One synthetic patient (= one scan). Lengths in mm, densities in HU."""

    index: int
    scan: str
    age: float
    sex: str
    trab_hu: float
    vertebrae: list[Vertebra]
    acquisition: Acquisition
    tissue: dict[str, float]
    targets: dict[int, tuple[int, float]] = field(default_factory=dict)  # label -> (grade, loss)
    measured: dict[int, Measurement] = field(default_factory=dict)
    implant: str = "none"  # "none" or "pedicle_screws"

    @property
    def visible(self) -> list[Vertebra]:
        return [v for v in self.vertebrae if v.visible]


def scan_id(index: int) -> str:
    """Patient index 0 -> "sub-synth0001"."""
    return f"sub-synth{index + 1:04d}"


def sample_grades(rng: np.random.Generator, n: int, prevalence: tuple[float, ...],
                  risk: np.ndarray | None = None) -> np.ndarray:
    """`n` Genant grades drawn independently with probabilities `prevalence` (G0..G3); with `risk`
    (relative risks, mean 1 over the population) vertebra i is fractured with probability
    min((1 - P(G0)) risk_i, 0.95) and its grade among G1-G3 follows the prevalence's proportions."""
    p = np.asarray(prevalence, float)
    if risk is None:
        return rng.choice(4, size=n, p=p)
    # One uniform per vertebra against its own cumulative probabilities, as `rng.choice` does: with all
    # risks 1 the draws are exactly those without `risk`.
    pf = 1.0 - p[0]
    q = np.minimum(pf * np.asarray(risk, float), 0.95)[:, None]
    share = p[1:] / pf if pf > 0 else np.zeros(3)
    cdf = np.concatenate([1.0 - q, 1.0 - q + q * np.cumsum(share)[None, :]], axis=1)
    u = rng.random(n)
    return np.minimum((cdf <= u[:, None]).sum(axis=1), 3)


def trabecular_hu(age, female, z):
    """Patient trabecular density (HU) from age, sex and a standard normal `z` (Pickhardt's L1 norms:
    ~226 HU under 30, falling ~2.3 HU/year, osteoporosis spread on top); works on arrays."""
    return np.clip(226 - 2.3 * np.maximum(age - 30, 0) - 12 * (female & (age > 50)) + 22 * z, 90, 230)


def level_risk(label: int) -> float:
    """Relative fracture risk by level: the thoracolumbar junction T11-L2 most, L4-L5 least."""
    return 2.0 if 18 <= label <= 21 else 1.0 if 15 <= label <= 22 else 0.6 if label >= 23 else 0.8


def bone_risk(trab):
    """Relative fracture risk by trabecular density (HU): x2.7 per 55 HU less."""
    return np.exp(-(np.asarray(trab, float) - 150.0) / 55.0)


@functools.lru_cache(maxsize=64)
def _risk_norm(levels: tuple[int, ...], min_levels: int) -> float:
    """Mean of level_risk x bone_risk over the vertebrae an archive shows: levels weighted by how often
    the visible window covers them, densities by a fixed Monte Carlo sample of the age/sex model."""
    n_all = len(levels)
    weight = np.zeros(n_all)
    sizes = range(min(min_levels, n_all), n_all + 1)
    for n in sizes:
        for start in range(n_all - n + 1):
            weight[start:start + n] += 1.0 / (len(sizes) * (n_all - n + 1))
    lvl = float(np.sum(weight * [level_risk(lab) for lab in levels]) / weight.sum())
    g = np.random.default_rng(20240)  # fixed: the normaliser must not depend on the archive's seed
    age = np.clip(g.normal(66, 13, 20000), 25, 95)
    trab = trabecular_hu(age, g.random(20000) < 0.55, g.standard_normal(20000))
    return lvl * float(np.mean(bone_risk(trab)))


def fracture_risk(labels: list[int], trab: float, cfg) -> np.ndarray:
    """Relative fracture risks (mean 1 over the archive's population) of vertebrae `labels`."""
    norm = _risk_norm(tuple(cfg.levels), int(cfg.min_levels))
    return np.array([level_risk(lab) for lab in labels]) * float(bone_risk(trab)) / norm


def target_loss(rng: np.random.Generator, grade: int, margin: float, boundary: bool) -> float:
    """A height loss for a fractured vertebra of `grade`: inside the band with `margin` to spare, or
    (boundary) within 0.02 of one of the band's thresholds, on either side."""
    if boundary:
        edges = {1: THRESHOLDS[:2], 2: THRESHOLDS[1:], 3: THRESHOLDS[2:]}[grade]
        return float(rng.choice(edges) + rng.uniform(-0.02, 0.02))
    lo, hi = {1: (0.20, 0.25), 2: (0.25, 0.40), 3: (0.40, 0.60)}[grade]
    return float(rng.uniform(lo + margin, hi - margin if grade < 3 else hi))


def body_plane(vb: Vertebra, step: float = PLANE_STEP) -> tuple[np.ndarray, tuple[int, int]]:
    """The body's mask on its mid-sagittal plane (w = 0), rows v up, columns u anterior; and the centre
    pixel."""
    D, hh = vb.depth, 0.5 * vb.height * (1 + abs(vb.wedge0)) + 2.0
    u = np.arange(-WALL * D - 1.0, A_ANT * D + 1.0, step)
    v = np.arange(-hh, hh, step)[:, None]
    w = np.zeros_like(u)
    # On the plane w = 0 the endplates depend on u only: 1-D, then broadcast.
    top, bot = surfaces(vb, u, w)
    sdf = round_intersect(radial_sdf_midline(vb, u[None, :], v), np.maximum(v - top, bot - v), vb.rounding)
    return sdf < 0, (int(np.argmin(np.abs(v[:, 0]))), int(np.argmin(np.abs(u))))


def body_heights(vb: Vertebra) -> Heights:
    """Ha, Hm, Hp (mm) measured on the 0.1 mm mid-sagittal rasterisation of the body."""
    plane, seed = body_plane(vb)
    return heights_from_plane(plane, PLANE_STEP, seed)


def plan_patient(cfg, index: int) -> Patient:
    """Draw patient `index` of an archive made with `cfg` (a `SynthConfig`)."""
    rng = np.random.default_rng([cfg.seed, index])
    rng_d = np.random.default_rng([cfg.seed, index, 2])  # what is no fracture: degeneration, look-alikes
    age = float(np.clip(rng.normal(66, 13), 25, 95))
    sex = "F" if rng.random() < 0.55 else "M"
    trab = float(trabecular_hu(age, sex == "F", rng.normal(0, 1)))
    cort = float(np.clip(rng.uniform(780, 1120) + 0.8 * (trab - 160), 700, 1200))
    n_all = len(cfg.levels)
    n_vis = int(rng.integers(min(cfg.min_levels, n_all), n_all + 1))
    start = int(rng.integers(0, n_all - n_vis + 1))
    window = list(cfg.levels[start:start + n_vis])
    i0, i1 = SPINE.index(window[0]), SPINE.index(window[-1])
    labels = SPINE[max(i0 - 1, 0): i1 + 2]  # one context vertebra each side, cut by the FOV
    kyph, lord = rng.uniform(0.6, 1.5), rng.uniform(0.6, 1.4)
    scale = rng.normal(1.0, 0.04) * (1.04 if sex == "M" else 0.96)
    discs = [_disc(lab, age, rng) for lab in labels]
    vs = [_vertebra(lab, lab in window, scale, kyph, trab, cort, rng) for lab in labels]
    vs = [replace(v, disc_above=discs[i - 1] if i else discs[0], disc_below=discs[i]) for i, v in enumerate(vs)]

    vs = _degeneration(vs, age, rng_d)
    p = Patient(index, scan_id(index), age, sex, trab, vs, None, {})  # type: ignore[arg-type]
    _fractures(p, cfg, rng, rng_d)
    p.vertebrae = _layout(p.vertebrae, discs, lord, rng)
    p.acquisition = _acquisition(p, cfg, rng)
    p.tissue = _tissue(p, rng)
    p.tissue.update(_tissue_extra(age, rng_d))
    _implant(p, np.random.default_rng([cfg.seed, index, 3]))
    return p


def _interp(label: int) -> tuple[float, float, float]:
    keys = sorted(_SIZE)
    return tuple(float(np.interp(label, keys, [_SIZE[k][i] for k in keys])) for i in range(3))  # type: ignore


def _region(label: int) -> str:
    return "C" if label <= 7 else "T" if label <= 19 else "L" if label <= 24 else "S"


def _disc(label: int, age: float, rng: np.random.Generator) -> float:
    """Height (mm) of the disc below `label`; discs thin with age."""
    table = {18: 6.0, 19: 7.0, 20: 8.0, 21: 9.0, 22: 10.0, 23: 11.0, 24: 10.0}
    h = table.get(label, 5.0 if label <= 7 else 4.5 + 0.1 * (label - 8))
    return float(h * (1 - 0.25 * np.clip((age - 40) / 50, 0, 1)) * rng.uniform(0.85, 1.15))


def _lordosis(label: int, lord: float) -> float:
    """Wedge angle (rad, lordotic positive) of the disc below `label`; lumbar ones scale with `lord`."""
    base = {18: 0.0, 19: 1.0, 20: 4.0, 21: 6.0, 22: 8.0, 23: 10.0, 24: 14.0}.get(label, 3.0 if label <= 7 else -1.0)
    return float(np.deg2rad(base * (lord if label >= 20 else 1.0)))


def _vertebra(label, visible, scale, kyph, trab, cort, rng) -> Vertebra:
    H, D, W = (x * scale * rng.normal(1, 0.015) for x in _interp(label))
    reg = _region(label)
    wedge_base = {20: 0.04, 21: 0.02, 22: 0.0, 23: -0.03, 24: -0.08, 19: 0.05, 18: 0.06}.get(
        label, 0.07 if reg == "T" else -0.02)
    wedge0 = float(np.clip(wedge_base * (kyph if wedge_base > 0 and reg == "T" else 1) + rng.normal(0, 0.012),
                           -0.12, 0.105))
    # Thoracic spinous processes point steeply down, the lower ones less, lumbar ones almost straight back.
    spin_angle = {17: 42, 18: 32, 19: 20}.get(label, {"C": 20, "T": 50, "L": 8, "S": 30}[reg])
    canal = {"C": (11, 7), "T": (8, 7.5), "L": (11, 8), "S": (10, 6)}[reg]
    tp = {"C": (8, 0), "T": (16, 10), "L": (22, 3), "S": (25, 2)}[reg]
    return Vertebra(
        label=label, visible=visible, height=H, depth=D, width=W, wedge0=wedge0,
        concavity=float(rng.uniform(0.3, 0.8)), waist=float(rng.uniform(0.6, 1.8)),
        rounding=float(rng.uniform(1.2, 2.0)),
        cortex=float(rng.uniform(1.0, 1.9)), endplate=float(rng.uniform(1.0, 1.8)),
        trab_hu=float(trab + rng.normal(0, 6) + (8 if reg == "T" else 0)), cort_hu=cort,
        canal_w=canal[0] * scale, canal_ap=canal[1] * scale, arch={"C": 4, "T": 5, "L": 6, "S": 6}[reg] * scale,
        spinous_len={"C": 20, "T": 32, "L": 30, "S": 15}[reg] * scale * rng.uniform(0.9, 1.1),
        spinous_angle=float(np.deg2rad(spin_angle + rng.normal(0, 4))),
        spinous_r={"C": 3.0, "T": 4.0, "L": 6.5, "S": 5.0}[reg] * scale,
        tp_len=tp[0] * scale, tp_back=float(tp[1]),
    )


def _fractures(p: Patient, cfg, rng: np.random.Generator, rng_d: np.random.Generator) -> None:
    """Draw grades (by level and bone density) and shapes for the visible vertebrae, make look-alikes
    of some intact ones, and solve each deformation on its plane."""
    vis = [i for i, v in enumerate(p.vertebrae) if v.visible]
    risk = fracture_risk([p.vertebrae[i].label for i in vis], p.trab_hu, cfg)
    grades = sample_grades(rng, len(vis), cfg.prevalence, risk)
    _lookalikes(p, vis, grades, rng_d)
    shapes: dict[int, int] = {}
    for i, g in zip(vis, grades):
        if g == 0:
            continue
        s = int(rng.choice([1, 2, 3], p=SHAPE_P))
        nbs = [j for j in (i - 1, i + 1) if j in vis]
        if s == 3 and (not nbs or any(shapes.get(j) == 3 for j in nbs)):
            s = 1  # a crush is graded against its neighbours: it needs one, and an intact one
        shapes[i] = s
        # Wedges mostly collapse the superior endplate; biconcave ones both about equally.
        lo, hi = {1: (0.6, 1.0), 2: (0.4, 0.6), 3: (0.5, 0.8)}[s]
        # Sclerotic band at full collapse: strong when healing, absent when acute.
        p.vertebrae[i] = replace(p.vertebrae[i], shape=s, f_sup=float(rng.uniform(lo, hi)),
                                 band_frac=float(rng_d.uniform(0.0, 220.0)))
    vs = p.vertebrae
    hs = {i: body_heights(vs[i]) for i in vis}

    def href(i: int) -> float | None:
        nbs = [j for j in (i - 1, i + 1) if j in vis]
        return float(np.mean([hs[j].hp for j in nbs])) if nbs else None

    todo = set(shapes)
    for _ in range(4):  # a neighbour's final height can push a loss off target: redraw those few
        # Non-crush first (their own heights define them), then crushes against the final neighbours.
        for crush in (False, True):
            for i in sorted(i for i in todo if (shapes[i] == 3) == crush):
                g = int(grades[vis.index(i)])
                t = target_loss(rng, g, cfg.margin, cfg.boundary)
                vs[i] = _solve(vs[i], t, href(i))
                hs[i] = body_heights(vs[i])
                p.targets[vs[i].label] = (g, t)
        todo = _bad(p, cfg, vis, hs, href) & set(shapes)
        if not todo:
            break
    for i in vis:
        p.targets.setdefault(vs[i].label, (0, 0.0))
        p.measured[vs[i].label] = measure(hs[i], href(i))


def _lookalikes(p: Patient, vis: list[int], grades: np.ndarray, rng: np.random.Generator) -> None:
    """Turn a few intact (G0-drawn) vertebrae into look-alikes that are no fracture: a uniformly short
    body (all heights reduced alike, 9-16 %, judged against its neighbours) or a developmental wedge
    (anterior height 9-16 % lower, more often at T11-L1). Each is checked against its unfractured
    neighbours to measure below `LOOKALIKE_MAX`; fractures of the neighbours only lower their posterior
    heights, hence its crush term, so it stays G0."""
    vs = p.vertebrae
    for k, i in enumerate(vis):
        junction = 18 <= vs[i].label <= 20
        r = rng.random()
        kind = 1 if r < 0.03 else 2 if r < 0.03 + (0.06 if junction else 0.025) else 0
        target = float(rng.uniform(0.09, 0.16))
        nbs = [j for j in (i - 1, i + 1) if j in vis]
        if grades[k] != 0 or kind == 0 or (kind == 1 and not nbs):
            continue
        base = vs[i]
        for _ in range(6):
            if kind == 1:
                cand = replace(base, height=base.height * (1 - target), lookalike=1)
            else:
                cand = replace(base, wedge0=target / (0.8 + 0.1 * target), lookalike=2,
                               schmorl=base.schmorl or int(rng.random() < 0.5))
            h = body_heights(cand)
            href = float(np.mean([body_heights(vs[j]).hp for j in nbs])) if nbs else None
            if measure(h, href).loss <= LOOKALIKE_MAX:
                vs[i] = cand
                break
            target -= 0.025


def _degeneration(vs: list[Vertebra], age: float, rng: np.random.Generator) -> list[Vertebra]:
    """Disc degeneration (density, vacuum gas), osteophytes, Schmorl's nodes and endplate sclerosis,
    more with age and in the lower lumbar discs; drawn in CT only (see `anatomy.Vertebra`)."""
    out = []
    old = float(np.clip((age - 35) / 50, 0, 1))
    for v in vs:
        lumbar = v.label >= 19
        deg = float(np.clip(old + rng.normal(0, 0.22) + (0.15 if v.label >= 23 else 0.0), 0, 1))
        disc_hu = float(np.clip(108 - 55 * deg + rng.normal(0, 10), 30, 120))
        vacuum = bool(rng.random() < (0.2 if lumbar else 0.06) * deg ** 2)
        p_osteo = 0.7 * old * (0.5 + 0.5 * deg)
        o_sup = float(rng.uniform(1.5, 6.0)) if rng.random() < p_osteo else 0.0
        o_inf = float(rng.uniform(1.5, 6.0)) if rng.random() < p_osteo else 0.0
        schmorl = int(rng.integers(1, 3)) if rng.random() < 0.07 else 0
        modic = float(rng.uniform(80, 250)) * deg if rng.random() < 0.35 * deg else 0.0
        out.append(replace(v, disc_hu=disc_hu, disc_deg=deg, vacuum=vacuum, osteo_sup=o_sup, osteo_inf=o_inf,
                           schmorl=schmorl, schmorl_un=float(rng.uniform(0.3, 0.7)),
                           schmorl_r=float(rng.uniform(2.0, 4.0)), band_inf=modic))
    # The disc below vertebra k is above vertebra k+1: its sclerosis marks both endplates it touches.
    for k in range(1, len(out)):
        if out[k - 1].band_inf:
            out[k] = replace(out[k], band_sup=out[k - 1].band_inf * float(rng.uniform(0.5, 1.0)))
    return out


def has_implant(rng: np.random.Generator) -> bool:
    """Whether a scan has pedicle screws: `IMPLANT_P` of them; the first draw of the patient's implant
    generator, seeded from (seed, patient index, 3)."""
    return bool(rng.random() < IMPLANT_P)


def _implant(p: Patient, rng: np.random.Generator) -> None:
    """Pedicle screws in 2-4 consecutive visible vertebrae (around a fracture when there is one) of
    `IMPLANT_P` of the scans."""
    if not has_implant(rng):
        return
    vis = [i for i, v in enumerate(p.vertebrae) if v.visible]
    fractured = [i for i in vis if p.vertebrae[i].shape]
    n = int(rng.integers(2, 5))
    centre = int(rng.choice(fractured)) if fractured else int(rng.choice(vis))
    lo = int(np.clip(centre - n // 2, vis[0], max(vis[-1] - n + 1, vis[0])))
    for i in range(lo, min(lo + n, vis[-1] + 1)):
        p.vertebrae[i] = replace(p.vertebrae[i], implant=True)
    p.implant = "pedicle_screws"


def _tissue_extra(age: float, rng: np.random.Generator) -> dict[str, float]:
    """Fat and gas of the soft tissue: adiposity 0..1 (visceral and prevertebral fat), fatty
    infiltration of the back muscles (with age), bowel gas share, noise grain (mm), organ enhancement
    with contrast (HU)."""
    return {"adiposity": float(rng.uniform(0, 1)),
            "muscle_fat": float(np.clip((age - 35) / 60, 0, 0.6) * rng.uniform(0.4, 1.4)),
            "gas_share": float(rng.uniform(0.0, 0.08)), "grain_mm": float(rng.uniform(0.35, 0.5)),
            "enhance_hu": float(rng.uniform(30, 90))}


def _bad(p: Patient, cfg, vis, hs, href) -> set[int]:
    """Visible vertebrae whose measured grade is off target or too close to a threshold."""
    if cfg.boundary:
        return set()
    bad = set()
    for i in vis:
        m = measure(hs[i], href(i))
        g = p.targets.get(p.vertebrae[i].label, (0, 0.0))[0]
        if m.grade != g or min(abs(m.loss - t) for t in THRESHOLDS) < cfg.margin / 2:
            bad.add(i)
    return bad


def _solve(vb: Vertebra, target: float, href: float | None) -> Vertebra:
    """The vertebra with `d` such that its measured loss is `target` (Illinois regula falsi)."""
    def f(d: float) -> float:
        return measure(body_heights(replace(vb, d=d)), href).loss - target

    a, fa, b, fb = 0.0, f(0.0), D_MAX, f(D_MAX)
    if fa >= 0 or fb <= 0:
        return replace(vb, d=a if fa >= 0 else b)
    side = 0
    c = a
    for _ in range(40):
        c = (a * fb - b * fa) / (fb - fa)
        fc = f(c)
        if abs(fc) < 0.0015 or b - a < 1e-5:
            break
        if fc * fb > 0:
            b, fb = c, fc
            if side == -1:
                fa /= 2
            side = -1
        else:
            a, fa = c, fc
            if side == 1:
                fb /= 2
            side = 1
    return replace(vb, d=float(c))


def _ev(t: float) -> np.ndarray:
    return np.array([0.0, np.sin(t), np.cos(t)])


def _eu(t: float) -> np.ndarray:
    return np.array([0.0, np.cos(t), -np.sin(t)])


def _layout(vs: list[Vertebra], discs: list[float], lord: float, rng) -> list[Vertebra]:
    """Stack the bodies top to bottom: each disc joins the rim-level endplate planes; body wedging
    (physiological or fractured) and disc wedging (lordosis) bend the column."""
    out, psi_bot, p_bot, delta = [], 0.0, np.zeros(3), 0.0
    for k, vb in enumerate(vs):
        t10, t90, b10, b90 = rim_heights(vb)
        span = 0.8 * vb.depth
        s_top, s_bot = (t90 - t10) / span, (b10 - b90) / span
        u_mid = (A_ANT - 0.5) * vb.depth
        if k == 0:
            theta, centre = 0.0, np.zeros(3)
        else:
            theta = psi_bot + delta - np.arctan(s_top)
            p_top = p_bot - _ev(psi_bot + delta / 2) * discs[k - 1]
            centre = p_top - _eu(theta) * u_mid - _ev(theta) * 0.5 * (t10 + t90)
        psi_bot = theta - np.arctan(s_bot)
        p_bot = centre + _eu(theta) * u_mid + _ev(theta) * 0.5 * (b10 + b90)
        delta = _lordosis(vb.label, lord)
        out.append(replace(vb, centre=tuple(centre), theta=float(theta)))
    # Pose: mean tilt of the visible bodies ~ N(0, 4 deg), scoliosis-free but slightly off midline,
    # placed somewhere on the scanner table.
    vis = [v for v in out if v.visible]
    pivot = np.mean([v.centre for v in vis], axis=0)
    phi = rng.normal(0, np.deg2rad(4)) - float(np.mean([v.theta for v in vis]))
    c, s = np.cos(phi), np.sin(phi)
    table = np.array([rng.uniform(-25, 25), rng.uniform(-110, -50), rng.uniform(-700, 200)])
    sway = rng.normal(0, 2.5)
    posed = []
    for k, v in enumerate(out):
        q = np.asarray(v.centre) - pivot
        x = q[0] + sway * np.sin(np.pi * k / max(len(out) - 1, 1))  # a slight lateral sway along the column
        q = np.array([x, c * q[1] + s * q[2], -s * q[1] + c * q[2]])
        posed.append(replace(v, centre=tuple(float(x) for x in q + table), theta=v.theta + phi))
    return posed


def _acquisition(p: Patient, cfg, rng: np.random.Generator) -> Acquisition:
    """Field of view around the visible levels, spacing, orientation, noise and DICOM storage."""
    corners, tips = [], []
    for v in p.visible:
        _, eu, ev = v.axes()
        c = np.asarray(v.centre)
        for uu in (-WALL * v.depth, A_ANT * v.depth):
            for vv in (-0.5 * v.height, 0.5 * v.height):
                corners.append(c + eu * uu + ev * vv)
        reach = v.canal_centre() - v.canal_ap - v.arch - v.spinous_len * np.cos(v.spinous_angle)
        tips.append(c + eu * reach - ev * v.spinous_len * np.sin(v.spinous_angle))
    corners, tips = np.array(corners), np.array(tips)
    xm = float(np.mean(corners[:, 0])) + rng.uniform(-8, 8)
    hw = rng.uniform(45, 70)
    lo = np.array([xm - hw, tips[:, 1].min() - rng.uniform(0, 35), corners[:, 2].min() - rng.uniform(3, 18)])
    hi = np.array([xm + hw, corners[:, 1].max() + rng.uniform(35, 75), corners[:, 2].max() + rng.uniform(3, 18)])
    kind = str(rng.choice(["axial", "sagittal", "isotropic"], p=[0.55, 0.25, 0.20]))
    if kind == "axial":
        ip = rng.uniform(0.7, 1.0)
        sp = np.array([ip, ip, rng.choice([1.0, 1.25, 1.5, 2.0, 2.5, 3.0])])
    elif kind == "sagittal":
        ip = rng.uniform(0.7, 1.0)
        sp = np.array([rng.choice([1.5, 2.0, 2.5, 3.0]), ip, ip])
    else:
        sp = np.full(3, rng.uniform(0.8, 1.2))
    if cfg.spacing is not None:
        sp = np.asarray(cfg.spacing, float)
    else:
        n = np.prod((hi - lo) / sp)
        if n > cfg.max_voxels:  # keep the volume affordable; ratios between axes are kept
            sp = sp * (n / cfg.max_voxels) ** (1 / 3)
    sp = np.round(sp, 4)
    shape = tuple(int(np.ceil(x)) + 1 for x in (hi - lo) / sp)
    perm = rng.permutation(3)
    flips = rng.integers(0, 2, 3)
    axcodes = tuple(("RAS" if not f else "LPI")[a] for a, f in zip(perm, flips))
    dtype, intercept = [("uint16", -1024), ("int16", -1024), ("int16", 0)][int(rng.integers(0, 3))]
    return Acquisition(
        spacing=tuple(float(x) for x in sp), axcodes=axcodes, origin=tuple(float(x) for x in lo),
        shape=shape, kind=kind, noise_hu=float(rng.uniform(16, 40)), blur_mm=float(rng.uniform(0.5, 1.0)),
        dicom_dtype=dtype, dicom_intercept=intercept,
    )


def _tissue(p: Patient, rng: np.random.Generator) -> dict[str, float]:
    """Soft-tissue parameters (mm, HU) of the body around the spine."""
    t = {
        "fat_mm": rng.uniform(5, 35), "back_gap_mm": rng.uniform(5, 40), "torso_a": rng.uniform(130, 190),
        "torso_b": rng.uniform(100, 150), "muscle_hu": rng.uniform(35, 60), "contrast": float(rng.random() < 0.4),
        "aorta_r": rng.uniform(9, 14), "gas": float(rng.integers(0, 12)), "soft_hu": rng.uniform(30, 45),
    }
    return {k: float(v) for k, v in t.items()}  # python floats keep float32 volumes float32
