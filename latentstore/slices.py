"""Stored slices: read them back from `slices/`, and `show` them as a PNG grid a person can check.

`show` draws one tile per slice (2x nearest-neighbour enlarged, bone window [-500, 1300] HU, level name
above), superior level first, on a fixed grid of at most `COLS` columns: a quick look at whether the
cuts are centred on the vertebral bodies and upright (row 0 superior, column 0 anterior).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from .errors import InputError, StoreError
from .levels import ORDER
from .schema import arrow_schema
from .store import SLICES, Store

WINDOW_HU = (-500.0, 1300.0)  # bone window: cortex and trabecular bone apart, soft tissue dark grey
SIZE = 96
ZOOM = 2
TILE = SIZE * ZOOM
LABEL_H = 20
HEADER_H = 24
GAP = 6
COLS = 6
BACKGROUND = (32, 32, 40)
TEXT = (235, 235, 235)


def read_slices(
    store: str | os.PathLike | None = None,
    slice_ids: list[int] | None = None,
    scan_id: str | None = None,
    columns: list[str] | None = None,
) -> pa.Table:
    """Published slices of `store`, optionally only `slice_ids` and/or one `scan_id`, in the schema
    of `schemas/slices.sql` (staged parts of running or crashed ingests are never read)."""
    st = Store(store)
    schema = arrow_schema("slices")
    if not st.published_parts():
        raise StoreError(f"no slices in {st.root}; run `latentstore ingest ARCHIVE --store {st.root}` first")
    # The default ignore prefixes ("_", ".") keep `_staging/` out.
    dataset = ds.dataset(st.path(SLICES), filesystem=st.fs, format="parquet", schema=schema)
    conditions = []
    if slice_ids is not None:
        conditions.append(pc.field("slice_id").isin(pa.array(slice_ids, pa.int64())))
    if scan_id is not None:
        conditions.append(pc.field("scan_id") == scan_id)
    expr = None
    for c in conditions:
        expr = c if expr is None else expr & c
    return dataset.to_table(columns=columns, filter=expr)


@dataclass(frozen=True)
class Shown:
    """What `show` drew: the PNG, its tiles (level names in grid order) and the slice ids."""

    path: Path
    levels: list[str]
    slice_ids: list[int]


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
        scan: a scan id; all its slices, superior level first.
        out: PNG path (default `slice-<id>.png` or `scan-<scan>.png` in the current folder).
    """
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
    images = np.stack([np.asarray(r["image"], dtype=np.int16).reshape(SIZE, SIZE) for r in rows])  # (N, 96, 96) HU
    labels = [r["level_name"] for r in rows]
    scans = sorted({r["scan_id"] for r in rows})
    title = f"{scans[0]}" if len(scans) == 1 else f"{len(scans)} scans"
    if slice_id is not None:
        title += f"  slice {slice_id}"
    path = Path(out) if out else Path(f"slice-{slice_id}.png" if slice_id is not None else f"scan-{_safe(scan)}.png")
    grid = render_grid(images, labels, title)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path, format="PNG")
    return Shown(path=path, levels=labels, slice_ids=[int(r["slice_id"]) for r in rows])


def render_grid(images: np.ndarray, labels: list[str], title: str = ""):
    """(N, 96, 96) HU -> a PIL image: a header line, then tiles of `COLS` columns, row-major.

    Tile k's picture starts at x = GAP + (k % COLS) * (TILE + GAP),
    y = HEADER_H + GAP + (k // COLS) * (LABEL_H + TILE + GAP) + LABEL_H.
    """
    from PIL import Image, ImageDraw, ImageFont

    n = len(images)
    cols = min(n, COLS)
    rows = math.ceil(n / cols)
    width = GAP + cols * (TILE + GAP)
    height = HEADER_H + GAP + rows * (LABEL_H + TILE + GAP)
    canvas = Image.new("RGB", (max(width, 240), height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=14)
    draw.text((GAP, 4), title, fill=TEXT, font=font)
    lo, hi = WINDOW_HU
    for k, (image, label) in enumerate(zip(images, labels)):
        x, y = tile_origin(k)
        gray = np.clip((image.astype(np.float32) - lo) / (hi - lo) * 255.0, 0, 255).astype(np.uint8)
        tile = Image.fromarray(gray, mode="L").resize((TILE, TILE), Image.NEAREST)
        canvas.paste(tile.convert("RGB"), (x, y))
        draw.text((x + 2, y - LABEL_H + 2), label, fill=TEXT, font=font)
    return canvas


def tile_origin(k: int) -> tuple[int, int]:
    """Top-left pixel (x, y) of tile k's picture in a grid drawn by `render_grid`."""
    return GAP + (k % COLS) * (TILE + GAP), HEADER_H + GAP + (k // COLS) * (LABEL_H + TILE + GAP) + LABEL_H


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
