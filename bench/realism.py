"""How close the synthetic phantom is to real CT: one table of image statistics on 96x96 sagittal slices.

    python bench/realism.py                                   # real samples vs a fresh 20-patient archive
    python bench/realism.py --compare old=/path/to/old/archive  # plus another synth archive (older phantom)
    python bench/realism.py --pixel-probe --probe-patients 80 --compare-store old=STORE,LABELS

Slices. Synthetic: `latentstore synth` into a temporary folder (the library function, `--workers`), then
each scan is loaded and cut exactly as `latentstore ingest` does (`ingest.scan_archive`, `load_scan`,
`cut_slices`: 96x96 px of 1 mm, one per vertebral body centroid). Real: the samples in
`../shared/data/real` that hold a CT (`ct-nifti/example_ct.nii.gz`, a 3 mm abdominal CT; `dicom-ct/`,
20 axial slices 2 mm apart of a thoracolumbar PET/CT, the patient lying on the side). The VerSe sample
has a mask and centroids but no CT, so it gives no slices. The real CTs have no centroids; the bodies
are found by a simple rule (`find_bodies`), on the volume resampled to 1 mm:

1. the spine is where bone (> 200 HU) stacks up most along z (a z-projection blurred by 8 mm, within
   140 mm of the torso's centre so that arms do not count); its midline is the weighted centre of that
   stack within 40 mm of the maximum (facets, pedicles and body are symmetric about it);
2. the patient's anterior is the horizontal world axis closest to the vector from the spine to the
   torso's centre (the DICOM patient lies on the side); the volume is turned about z so that anterior
   is +y, and the mid-sagittal plane through the spine is taken;
3. on it, the anterior column's centre line runs 10 mm behind the most anterior point 5 mm deep inside
   tissue > 100 HU (distance transform, in front of the stack maximum; median over 15 mm of z), about
   15 mm behind the bodies' front;
4. along that line the HU profile (13 mm wide, 4 mm blur) peaks in the bodies and dips at the discs;
   its peaks at least 23 mm apart are the body centres (a field of view too short for a peak gives one
   slice at its middle).

That is crude (a slice may sit a few mm off a body's centre) but the same for every real sample; the
slices are then cut with the same `cut_slices`.

Statistics (`slice_stats`, the same function for real and synthetic slices; every slice has its body
centroid at pixel (48, 48)):

- inside: pixels > -500 HU with holes filled (so bowel gas enclosed by tissue counts as inside);
- bone region: pixels > 250 HU, closed by 3 px, holes filled, dilated by 2 px (bodies, cortex, arches);
- soft tissue: inside, not bone region, -200..200 HU, not within 5 px of the padding outside the
  field of view (rows or columns that are all -1024 HU);
- soft-tissue high-pass SD: image minus its Gaussian blur (sigma 1.5 px), SD over the soft-tissue
  pixels (fine grain: noise plus the edges between fat, muscle and gas); "away from edges": the same
  over soft-tissue pixels whose 5x5 neighbourhood is all soft tissue (mostly the noise alone). On the
  real DICOM's native axial pixels (0.98 mm, not resampled) the first is about 50 HU and the second
  about 18 HU; the 2-3 mm slices, resampled to the 1 mm sagittal grid, are smoother;
- soft-tissue mean and SD over the soft-tissue pixels; fat share: inside pixels in -190..-30 HU over
  inside pixels; gas share: inside pixels < -500 HU over inside pixels;
- trabecular mean: mean of the central 9x9 px (the body's centre is deep inside it);
- cortex/endplate p95: the 95th percentile of the pixels > 250 HU within the central 41x41 px;
- disc: the mean over columns 44..52 of each row gives a vertical profile through the body; the disc
  above (below) is the 3-row window of lowest mean between 8 and 30 rows above (below) the centre;
  its mean HU is the disc HU, and a disc with a pixel < -300 HU in that window has vacuum gas.

Each statistic is given per source as median [p10-p90] over slices (discs: over discs).

`--pixel-probe`: the 8x8 pooled-pixel probe of fracture detection (G0 vs G2/G3, `latentstore.probe`:
`probe_data`, `pix8_features`, `detection_probe`, logistic, patient-grouped 5-fold, seeds 0-2) on a
fresh `--probe-patients` archive ingested into a temporary store, and on any `--compare-store
NAME=STORE,LABELS` (e.g. the store of an archive made by the previous phantom and its ground_truth.csv).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "real"
STATS = [("hp_sd", "soft-tissue high-pass SD (HU)"), ("hp_core", "  same, away from edges (noise)"),
         ("soft_mean", "soft-tissue mean (HU)"), ("soft_sd", "soft-tissue SD (HU)"),
         ("fat", "fat share of body (-190..-30)"), ("gas", "gas share of body (< -500)"),
         ("trab", "trabecular mean (HU)"), ("cortex_p95", "cortex/endplate p95 (HU)"),
         ("disc", "disc mean (HU)"), ("vacuum", "discs with gas")]


# ---------------------------------------------------------------------------------------------- statistics


def masks(img: np.ndarray) -> dict[str, np.ndarray]:
    """Pixel classes of a 96x96 HU slice: inside the body, bone region, soft tissue (module doc)."""
    body = ndimage.binary_fill_holes(img > -500)
    bone = ndimage.binary_fill_holes(ndimage.binary_closing(img > 250, iterations=3))
    bone = ndimage.binary_dilation(bone, iterations=2)
    pad = np.zeros(img.shape, bool)  # rows / columns outside the scan's field of view (all -1024)
    pad[(img <= -1024).all(axis=1)] = True
    pad[:, (img <= -1024).all(axis=0)] = True
    near_pad = ndimage.binary_dilation(pad, iterations=5)
    soft = body & ~bone & ~near_pad & (img >= -200) & (img <= 200)
    return {"body": body, "bone": bone, "soft": soft}


def disc_windows(img: np.ndarray) -> list[np.ndarray]:
    """The disc above and below the centre: the 3-row window of lowest mean in the central column band,
    8-30 rows from the centre (pixels of that window, 3 x 9)."""
    c = img.shape[0] // 2
    band = img[:, c - 4:c + 5].astype(float)
    prof = ndimage.uniform_filter1d(band.mean(axis=1), 3)
    out = []
    for rows in (np.arange(c - 30, c - 8), np.arange(c + 8, c + 30)):
        rows = rows[(rows >= 1) & (rows < img.shape[0] - 1)]
        if rows.size == 0 or (band[rows] <= -1000).all():
            continue
        r = int(rows[np.argmin(prof[rows])])
        win = band[r - 1:r + 2]
        if (win > -1000).all():  # not the padding outside a scan's field of view
            out.append(win)
    return out


def slice_stats(img: np.ndarray) -> dict[str, float | list[float]]:
    """The statistics of one slice (module doc); NaN where a class is empty."""
    img = img.astype(np.float32)
    m = masks(img)
    c = img.shape[0] // 2
    hp = img - ndimage.gaussian_filter(img, 1.5)
    core = ndimage.binary_erosion(m["soft"], np.ones((5, 5)))
    soft = img[m["soft"]]
    inside = img[m["body"]]
    box = img[c - 20:c + 21, c - 20:c + 21]
    bright = box[box > 250]
    discs = disc_windows(img)
    nan = float("nan")
    return {
        "hp_sd": float(hp[m["soft"]].std()) if m["soft"].sum() > 30 else nan,
        "hp_core": float(hp[core].std()) if core.sum() > 30 else nan,
        "soft_mean": float(soft.mean()) if soft.size > 30 else nan,
        "soft_sd": float(soft.std()) if soft.size > 30 else nan,
        "fat": float(((inside >= -190) & (inside <= -30)).mean()) if inside.size else nan,
        "gas": float((inside < -500).mean()) if inside.size else nan,
        "trab": float(img[c - 4:c + 5, c - 4:c + 5].mean()),
        "cortex_p95": float(np.percentile(bright, 95)) if bright.size > 10 else nan,
        "disc": [float(w.mean()) for w in discs],
        "vacuum": [float((w < -300).any()) for w in discs],
    }


def summarise(images: list[np.ndarray]) -> dict[str, str]:
    """median [p10-p90] of each statistic over the slices (discs over discs; vacuum as a share)."""
    rows = [slice_stats(im) for im in images]
    out = {"slices": str(len(images))}
    for key, _ in STATS:
        vals = [x for r in rows for x in (r[key] if isinstance(r[key], list) else [r[key]])]
        vals = np.array([v for v in vals if np.isfinite(v)])
        if vals.size == 0:
            out[key] = "-"
        elif key == "vacuum":
            out[key] = f"{vals.mean():.0%} of {vals.size}"
        elif key in ("fat", "gas"):
            p = np.percentile(vals, [50, 10, 90]) * 100
            out[key] = f"{p[0]:.1f}% [{p[1]:.1f}-{p[2]:.1f}]"
        else:
            p = np.percentile(vals, [50, 10, 90])
            out[key] = f"{p[0]:.0f} [{p[1]:.0f}-{p[2]:.0f}]"
    return out


# ---------------------------------------------------------------------------------------------- real CT


def find_bodies(hu: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """(affine turned so that the patient's anterior is world +y, {pseudo-label: body centre in that
    world}) of a real CT without centroids, by the rule in the module docstring."""
    from latentstore.ingest.slicing import resample_iso

    iso, iso_aff = resample_iso((hu, affine), 1.0)  # RAS, 1 mm
    iso = iso.astype(np.float32)
    torso = (iso > -300).any(axis=2)
    tx, ty = np.argwhere(torso).mean(axis=0)
    stack = ndimage.gaussian_filter((iso > 200).sum(axis=2).astype(np.float32), 8.0)
    xx, yy = np.meshgrid(np.arange(iso.shape[0]), np.arange(iso.shape[1]), indexing="ij")
    stack[np.hypot(xx - tx, yy - ty) > 140] = 0  # arms and the table lie farther out
    sx, sy = np.unravel_index(int(np.argmax(stack)), stack.shape)
    # The maximum may be one column of facets: the spine's midline is the weighted centre of the
    # stacked bone within 40 mm of it (the facets, pedicles and body are symmetric about it).
    near = (np.hypot(xx - sx, yy - sy) < 40) & (stack > 0.3 * stack.max())
    sx, sy = (int(round(float((q * stack)[near].sum() / stack[near].sum()))) for q in (xx, yy))
    vec = np.array([tx - sx, ty - sy])
    ap = int(np.argmax(np.abs(vec)))  # 0: the patient's AP axis is world x, 1: world y
    sign = float(np.sign(vec[ap]))
    # Rotation about z (multiple of 90 degrees) that maps the patient's anterior onto +y.
    rot = np.eye(4)
    rot[:2, :2] = {(1, 1.0): [[1, 0], [0, 1]], (1, -1.0): [[-1, 0], [0, -1]],
                   (0, 1.0): [[0, -1], [1, 0]], (0, -1.0): [[0, 1], [-1, 0]]}[(ap, sign)]
    plane = iso[sx] if ap == 1 else iso[:, sy]  # (ap, z) through the spine
    if sign < 0:
        plane = plane[::-1]
    a0 = (sy if ap == 1 else sx) if sign > 0 else plane.shape[0] - 1 - (sy if ap == 1 else sx)
    sm = ndimage.gaussian_filter(plane, 1.0)
    dist = ndimage.distance_transform_edt(sm > 100)
    dist[: max(a0 - 5, 0)] = 0  # the arches and processes lie behind the stack maximum
    # The anterior column's centre line: per z, the AP position deepest inside bone-ish tissue.
    rows = np.flatnonzero(dist.max(axis=0) >= 7)
    centres = {}
    if rows.size > 10:
        front = np.array([np.flatnonzero(dist[:, z] >= 5).max() for z in rows])  # ~5 mm inside the front
        line = np.interp(np.arange(plane.shape[1]), rows, ndimage.median_filter(front, 15) - 10.0)
        zs = np.arange(rows[0], rows[-1] + 1)
        prof = np.array([sm[max(int(line[z]) - 6, 0):int(line[z]) + 7, z].mean() for z in zs])
        prof = ndimage.gaussian_filter1d(prof, 4.0)
        peak = (prof == ndimage.maximum_filter1d(prof, 23)) & (prof > 100)
        picks = [z for z in zs[peak] if z - zs[0] >= 8 and zs[-1] - z >= 8]
        for z in picks or [int(zs[len(zs) // 2])]:  # a short field of view: its middle
            a_idx = line[z] if sign > 0 else plane.shape[0] - 1 - line[z]
            vox = np.array([sx, a_idx, z]) if ap == 1 else np.array([a_idx, sy, z])
            centres[len(centres) + 1] = iso_aff[:3, :3] @ vox + iso_aff[:3, 3]
    turned = {k: (rot[:3, :3] @ c) for k, c in centres.items()}
    return rot @ affine, turned


def real_slices() -> dict[str, list[np.ndarray]]:
    """96x96 slices of the real samples that have a CT, keyed by sample name."""
    from latentstore.ingest.dicom import read_series
    from latentstore.ingest.load import Volume
    from latentstore.ingest.nifti import read_ct
    from latentstore.ingest.slicing import cut_slices

    out = {}
    sources = []
    if (REAL / "ct-nifti" / "example_ct.nii.gz").is_file():
        sources.append(("real NIfTI (3 mm)", lambda: read_ct(REAL / "ct-nifti" / "example_ct.nii.gz")))
    files = sorted((REAL / "dicom-ct").glob("CT*")) if (REAL / "dicom-ct").is_dir() else []
    if files:
        sources.append(("real DICOM (2 mm)", lambda: read_series(files)))
    for name, read in sources:
        hu, affine = read()
        hu = np.maximum(hu, -1024)
        turned, centres = find_bodies(hu, affine)
        # cut_slices wants VerSe labels: number the found bodies 8.. (T1..), superior first.
        order = sorted(centres, key=lambda k: -centres[k][2])
        cents = {8 + i: centres[k] for i, k in enumerate(order)}
        cuts, _ = cut_slices(Volume(hu, turned, cents, None))
        out[name] = [c.image for c in cuts]
    return out


# ---------------------------------------------------------------------------------------------- synthetic


def synth_slices(archive: Path, max_scans: int | None = None) -> list[np.ndarray]:
    """The 96x96 slices `latentstore ingest` would cut from a synth archive (its first `max_scans`)."""
    from latentstore.ingest.load import load_scan
    from latentstore.ingest.scan import scan_archive
    from latentstore.ingest.slicing import cut_slices

    sources, _ = scan_archive(archive)
    sources = sorted((s for s in sources if s.format == "nifti"), key=lambda s: str(s.ct))[:max_scans]
    return [c.image for s in sources for c in cut_slices(load_scan(s))[0]]


def make_archive(out: Path, patients: int, seed: int, workers: int) -> float:
    """A fresh synth archive with this checkout's phantom; returns seconds."""
    from latentstore.synth import synth_archive

    t = time.perf_counter()
    synth_archive(out, patients=patients, seed=seed, workers=workers, progress=False, sheet=False)
    return time.perf_counter() - t


# ---------------------------------------------------------------------------------------------- probe


def pixel_probe(store: Path, labels: Path) -> str:
    """8x8 pooled-pixel logistic probe AUC (mean +- SD over seeds 0-2) on a store's labelled slices."""
    try:
        from latentstore.probe import detection_probe, pix8_features, probe_data
    except ImportError:
        return "latentstore.probe not available"
    from latentstore.slicedata import Preprocess

    data = probe_data(str(store), labels)
    det = np.isin(data.grade, (0, 2, 3))
    y = (data.grade[det] >= 2).astype(int)
    X = pix8_features(Preprocess(), data.images[det])
    r = detection_probe(X, y, data.groups[det], "logistic", (0, 1, 2), 5)
    return f"AUC {r['auc']:.3f} +- {r['auc_sd']:.3f} (n={int(det.sum())}, fractured={int(y.sum())}, " \
           f"patients={len(set(data.groups))})"


def ingest(archive: Path, store: Path, workers: int) -> None:
    """`latentstore ingest ARCHIVE --store STORE` in a subprocess (Ray stays out of this process)."""
    exe = Path(sys.executable).with_name("latentstore")
    subprocess.run([str(exe), "ingest", str(archive), "--store", str(store), "--workers", str(workers)],
                   check=True, capture_output=True, text=True)


# ---------------------------------------------------------------------------------------------- main


def table(columns: dict[str, dict[str, str]]) -> str:
    """Markdown table: one row per statistic, one column per source."""
    names = list(columns)
    lines = ["| statistic | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    lines.append("| slices | " + " | ".join(columns[n]["slices"] for n in names) + " |")
    for key, title in STATS:
        lines.append(f"| {title} | " + " | ".join(columns[n][key] for n in names) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=20, help="patients of the fresh synth archive")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--archive", type=Path, help="measure this synth archive instead of making a fresh one")
    ap.add_argument("--compare", action="append", default=[], metavar="NAME=ARCHIVE",
                    help="another synth archive to measure (e.g. one made by the previous phantom)")
    ap.add_argument("--max-scans", type=int, default=20, help="scans per compared archive")
    ap.add_argument("--pixel-probe", action="store_true", help="also the 8x8 pooled-pixel probe AUC")
    ap.add_argument("--probe-patients", type=int, default=80)
    ap.add_argument("--probe-seed", type=int, default=3, help="seed of the probe archive")
    ap.add_argument("--compare-store", action="append", default=[], metavar="NAME=STORE,LABELS",
                    help="a store and its labels CSV to probe too (e.g. the previous phantom's)")
    ap.add_argument("--json", type=Path, help="also write the table as JSON")
    args = ap.parse_args()

    columns = {name: summarise(imgs) for name, imgs in real_slices().items()}
    with tempfile.TemporaryDirectory(prefix="realism-") as tmp:
        tmp = Path(tmp)
        archive = args.archive
        if archive is None:
            archive = tmp / "archive"
            sec = make_archive(archive, args.patients, args.seed, args.workers)
            print(f"synthesised {args.patients} patients in {sec:.1f} s", file=sys.stderr)
        for item in args.compare:
            name, path = item.split("=", 1)
            columns[name] = summarise(synth_slices(Path(path), args.max_scans))
        columns["synth (this checkout)"] = summarise(synth_slices(archive, args.max_scans))
        print(table(columns))
        probes = {}
        if args.pixel_probe:
            for item in args.compare_store:
                name, rest = item.split("=", 1)
                store, labels = rest.split(",", 1)
                probes[name] = pixel_probe(Path(store), Path(labels))
            parch = tmp / "probe-archive"
            make_archive(parch, args.probe_patients, args.probe_seed, args.workers)
            ingest(parch, tmp / "probe-store", args.workers)
            probes[f"synth (this checkout), {args.probe_patients} patients"] = pixel_probe(
                tmp / "probe-store", parch / "ground_truth.csv")
            print("\n8x8 pooled-pixel probe, G0 vs G2/G3:")
            for name, text in probes.items():
                print(f"- {name}: {text}")
    if args.json:
        args.json.write_text(json.dumps({"columns": columns, "pixel_probe": probes}, indent=1))


if __name__ == "__main__":
    main()
