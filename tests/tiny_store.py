"""A tiny store for training/eval tests: `slices/part.parquet` with synthetic 96x96 sagittal-like slices.

Each slice is soft tissue with a stack of bright vertebral bodies separated by dark discs, varying in
offset, body height and intensity, so an autoencoder has something learnable but nothing is trivial.
Written with the real slices schema, so the reader under test is the real one.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from latentstore.schema import arrow_schema


def synthetic_slice(rng: np.random.Generator) -> np.ndarray:
    """(96, 96) int16 HU: tissue ~40 HU, cortical-rimmed bodies ~250-700 HU, discs ~80 HU, noise 20 HU."""
    img = np.full((96, 96), 40.0)
    img[:, :10] = -900  # air anterior: a sharp edge the model must place
    height, offset = rng.integers(18, 26), rng.integers(0, 24)
    x0, x1 = rng.integers(22, 30), rng.integers(62, 72)
    level = rng.uniform(250, 700)
    for top in range(-offset, 96, height + 6):
        a, b = max(top, 0), min(top + height, 96)
        if b > a:
            img[a:b, x0:x1] = level
            img[a:b, x0 : x0 + 3] = img[a:b, x1 - 3 : x1] = level + 500  # cortex
    img[:, 78:84] = 5  # spinal canal (CSF)
    img += rng.normal(0, 20, img.shape)
    return np.clip(img, -1024, 3000).astype(np.int16)


def make_store(root: Path, n_scans: int = 20, levels: int = 4, seed: int = 0, parts: int = 1, first: int = 0) -> Path:
    """Write `root/slices/part*.parquet` (n_scans * levels rows in `parts` files) and return `root`."""
    rng = np.random.default_rng(seed)
    schema = arrow_schema("slices")
    rows = {f.name: [] for f in schema}
    for s in range(first, first + n_scans):
        scan = f"sub-{s:03d}"
        for lv in range(20, 20 + levels):
            digest = hashlib.sha256(f"{scan}/{lv}".encode()).digest()
            rows["slice_id"].append(int.from_bytes(digest[:8], "big") >> 1)
            rows["scan_id"].append(scan)
            rows["patient_key"].append(hashlib.sha256(scan.encode()).hexdigest()[:16])
            rows["site"].append("site-test")
            rows["level"].append(lv)
            rows["level_name"].append(f"L{lv - 19}")
            rows["source_uri"].append(f"{scan}.nii.gz")
            rows["source_format"].append("nifti")
            rows["content_hash"].append(digest.hex())
            rows["centroid_mm"].append([0.0, 0.0, float(lv)])
            rows["spacing_mm"].append([1.0, 1.0, 1.0])
            rows["slicing"].append(json.dumps({"size": 96}))
            rows["slicing_hash"].append("0" * 64)
            rows["image"].append(synthetic_slice(rng).ravel().tolist())
    table = pa.table({f.name: pa.array(rows[f.name], type=f.type) for f in schema}, schema=schema)
    (root / "slices").mkdir(parents=True, exist_ok=True)
    if parts == 1:
        pq.write_table(table, root / "slices" / "part.parquet")
        return root
    for i, chunk in enumerate(np.array_split(np.arange(table.num_rows), parts)):
        pq.write_table(table.take(chunk), root / "slices" / f"part-{i:03d}.parquet")
    return root
