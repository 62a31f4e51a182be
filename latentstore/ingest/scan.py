"""Find the CT volumes of an archive: VerSe/BIDS NIfTI, plain NIfTI with sidecars, DICOM studies.

`scan_archive(root)` walks `root` (hidden files and folders skipped) and returns one `ScanSource` per CT
volume plus an `ErrorRecord` for every input it had to reject. It reads DICOM headers and hashes the
bytes of every CT file (that is how duplicates are found and `content_hash` is filled), but decodes no
image: loading is `load_scan`'s job.

**NIfTI** (`*.nii`, `*.nii.gz`). Files under a `derivatives` folder, and files whose name (before
`.nii[.gz]`) ends in `_msk`, `_mask`, `_seg`, `_label(s)` or holds `_seg-`, are masks, not CTs. For a CT
with stem `S` (`sub-verse004_ct`) and base `B` (`S` without a trailing `_ct`: `sub-verse004`), these
names are looked for, first in the CT's folder, then in the matching `derivatives` folder (the last
`rawdata` path component replaced by `derivatives`, with and without the subject folder):

    centroids (first found wins): {P}_seg-subreg_ctd.json, {P}_seg-vb_ctd.json, {P}_ctd.json,
        {P}_centroids.json, {P}_centroids.csv, any {P}_*ctd.json; then `centroids.json` or
        `centroids.csv` in the CT's folder when that folder holds only this CT
    mask: {P}_seg-vert_msk, {P}_seg, {P}_msk, {P}_mask (.nii.gz or .nii)

for `P` = `B` then `S`. The formats of centroid files are in `centroids.py` (VerSe voxel JSON; world
JSON with a `space`; CSV `label,x,y,z[,space]`). Without centroids, the mask alone gives body
centroids (`body_centroids_from_mask`); with neither, the CT is rejected.

`scan_id`: a BIDS name `sub-X[_key-value...]_ct` gives `sub-X[_key-value...]` (e.g.
`sub-verse004_dir-ax`) and patient `sub-X`; any other name gives its stem, with the patient taken from
a `sub-X` folder above it, else the stem. Two different scans with the same name get
`-<content_hash[:8]>` appended.

**DICOM** (files with the `DICM` magic, or named `*.dcm`/`*.dicom`/`*.ima`): one `ScanSource` per study,
the series chosen as described in `dicom.py`, `scan_id` = `dcm-<sha256(SeriesInstanceUID)[:12]>`
(`dcm-<content_hash[:12]>` when the UID is blank), patient = PatientID (else the StudyInstanceUID, so
unnamed studies are never merged). Centroids come from a world-coordinate sidecar `centroids.json` or
`centroids.csv` (format in `centroids.py`; `latentstore synth --dicom` writes LPS JSON) in the series
folder or the nearest folder above it (up to `root`).

Files with identical bytes are ingested once: every later copy (in sorted path order) gets an error
record "duplicate of <first>".
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import defaultdict
from pathlib import Path

from ..errors import InputError
from . import dicom
from .sources import ErrorRecord, ScanSource

_MASK_STEM = re.compile(r"(_msk|_mask|_seg|_labels?|_lbl)$|_seg-")
_BIDS_CT = re.compile(r"^(?P<sub>sub-[A-Za-z0-9]+)(?P<ents>(?:_[A-Za-z0-9]+-[A-Za-z0-9]+)*)_ct$")
_SUB_DIR = re.compile(r"^sub-[A-Za-z0-9]+$")
_DICOM_SUFFIXES = {".dcm", ".dicom", ".ima"}
_CENTROID_NAMES = [
    "{p}_seg-subreg_ctd.json", "{p}_seg-vb_ctd.json", "{p}_ctd.json", "{p}_centroids.json", "{p}_centroids.csv",
]
_MASK_NAMES = ["{p}_seg-vert_msk", "{p}_seg", "{p}_msk", "{p}_mask"]
_SIDECARS = ["centroids.json", "centroids.csv"]


def scan_archive(root: Path) -> tuple[list[ScanSource], list[ErrorRecord]]:
    """All CT volumes under `root` and the inputs rejected on the way; never raises for a bad file.

    Raises `InputError` only when `root` itself is missing or unreadable.
    """
    root = Path(root)
    if not root.exists():
        raise InputError(f"archive {root} does not exist")
    if not root.is_dir():
        raise InputError(f"archive {root} is not a folder")
    if not os.access(root, os.R_OK | os.X_OK):
        raise InputError(f"archive {root} is not readable")
    errors: list[ErrorRecord] = []
    niftis, dicoms = _walk(root, errors)
    seen: dict[bytes, Path] = {}  # file digest -> first file with those bytes
    sources = _nifti_sources(niftis, seen, errors)
    sources += _dicom_sources(root, dicoms, seen, errors)
    return _unique_ids(sources), errors


def _walk(root: Path, errors: list[ErrorRecord]) -> tuple[list[Path], list[Path]]:
    niftis, dicoms = [], []

    def onerror(e: OSError):
        errors.append(ErrorRecord(str(e.filename), "scan", f"cannot list folder ({e.strerror})"))

    for folder, dirs, names in os.walk(root, onerror=onerror):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if name.startswith("."):
                continue
            path = Path(folder, name)
            lower = name.lower()
            if lower.endswith((".nii", ".nii.gz")):
                if not _is_mask(path.relative_to(root)):
                    niftis.append(path)
            elif Path(lower).suffix in _DICOM_SUFFIXES or _maybe_dicom(path):
                dicoms.append(path)
    # Sorted by full path: "the first copy" of duplicated bytes means the same file on every run.
    return sorted(niftis, key=str), sorted(dicoms, key=str)


def _is_mask(relative: Path) -> bool:
    """Masks and other derived images, judged on the path below the archive root."""
    return "derivatives" in relative.parts or bool(_MASK_STEM.search(_stem(relative)))


def _stem(path: Path) -> str:
    return re.sub(r"\.nii(\.gz)?$", "", path.name, flags=re.IGNORECASE)


def _maybe_dicom(path: Path) -> bool:
    """Extension-less files (the usual DICOM naming) that carry the DICM magic; others are ignored."""
    if path.suffix and not path.suffix[1:].isdigit():  # README.md, notes.txt, preview.png ...
        return False
    try:
        with open(path, "rb") as f:
            return dicom.looks_like_dicom(f.read(132))
    except OSError:
        return False


def _digest(path: Path) -> bytes:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.digest()


def _first_copy(path: Path, digest: bytes, seen: dict[bytes, Path], errors: list[ErrorRecord]) -> bool:
    """Remember `path`'s bytes; False (with an error record) when an earlier file had the same bytes."""
    first = seen.setdefault(digest, path)
    if first != path:
        errors.append(ErrorRecord(str(path), "scan", f"duplicate of {first} (identical bytes)"))
        return False
    return True


# ---------------------------------------------------------------------------------------------------
# NIfTI


def _nifti_sources(paths: list[Path], seen: dict[bytes, Path], errors: list[ErrorRecord]) -> list[ScanSource]:
    per_folder = defaultdict(int)
    for p in paths:
        per_folder[p.parent] += 1
    sources = []
    for ct in paths:
        try:
            if ct.stat().st_size == 0:
                errors.append(ErrorRecord(str(ct), "scan", "empty file (0 bytes)"))
                continue
            digest = _digest(ct)
        except OSError as e:
            errors.append(ErrorRecord(str(ct), "scan", f"cannot read file ({e.strerror})"))
            continue
        if not _first_copy(ct, digest, seen, errors):
            continue
        stem = _stem(ct)
        bids = _BIDS_CT.match(stem)
        if bids:
            scan_id, patient = bids["sub"] + bids["ents"], bids["sub"]
        else:
            scan_id = stem
            patient = next((p for p in reversed(ct.parent.parts) if _SUB_DIR.match(p)), stem)
        centroids, mask = _nifti_sidecars(ct, stem, alone=per_folder[ct.parent] == 1)
        if centroids is None and mask is None:
            why = (f"no centroid file and no vertebra mask found beside the CT "
                   f"(e.g. {_base(stem)}_seg-subreg_ctd.json, {stem}_centroids.csv)")
            errors.append(ErrorRecord(str(ct), "scan", why, scan_id=scan_id))
            continue
        sources.append(ScanSource(scan_id, "nifti", ct, (ct,), centroids, mask, patient, digest.hex()))
    return sources


def _base(stem: str) -> str:
    return stem[:-3] if stem.endswith("_ct") else stem


def _search_dirs(folder: Path) -> list[Path]:
    dirs = [folder]
    parts = folder.parts
    if "rawdata" in parts:
        i = len(parts) - 1 - parts[::-1].index("rawdata")
        deriv = Path(*parts[:i], "derivatives", *parts[i + 1 :])
        dirs += [deriv, Path(*parts[:i], "derivatives")]
    return dirs


def _nifti_sidecars(ct: Path, stem: str, alone: bool) -> tuple[Path | None, Path | None]:
    prefixes = list(dict.fromkeys([_base(stem), stem]))
    dirs = _search_dirs(ct.parent)
    named = [d / n.format(p=p) for p in prefixes for n in _CENTROID_NAMES for d in dirs]
    other_ctd = [f for p in prefixes for d in dirs if d.is_dir() for f in sorted(d.glob(f"{p}_*ctd.json"))]
    folder_level = [ct.parent / n for n in _SIDECARS] if alone else []
    centroids = _first_existing(named + other_ctd + folder_level)
    masks = [d / f"{n.format(p=p)}{ext}" for p in prefixes for n in _MASK_NAMES for ext in (".nii.gz", ".nii")
             for d in dirs]
    mask = _first_existing(masks)
    return centroids, mask


def _first_existing(paths) -> Path | None:
    return next((p for p in paths if p.is_file()), None)


# ---------------------------------------------------------------------------------------------------
# DICOM


def _dicom_sources(
    root: Path, paths: list[Path], seen: dict[bytes, Path], errors: list[ErrorRecord]
) -> list[ScanSource]:
    studies: dict[str, list[dicom.Header]] = defaultdict(list)
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError as e:
            errors.append(ErrorRecord(str(path), "scan", f"cannot read file ({e.strerror})"))
            continue
        if not data:
            errors.append(ErrorRecord(str(path), "scan", "empty file (0 bytes)"))
            continue
        digest = hashlib.sha256(data).digest()
        if not _first_copy(path, digest, seen, errors):
            continue
        try:
            # Extension-named files may lack the preamble (old writers): read them anyway.
            force = not dicom.looks_like_dicom(data[:132]) and path.suffix.lower() in _DICOM_SUFFIXES
            h = dicom.parse_header(data, path, digest, force=force)
        except InputError as e:
            errors.append(ErrorRecord(str(path), "scan", str(e)))
            continue
        # Files without a StudyInstanceUID are grouped by folder: the best guess at "one study".
        studies[h.study or f"folder:{path.parent}"].append(h)
    sources = []
    for key in sorted(studies):
        headers = studies[key]
        chosen, dropped, defects = dicom.choose_series(headers)
        folder = Path(os.path.commonpath([h.path.parent for h in (chosen or headers)]))
        if chosen is None:
            errors.append(ErrorRecord(str(folder), "scan", "no usable CT series: " + "; ".join(dropped)))
            continue
        content = hashlib.sha256(b"".join(h.digest for h in chosen)).hexdigest()
        # Anonymised files may carry no SeriesInstanceUID: name the scan by its content then.
        scan_id = dicom.hashed_uid(chosen[0].series) if chosen[0].series else "dcm-" + content[:12]
        errors += [ErrorRecord(str(p), "scan", f"left out of the series: {why}", scan_id=scan_id) for p, why in defects]
        centroids = _first_existing(d / n for d in _up_to(folder, root) for n in _SIDECARS)
        if centroids is None:
            errors.append(ErrorRecord(str(folder), "scan", "no centroid sidecar (centroids.json or centroids.csv) "
                                      "in the series folder or above it", scan_id=scan_id))
            continue
        patient = chosen[0].patient or chosen[0].study or scan_id
        files = tuple(h.path for h in chosen)
        sources.append(ScanSource(scan_id, "dicom", folder, files, centroids, None, patient, content))
    return sources


def _up_to(folder: Path, root: Path) -> list[Path]:
    """`folder` and its parents up to and including `root`, nearest first."""
    out = [folder]
    while folder != root and root in folder.parents:
        folder = folder.parent
        out.append(folder)
    return out


def _unique_ids(sources: list[ScanSource]) -> list[ScanSource]:
    count = defaultdict(int)
    for s in sources:
        count[s.scan_id] += 1
    out = []
    for s in sources:
        if count[s.scan_id] > 1:
            s = ScanSource(**{**s.__dict__, "scan_id": f"{s.scan_id}-{s.content_hash[:8]}"})
        out.append(s)
    return out
