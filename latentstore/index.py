"""`latentstore index`: one FAISS index per model over its latents, ids = slice ids.

Vectors are L2-normalised `z_sem`, searched by inner product, so scores are cosine similarities (the
distance shown is 1 - cosine). The index kind is chosen by count: exact (`IDMap2,Flat`) up to
`EXACT_MAX` vectors, where one exact query still takes about as long as an HNSW query (measured by
`bench/search.py`), HNSW above it: `IDMap2,HNSW32,SQ8,RFlat`, a graph over 8-bit codes (a quarter of the
memory traffic per distance) whose `REFINE_K` x k candidates are re-ranked exactly on the float vectors,
built with efConstruction `EF_CONSTRUCTION` (the graph's quality, not efSearch, decided recall at 1e6:
efConstruction 80 needed efSearch 512 for 0.95, 256 reaches 0.99 at efSearch 64), and efSearch tuned on
build to the smallest of 16..512 that reaches recall@10 >= `TARGET_RECALL` against exact search on a sample.

A rerun adds only latents the index lacks; HNSW cannot remove, so an index that holds ids no longer
among the latents (latents replaced), or one whose kind the count has outgrown, is rebuilt. The index
and its JSON sidecar (factory string, count, build parameters, recall@10, model id, latents hash) are
written to a temporary file and renamed: a reader sees the old index or the new one, never half of one.
With faiss-gpu and a GPU, exact indices search on the GPU (`to_device`); the interface is the same.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field

import numpy as np

from .errors import StoreError
from .result import Result
from .store import Store, connect

EXACT_MAX = 15_000  # vectors: one exact query (1 thread) costs ~0.14 us per vector here, so 2 ms at ~15k (bench/search.py)
HNSW_M = 32
EF_CONSTRUCTION = 256
REFINE_K = 4  # candidates re-ranked exactly per result
SQ_TRAIN_MAX = 100_000  # vectors the 8-bit quantiser's per-dimension ranges are trained on
TARGET_RECALL = 0.95
RECALL_SAMPLE = 200
EF_CHOICES = (16, 32, 64, 128, 256, 512)


@dataclass
class IndexSummary(Result):
    model_id: str
    factory: str
    count: int
    added: int
    rebuilt: bool
    recall_at_10: float | None
    params: dict = field(default_factory=dict)
    path: str = ""
    seconds: float = 0.0

    def __rich__(self):
        how = "built" if self.rebuilt else (f"{self.added} added" if self.added else "up to date")
        rec = "exact" if self.recall_at_10 is None else f"recall@10 {self.recall_at_10:.3f}"
        return f"index {self.model_id}: {self.factory}, {self.count} vectors ({how}; {rec}) -> {self.path} in {self.seconds:.1f} s"


def normalise(z: np.ndarray) -> np.ndarray:
    """float32 rows of unit length (zero rows stay zero)."""
    z = np.ascontiguousarray(z, dtype=np.float32)
    norms = np.linalg.norm(z, axis=1, keepdims=True)
    return z / np.maximum(norms, 1e-12)


def read_latents(st: Store, model_id: str, slice_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(slice ids int64, z_sem float32 (N, 512)) of a model's latents, optionally only `slice_ids`."""

    ds = st.latents(model_id)
    if not ds.parts():
        raise StoreError(f"no latents of model {model_id} in {st.root}; run `latentstore encode --model {model_id}` first")
    cols = ["slice_id", "z_sem"]
    t = ds.read(columns=cols) if slice_ids is None else ds.take("slice_id", np.asarray(slice_ids, np.int64), cols)
    ids = t.column("slice_id").to_numpy().astype(np.int64)
    z = t.column("z_sem").combine_chunks().flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    return ids, z.reshape(len(ids), -1) if len(ids) else z.reshape(0, 512)


def isin_sorted(ids: np.ndarray, sorted_ids: np.ndarray) -> np.ndarray:
    """`np.isin(ids, sorted_ids)` for an already sorted `sorted_ids`, without re-sorting it per call."""
    if not len(sorted_ids):
        return np.zeros(len(ids), bool)
    pos = np.clip(np.searchsorted(sorted_ids, ids), 0, len(sorted_ids) - 1)
    return sorted_ids[pos] == ids


def resolve_model_id(st: Store, model: str | None) -> str:
    """The model id whose latents to use: `model`, else the default model's id when it has latents, else
    the only model with latents."""
    from .checkpoint import default_model_id

    if model:
        return str(model) if model != "default" else default_model_id()
    have = st.latent_models()
    if default_model_id() in have or not have:
        return default_model_id()
    if len(have) == 1:
        return have[0]
    raise StoreError(f"latents of several models ({', '.join(have)}): pass --model")


def factory_for(n: int) -> str:
    return "IDMap2,Flat" if n <= EXACT_MAX else f"IDMap2,HNSW{HNSW_M},SQ8,RFlat"


def hnsw_of(index):
    """The HNSW index inside an `IDMap2[,RFlat]` wrapper, or None for an exact index."""
    import faiss

    inner = faiss.downcast_index(index.index)
    if hasattr(inner, "base_index"):  # IndexRefineFlat
        inner = faiss.downcast_index(inner.base_index)
    return inner if hasattr(inner, "hnsw") else None


def _new_index(factory: str, z: np.ndarray):
    """An empty index of `factory`, trained on (a sample of) `z` where it needs training."""
    import faiss

    index = faiss.index_factory(z.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    if (h := hnsw_of(index)) is not None:
        h.hnsw.efConstruction = EF_CONSTRUCTION
        refine = faiss.downcast_index(index.index)
        if hasattr(refine, "k_factor"):
            refine.k_factor = REFINE_K
    if not index.is_trained:
        pick = np.random.default_rng(0).choice(len(z), min(len(z), SQ_TRAIN_MAX), replace=False)
        index.train(z[np.sort(pick)])
    return index


def set_ef(index, ef: int) -> None:
    if (h := hnsw_of(index)) is not None:
        h.hnsw.efSearch = int(ef)


def recall_at_10(index, z: np.ndarray, rng: np.random.Generator, n: int = RECALL_SAMPLE, ids=None) -> float:
    """Mean share of the exact 10 nearest *other* vectors that `index` returns, over `n` sampled stored
    vectors as queries (the query itself, found by every index, is left out of both lists)."""
    if len(z) < 2:
        return 1.0
    pick = rng.choice(len(z), size=min(n, len(z)), replace=False)
    ids = np.arange(len(z)) if ids is None else ids
    k = min(10, len(z) - 1)
    sims = z[pick] @ z.T
    sims[np.arange(len(pick)), pick] = -np.inf
    truth = ids[np.argsort(-sims, axis=1)[:, :k]]
    _, got = index.search(z[pick], k + 1)
    return float(np.mean([len(set(t) & (set(g) - {ids[p]})) / k for t, g, p in zip(truth, got, pick)]))


def _tune_ef(index, z: np.ndarray, ids: np.ndarray) -> tuple[int, float]:
    for ef in EF_CHOICES:
        set_ef(index, ef)
        r = recall_at_10(index, z, np.random.default_rng(0), ids=ids)
        if r >= TARGET_RECALL:
            return ef, r
    return ef, r


def sidecar_path(st: Store, model_id: str) -> str:
    return st.index_path(model_id)[: -len(".faiss")] + ".json"


def load_index(st: Store, model_id: str):
    """(faiss index, sidecar dict), or StoreError when there is none."""
    import faiss

    path = st.index_path(model_id)
    if not os.path.exists(path):
        raise StoreError(f"no index for model {model_id}; run `latentstore index --model {model_id}`")
    with open(sidecar_path(st, model_id)) as f:
        meta = json.load(f)
    index = faiss.read_index(path)
    set_ef(index, meta.get("params", {}).get("efSearch", 64))
    return index, meta


def build_index(store: Store | str | None, model: str | None = None, rebuild: bool = False) -> IndexSummary:
    """Build or update the FAISS index of a model's latents (see the module)."""
    import faiss

    t0 = time.perf_counter()
    st = connect(store)
    if not st.local:
        raise StoreError("indices live beside a local store (FAISS writes local files); use a local --store")
    model_id = resolve_model_id(st, model)
    from . import catalog

    with catalog.writer(st):
        pass  # tables and views (labels, latents) exist for the searches that follow
    ids, z = read_latents(st, model_id)
    z = normalise(z)
    factory = factory_for(len(ids))
    path = st.index_path(model_id)
    index, meta, added, rebuilt = None, {}, 0, True
    if not rebuild and os.path.exists(path):
        try:
            index, meta = load_index(st, model_id)
        except (OSError, ValueError, RuntimeError, StoreError):
            index = None  # a broken index is rebuilt, never trusted
    if index is not None and meta.get("factory") == factory:
        have = faiss.vector_to_array(index.id_map).astype(np.int64)
        if np.isin(have, ids).all():  # nothing replaced: add what is new
            new = ~np.isin(ids, have)
            added, rebuilt = int(new.sum()), False
            if added:
                index.add_with_ids(z[new], ids[new])
    if rebuilt:
        index = _new_index(factory, z)
        index.add_with_ids(z, ids)
        added = len(ids)
    params = {"metric": "inner product on L2-normalised z_sem (cosine)", "exact_max": EXACT_MAX}
    recall = None
    if "HNSW" in factory:
        ef, recall = _tune_ef(index, z, ids)
        params.update(M=HNSW_M, efConstruction=EF_CONSTRUCTION, efSearch=ef, codes="SQ8", refine_k=REFINE_K)
    if rebuilt or added:
        _write_atomic(st, model_id, index, {
            "model_id": model_id, "factory": factory, "count": int(index.ntotal), "params": params,
            "recall_at_10": recall, "recall_sample": min(RECALL_SAMPLE, len(ids)), "dim": int(z.shape[1]),
            "latents_hash": hashlib.sha256(np.sort(ids).tobytes()).hexdigest()[:16],
        })
    elif meta.get("recall_at_10") is not None:
        recall = meta["recall_at_10"]
    return IndexSummary(model_id, factory, int(index.ntotal), added, rebuilt, recall, params, path,
                        round(time.perf_counter() - t0, 2))


def _write_atomic(st: Store, model_id: str, index, meta: dict) -> None:
    import faiss

    path, side = st.index_path(model_id), sidecar_path(st, model_id)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp, tmp_side = f"{path}.tmp-{os.getpid()}", f"{side}.tmp-{os.getpid()}"
    faiss.write_index(index, tmp)
    with open(tmp_side, "w") as f:
        json.dump(meta, f, indent=2)
    os.replace(tmp, path)
    os.replace(tmp_side, side)


def to_device(index):
    """The index on all GPUs when faiss-gpu sees one (exact indices), else as it is."""
    import faiss

    if getattr(faiss, "get_num_gpus", lambda: 0)() > 0 and type(faiss.downcast_index(index.index)).__name__ == "IndexFlat":
        try:
            return faiss.index_cpu_to_all_gpus(index)
        except RuntimeError:  # untested here (no GPU lent): the CPU index answers the same queries
            return index
    return index
