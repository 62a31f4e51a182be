"""`latentstore search`: the k nearest stored vertebrae of a query, with their levels, scans and labels.

A query is a stored slice (`SLICE_ID`), a 96x96 HU slice (`--image x.npy`, or a PNG in the bone window
of `pictures.WINDOW_HU`) or a CT (`--image ct.nii.gz --centroid X,Y,Z`, cut like ingest cuts) encoded on the
fly by the model, or a z_sem vector (`--vector x.npy`). Scores are
cosine similarities of L2-normalised z_sem; `distance` = 1 - cosine.

`--where` is a read-only SQL predicate over the slice (`s`, the `slices` view) and its current label
(`l`, the `labels` view; NULL where there is none), e.g. `l.grade >= 2` or `s.level_name = 'L1'`. It
restricts the candidates and a narrow filter still returns k results: below `EXACT_BELOW` selectivity the
filtered subset is searched exactly (ANN recall collapses under selective filters, and faiss 1.15's HNSW
ignores an `IDSelector` unless its bounded queue is on, faiss issue 5504); above it the index is searched
for more than k and filtered, with an exact pass over the subset whenever that leaves fewer than k.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputError
from .index import isin_sorted, load_index, normalise, read_latents, resolve_model_id, to_device
from .result import Result
from .store import Store, connect

EXACT_BELOW = 0.10  # candidate share under which a filtered search goes exact over the subset (bench/search.py)
OVERFETCH = 8  # a filtered ANN search asks the index for k / selectivity * OVERFETCH, at 4x that depth


@dataclass
class SearchResult(Result):
    model_id: str
    query: str
    k: int
    method: str  # "index" | "exact over N filtered" | ...
    rows: list[dict] = field(default_factory=list)
    picture: str | None = None

    def to_dict(self) -> dict:
        return {"model_id": self.model_id, "query": self.query, "k": self.k, "method": self.method,
                "neighbours": self.rows, "picture": self.picture}

    def __rich__(self):
        from rich.table import Table

        t = Table(title=f"{len(self.rows)} nearest of {self.query} ({self.model_id}, {self.method})")
        for col in ("rank", "slice_id", "distance", "level", "scan_id", "grade", "fracture"):
            t.add_column(col, justify="right" if col in ("rank", "distance", "grade") else "left", no_wrap=True,
                         overflow="fold")
        for i, r in enumerate(self.rows):
            t.add_row(str(i), str(r["slice_id"]), f"{r['distance']:.4f}", r["level_name"] or "", r["scan_id"] or "",
                      "" if r["grade"] is None else str(r["grade"]), "" if r["fracture"] is None else str(r["fracture"]))
        if self.picture:
            t.caption = f"picture: {self.picture}"
        return t


def _query_vector(st: Store, model_id: str, slice_id: int | None, image, vector, centroid=None) -> tuple[np.ndarray, str]:
    given = [x is not None for x in (slice_id, image, vector)]
    if sum(given) != 1:
        raise InputError("give exactly one query: SLICE_ID, --image FILE or --vector FILE")
    if slice_id is not None:
        ids, z = read_latents(st, model_id, np.array([slice_id]))
        if not len(ids):
            raise InputError(f"slice {slice_id} has no latent of model {model_id} (not stored, or not encoded yet)")
        return normalise(z)[0], f"slice {slice_id}"
    if vector is not None:
        v = vector.astype(np.float32) if isinstance(vector, np.ndarray) else _load_array(vector, "vector")
        if v.ndim != 1 or v.shape[0] != 512 or not np.all(np.isfinite(v)):
            raise InputError(f"--vector {vector}: need 512 finite numbers, got shape {v.shape}")
        return normalise(v[None])[0], "vector" if isinstance(vector, np.ndarray) else f"vector {Path(vector).name}"
    return normalise(_encode_image(st, model_id, image, centroid)[None])[0], f"image {Path(image).name}"


def _load_array(path, what: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False).astype(np.float32)
    except (OSError, ValueError) as e:
        raise InputError(f"--{what} {path}: not a readable .npy array ({e})") from None


def _cut_from_ct(st: Store, path: Path, centroid) -> np.ndarray:
    """The store's sagittal slice of a CT (NIfTI) at a vertebral-body centroid (world RAS+ mm), cut with
    the store's own slicing config, through the same loader checks as ingest."""
    import json

    from .ingest import SlicingConfig, cut_slices, nifti
    from .ingest.load import Volume, check_ct_values

    if centroid is None:
        raise InputError(f"--image {path.name}: a CT needs --centroid X,Y,Z (world RAS mm of the vertebral body)")
    hu, affine = nifti.read_ct(path)
    check_ct_values(hu, path.name)
    row = st.slices.read(columns=["slicing"]).slice(0, 1).to_pylist() if st.slices.parts() else []
    cfg = SlicingConfig.from_dict(json.loads(row[0]["slicing"])) if row else SlicingConfig()
    cuts, skipped = cut_slices(Volume(np.maximum(hu, -1024), affine, {20: np.asarray(centroid, float)}, None), cfg)
    if not cuts:
        raise InputError(f"--image {path.name}: {skipped[0][1] if skipped else 'no slice could be cut'}")
    return cuts[0].image.astype(np.float32)


def _encode_image(st: Store, model_id: str, path, centroid=None) -> np.ndarray:
    """A 96x96 slice (`.npy` in HU, or a bone-window PNG), or a CT (NIfTI) cut at `centroid` -> z_sem."""
    from .checkpoint import load_model
    from .pictures import WINDOW_HU
    from .probe import encode_images
    from .schema import SLICE_PX

    path = Path(path)
    if path.name.lower().endswith((".nii", ".nii.gz")):
        hu = _cut_from_ct(st, path, centroid)
    elif path.suffix.lower() == ".png":
        from PIL import Image

        try:
            grey = np.asarray(Image.open(path).convert("L"), dtype=np.float32)
        except OSError as e:
            raise InputError(f"--image {path}: not a readable PNG ({e})") from None
        hu = WINDOW_HU[0] + grey / 255.0 * (WINDOW_HU[1] - WINDOW_HU[0])
    else:
        hu = _load_array(path, "image")
    if hu.shape != (SLICE_PX, SLICE_PX) or not np.all(np.isfinite(hu)):
        raise InputError(f"--image {path}: need a {SLICE_PX}x{SLICE_PX} slice of finite HU, got shape {hu.shape}")
    lm = load_model(model_id, st)
    return encode_images(lm.net, lm.preprocess, hu[None].astype(np.int16))[0].astype(np.float32)


def candidates(st: Store, where: str) -> np.ndarray:
    """Slice ids whose slice (`s`) and current label (`l`) satisfy the SQL predicate `where` (read-only)."""
    from .sql import query

    if ";" in where:
        raise InputError("--where is one SQL predicate (no ';')")
    sql = ("SELECT DISTINCT s.slice_id FROM slices s LEFT JOIN labels l ON s.scan_id = l.scan_id AND s.level = l.level "
           f"WHERE ({where})")
    t = query(st, sql)
    return t.column("slice_id").to_numpy().astype(np.int64)


def search(store: Store | str | None, slice_id: int | None = None, image=None, vector=None, k: int = 10,
           where: str | None = None, model: str | None = None, picture: bool | str | os.PathLike = False,
           centroid=None) -> SearchResult:
    """The `k` nearest stored slices of one query (see the module); `picture` writes a PNG of the query and
    its neighbours (True: `STORE/pictures/search-<query>.png`, or a path)."""
    if k < 1:
        raise InputError(f"-k must be at least 1, got {k}")
    st = connect(store)
    model_id = resolve_model_id(st, model)
    q, what = _query_vector(st, model_id, slice_id, image, vector, centroid)
    index, meta = load_index(st, model_id)
    index = to_device(index)
    allowed = candidates(st, where) if where else None
    ids, dist, method = knn(index, q, k, allowed, lambda sub: _latents_of(st, model_id, sub))
    if allowed is None:
        method = meta["factory"]
    result = SearchResult(model_id, what, k, method, _describe(st, ids, dist))
    if picture:
        result.picture = str(_picture(st, result, q if slice_id is None else slice_id, picture))
    return result


def knn(index, q: np.ndarray, k: int, allowed: np.ndarray | None = None, vectors_of=None) -> tuple[np.ndarray, np.ndarray, str]:
    """`(ids, distances, method)` of the `k` nearest of the unit vector `q` in `index`, among `allowed` ids
    when given (`vectors_of(ids) -> (ids, unit vectors)` serves the exact pass over a filtered subset)."""
    n = int(index.ntotal)
    if allowed is None:
        ids, dist = _ann(index, q, min(k, n))
        return ids, dist, "index"
    sel = len(allowed) / max(n, 1)
    if not len(allowed):
        return np.array([], np.int64), np.array([]), "no slice matches --where"
    if sel < EXACT_BELOW:
        ids, dist = _exact(vectors_of(allowed), q, k)
        return ids, dist, f"exact over {len(allowed)} filtered ({sel:.1%})"
    fetch = min(n, math.ceil(k / sel * OVERFETCH))
    ids, dist = _ann(index, q, fetch, ef=4 * fetch)
    sorted_allowed = allowed if np.all(allowed[:-1] <= allowed[1:]) else np.sort(allowed)
    keep = isin_sorted(ids, sorted_allowed)  # membership without re-sorting a large `allowed` per query
    ids, dist = ids[keep][:k], dist[keep][:k]
    if len(ids) < min(k, len(allowed)):
        ids, dist = _exact(vectors_of(allowed), q, k)
        return ids, dist, f"exact over {len(allowed)} filtered ({sel:.1%}; the index returned too few)"
    return ids, dist, f"index, filtered ({sel:.1%})"


def _ann(index, q: np.ndarray, k: int, ef: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Index search; `ef` raises an HNSW's efSearch for this query (a filtered search reads deeper lists)."""
    from .index import hnsw_of

    inner = hnsw_of(index) if hasattr(index, "index") else None
    hnsw = getattr(inner, "hnsw", None)
    old = hnsw.efSearch if hnsw is not None else None
    if hnsw is not None and ef and ef > old:
        hnsw.efSearch = min(int(ef), 4096)
    try:
        sims, ids = index.search(q[None].astype(np.float32), k)
    finally:
        if hnsw is not None:
            hnsw.efSearch = old
    keep = ids[0] >= 0
    return ids[0][keep].astype(np.int64), np.maximum(1.0 - sims[0][keep], 0.0)


def _latents_of(st: Store, model_id: str, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ids, z = read_latents(st, model_id, allowed)
    return ids, normalise(z)


def _exact(vectors: tuple[np.ndarray, np.ndarray], q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    ids, z = vectors
    sims = z @ q
    order = np.argsort(-sims, kind="stable")[:k]
    return ids[order], np.maximum(1.0 - sims[order], 0.0)


def _describe(st: Store, ids: np.ndarray, dist: np.ndarray) -> list[dict]:
    from .sql import query

    if not len(ids):
        return []
    id_list = ", ".join(str(int(i)) for i in ids)
    t = query(st, "SELECT s.slice_id, s.level_name, s.scan_id, l.grade, l.fracture FROM slices s LEFT JOIN labels l "
                  f"ON s.scan_id = l.scan_id AND s.level = l.level WHERE s.slice_id IN ({id_list})")
    info = {r["slice_id"]: r for r in t.to_pylist()}
    return [{"slice_id": int(i), "distance": round(float(d), 6), **{c: info.get(int(i), {}).get(c)
             for c in ("level_name", "scan_id", "grade", "fracture")}} for i, d in zip(ids, dist)]


def _picture(st: Store, result: SearchResult, query, out) -> Path:
    from .pictures import picture_path, render_grid
    from .schema import SLICE_PX
    from .slices import read_slices

    ids = [r["slice_id"] for r in result.rows]
    want = ids + ([int(query)] if isinstance(query, (int, np.integer)) else [])
    t = read_slices(st, slice_ids=want, columns=["slice_id", "image"])
    img = {r["slice_id"]: np.asarray(r["image"], np.int16).reshape(SLICE_PX, SLICE_PX) for r in t.to_pylist()}
    tiles, labels = [], []
    if isinstance(query, (int, np.integer)) and int(query) in img:
        tiles.append(img[int(query)])
        labels.append("query")
    for r in result.rows:
        if r["slice_id"] in img:
            tiles.append(img[r["slice_id"]])
            g = "" if r["grade"] is None else f" G{r['grade']}"
            labels.append(f"{r['level_name']}{g} d={r['distance']:.3f}")
    name = f"search-{query}" if isinstance(query, (int, np.integer)) else "search-query"
    path = picture_path(st, name, None if out is True else out)
    path.parent.mkdir(parents=True, exist_ok=True)
    render_grid(np.stack(tiles), labels, f"{result.query}: {len(result.rows)} nearest ({result.model_id})").save(path, format="PNG")
    return path
