"""VerSe centroid files (`*_ctd.json`): read and write.

Format (anjany/verse, subject-based release): a JSON list whose first entry is
`{"direction": ["P", "I", "R"]}` (nibabel axis codes of the voxel array: the direction in which each
index grows) and whose other entries are `{"label": 20, "X": 63.2, "Y": 141.9, "Z": 31.8}`: voxel
indices along array axes 0, 1, 2 (not world x/y/z) of the vertebral-body centroid. Older files wrap
the list as `{"vertebralCentroids": [...]}`. Entries with NaN coordinates mark missing centroids.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError
from .levels import strict_label

_AXIS_CODES = {"L", "R", "A", "P", "S", "I"}


@dataclass(frozen=True)
class Centroids:
    """Vertebral-body centroids of one scan in voxel coordinates of its original image.

    Args:
        direction: axis codes of the voxel array, e.g. `("P", "I", "R")`.
        points: VerSe label -> (X, Y, Z) voxel indices along array axes 0, 1, 2.
        missing: labels whose entries held NaN (listed, not guessed).
    """

    direction: tuple[str, str, str]
    points: dict[int, tuple[float, float, float]]
    missing: tuple[int, ...] = ()


def parse_centroids(data: object, source: str = "<json>") -> Centroids:
    """Centroids from already-decoded JSON (list form or the older `vertebralCentroids` wrapper)."""
    if isinstance(data, dict) and "vertebralCentroids" in data:
        data = data["vertebralCentroids"]
    if not isinstance(data, list) or not data:
        raise InputError(f"{source}: centroid JSON must be a non-empty list of entries")
    direction = None
    points: dict[int, tuple[float, float, float]] = {}
    missing: list[int] = []
    for entry in data:
        if not isinstance(entry, dict):
            raise InputError(f"{source}: centroid entry {entry!r} is not an object")
        if "direction" in entry:
            codes = tuple(str(c).upper() for c in entry["direction"])
            if len(codes) != 3 or not set(codes) <= _AXIS_CODES or len({_axis(c) for c in codes}) != 3:
                raise InputError(f"{source}: bad direction {entry['direction']!r}")
            if direction is not None and codes != direction:
                # Which one the coordinates were written in is unknowable: guessing cuts the wrong place.
                raise InputError(f"{source}: two different direction entries ({''.join(direction)}, {''.join(codes)})")
            direction = codes
            continue
        try:
            xyz = tuple(float(entry[k]) for k in ("X", "Y", "Z"))
            raw = entry["label"]
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{source}: centroid entry {str(entry)[:80]} lacks label/X/Y/Z numbers") from None
        try:
            label = strict_label(raw)
        except ValueError as e:
            raise InputError(f"{source}: {e}") from None
        if not all(math.isfinite(v) for v in xyz):
            missing.append(label)
            continue
        if label in points:
            raise InputError(f"{source}: label {label} appears twice")
        points[label] = xyz  # type: ignore[assignment]
    if direction is None:
        raise InputError(f"{source}: no {{'direction': [...]}} entry")
    if not points:
        raise InputError(f"{source}: no finite centroids")
    return Centroids(direction, points, tuple(missing))  # type: ignore[arg-type]


def read_centroids(path: str | Path) -> Centroids:
    """Read a VerSe `*_ctd.json` file; raise `InputError` with the file name on any problem."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise InputError(f"{path}: cannot read centroid file ({e.strerror})") from None
    try:
        # Python's json accepts bare NaN, which is how VerSe files mark missing centroids.
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: centroid file is not valid JSON ({e.msg} at line {e.lineno})") from None
    return parse_centroids(data, str(path))


def write_centroids(path: str | Path, centroids: Centroids) -> None:
    """Write in the subject-based VerSe format: direction first, then labels in ascending order."""
    entries: list[dict] = [{"direction": list(centroids.direction)}]
    for label in sorted(centroids.points):
        x, y, z = centroids.points[label]
        entries.append({"label": int(label), "X": round(x, 1), "Y": round(y, 1), "Z": round(z, 1)})
    Path(path).write_text(json.dumps(entries))


def _axis(code: str) -> int:
    return {"L": 0, "R": 0, "A": 1, "P": 1, "S": 2, "I": 2}[code]
