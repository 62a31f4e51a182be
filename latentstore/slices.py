"""Stored slices: read them back from `slices/`, and `show` them as a PNG grid a person can check.

`show` draws one tile per slice (2x nearest-neighbour enlarged, bone window `pictures.WINDOW_HU`, level name
above), superior level first, on a fixed grid of at most `COLS` columns: a quick look at whether the
cuts are centred on the vertebral bodies and upright (row 0 superior, column 0 anterior).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .errors import InputError, StoreError
from .levels import ORDER
from .pictures import picture_path, render_grid
from .schema import SLICE_PX
from .result import Result
from .store import connect


def read_slices(
    store: str | os.PathLike | None = None,
    slice_ids: list[int] | None = None,
    scan_id: str | None = None,
    columns: list[str] | None = None,
) -> pa.Table:
    """Published slices of `store`, optionally only `slice_ids` and/or one `scan_id`, in the schema
    of `schemas/slices.sql` (staged parts of running or crashed ingests are never read)."""
    st = connect(store)
    if not st.slices.parts():
        raise StoreError(f"no slices in {st.root}; run `latentstore ingest ARCHIVE --store {st.root}` first")
    if slice_ids is not None and scan_id is None:  # only the row groups that hold them (Dataset.take)
        cols = list(columns or st.slices.schema.names)
        t = st.slices.take("slice_id", np.asarray(slice_ids, np.int64), cols + ["slice_id"] * ("slice_id" not in cols))
        return t.select(cols)
    conditions = []
    if slice_ids is not None:
        conditions.append(pc.field("slice_id").isin(pa.array(slice_ids, pa.int64())))
    if scan_id is not None:  # a pseudonym, or the archive's name for it under any of the store's sites
        from .ingest.privacy import PSEUDONYM, by_scan_id

        ids = [scan_id] if PSEUDONYM.match(scan_id) else sorted(k[0] for k in by_scan_id(st, {(scan_id,): 1}))
        conditions.append(pc.field("scan_id").isin(pa.array(ids, pa.string())))
    expr = None
    for c in conditions:
        expr = c if expr is None else expr & c
    return st.slices.read(columns=columns, filter=expr)


@dataclass(frozen=True)
class Shown(Result):
    """What `show` drew: the PNG, its tiles (level names in grid order) and the slice ids."""

    path: Path
    levels: list[str]
    slice_ids: list[int]

    def to_dict(self) -> dict:
        return {"path": str(self.path), "levels": self.levels, "slice_ids": self.slice_ids}

    def __rich__(self):
        return f"{self.path}: {len(self.levels)} slice(s) ({', '.join(self.levels)})"


def show(
    store: str | os.PathLike | None = None,
    slice_id: int | None = None,
    scan: str | None = None,
    out: str | os.PathLike | None = None,
) -> Shown:
    """Write a PNG grid of one stored slice (`slice_id`) or of every slice of one scan (`scan`).

    Args:
        store: store folder or URI.
        slice_id: one slice's id.
        scan: a scan id (pseudonym) or the archive's name of the scan; all its slices, superior level first.
        out: PNG path (default `STORE/pictures/slice-<id>.png` or `.../<scan_id>.png`).
    """
    if out is not None:
        picture_path(None, "", out)  # a bad --out fails before anything is read
    if (slice_id is None) == (scan is None):
        raise InputError("give either a SLICE_ID or --scan SCAN")
    if slice_id is not None and not 0 <= slice_id < 2**63:
        raise InputError(f"slice id {slice_id} is out of range (slice ids are 63-bit, 0 <= id < 2**63)")
    cols = ["slice_id", "scan_id", "level", "level_name", "image"]
    table = read_slices(store, slice_ids=None if slice_id is None else [slice_id], scan_id=scan, columns=cols)
    if table.num_rows == 0:
        what = f"slice {slice_id}" if slice_id is not None else f"scan {scan!r}"
        raise InputError(f"{what} is not in the store (see `latentstore sql \"SELECT scan_id FROM slices\"`)")
    rank = {label: i for i, label in enumerate(ORDER)}
    rows = table.to_pylist()
    rows.sort(key=lambda r: (r["scan_id"], rank.get(r["level"], 99), r["slice_id"]))
    images = np.stack([np.asarray(r["image"], dtype=np.int16).reshape(SLICE_PX, SLICE_PX) for r in rows])  # (N, 96, 96) HU
    labels = [r["level_name"] for r in rows]
    scans = sorted({r["scan_id"] for r in rows})
    title = f"{scans[0]}" if len(scans) == 1 else f"{len(scans)} scans"
    if slice_id is not None:
        title += f"  slice {slice_id}"
    # Named by the pseudonym, never by the name the user typed (it may be a patient's).
    path = picture_path(connect(store), f"slice-{slice_id}" if slice_id is not None else _safe(scans[0]), out)
    grid = render_grid(images, labels, title)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path, format="PNG")
    return Shown(path=path, levels=labels, slice_ids=[int(r["slice_id"]) for r in rows])


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
