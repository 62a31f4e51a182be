"""TotalSegmentator output as the vertebra mask of a CT: how hospitals get vertebra masks today.

Two layouts are read, both beside the CT (found by `scan.py`):

* **a folder of binary masks**, one file per structure (`vertebrae_L1.nii.gz`, ..., as TotalSegmentator
  writes by default): every `vertebrae_<level>` file becomes its VerSe label; the other structures
  (liver, ribs, ...) are ignored. Folders `<stem>_totalseg/`, `<stem>_segmentations/`, `<stem>/`, or
  `segmentations/` when the CT is alone in its folder.
* **the multilabel file** (`--ml`): `<stem>_totalseg.nii.gz`, or `segmentations.nii.gz` beside a lone CT.
  Its ids are mapped by the label map TotalSegmentator writes into the NIfTI header extension when it is
  there; else by the v2 class map (26 = vertebrae_S1, 27 = L5 ... 31 = L1, 32 = T12 ... 43 = T1,
  44 = C7 ... 50 = C1). v1 files (18 = L5 ... 41 = C1) carry the extension from v1.5 on; an older v1
  file without it would be read as v2, so name its ids in the extension or convert it first.

Levels map to VerSe numbers (C1-C7 1-7, T1-T12 8-19, L1-L5 20-24, S1 26). The result is a VerSe-numbered
label volume: body centroids then come from it exactly as from a VerSe mask (`centroids.py`).
"""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import InputError
from ..levels import LABELS
from .nifti import read_volume

FILE = re.compile(r"^vertebrae_(C[1-7]|T1[0-2]|T[1-9]|L[1-5]|S1)\.nii(\.gz)?$")
_ORDER_UP = ["S1", *[f"L{i}" for i in range(5, 0, -1)], *[f"T{i}" for i in range(12, 0, -1)], *[f"C{i}" for i in range(7, 0, -1)]]
V2_IDS = {26 + i: name for i, name in enumerate(_ORDER_UP)}  # 26 S1, 27 L5 ... 50 C1
V1_IDS = {18 + i: name for i, name in enumerate(_ORDER_UP[1:])}  # 18 L5 ... 41 C1 (v1 has no S1)


def verse_label(level: str) -> int:
    """`"L1"` -> 20; `"S1"` -> 26 (VerSe's sacrum label)."""
    return 26 if level == "S1" else LABELS[level]


def is_folder(folder: Path) -> bool:
    """True for a folder holding TotalSegmentator's per-structure vertebra masks."""
    try:
        return folder.is_dir() and any(FILE.match(p.name) for p in folder.iterdir())
    except OSError:
        return False


def read_folder(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """The per-level binary masks of a TotalSegmentator folder as one VerSe-numbered label volume."""
    files = sorted(p for p in folder.iterdir() if FILE.match(p.name))
    labels, affine = None, None
    for path in files:
        data, aff = read_volume(path, "mask")
        if labels is None:
            labels, affine = np.zeros(data.shape, np.int16), aff
        elif data.shape != labels.shape or not np.allclose(aff, affine, atol=1e-3):
            raise InputError(f"{path.name}: grid differs from {files[0].name} (TotalSegmentator masks share one grid)")
        labels[np.asarray(data) > 0.5] = verse_label(FILE.match(path.name)[1])
    if labels is None:
        raise InputError(f"{folder.name}: no vertebrae_<level>.nii.gz files")
    return labels, affine


def read_multilabel(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A TotalSegmentator multilabel file as a VerSe-numbered label volume (ids as the module says)."""
    data, affine = read_volume(path, "mask")
    ids = np.rint(np.asarray(data)).astype(np.int32)
    mapping = _header_map(path) or V2_IDS
    labels = np.zeros(ids.shape, np.int16)
    for ts_id, level in mapping.items():
        labels[ids == ts_id] = verse_label(level)
    if not labels.any():
        raise InputError(f"{path.name}: no vertebra ids in the TotalSegmentator multilabel file")
    return labels, affine


def _header_map(path: Path) -> dict[int, str]:
    """id -> level from the label map in the NIfTI header extension, when TotalSegmentator wrote one."""
    try:
        exts = nib.load(path).header.extensions
    except Exception:  # noqa: BLE001 - the volume itself was read already; no map is no map
        return {}
    out: dict[int, str] = {}
    for ext in exts:
        text = ext.get_content()
        text = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
        for key, level in re.findall(r'Key="(\d+)"[^>]*>\s*(?:<!\[CDATA\[)?\s*vertebrae_(C[1-7]|T1[0-2]|T[1-9]|L[1-5]|S1)\b', text):
            out[int(key)] = level
    return out
