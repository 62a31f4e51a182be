"""Ingest, library side: find the CT volumes of an archive, load them, cut one sagittal slice per vertebra.

    sources, errors = scan_archive(root)        # ScanSource per CT volume, ErrorRecord per rejected input
    vol = load_scan(sources[0])                 # Volume: HU, affine (voxel -> RAS+ mm), body centroids (mm)
    slices, skipped = cut_slices(vol, SlicingConfig())   # CutSlice per vertebra, superior to inferior

No Ray and no store here: `jobs/ingest.py` and `ingest/run.py` distribute these functions and write
what they return.
"""

from .centroids import body_centroids_from_mask, read_centroid_file
from .load import Volume, load_scan
from .scan import scan_archive
from .slicing import CutSlice, SlicingConfig, cut_slices, resample_iso
from .sources import ErrorRecord, ScanSource

__all__ = [
    "CutSlice",
    "ErrorRecord",
    "ScanSource",
    "SlicingConfig",
    "Volume",
    "body_centroids_from_mask",
    "cut_slices",
    "load_scan",
    "read_centroid_file",
    "resample_iso",
    "scan_archive",
]
