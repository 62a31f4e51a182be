"""DICOM CT: read headers, group files into series, choose one series per study, load it as HU + RAS affine.

Headers are read once while scanning (`parse_header`, stopping before the pixel data) and only the
geometry and the few tags below are kept: nothing of the header is copied, printed or logged, and
UIDs appear only as hashes (`dcm-<sha256[:12]>`).

Series choice, per study (StudyInstanceUID; files without one are grouped by folder):

1. Files are grouped by SeriesInstanceUID, and inside a series by orientation (IOP) and matrix size,
   so a localizer or a reformat that shares a series UID forms its own group. Not by AcquisitionNumber:
   scanners in step-and-shoot mode number every slice apart; two acquisitions mixed in one series
   show up as slices sharing a position instead (step 3).
2. A file is usable when its Modality is CT, its SOP class is CT Image Storage (or absent), its
   ImageType has no LOCALIZER/SCOUT/TOPOGRAM, it has pixel data, is single-frame and has the geometry tags
   (ImagePositionPatient, ImageOrientationPatient, PixelSpacing).
3. A group is a candidate when it has at least `MIN_SLICES` usable files, no two at the same position
   and a uniform slice step (positions projected on the slice normal; a gap shows up here).
4. Among candidates: ORIGINAL/PRIMARY first, then axial (normal within 30 deg of S), then most slices,
   then thinnest step, then the hashed series UID (deterministic). The choice is logged (hashed ids only).

A study without a candidate becomes one error record listing why each series was dropped.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import logging
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_partial
from pydicom.pixels import apply_rescale
from pydicom.uid import UID, CTImageStorage

from ..errors import InputError

log = logging.getLogger(__name__)

MIN_SLICES = 3
_PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}  # Pixel Data, Float / Double Float Pixel Data
_SEQ_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"  # ends encapsulated (compressed) pixel data
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_LOCALIZER = "localizer/scout image"
HU_FLOOR = -1024  # padding (-2000, -3024 outside the reconstruction circle) and noise below air


def hashed_uid(uid: str, prefix: str = "dcm-", salt: bytes = b"") -> str:
    """`prefix` + first 12 hex of HMAC-SHA256(salt, uid): a stable name for a DICOM UID in messages.
    Under the store's salt (ingest passes it) nobody without the salt can test a UID against it."""
    return prefix + hmac.new(salt, uid.encode(), hashlib.sha256).hexdigest()[:12]


@dataclass
class Header:
    """The few tags of one DICOM file that scanning needs (geometry, grouping, filtering)."""

    path: Path
    digest: bytes  # sha256 of the file's bytes
    study: str
    series: str
    sop_instance: str
    modality: str
    image_type: tuple[str, ...]
    sop_class: str
    has_pixels: bool
    truncated: bool
    frames: int
    rows: int
    cols: int
    iop: tuple[float, ...] | None
    ipp: tuple[float, ...] | None
    pixel_spacing: tuple[float, ...] | None
    patient: str = field(repr=False)  # PHI: never logged


def looks_like_dicom(head: bytes) -> bool:
    """True when the 132-byte head has the DICOM Part 10 preamble magic `DICM` at offset 128."""
    return len(head) >= 132 and head[128:132] == b"DICM"


def parse_header(data: bytes, path: Path, digest: bytes, force: bool = False) -> Header:
    """The scan-time tags of one DICOM file given its bytes; `InputError` when it is no readable DICOM.

    `force` also reads files without the Part 10 preamble (old writers); they must then at least carry
    a SOPInstanceUID or a Modality to count as DICOM.
    """
    fp = io.BytesIO(data)
    pixels: dict = {}

    def at_pixels(tag, vr, length):
        if tag in _PIXEL_TAGS:
            pixels.update(pos=fp.tell(), length=length)
            return True
        return False

    try:
        ds = read_partial(fp, stop_when=at_pixels, force=force)
        if force and not ("SOPInstanceUID" in ds or "Modality" in ds):
            raise InvalidDicomError("no DICOM elements")
    except InvalidDicomError:
        raise InputError(f"{path.name}: not a DICOM file (no DICM preamble)") from None
    except Exception as e:  # pydicom raises many kinds on corrupt headers: all mean "unreadable"
        raise InputError(f"{path.name}: corrupt DICOM header ({type(e).__name__})") from None
    truncated = False
    if pixels:
        if pixels["length"] == 0xFFFFFFFF:  # encapsulated: must end with a sequence delimiter
            truncated = data.rfind(_SEQ_DELIMITER) < pixels["pos"]
        else:
            truncated = pixels["pos"] + pixels["length"] > len(data)
    return _header(ds, path, digest, has_pixels=bool(pixels), truncated=truncated)


def _header(ds, path: Path, digest: bytes, has_pixels: bool, truncated: bool) -> Header:
    meta = getattr(ds, "file_meta", None)
    try:
        return Header(
            path=path,
            digest=digest,
            study=str(ds.get("StudyInstanceUID", "") or ""),
            series=str(ds.get("SeriesInstanceUID", "") or ""),
            sop_instance=str(ds.get("SOPInstanceUID", "") or ""),
            modality=str(ds.get("Modality", "") or "").upper(),
            image_type=tuple(str(v).upper() for v in _multi(ds.get("ImageType"))),
            # Anonymisers sometimes blank SOPClassUID; the file meta keeps a copy.
            sop_class=str(ds.get("SOPClassUID", "") or (meta.get("MediaStorageSOPClassUID", "") if meta else "")),
            has_pixels=has_pixels,
            truncated=truncated,
            frames=int(ds.get("NumberOfFrames", 1) or 1),
            rows=int(ds.get("Rows", 0) or 0),
            cols=int(ds.get("Columns", 0) or 0),
            iop=_floats(ds.get("ImageOrientationPatient"), 6),
            ipp=_floats(ds.get("ImagePositionPatient"), 3),
            pixel_spacing=_floats(ds.get("PixelSpacing"), 2),
            patient=str(ds.get("PatientID", "") or ""),
        )
    except Exception as e:  # a tag with an undecodable value
        raise InputError(f"{path.name}: corrupt DICOM header ({type(e).__name__})") from None


def _multi(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]


def _floats(value, n: int) -> tuple[float, ...] | None:
    try:
        out = tuple(float(v) for v in _multi(value))
    except (TypeError, ValueError):
        return None
    return out if len(out) == n and np.all(np.isfinite(out)) else None


def unusable(h: Header) -> str | None:
    """Why a file cannot be a slice of a CT volume, or None when it can."""
    if h.modality != "CT":
        return f"modality {h.modality or 'missing'}, not CT"
    if h.sop_class and h.sop_class != CTImageStorage:
        return f"SOP class {UID(h.sop_class).name}, not CT Image Storage"
    if {"LOCALIZER", "SCOUT", "TOPOGRAM"} & set(h.image_type):
        return _LOCALIZER
    if not h.has_pixels:
        return "no pixel data"
    if h.truncated:
        return "pixel data truncated"
    if h.frames != 1:
        return "multi-frame image (not supported)"
    if h.iop is None or h.ipp is None or h.pixel_spacing is None:
        return "missing ImagePositionPatient/ImageOrientationPatient/PixelSpacing"
    return None


def stack_geometry(iops: list, ipps: list) -> tuple[np.ndarray, float]:
    """Slice order (by position along the slice normal, not InstanceNumber) and the uniform step in mm.

    Raises `InputError` when slices share a position or the step is not uniform (missing slices,
    mixed acquisitions). A gantry tilt is fine: the affine uses the actual step vector.
    """
    iop = np.asarray(iops[0], float)
    if any(not np.allclose(o, iop, atol=1e-3) for o in iops):
        raise InputError("slices have different orientations (ImageOrientationPatient)")
    normal = np.cross(iop[:3], iop[3:])
    pos = np.asarray(ipps, float) @ normal
    order = np.argsort(pos, kind="stable")
    steps = np.diff(pos[order])
    if len(steps) == 0:
        raise InputError("a single slice is not a volume")
    if np.any(steps < 1e-3):
        raise InputError(f"{int(np.sum(steps < 1e-3))} slice(s) share a position with another (mixed acquisitions?)")
    step = float(np.median(steps))
    if np.max(np.abs(steps - step)) > max(0.05, 0.01 * step):
        k = int(np.argmax(np.abs(steps - step)))
        missing = max(int(round(steps[k] / step)) - 1, 0)
        raise InputError(f"slice step not uniform ({steps.min():.2f} to {steps.max():.2f} mm): a {steps[k]:.2f} mm gap "
                         f"between slices {k + 1} and {k + 2} of {len(pos)} (positions {pos[order][k]:.1f} and "
                         f"{pos[order][k + 1]:.1f} mm, step {step:.2f} mm): {missing or 'some'} slice(s) missing")
    return order, step


def _is_primary(h: Header) -> bool:
    return "ORIGINAL" in h.image_type and "PRIMARY" in h.image_type


@dataclass
class _Candidate:
    name: str
    headers: list[Header]  # the usable files, sorted by path
    step: float
    key: tuple
    defects: list[tuple[Path, str]]  # files of the same group left out, with the reason


def choose_series(headers: list[Header], salt: bytes = b"") -> tuple[list[Header] | None, list[str], list[tuple[Path, str]]]:
    """Choose one study's series: `(chosen, dropped, defects)`.

    `chosen`: the chosen series' headers sorted by path (None when no series qualifies); `dropped`: why
    each other series was not chosen, one line each; `defects`: files of the chosen series left out
    (truncated, no pixel data, ...), with the reason.
    """
    groups: dict[tuple, list[Header]] = defaultdict(list)
    for h in headers:
        iop = tuple(np.round(h.iop, 3)) if h.iop else None
        groups[(h.series, iop, h.rows, h.cols)].append(h)
    dropped: list[str] = []
    broken_primary: list[str] = []  # ORIGINAL/PRIMARY series with a gap or truncated slices
    candidates: list[_Candidate] = []
    for (series, *_), group in groups.items():
        name = hashed_uid(series, salt=salt) if series else "series without UID"  # anonymisers may blank UIDs
        reasons = Counter(r for r in map(unusable, group) if r)
        usable = [h for h in group if not unusable(h)]
        if len(usable) < MIN_SLICES:
            why = reasons.most_common(1)[0][0] if reasons else f"only {len(usable)} slice(s)"
            dropped.append(f"{name}: {why} ({len(group)} file(s))")
            continue
        try:
            _, step = stack_geometry([h.iop for h in usable], [h.ipp for h in usable])
        except InputError as e:
            left_out = f" ({sum(reasons.values())} file(s) left out: {', '.join(reasons)})" if reasons else ""
            dropped.append(f"{name}: {e}{left_out}")
            if _is_primary(usable[0]):
                broken_primary.append(f"primary series {name} is incomplete: {e}{left_out}")
            continue
        first = usable[0]
        normal = np.cross(first.iop[:3], first.iop[3:])
        key = (
            _is_primary(first),
            abs(normal[2]) > np.cos(np.radians(30)),
            len(usable),
            -step,
            name,
        )
        # A localizer sharing the series is routine; a truncated or pixel-less file is a defect.
        defects = [(h.path, why) for h in group if (why := unusable(h)) and why != _LOCALIZER]
        candidates.append(_Candidate(name, sorted(usable, key=lambda h: str(h.path)), step, key, defects))
    if not candidates:
        return None, dropped, []
    best = max(candidates, key=lambda c: c.key)
    if broken_primary and not best.key[0]:
        # A derived (thick, reformatted) series in place of the acquired one would be a silent
        # downgrade: the study is an error naming the gap, to be fixed at the source.
        return None, [*broken_primary, f"the derived series {best.name} is not used in its place"], []
    study = hashed_uid(headers[0].study or str(headers[0].path.parent), "study-", salt)
    log.info("study %s: chose series %s (%d slices, %.2f mm step) of %d candidate(s)",
             study, best.name, len(best.headers), best.step, len(candidates))
    return best.headers, dropped, best.defects


def read_series(files: tuple[Path, ...] | list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Load a CT series as `(hu, affine)`: int16 HU of shape (columns, rows, slices), affine voxel -> RAS+ mm.

    Slices are sorted along the slice normal; rescale slope/intercept apply per slice; values at
    PixelPaddingValue and below -1024 HU become -1024. Compressed transfer syntaxes (JPEG 2000 ...)
    decode through pydicom's plugins (pylibjpeg). DICOM patient space is LPS: x and y are flipped.
    Raises `InputError` with one line on any problem.
    """
    if not files:
        raise InputError("no DICOM files to load")
    datasets = []
    for path in files:
        try:
            ds = pydicom.dcmread(path)
        except Exception as e:
            raise InputError(f"{Path(path).name}: unreadable DICOM ({type(e).__name__})") from None
        h = _header(ds, Path(path), b"", has_pixels=any(t in ds for t in _PIXEL_TAGS), truncated=False)
        why = unusable(h)
        if why:
            raise InputError(f"{Path(path).name}: {why}")
        datasets.append((ds, h))
    if len({h.series for _, h in datasets}) > 1:
        raise InputError("files belong to more than one series")
    shapes = {(h.rows, h.cols) for _, h in datasets}
    if len(shapes) > 1:
        raise InputError(f"slices have different matrix sizes {sorted(shapes)}")
    order, _ = stack_geometry([h.iop for _, h in datasets], [h.ipp for _, h in datasets])
    datasets = [datasets[i] for i in order]
    from .nifti import MAX_VOXELS

    voxels = datasets[0][1].cols * datasets[0][1].rows * len(datasets)
    if voxels > MAX_VOXELS:
        raise InputError(f"series of {len(datasets)} slices of {datasets[0][1].rows} x {datasets[0][1].cols} = {voxels:,} "
                         f"voxels, over the cap of {MAX_VOXELS:,} ($LATENTSTORE_MAX_VOXELS); not decoded")
    hu = np.empty((datasets[0][1].cols, datasets[0][1].rows, len(datasets)), np.int16)  # (C, R, K)
    for k, (ds, h) in enumerate(datasets):
        try:
            raw = ds.pixel_array
        except Exception as e:
            ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
            tsname = ts.name if ts is not None else "unknown transfer syntax"
            raise InputError(f"{h.path.name}: cannot decode pixel data ({tsname}; {type(e).__name__})") from None
        values = apply_rescale(raw, ds)  # per slice: the intercept may differ between slices
        pad = ds.get("PixelPaddingValue")
        if pad is not None:
            values = np.where(raw == pad, HU_FLOOR, values)
        hu[:, :, k] = np.clip(np.rint(values), HU_FLOOR, np.iinfo(np.int16).max).astype(np.int16).T
    first, last = datasets[0][1], datasets[-1][1]
    iop = np.asarray(first.iop)
    dr, dc = first.pixel_spacing  # PixelSpacing = (between rows, between columns) in mm
    lps = np.eye(4)
    lps[:3, 0] = iop[:3] * dc  # array axis 0 = column index: along the row direction cosine
    lps[:3, 1] = iop[3:] * dr  # array axis 1 = row index: along the column direction cosine
    lps[:3, 2] = (np.asarray(last.ipp) - np.asarray(first.ipp)) / (len(datasets) - 1)
    lps[:3, 3] = first.ipp
    return hu, _LPS_TO_RAS @ lps
