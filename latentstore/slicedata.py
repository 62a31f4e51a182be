"""Slices as model input: split by patient, window HU to [-1, 1], and stream training batches.

Evaluation reads a split into memory (`read_slices`: a few hundred held-out slices). Training streams
(`SliceStream`): only an index of the split's rows (part file, row) is held; the pixels of a bounded
window of part files are read at a time, so memory stays flat however many slices the store holds.

The train/held-out split is a pure function of `patient_key` (a hash), so every command, run and machine
agrees on it without a manifest, and all slices of a patient land on the same side (no leakage between
neighbouring vertebrae, or between two scans of one patient).
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
from .pictures import WINDOW_HU
from .schema import SLICE_PX
from .store import Store, connect

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

    hu_min: float = WINDOW_HU[0]
    hu_max: float = WINDOW_HU[1]
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
    patient_key: np.ndarray | None = None  # (N,) object (str)

    def __len__(self) -> int:
        return len(self.slice_id)

    def take(self, idx: np.ndarray) -> "SliceArrays":
        pk = None if self.patient_key is None else self.patient_key[idx]
        return SliceArrays(self.images[idx], self.slice_id[idx], self.scan_id[idx], self.level_name[idx], pk)


def _unit_hash(patient_key: str) -> float:
    return int.from_bytes(hashlib.sha256(patient_key.encode()).digest()[:8], "big") / 2**64


def holdout_keys(patient_keys, fraction: float) -> set[str]:
    """The held-out patients among `patient_keys`: those whose sha256 falls below `fraction`, so the split
    of a patient never changes as the store grows; a store too small to have one (20 patients at 0.1 have
    none with probability 0.12) holds out its single lowest-hash patient instead."""
    keys = set(patient_keys)
    held = {k for k in keys if is_holdout(k, fraction)}
    return held or ({min(keys, key=_unit_hash)} if len(keys) > 1 else set())


def is_holdout(patient_key: str, fraction: float) -> bool:
    """The hash rule alone: True when sha256(`patient_key`) falls below `fraction` (see `holdout_keys`)."""
    return _unit_hash(patient_key) < fraction


def read_slices(store: Store | str | None = None, split: Split = "all", holdout_fraction: float = 0.1) -> SliceArrays:
    """All slices of `store/slices/` (part files; `_staging/` and dot-files are ignored) for one split.

    Raises StoreError when there is no `slices/` dataset or the split is empty.
    """
    from .slices import read_slices as read_table  # the one reader of `slices/` (published parts only)

    store = connect(store)
    path = store.slices.dir
    try:
        table = read_table(store, columns=["slice_id", "scan_id", "patient_key", "level_name", "image"])
    except (FileNotFoundError, pa.ArrowInvalid, OSError) as e:
        raise StoreError(f"no readable slices in {path} ({e}); run `latentstore ingest` first") from None
    table = table.sort_by("slice_id")
    scan = np.asarray(table.column("scan_id").to_pylist(), dtype=object)
    pk = np.asarray(table.column("patient_key").to_pylist(), dtype=object)
    if split != "all":
        keep = _split_mask(pk, split, holdout_fraction)
        table = table.filter(pa.array(keep))
        scan, pk = scan[keep], pk[keep]
    if table.num_rows == 0:
        raise StoreError(f"no {split} slices in {path} (holdout_fraction={holdout_fraction})")
    image = table.column("image").combine_chunks()
    images = image.flatten().to_numpy(zero_copy_only=False).astype(np.int16, copy=False)
    return SliceArrays(
        images=images.reshape(-1, SLICE_PX, SLICE_PX),
        slice_id=table.column("slice_id").to_numpy(),
        scan_id=scan,
        level_name=np.asarray(table.column("level_name").to_pylist(), dtype=object),
        patient_key=pk,
    )


def _split_mask(patient_key: np.ndarray, split: Split, fraction: float, held_keys: set[str] | None = None) -> np.ndarray:
    held_keys = holdout_keys(patient_key, fraction) if held_keys is None else held_keys
    held = np.fromiter((k in held_keys for k in patient_key), dtype=bool, count=len(patient_key))
    return np.ones(len(held), bool) if split == "all" else held if split == "holdout" else ~held


def data_hash(slices: SliceArrays) -> str:
    """sha256 over the slice ids and pixels (first 16 hex): which data a model was trained on."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(slices.slice_id, dtype="<i8").tobytes())
    h.update(np.ascontiguousarray(slices.images, dtype="<i2").tobytes())
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------------------------ training stream


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Slice indices of the batch at `step`: epochs are seeded permutations, consumed in order."""
    pos = np.arange(step * batch_size, (step + 1) * batch_size)
    out = np.empty(batch_size, dtype=np.int64)
    for epoch in np.unique(pos // n):
        perm = np.random.default_rng([seed, int(epoch)]).permutation(n)
        sel = pos // n == epoch
        out[sel] = perm[pos[sel] % n]
    return out


class InMemorySlices:
    """Batches from slices already in memory (tests, or callers holding the data): an epoch is a seeded
    permutation of all slices, consumed in order (`batch_indices`)."""

    def __init__(self, slices: SliceArrays):
        self.slices = slices
        self.data_hash = data_hash(slices)

    def __len__(self) -> int:
        return len(self.slices)

    def batch(self, step: int, batch_size: int, seed: int) -> np.ndarray:
        return self.slices.images[batch_indices(len(self.slices), batch_size, seed, step)]

    def fixed(self, k: int) -> np.ndarray:
        """k slices spread over the data (previews)."""
        idx = np.linspace(0, len(self.slices) - 1, num=min(k, len(self.slices))).round().astype(int)
        return self.slices.images[idx]


class SliceStream:
    """Seeded, resumable, memory-bounded training batches from the store's `slices/`.

    Holds an index of the split's rows (part file and row number, 16 bytes a slice). An epoch permutes the
    part files (seed, epoch), groups them in order into windows of about `window` slices, and permutes the
    rows of each window (seed, epoch, window); the epoch is the concatenation of the windows. The batch at
    step s is positions [s*B, (s+1)*B) of the endless sequence of epochs, so it is a function of
    (seed, s) alone: a resumed run reads what an uninterrupted one would have read. When the split fits one
    window (stores of up to `window` slices) an epoch is a full random permutation. Only the window(s) a
    batch touches are in memory.
    """

    def __init__(self, store: Store | str | None = None, split: Split = "train", holdout_fraction: float = 0.1,
                 window: int = 4096):
        self.store = connect(store)
        self.window = window
        slices = self.store.slices
        parts = slices.parts()
        if not parts:
            raise StoreError(f"no slices in {self.store.root}; run `latentstore ingest` first")
        self.parts, self.rows = [], []  # part paths, and per part the row numbers in the split
        ids, names = [], []
        index = {}
        for name in parts:
            t = self._read(slices.part_path(name), ["slice_id", "patient_key"])
            index[name] = (t.column("slice_id").to_numpy(), np.asarray(t.column("patient_key").to_pylist(), dtype=object))
        held = holdout_keys((k for _, pk in index.values() for k in pk), holdout_fraction)
        for name, (sid, pk) in index.items():
            path = slices.part_path(name)
            keep = np.flatnonzero(_split_mask(pk, split, holdout_fraction, held))
            if len(keep):
                self.parts.append(path)
                self.rows.append(keep)
                ids.append(sid[keep])
                names.append(name)
        self.n = int(sum(len(r) for r in self.rows))
        if self.n == 0:
            raise StoreError(f"no {split} slices in {slices.dir} (holdout_fraction={holdout_fraction})")
        h = hashlib.sha256()  # part names are hashes of (CT content, slicing): they stand for the pixels
        for name, i in sorted(zip(names, ids)):
            h.update(name.encode())
            h.update(np.ascontiguousarray(np.sort(i), dtype="<i8").tobytes())
        self.data_hash = h.hexdigest()[:16]
        self._cache: dict[tuple[int, int, int], np.ndarray] = {}
        self._parts: dict[int, np.ndarray] = {}  # part images kept when the split fits one window
        self._win_key, self._win = None, []

    def __len__(self) -> int:
        return self.n

    def _read(self, path: str, columns: list[str]):
        import pyarrow.parquet as pq

        with self.store.fs.open_input_file(path) as f:
            return pq.read_table(f, columns=columns)

    def _part_images(self, p: int) -> np.ndarray:
        """(n, 96, 96) int16 HU: the split's rows of part file `p`. When the whole split fits one window its
        parts are kept after the first read (memory stays within a window), so an epoch of a small store
        costs no reads: on a GPU an epoch of 2,000 slices is a second of steps, less than reading it."""
        if p in self._parts:
            return self._parts[p]
        col = self._read(self.parts[p], ["image"]).column("image").combine_chunks()
        flat = col.flatten().to_numpy(zero_copy_only=False).astype(np.int16, copy=False)
        images = flat.reshape(-1, SLICE_PX, SLICE_PX)[self.rows[p]]
        if self.n <= self.window:
            self._parts[p] = images
        return images

    def _windows(self, epoch: int, seed: int) -> list[list[int]]:
        if self._win_key == (epoch, seed):
            return self._win
        order = np.random.default_rng([seed, epoch, 0]).permutation(len(self.parts))
        windows, cur, size = [], [], 0
        for p in order:
            cur.append(int(p))
            size += len(self.rows[p])
            if size >= self.window:
                windows.append(cur)
                cur, size = [], 0
        if cur:
            windows.append(cur)
        self._win_key, self._win = (epoch, seed), windows
        return windows

    def _window_images(self, epoch: int, w: int, parts: list[int], seed: int) -> np.ndarray:
        key = (seed, epoch, w)
        if key not in self._cache:
            block = np.concatenate([self._part_images(p) for p in parts])
            self._cache = {key: block[np.random.default_rng([seed, epoch, w + 1]).permutation(len(block))]}
            # (one window held; a batch spanning two windows reads the first again only at a boundary)
        return self._cache[key]

    def batch(self, step: int, batch_size: int, seed: int) -> np.ndarray:
        """(B, 96, 96) int16 HU: positions [step*B, (step+1)*B) of the seeded sequence of epochs."""
        out, pos, end = [], step * batch_size, (step + 1) * batch_size
        while pos < end:
            epoch, off = divmod(pos, self.n)
            start = 0
            for w, parts in enumerate(self._windows(epoch, seed)):
                size = int(sum(len(self.rows[p]) for p in parts))
                if off < start + size:
                    take = min(end - pos, start + size - off)
                    block = self._window_images(epoch, w, parts, seed)
                    out.append(block[off - start : off - start + take])
                    pos += take
                    break
                start += size
        return np.concatenate(out)

    def fixed(self, k: int) -> np.ndarray:
        """k slices from the first part files in store order (previews)."""
        imgs, have = [], 0
        for p in range(len(self.parts)):
            imgs.append(self._part_images(p))
            have += len(self.rows[p])
            if have >= k:
                break
        return np.concatenate(imgs)[:k]
