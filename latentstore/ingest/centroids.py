"""Vertebral-body centroids in world RAS+ mm: from centroid files, or derived from a vertebra label mask.

Accepted centroid files (the format is told by the content, not the name):

* **VerSe JSON** (`*_ctd.json`): voxel indices along the array axes of the image named by its
  `direction` entry (see `latentstore.verse`). Mapped to world through the CT's affine; when the
  file's `direction` differs from the CT's axis codes (a file written for a reoriented copy), the
  indices are first carried over by the flips/permutation between the two (nibabel orientations).
* **World JSON**: `{"space": "RAS" | "LPS", "centroids": [{"label": 20, "x": .., "y": .., "z": ..}]}`,
  world coordinates in mm; `label` is a VerSe number or a level name (`"L1"`). `space` defaults to
  RAS (NIfTI/nibabel); DICOM patient coordinates are LPS.
* **CSV**: a header row with columns `label,x,y,z` (any order, case-insensitive, extra columns
  ignored) and optionally `space` (RAS or LPS, the same in every row; RAS if absent). World mm.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path

import numpy as np
from nibabel import orientations as ornt
from scipy import ndimage

from ..errors import InputError
from ..levels import LABELS, NAMES, ORDER, strict_label
from ..verse import parse_centroids

log = logging.getLogger(__name__)

Centroids = dict[int, np.ndarray]  # VerSe label -> (3,) world RAS+ mm
Skipped = list[tuple[int, str]]

_LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])


def read_centroid_file(path: Path, affine: np.ndarray, shape: tuple[int, ...]) -> tuple[Centroids, Skipped]:
    """World RAS+ centroids from a centroid file (any format above) of an image with `affine`/`shape`.

    Raises `InputError` (naming the file) when it is missing, unreadable or unparsable, or holds no
    finite centroid. Labels whose coordinates are NaN are returned in `skipped`.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read centroid file ({getattr(e, 'strerror', None) or e})") from None
    if not text.strip():
        raise InputError(f"{path}: centroid file is empty")
    if path.suffix.lower() == ".csv":
        return _world_rows(_csv_rows(text, path), path)
    try:
        data = json.loads(text)  # bare NaN is accepted: VerSe marks missing centroids with it
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: centroid file is not valid JSON ({e.msg} at line {e.lineno})") from None
    if isinstance(data, dict) and "centroids" in data:
        space = str(data.get("space", "RAS")).upper()
        rows = data["centroids"]
        if not isinstance(rows, list):
            raise InputError(f"{path}: 'centroids' must be a list of {{label, x, y, z}} objects")
        return _world_rows([{**r, "space": space} if isinstance(r, dict) else r for r in rows], path)
    verse = parse_centroids(data, str(path))
    skipped = [(lab, "centroid is NaN in the centroid file") for lab in verse.missing]
    return _verse_to_world(verse, affine, shape, path), skipped


def _verse_to_world(verse, affine: np.ndarray, shape: tuple[int, ...], path: Path) -> Centroids:
    """VerSe voxel indices -> world, through the affine of the image the file was written for."""
    img_ornt = ornt.io_orientation(affine)
    file_ornt = ornt.axcodes2ornt(verse.direction)
    if not np.array_equal(img_ornt, file_ornt):
        # The file indexes a flipped/permuted copy of our array: that copy's affine is ours composed
        # with the orientation transform (the same maths as nibabel's as_reoriented).
        log.info("%s: centroid direction %s differs from the image's %s; mapped through the reorientation",
                 path.name, "".join(verse.direction), "".join(ornt.aff2axcodes(affine)))
        transform = ornt.ornt_transform(img_ornt, file_ornt)
        affine = affine @ ornt.inv_ornt_aff(transform, shape)
    out = {}
    for label, xyz in verse.points.items():
        out[label] = affine[:3, :3] @ np.asarray(xyz, float) + affine[:3, 3]
    return out


def _csv_rows(text: str, path: Path) -> list[dict]:
    reader = csv.DictReader(text.splitlines())
    header = {(h or "").strip().lower() for h in (reader.fieldnames or [])}
    if not {"label", "x", "y", "z"} <= header:
        raise InputError(f"{path}: centroid CSV needs a header with columns label,x,y,z (got {sorted(header)})")
    return [{(k or "").strip().lower(): (v or "").strip() for k, v in row.items()} for row in reader]


def _world_rows(rows: list, path: Path) -> tuple[Centroids, Skipped]:
    out: Centroids = {}
    skipped: Skipped = []
    spaces = set()
    for row in rows:
        if not isinstance(row, dict):
            raise InputError(f"{path}: centroid entry {row!r} is not an object")
        row = {str(k).lower(): v for k, v in row.items()}
        label = _label(row.get("label", row.get("level")), path)
        try:
            xyz = np.array([float(row[k]) for k in ("x", "y", "z")])
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{path}: centroid of label {label} lacks numeric x, y, z") from None
        space = str(row.get("space") or "RAS").upper()
        if space not in ("RAS", "LPS"):
            raise InputError(f"{path}: space must be RAS or LPS, got {space!r}")
        spaces.add(space)
        if not np.all(np.isfinite(xyz)):
            skipped.append((label, "centroid is NaN in the centroid file"))
            continue
        if label in out:
            raise InputError(f"{path}: label {label} appears twice")
        out[label] = xyz * _LPS_TO_RAS if space == "LPS" else xyz
    if len(spaces) > 1:
        raise InputError(f"{path}: rows mix RAS and LPS coordinates")
    if not out:
        raise InputError(f"{path}: no finite centroids")
    return out, skipped


def _label(value, path: Path) -> int:
    if isinstance(value, str) and value.strip() and not value.strip().lstrip("-").isdigit():
        name = value.strip().upper().replace("CO", "Co")
        if name not in LABELS:
            raise InputError(f"{path}: unknown vertebra level {value!r}")
        return LABELS[name]
    try:
        return strict_label(value)
    except ValueError as e:
        raise InputError(f"{path}: {e}") from None


# ---------------------------------------------------------------------------------------------------
# Body centroids from a vertebra mask

MIN_VERTEBRA_MM3 = 1000.0  # smaller label fragments (a vertebra clipped by the field of view) are skipped


def body_centroids_from_mask(labels: np.ndarray, affine: np.ndarray) -> tuple[Centroids, Skipped]:
    """Vertebral-*body* centroids (world RAS+ mm) from a vertebra label mask (VerSe labels 1-28).

    The centre of mass of a whole vertebra lies 9-15 mm posterior of its body, in the arch (medical.md
    1.3). The body is the part in front of the spinal canal, so each vertebra is split there:

    1. Spine axis at each vertebra: the line through its neighbours' centres (labels in anatomical
       order; world S for a lone vertebra). Anterior = world A made orthogonal to that axis, so a
       lordotic or kyphotic spine is split across its own axis, not the scanner's.
    2. Profile of the vertebra's voxel count against depth (1 mm bins) behind its most anterior point.
       Body and posterior elements are two humps; the canal, bridged only by the thin pedicles, is the
       valley between them: the split is the most prominent valley (min of the two flanking maxima
       minus the valley) 10-60 mm behind the front.
    3. The body centroid is the centre of mass of the voxels in front of the split.

    Steps 1-3 run twice, the second time with the axis through the first pass's body centroids.
    Vertebrae without a valley (fragments) fall back to the whole-vertebra centre of mass.

    Accuracy, on the real VerSe sample sub-verse004 (T9-L5, PIR, 1x1x2 mm) against its JSON body
    centroids: 1.0-2.3 mm (mean 1.5 mm) per vertebra, versus 9.5-14.9 mm for the whole-vertebra centre
    of mass (checked in tests/test_ingest_scan.py).
    """
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        labels = np.rint(labels).astype(np.int32)
    voxel_mm3 = abs(np.linalg.det(affine[:3, :3]))
    skipped: Skipped = []
    points: dict[int, np.ndarray] = {}  # world mm of each vertebra's voxels, (N, 3)
    boxes = ndimage.find_objects(np.where((labels > 0) & (labels <= max(NAMES)), labels, 0))
    for i, box in enumerate(boxes):
        label = i + 1
        if box is None or label not in NAMES:
            continue
        ijk = np.argwhere(labels[box] == label) + [s.start for s in box]
        if len(ijk) * voxel_mm3 < MIN_VERTEBRA_MM3:
            skipped.append((label, f"only {len(ijk) * voxel_mm3:.0f} mm3 of mask: too small for a body centroid"))
            continue
        points[label] = ijk @ affine[:3, :3].T + affine[:3, 3]
    if not points:
        raise InputError("vertebra mask holds no vertebra labels (1-28)")
    centres = {lab: p.mean(axis=0) for lab, p in points.items()}
    for _ in range(2):
        centres = {lab: _body_centre(points[lab], _anterior(lab, centres)) for lab in points}
    return centres, skipped


def _anterior(label: int, centres: Centroids) -> np.ndarray:
    """Unit world vector pointing anterior, orthogonal to the local spine axis at `label`."""
    chain = [lab for lab in ORDER if lab in centres]
    i = chain.index(label)
    up, down = centres[chain[max(i - 1, 0)]], centres[chain[min(i + 1, len(chain) - 1)]]
    axis = up - down if len(chain) > 1 else np.array([0.0, 0.0, 1.0])
    axis = axis / np.linalg.norm(axis)
    a = np.array([0.0, 1.0, 0.0])
    a = a - (a @ axis) * axis
    return a / np.linalg.norm(a)


def _body_centre(world: np.ndarray, anterior: np.ndarray) -> np.ndarray:
    depth = (world @ anterior).max() - world @ anterior  # mm behind the most anterior voxel
    edges = np.arange(0.0, depth.max() + 2.0, 1.0)
    counts, _ = np.histogram(depth, edges)
    counts = ndimage.uniform_filter1d(counts.astype(float), 3)  # 3 mm smoothing: voxel aliasing
    best, split = 0.0, math.inf
    for k in range(1, len(counts) - 1):
        mid = (edges[k] + edges[k + 1]) / 2
        if not 10.0 <= mid <= 60.0:
            continue
        prominence = min(counts[:k].max(), counts[k + 1 :].max()) - counts[k]
        if prominence > best:
            best, split = prominence, mid
    body = world[depth < split] if math.isfinite(split) else world
    return body.mean(axis=0)


# ---------------------------------------------------------------------------------------------------
# Level checks: a vertebra is stored under its own level or not at all

MIN_STEP_MM = 8.0  # centroid distance per level: C2-C3 is ~15 mm, L4-L5 ~40 mm in adults
MAX_STEP_MM = 60.0
MIN_AXIAL_SHARE = 0.5  # the spine runs along world S-I: first-to-last vector at most 60 degrees off it
# How far a centroid may lie from the nearest voxel of its own label in the mask beside the CT. On the
# real VerSe sample (sub-verse004, 1x1x2 mm) every JSON centroid lies on its own label: 0.41-0.94 mm from
# the nearest own voxel centre (voxel discretisation, tests/test_ingest_scan.py). 3 mm leaves room for
# coarser masks and stays far below one level (>= 15 mm).
MASK_TOLERANCE_MM = 3.0


def check_level_order(centroids: Centroids) -> None:
    """Raise `InputError` naming the failed check when the centroids do not run superior to inferior in
    label order (world S decreasing from C1 to S), the spine does not run along world S-I, or
    neighbouring levels are implausibly close or far. These are the signs of a flipped or swapped
    direction code, a wrong affine or mislabelled levels: every level of such a scan is suspect."""
    chain = [lab for lab in ORDER if lab in centroids]
    if len(chain) < 2:
        return
    for a, b in zip(chain, chain[1:]):
        step = centroids[b] - centroids[a]
        gap = ORDER.index(b) - ORDER.index(a)
        if step[2] >= 0:
            raise InputError(f"level order check failed: {NAMES[b]} lies {step[2]:.1f} mm superior of {NAMES[a]} "
                             "(levels must run superior to inferior; a flipped or swapped direction code?)")
        dist = float(np.linalg.norm(step)) / gap
        if not MIN_STEP_MM <= dist <= MAX_STEP_MM:
            raise InputError(f"level spacing check failed: {NAMES[a]} to {NAMES[b]} is {dist:.1f} mm per level "
                             f"(expected {MIN_STEP_MM:.0f}-{MAX_STEP_MM:.0f}; wrong voxel sizes or labels?)")
    whole = centroids[chain[-1]] - centroids[chain[0]]
    share = abs(whole[2]) / float(np.linalg.norm(whole))
    if share < MIN_AXIAL_SHARE:
        raise InputError(f"spine axis check failed: {NAMES[chain[0]]} to {NAMES[chain[-1]]} runs only {share:.2f} "
                         "along world S-I (swapped axes in the direction code or the affine?)")


def check_on_mask(centroids: Centroids, labels: np.ndarray, affine: np.ndarray) -> tuple[Centroids, Skipped]:
    """Keep the centroids that lie on their own label in the vertebra mask (within `MASK_TOLERANCE_MM`
    of its nearest voxel); the others are skipped with the check that failed."""
    labels = np.asarray(labels)
    inv = np.linalg.inv(affine)
    boxes = ndimage.find_objects(np.where((labels > 0) & (labels <= max(NAMES)), labels, 0).astype(np.int32))
    kept: Centroids = {}
    skipped: Skipped = []
    for label, xyz in centroids.items():
        box = boxes[label - 1] if label - 1 < len(boxes) else None
        if box is None:
            skipped.append((label, f"mask check failed: label {label} ({NAMES[label]}) is absent from the mask"))
            continue
        ijk = np.argwhere(labels[box] == label) + [s.start for s in box]
        world = ijk @ affine[:3, :3].T + affine[:3, 3]
        dist = float(np.min(np.linalg.norm(world - xyz, axis=1)))
        if dist > MASK_TOLERANCE_MM:
            at = np.rint(inv[:3, :3] @ xyz + inv[:3, 3]).astype(int)
            inside = all(0 <= a < n for a, n in zip(at, labels.shape))
            on = int(labels[tuple(at)]) if inside else None
            where = "outside the mask" if on is None else f"on label {on}" + (f" ({NAMES[on]})" if on in NAMES else "")
            skipped.append((label, f"mask check failed: centroid lies {dist:.1f} mm from its own label in the mask "
                                   f"({where}; tolerance {MASK_TOLERANCE_MM:.0f} mm)"))
            continue
        kept[label] = xyz
    return kept, skipped
