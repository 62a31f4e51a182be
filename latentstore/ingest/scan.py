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

`name` (the raw scan name; the store holds only its pseudonym, `scan_id`, see `ingest/privacy.py`): a
BIDS name `sub-X[_key-value...]_ct` gives `sub-X[_key-value...]` (e.g. `sub-verse004_dir-ax`) and
patient `sub-X`; any other name gives its stem, with the patient taken from a `sub-X` folder above it,
else the stem. Two different scans with the same name get `-<content_hash[:8]>` appended.

**DICOM** (files with the `DICM` magic, or named `*.dcm`/`*.dicom`/`*.ima`): one `ScanSource` per study,
the series chosen as described in `dicom.py`, `name` = `dicom-series:<SeriesInstanceUID>`
(`dicom-content:<content_hash>` when the UID is blank), patient = PatientID (else the StudyInstanceUID, so
unnamed studies are never merged). Centroids come from a world-coordinate sidecar `centroids.json` or
`centroids.csv` (format in `centroids.py`; `latentstore synth --dicom` writes LPS JSON) in the series
folder or the nearest folder above it (up to `root`).

Files with identical bytes are ingested once. The copy kept is one with centroids or a mask found for it
(a bare backup copy never displaces the annotated scan), then the first in sorted path order; every
other copy gets an error record marked `duplicate` that names the kept file.

Only regular files (or links to them) are opened; FIFOs, sockets, devices, symlink loops, unreadable
files and folders and non-UTF-8 names are error records and the walk goes on.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
from collections import defaultdict
from pathlib import Path

from ..errors import InputError
from . import dicom, totalseg
from .sources import ErrorRecord, ScanSource

_MASK_STEM = re.compile(r"(_msk|_mask|_seg|_labels?|_lbl|_totalseg)$|_seg-|^segmentations$")
_BIDS_CT = re.compile(r"^(?P<sub>sub-[A-Za-z0-9]+)(?P<ents>(?:_[A-Za-z0-9]+-[A-Za-z0-9]+)*)_ct$")
_SUB_DIR = re.compile(r"^sub-[A-Za-z0-9]+$")
_DICOM_SUFFIXES = {".dcm", ".dicom", ".ima"}
_CENTROID_NAMES = [
    "{p}_seg-subreg_ctd.json", "{p}_seg-vb_ctd.json", "{p}_ctd.json", "{p}_centroids.json", "{p}_centroids.csv",
]
_MASK_NAMES = ["{p}_seg-vert_msk", "{p}_seg", "{p}_msk", "{p}_mask"]
_SIDECARS = ["centroids.json", "centroids.csv"]
_TS_DIRS = ["{p}_totalseg", "{p}_segmentations", "{p}"]  # TotalSegmentator folders (+ segmentations/ for a lone CT)


def scan_archive(root: Path, salt: bytes = b"") -> tuple[list[ScanSource], list[ErrorRecord]]:
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
    sources = _nifti_sources(niftis, errors)
    sources += _dicom_sources(root, dicoms, errors, salt)
    return _unique_names(sources), errors


def _walk(root: Path, errors: list[ErrorRecord]) -> tuple[list[Path], list[Path]]:
    """The candidate CT files under `root`. Only regular files are ever opened: FIFOs, sockets and
    devices (a read would block or never end), dangling links and symlink loops, unreadable files and
    folders and names that are not UTF-8 each become an error record, and the walk goes on."""
    niftis, dicoms = [], []

    def onerror(e: OSError):
        errors.append(ErrorRecord(str(e.filename), "scan", f"cannot list folder ({e.strerror})"))

    for folder, dirs, names in os.walk(root, onerror=onerror):
        # A TotalSegmentator output folder holds ~100 structure masks, never a CT: read only as a mask.
        ts_folder = any(totalseg.FILE.match(n) for n in names)
        kept = []
        for d in sorted(dirs):
            if d.startswith("."):
                continue
            if not _utf8(d):
                errors.append(ErrorRecord(os.path.join(folder, d), "scan", "folder name is not valid UTF-8: folder skipped"))
                continue
            kept.append(d)
        dirs[:] = kept
        for name in sorted(names):
            if name.startswith("."):
                continue
            path = Path(folder, name)
            if not _utf8(name):
                errors.append(ErrorRecord(str(path), "scan", "file name is not valid UTF-8: file skipped"))
                continue
            lower = name.lower()
            nifti = lower.endswith((".nii", ".nii.gz"))
            dicom_name = Path(lower).suffix in _DICOM_SUFFIXES
            if not (nifti or dicom_name or _no_suffix(path)):
                continue  # README.md, notes.txt, preview.png ... are never opened
            why = _not_regular(path)
            if why:
                errors.append(ErrorRecord(str(path), "scan", why))
                continue
            if nifti:
                if not ts_folder and not _is_mask(path.relative_to(root)):
                    niftis.append(path)
            elif dicom_name:
                dicoms.append(path)
            else:
                try:
                    with open(path, "rb") as f:
                        if dicom.looks_like_dicom(f.read(132)):
                            dicoms.append(path)
                except OSError as e:
                    errors.append(ErrorRecord(str(path), "scan", f"cannot read file ({e.strerror})"))
    # Sorted by full path: "the first copy" of duplicated bytes means the same file on every run.
    return sorted(niftis, key=str), sorted(dicoms, key=str)


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")  # os.walk hands undecodable bytes back as lone surrogates
        return True
    except UnicodeEncodeError:
        return False


def _not_regular(path: Path) -> str | None:
    """Why `path` must not be opened (None for a readable regular file, or a link to one)."""
    try:
        st = os.stat(path)  # follows links: a loop or a dangling link raises here
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "symlink loop: file skipped"
        if e.errno == errno.ENOENT:
            return "dangling symlink: file skipped"
        return f"cannot read file ({e.strerror})"
    if not stat.S_ISREG(st.st_mode):
        kind = ("FIFO" if stat.S_ISFIFO(st.st_mode) else "socket" if stat.S_ISSOCK(st.st_mode)
                else "device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "folder link")
        return f"not a regular file ({kind}): never opened"
    if not os.access(path, os.R_OK):
        return "cannot read file (Permission denied)"
    return None


def _is_file(path: Path) -> bool:
    """`Path.is_file` that is False, not an exception, inside unreadable folders."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def _is_mask(relative: Path) -> bool:
    """Masks and other derived images, judged on the path below the archive root."""
    return "derivatives" in relative.parts or bool(_MASK_STEM.search(_stem(relative)))


def _stem(path: Path) -> str:
    return re.sub(r"\.nii(\.gz)?$", "", path.name, flags=re.IGNORECASE)


def _no_suffix(path: Path) -> bool:
    """Extension-less files (the usual DICOM naming, also `IM.0001`): opened to look for the DICM magic."""
    return not path.suffix or path.suffix[1:].isdigit()


def _digest(path: Path) -> bytes:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.digest()


def _keep_one_copy(copies: list[tuple], errors: list[ErrorRecord]) -> list[tuple]:
    """Among files with identical bytes keep one: an annotated copy (centroids or mask found for it)
    over a bare one, then the first in path order, so a bare backup copy can never displace the
    annotated scan, whatever the names. Every other copy is an error record naming the kept one."""
    groups: dict[bytes, list[tuple]] = defaultdict(list)  # items: (path, digest, annotated, ...)
    for item in copies:
        groups[item[1]].append(item)
    kept = []
    for group in groups.values():
        best = min(group, key=lambda item: (not item[2], str(item[0])))
        kept.append(best)
        for path, *_ in group:
            if path != best[0]:
                errors.append(ErrorRecord(str(path), "scan", "duplicate: identical bytes to a file kept instead",
                                          related=str(best[0]), duplicate=True))
    return sorted(kept, key=lambda item: str(item[0]))


# ---------------------------------------------------------------------------------------------------
# NIfTI


def _nifti_sources(paths: list[Path], errors: list[ErrorRecord]) -> list[ScanSource]:
    per_folder = defaultdict(int)
    for p in paths:
        per_folder[p.parent] += 1
    found = []  # (ct, digest, annotated)
    sidecars = {}
    for ct in paths:
        try:
            if ct.stat().st_size == 0:
                errors.append(ErrorRecord(str(ct), "scan", "empty file (0 bytes)"))
                continue
            digest = _digest(ct)
        except OSError as e:
            errors.append(ErrorRecord(str(ct), "scan", f"cannot read file ({e.strerror})"))
            continue
        sidecars[ct] = _nifti_sidecars(ct, _stem(ct), alone=per_folder[ct.parent] == 1)
        found.append((ct, digest, sidecars[ct][:2] != (None, None)))
    sources = []
    for ct, digest, *_ in _keep_one_copy(found, errors):
        stem = _stem(ct)
        bids = _BIDS_CT.match(stem)
        if bids:
            name, patient = bids["sub"] + bids["ents"], bids["sub"]
        else:
            name = stem
            patient = next((p for p in reversed(ct.parent.parts) if _SUB_DIR.match(p)), stem)
        centroids, mask, mask_format = sidecars[ct]
        if centroids is None and mask is None:
            why = (f"no centroid file and no vertebra mask found beside the CT "
                   f"(e.g. {_base(stem)}_seg-subreg_ctd.json, {stem}_centroids.csv)")
            errors.append(ErrorRecord(str(ct), "scan", why, name=name))
            continue
        sources.append(ScanSource(name, "nifti", ct, (ct,), centroids, mask, patient, digest.hex(), mask_format))
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


def _nifti_sidecars(ct: Path, stem: str, alone: bool) -> tuple[Path | None, Path | None, str]:
    """(centroid file, mask, mask format) beside the CT: VerSe names first, then TotalSegmentator's."""
    prefixes = list(dict.fromkeys([_base(stem), stem]))
    dirs = _search_dirs(ct.parent)
    named = [d / n.format(p=p) for p in prefixes for n in _CENTROID_NAMES for d in dirs]
    other_ctd = [f for p in prefixes for d in dirs for f in _glob(d, f"{p}_*ctd.json")]
    folder_level = [ct.parent / n for n in _SIDECARS] if alone else []
    centroids = _first_existing(named + other_ctd + folder_level)
    masks = [d / f"{n.format(p=p)}{ext}" for p in prefixes for n in _MASK_NAMES for ext in (".nii.gz", ".nii")
             for d in dirs]
    mask = _first_existing(masks)
    if mask is not None:
        return centroids, mask, "verse"
    ts_dirs = [ct.parent / n.format(p=p) for p in prefixes for n in _TS_DIRS] + ([ct.parent / "segmentations"] if alone else [])
    folder = next((d for d in ts_dirs if totalseg.is_folder(d)), None)
    if folder is not None:
        return centroids, folder, "totalseg"
    ml = [ct.parent / f"{p}_totalseg{ext}" for p in prefixes for ext in (".nii.gz", ".nii")]
    ml += [ct.parent / f"segmentations{ext}" for ext in (".nii.gz", ".nii")] if alone else []
    mask = _first_existing(ml)
    return centroids, mask, "totalseg-ml" if mask is not None else "verse"


def _first_existing(paths) -> Path | None:
    return next((p for p in paths if _is_file(p)), None)


def _glob(folder: Path, pattern: str) -> list[Path]:
    try:
        return sorted(folder.glob(pattern)) if folder.is_dir() else []
    except OSError:  # an unreadable folder holds nothing we can use
        return []


# ---------------------------------------------------------------------------------------------------
# DICOM


def _dicom_sources(root: Path, paths: list[Path], errors: list[ErrorRecord], salt: bytes = b"") -> list[ScanSource]:
    found = []  # (path, digest, annotated, header)
    sidecar_of: dict[Path, Path | None] = {}  # folder -> nearest centroid sidecar
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
        try:
            # Extension-named files may lack the preamble (old writers): read them anyway.
            force = not dicom.looks_like_dicom(data[:132]) and path.suffix.lower() in _DICOM_SUFFIXES
            h = dicom.parse_header(data, path, digest, force=force)
        except InputError as e:
            errors.append(ErrorRecord(str(path), "scan", str(e)))
            continue
        if path.parent not in sidecar_of:
            sidecar_of[path.parent] = _first_existing(d / n for d in _up_to(path.parent, root) for n in _SIDECARS)
        found.append((path, digest, sidecar_of[path.parent] is not None, h))
    studies: dict[str, list[dicom.Header]] = defaultdict(list)
    for *_, h in _keep_one_copy(found, errors):
        # Files without a StudyInstanceUID are grouped by folder: the best guess at "one study".
        studies[h.study or f"folder:{h.path.parent}"].append(h)
    sources = []
    for key in sorted(studies):
        headers = studies[key]
        chosen, dropped, defects = dicom.choose_series(headers, salt)
        folder = Path(os.path.commonpath([h.path.parent for h in (chosen or headers)]))
        if chosen is None:
            errors.append(ErrorRecord(str(folder), "scan", "no usable CT series: " + "; ".join(dropped)))
            continue
        content = hashlib.sha256(b"".join(h.digest for h in chosen)).hexdigest()
        # Anonymised files may carry no SeriesInstanceUID: name the scan by its content then.
        name = "dicom-series:" + chosen[0].series if chosen[0].series else "dicom-content:" + content
        errors += [ErrorRecord(str(p), "scan", f"left out of the series: {why}", name=name) for p, why in defects]
        centroids = _first_existing(d / n for d in _up_to(folder, root) for n in _SIDECARS)
        if centroids is None:
            errors.append(ErrorRecord(str(folder), "scan", "no centroid sidecar (centroids.json or centroids.csv) "
                                      "in the series folder or above it", name=name))
            continue
        patient = chosen[0].patient or chosen[0].study or name
        files = tuple(h.path for h in chosen)
        sources.append(ScanSource(name, "dicom", folder, files, centroids, None, patient, content))
    return sources


def _up_to(folder: Path, root: Path) -> list[Path]:
    """`folder` and its parents up to and including `root`, nearest first."""
    out = [folder]
    while folder != root and root in folder.parents:
        folder = folder.parent
        out.append(folder)
    return out


def _unique_names(sources: list[ScanSource]) -> list[ScanSource]:
    count = defaultdict(int)
    for s in sources:
        count[s.name] += 1
    out = []
    for s in sources:
        if count[s.name] > 1:
            s = ScanSource(**{**s.__dict__, "name": f"{s.name}-{s.content_hash[:8]}"})
        out.append(s)
    return out
