"""The records that scanning hands to loading and to the ingest run: what to ingest, and what was rejected."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ScanSource:
    """One CT volume to ingest.

    Args:
        name: the raw scan name: BIDS subject plus entities (`sub-verse004`, `sub-verse004_dir-ax`),
            the NIfTI file stem, or for DICOM `dicom-series:<SeriesInstanceUID>`. Unique within one
            `scan_archive` result. May identify a patient: the store holds only its pseudonym
            (`scan_id`), and the raw name stays in the driver.
        format: `"nifti"` or `"dicom"`.
        ct: the CT file, or the folder holding the chosen DICOM series.
        files: every file whose bytes make up the scan (the CT file, or the chosen series' files,
            sorted by path).
        centroids: centroid file (VerSe `*_ctd.json`, or a world-coordinate JSON/CSV sidecar); `None`
            when the centroids are derived from `mask`.
        mask: vertebra label mask, if any.
        patient: raw patient identifier (BIDS subject, DICOM PatientID). PHI: hash it, never store or
            log it in clear.
        content_hash: sha256 hex of the CT file's bytes; for a DICOM series, sha256 over the
            concatenated sha256 digests (32 raw bytes each) of `files` in order. Computed while
            scanning, so the run need not read the files again to know whether a scan is new.
        mask_format: `"verse"` (a VerSe-numbered label file), `"totalseg"` (a TotalSegmentator folder
            of per-level masks) or `"totalseg-ml"` (its multilabel file); see `totalseg.py`.
    """

    name: str
    format: str
    ct: Path
    files: tuple[Path, ...]
    centroids: Path | None
    mask: Path | None
    patient: str
    content_hash: str = ""
    mask_format: str = "verse"


@dataclass(frozen=True)
class ErrorRecord:
    """One rejected input: a file, a scan, or a single vertebra level.

    Args:
        source: path of the offending file or folder.
        stage: where it failed: `"scan"`, `"load"`, `"slice"`, ...
        reason: one readable line; file names in it are replaced by pseudonyms before it is stored.
        name: the raw name of the scan it belongs to, when known.
        level: the VerSe label when only one vertebra was rejected.
        related: another file the reason refers to (the copy kept instead of a duplicate).
        duplicate: True for a copy rejected because another file has the same bytes.
    """

    source: str
    stage: str
    reason: str
    name: str | None = None
    level: int | None = None
    related: str | None = None
    duplicate: bool = False
