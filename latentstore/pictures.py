"""Pictures: PNG grids of slices (HU, bone window, with level names) and of model images in [-1, 1].

Every picture a command writes goes to `--out` when given, else to `STORE/pictures/<name>.png`, never
silently into the current folder; `picture_path` refuses to replace a file that is not a picture this
project wrote (only `.png` is written, so `--out x.jpg` is refused rather than given PNG bytes).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .errors import InputError
from .schema import SLICE_PX

# The CT window, in HU, of every picture and (as `Preprocess`'s default) of the model input: cortex and
# trabecular bone apart, soft tissue dark grey.
WINDOW_HU = (-500.0, 1300.0)
ZOOM = 2
TILE = SLICE_PX * ZOOM
LABEL_H = 20
HEADER_H = 24
GAP = 6
COLS = 6
BACKGROUND = (32, 32, 40)
TEXT = (235, 235, 235)


def picture_path(store, name: str, out: str | Path | None = None) -> Path:
    """Where a picture goes: `out` (must end in .png) or `STORE/pictures/<name>.png`."""
    if out is not None:
        path = Path(out)
        if path.suffix.lower() != ".png":
            raise InputError(f"{out}: pictures are written as PNG; give a path ending in .png")
        return path
    return store.local_path("pictures", f"{name}.png")


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


def save_grid(rows: list["torch.Tensor"], path: str | Path, labels: list[str] | None = None, min_px: int = 96) -> Path:
    """Rows of (B, 1, S, S) images in [-1, 1] as one greyscale PNG, upscaled to at least `min_px` per tile."""
    import torch
    import torch.nn.functional as F
    from PIL import Image, ImageDraw

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tiles = torch.cat([r.detach().float().cpu().clamp(-1, 1) for r in rows])  # (R*B, 1, S, S)
    scale = max(1, -(-min_px // tiles.shape[-1]))
    tiles = F.interpolate(tiles, scale_factor=scale, mode="nearest")
    n_rows, n_cols, s = len(rows), rows[0].shape[0], tiles.shape[-1]
    label_h = 12 if labels else 0
    canvas = Image.new("L", (n_cols * (s + 2), n_rows * (s + 2 + label_h)), color=0)
    draw = ImageDraw.Draw(canvas)
    pixels = ((tiles[:, 0] + 1) * 127.5).round().to(torch.uint8).numpy()
    for i, img in enumerate(pixels):
        r, c = divmod(i, n_cols)
        y = r * (s + 2 + label_h)
        canvas.paste(Image.fromarray(img), (c * (s + 2), y + label_h))
        if labels and c == 0:
            draw.text((2, y), labels[r], fill=255)
    canvas.save(path)
    return path
