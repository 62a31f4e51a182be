"""Pictures for people: a mid-sagittal preview per scan and contact sheets of them.

Each scan gets `derivatives/<scan>/<scan>_seg-vert_snp.png` (as VerSe ships `_snp.png` previews): the
sagittal plane through the spine's midline, resampled to 0.5 mm pixels, bone window [-250, 1250] HU, anterior
left, superior up, each labelled vertebra marked at its body centroid with level, Genant grade and
fracture shape, coloured by grade. The contact sheets tile these previews, a page of `PAGE` scans at
a time (`contact_sheet.png`, then `contact_sheet-2.png`, ...), so memory does not grow with the
archive.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from ..levels import level_name
from .patient import Patient
from .phantom import Volumes

WINDOW = (-250.0, 1250.0)  # HU, bone window
COLOURS = {0: (90, 220, 90), 1: (250, 230, 60), 2: (255, 150, 40), 3: (255, 60, 60)}
SHAPE_CODE = {0: "", 1: "w", 2: "b", 3: "c"}
SCALE = 2  # preview pixels per mm
PAGE = 24  # scans per contact sheet
CELL = (300, 560)  # (width, height) px of a tile


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType
        return ImageFont.load_default()


def preview(p: Patient, vols: Volumes, path: Path, split: str) -> None:
    """Write the annotated mid-sagittal preview PNG of one scan."""
    sx, sy, sz = p.acquisition.spacing
    ox, oy, oz = p.acquisition.origin
    nx, ny, nz = vols.hu.shape
    cx = float(np.median([c[0] for c in vols.centroids.values()])) if vols.centroids else ox + 0.5 * nx * sx
    ix = int(np.clip(round((cx - ox) / sx), 0, nx - 1))
    plane = vols.hu[ix].astype(np.float32)  # (ny, nz)
    plane = ndimage.zoom(plane, (sy, sz), order=1)  # 1 mm pixels
    lo, hi = WINDOW
    img = np.clip((plane - lo) / (hi - lo) * 255, 0, 255).astype(np.uint8)[::-1, ::-1].T  # rows S->I, cols A->P
    y_top, z_top = oy + (ny - 1) * sy, oz + (nz - 1) * sz
    pad, margin = 22, 78
    sheet = Image.fromarray(img).resize((img.shape[1] * SCALE, img.shape[0] * SCALE), Image.BILINEAR)
    canvas = Image.new("RGB", (sheet.width + margin, sheet.height + pad), (0, 0, 0))
    canvas.paste(sheet.convert("RGB"), (margin, pad))
    draw = ImageDraw.Draw(canvas)
    font = _font(13)
    for lab, c in sorted(vols.centroids.items()):
        m = p.measured[lab]
        shape = next(v.shape for v in p.vertebrae if v.label == lab)
        col, row = margin + SCALE * (y_top - c[1]), pad + SCALE * (z_top - c[2])
        colour = COLOURS[m.grade]
        draw.line([(col - 7, row), (col + 7, row)], fill=colour, width=2)
        draw.line([(col, row - 7), (col, row + 7)], fill=colour, width=2)
        draw.line([(margin - 4, row), (col - 9, row)], fill=colour + (0,), width=1)
        draw.text((2, row - 8), f"{level_name(lab)} G{m.grade}{SHAPE_CODE[shape] if m.grade else ''}", fill=colour,
                  font=font)
    a = p.acquisition
    spacing = "x".join(f"{s:.2g}" for s in a.spacing)
    draw.text((2, 2), f"{p.scan[4:]} {split} {''.join(a.axcodes)} {spacing}",
              fill=(255, 255, 255), font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def contact_sheets(out: Path, previews: list[Path], title: str) -> list[Path]:
    """Tile the previews into pages; returns the written sheet paths."""
    written = []
    cols = 8
    font = _font(14)
    for page, start in enumerate(range(0, len(previews), PAGE)):
        chunk = previews[start:start + PAGE]
        rows = (len(chunk) + cols - 1) // cols
        sheet = Image.new("RGB", (cols * CELL[0], rows * CELL[1] + 28), (20, 20, 20))
        draw = ImageDraw.Draw(sheet)
        draw.text((6, 6), f"{title}  (page {page + 1}; G0 green, G1 yellow, G2 orange, G3 red; "
                          "w wedge, b biconcave, c crush; anterior left)", fill=(255, 255, 255), font=font)
        for k, path in enumerate(chunk):
            with Image.open(path) as im:
                im.thumbnail(CELL)
                sheet.paste(im, ((k % cols) * CELL[0], 28 + (k // cols) * CELL[1]))
        name = "contact_sheet.png" if page == 0 else f"contact_sheet-{page + 1}.png"
        sheet.save(out / name)
        written.append(out / name)
    return written
