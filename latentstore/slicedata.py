"""Slices as model input: read the store's `slices/` into memory, split by scan, window HU to [-1, 1].

The slices of a few hundred patients fit in memory (96*96*2 bytes = 18 KiB each), so training and
evaluation read the `image` column once into an int16 array and index it. The train/held-out split is a
pure function of `scan_id` (a hash), so every command, run and machine agrees on it without a manifest,
and all slices of a scan land on the same side (no leakage between neighbouring vertebrae of one scan).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from .errors import StoreError
from .store import resolve_store

SLICE_PX = 96  # stored slices are 96x96 pixels of 1 mm
Split = Literal["train", "holdout", "all"]


@dataclass(frozen=True)
class Preprocess:
    """How stored HU slices become model input; saved with every model.

    Args:
        hu_min: lower edge of the CT window in HU; maps to -1.
        hu_max: upper edge of the CT window in HU; maps to +1. Values outside are clipped, because
            DDIM clips x0 to [-1, 1] and the model can represent nothing beyond it.
        image_size: model input side in pixels; 96 is native, smaller sizes are area-downsampled
            (the tiny test config runs at 32).
    """

    hu_min: float = -500.0
    hu_max: float = 1300.0
    image_size: int = SLICE_PX

    def __post_init__(self):
        if not self.hu_max > self.hu_min:
            raise ValueError(f"hu_max ({self.hu_max}) must exceed hu_min ({self.hu_min})")
        if not 0 < self.image_size <= SLICE_PX:
            raise ValueError(f"image_size must be in 1..{SLICE_PX}, got {self.image_size}")

    def to_dict(self) -> dict:
        return asdict(self)

    def to_model(self, hu: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(B, 96, 96) HU (any int/float dtype) -> (B, 1, S, S) float32 in [-1, 1], S = image_size."""
        x = hu.float() if isinstance(hu, torch.Tensor) else torch.tensor(np.asarray(hu), dtype=torch.float32)
        x = x.reshape(-1, 1, x.shape[-2], x.shape[-1])  # (B, 1, H, W)
        x = (x.clamp(self.hu_min, self.hu_max) - self.hu_min) / (self.hu_max - self.hu_min) * 2 - 1
        if x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="area")
        return x

    def to_hu(self, x: torch.Tensor) -> np.ndarray:
        """(B, 1, S, S) in [-1, 1] -> (B, S, S) int16 HU (inside the window only)."""
        hu = (x.detach().float().clamp(-1, 1) + 1) / 2 * (self.hu_max - self.hu_min) + self.hu_min
        return hu[:, 0].round().to(torch.int16).cpu().numpy()


@dataclass(frozen=True)
class SliceArrays:
    """Slices held in memory, sorted by `slice_id` so that the order never depends on part files."""

    images: np.ndarray  # (N, 96, 96) int16 HU
    slice_id: np.ndarray  # (N,) int64
    scan_id: np.ndarray  # (N,) object (str)
    level_name: np.ndarray  # (N,) object (str)

    def __len__(self) -> int:
        return len(self.slice_id)

    def take(self, idx: np.ndarray) -> "SliceArrays":
        return SliceArrays(self.images[idx], self.slice_id[idx], self.scan_id[idx], self.level_name[idx])


def is_holdout(scan_id: str, fraction: float) -> bool:
    """True when `scan_id` belongs to the held-out evaluation split (deterministic: sha256 of the name)."""
    h = int.from_bytes(hashlib.sha256(scan_id.encode()).digest()[:8], "big")
    return h / 2**64 < fraction


def read_slices(store: str | None = None, split: Split = "all", holdout_fraction: float = 0.1) -> SliceArrays:
    """All slices of `store/slices/` (part files; `_staging/` and dot-files are ignored) for one split.

    Raises StoreError when there is no `slices/` dataset or the split is empty.
    """
    from .slices import read_slices as read_table  # the one reader of `slices/` (published parts only)

    path = resolve_store(store).rstrip("/") + "/slices"
    try:
        table = read_table(store, columns=["slice_id", "scan_id", "level_name", "image"])
    except (FileNotFoundError, pa.ArrowInvalid, OSError) as e:
        raise StoreError(f"no readable slices in {path} ({e}); run `latentstore ingest` first") from None
    table = table.sort_by("slice_id")
    scan = np.asarray(table.column("scan_id").to_pylist(), dtype=object)
    if split != "all":
        held = np.fromiter((is_holdout(s, holdout_fraction) for s in scan), dtype=bool, count=len(scan))
        keep = held if split == "holdout" else ~held
        table = table.filter(pa.array(keep))
        scan = scan[keep]
    if table.num_rows == 0:
        raise StoreError(f"no {split} slices in {path} (holdout_fraction={holdout_fraction})")
    image = table.column("image").combine_chunks()
    images = image.flatten().to_numpy(zero_copy_only=False).astype(np.int16, copy=False)
    return SliceArrays(
        images=images.reshape(-1, SLICE_PX, SLICE_PX),
        slice_id=table.column("slice_id").to_numpy(),
        scan_id=scan,
        level_name=np.asarray(table.column("level_name").to_pylist(), dtype=object),
    )


def data_hash(slices: SliceArrays) -> str:
    """sha256 over the slice ids and pixels (first 16 hex): which data a model was trained on."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(slices.slice_id, dtype="<i8").tobytes())
    h.update(np.ascontiguousarray(slices.images, dtype="<i2").tobytes())
    return h.hexdigest()[:16]
