"""The reference a fit stands on: what the model's latents look like in the store, computed once per version
of the latents (their part files, named by content hash) and cached in the catalog.

- `reference`: DiffAE's normalisation (per-dimension mean and std of *all* the model's latents) and the
  out-of-distribution reference (probabilistic-PCA Mahalanobis distance, thresholded at a quantile of each
  patient held out of it; patients unlike the rest left out), in `latent_stats`;
- `labelled_latents`: the labelled slices' z_sem, in `labelled_latents`: slice ids are hashes, so a few
  thousand labels among a million latents sit in every row group, and reading them from the Parquet would
  decode all of it on every fit. The pass behind `reference` collects them on its way.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from . import catalog
from .errors import StoreError
from .store import Store

OOD_COMPONENTS = 32
OOD_QUANTILE = 0.99
REFERENCE_VERSION = 3  # 2: threshold over 5 folds of patients, components capped at a tenth of the rows;
# 3: patients unlike the rest left out of the reference
OOD_PATIENT_QUANTILE = 0.95  # a patient is unlike the rest when more than OOD_PATIENT_SHARE of its latents lie
OOD_PATIENT_SHARE = 0.5  # beyond this quantile of the held-out distances (inliers: 3 of 4 by chance ~0.05 %)
OOD_PATIENT_MIN_ROWS = 3
OOD_REFERENCE_MAX = 20_000  # latents behind the OOD reference (a seeded sample of latents beyond that)


@dataclass
class PPCA:
    """A probabilistic-PCA reference: mean, k principal axes with their variances, an isotropic residual."""

    mean: np.ndarray
    components: np.ndarray  # (k, D)
    variances: np.ndarray  # (k,)
    residual: float

    def distance(self, zs: np.ndarray) -> np.ndarray:
        """Mahalanobis distance (k axes + isotropic residual) of rows `zs`."""
        x = zs - self.mean
        proj = x @ self.components.T
        inside = (proj * proj / self.variances).sum(1)
        resid = np.maximum((x * x).sum(1) - (proj * proj).sum(1), 0.0) / self.residual
        return np.sqrt(inside + resid)


def labelled_latents(st: Store, model_id: str, slice_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted slice ids, z_sem) of those of `slice_ids` that have a latent of `model_id`: from the catalog's
    `labelled_latents` cache for the current version of the latents, the rest read from the Parquet (every
    row group holding one of them) and added to the cache."""
    from .index import read_latents

    parts_hash = latents_version(st, model_id)
    want = pa.table({"slice_id": pa.array(np.unique(np.asarray(slice_ids, np.int64)))})
    con = catalog.reader(st)
    try:
        con.register("want", want)
        t = con.sql("SELECT c.slice_id, c.z_sem FROM labelled_latents c JOIN want USING (slice_id) "
                    "WHERE c.model_id = ? AND c.parts_hash = ?", params=[model_id, parts_hash]).to_arrow_table()
    finally:
        con.close()
    ids = t.column("slice_id").to_numpy().astype(np.int64)
    dim = t.schema.field("z_sem").type.list_size
    z = t.column("z_sem").combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(len(ids), dim)
    missing = np.setdiff1d(want.column("slice_id").to_numpy(), ids)
    if len(missing):
        new_ids, new_z = read_latents(st, model_id, missing)
        if len(new_ids):
            _cache_labelled(st, model_id, parts_hash, new_ids, new_z)
            ids, z = np.concatenate([ids, new_ids]), np.concatenate([z, new_z])
    ids, first = np.unique(ids, return_index=True)  # sorted; two fits filling the cache at once add rows twice
    return ids, np.ascontiguousarray(z[first], np.float32)


def _cache_labelled(st: Store, model_id: str, parts_hash: str, ids: np.ndarray, z: np.ndarray,
                    replace: bool = False) -> None:
    """Add latents to the `labelled_latents` cache (`replace`: they are every labelled slice's, from a pass
    over all the latents: the model's rows, of any version, make way)."""
    from .encode import latents_table

    rows = latents_table(ids, z)
    with catalog.writer(st) as con:
        if replace:
            con.execute("DELETE FROM labelled_latents WHERE model_id = ?", [model_id])
        con.register("new_rows", rows)
        con.execute("INSERT INTO labelled_latents SELECT ?, ?, slice_id, z_sem FROM new_rows", [model_id, parts_hash])
        con.unregister("new_rows")


def latents_version(st: Store, model_id: str, parts: list[str] | None = None) -> str:
    """sha256 of the sorted part names of the model's latents (content hashes; `parts` when the caller has
    listed them): changes when latents do."""
    parts = st.latents(model_id).parts() if parts is None else parts
    return hashlib.sha256("\n".join(sorted(parts)).encode()).hexdigest()


def labelled_ids(st: Store) -> np.ndarray:
    """Sorted ids of every slice with a label, of any source and grade."""
    from .fit import LABELS_FROM
    from .sql import query

    t = query(st, f"SELECT DISTINCT s.slice_id FROM {LABELS_FROM}")
    return np.sort(t.column("slice_id").to_numpy().astype(np.int64))


def latent_stats(st: Store, model_id: str, seed: int = 0, keep: np.ndarray | None = None) -> tuple:
    """Per-dimension mean and std of all the model's latents (streamed, float64 sums), their count, a
    seeded sample of at most OOD_REFERENCE_MAX latents (ids, z) for the OOD reference, and the latents (ids,
    z) of the sorted slice ids `keep` met on the way."""
    from .index import isin_sorted

    ds = st.latents(model_id)
    if not ds.parts():
        raise StoreError(f"no latents of model {model_id} in {st.root}; run `latentstore encode` first")
    s1 = s2 = None
    n = 0
    ids_all, z_keep, kept_ids, kept_z = [], [], [], []
    keep = np.zeros(0, np.int64) if keep is None else keep
    rng = np.random.default_rng(seed)
    share = min(1.0, OOD_REFERENCE_MAX / max(ds.count(), 1))
    for batch in ds.batches(columns=["slice_id", "z_sem"], batch_size=65536):
        z = batch.column("z_sem").flatten().to_numpy(zero_copy_only=False).reshape(batch.num_rows, -1)
        b1, b2 = z.sum(0, dtype=np.float64), np.square(z).sum(0, dtype=np.float64)
        s1, s2 = (b1, b2) if s1 is None else (s1 + b1, s2 + b2)
        n += len(z)
        ids = batch.column("slice_id").to_numpy().astype(np.int64)
        take = rng.random(len(z)) < share
        ids_all.append(ids[take])
        z_keep.append(np.asarray(z[take], np.float32))
        hit = isin_sorted(ids, keep)
        if hit.any():
            kept_ids.append(ids[hit])
            kept_z.append(np.asarray(z[hit], np.float32))
    mean = s1 / n
    std = np.sqrt(np.maximum(s2 / n - mean * mean, 0.0))
    std = np.where(std > 1e-6, std, 1.0)
    kept = ((np.concatenate(kept_ids), np.concatenate(kept_z)) if kept_ids
            else (np.zeros(0, np.int64), np.zeros((0, z_keep[0].shape[1] if z_keep else 512), np.float32)))
    return mean.astype(np.float32), std.astype(np.float32), n, np.concatenate(ids_all), np.concatenate(z_keep), kept


def _ppca(x: np.ndarray) -> PPCA:
    """Probabilistic PCA of rows `x`: k = OOD_COMPONENTS axes, fewer on a small reference (at most a tenth of
    its rows), whose small axes would be noise."""
    mean = x.mean(0)
    xc = x - mean
    k = int(max(1, min(OOD_COMPONENTS, len(x) // 10, x.shape[1] - 1)))
    evals, evecs = np.linalg.eigh(xc.T.astype(np.float64) @ xc / max(len(x) - 1, 1))  # D x D: cheap at any N
    var, vt = evals[::-1].clip(0), evecs[:, ::-1].T
    resid = float(max(var[k:].sum() / max(x.shape[1] - k, 1), 1e-6))
    return PPCA(mean, vt[:k], np.maximum(var[:k], 1e-6), resid)


def _held_out_distances(zs: np.ndarray, patients: np.ndarray, seed: int, folds: int) -> np.ndarray | None:
    """Each row's OOD distance under a PPCA fitted without its patient (`folds` folds of patients); None when
    there are fewer patients than folds."""
    uniq = np.unique(patients)
    if len(uniq) < folds:
        return None
    rng = np.random.default_rng(seed)
    fold_of = dict(zip(rng.permutation(uniq), np.arange(len(uniq)) % folds))
    fold = np.array([fold_of[p] for p in patients])
    d = np.empty(len(zs))
    for f in range(folds):
        test = fold == f
        d[test] = _ppca(zs[~test]).distance(zs[test])
    return d


def ood_reference(zs: np.ndarray, patients: np.ndarray, seed: int = 0, folds: int = 5,
                  quantile: float = OOD_QUANTILE) -> tuple:
    """Probabilistic-PCA Mahalanobis reference of standardised latents, and its threshold: the OOD_QUANTILE
    of the distances of each patient's latents under a PPCA fitted without that patient (5 folds of
    patients), so the threshold is what a new patient's latents look like, measured on every patient (one
    held-out fifth made it swing from 40 to 137 between two salts of a 20-patient store).

    Patients unlike the rest are left out of the reference: those with more than OOD_PATIENT_SHARE of their
    (at least OOD_PATIENT_MIN_ROWS) latents beyond the held-out OOD_PATIENT_QUANTILE. Otherwise a real CT ingested into a store of phantoms
    becomes part of what "in distribution" means: on a 20-patient store its 4 vertebrae took a principal axis
    of the PPCA and fell from distances of 66-72 to 28-35, unflagged. The reference is then fitted on the
    remaining patients and the threshold measured on them. Returns mean, components, variances, residual,
    threshold."""
    d = _held_out_distances(zs, patients, seed, folds)
    if d is not None:
        uniq, inverse = np.unique(patients, return_inverse=True)
        rows = np.bincount(inverse)
        share = np.bincount(inverse, d > np.quantile(d, OOD_PATIENT_QUANTILE)) / rows
        # judged only with OOD_PATIENT_MIN_ROWS rows in the reference: on a big store the reference is a
        # sample of rows, where one unlucky row would make a patient "unlike" (and one patient sways nothing)
        unlike = (share > OOD_PATIENT_SHARE) & (rows >= OOD_PATIENT_MIN_ROWS)
        if unlike.any() and (~unlike).sum() >= max(folds, len(uniq) // 2):
            keep = ~unlike[inverse]
            zs, patients = zs[keep], patients[keep]
            d = _held_out_distances(zs, patients, seed, folds)
    ref = _ppca(zs)
    d = ref.distance(zs) if d is None else d
    return (ref.mean.astype(np.float32), ref.components.astype(np.float32), ref.variances, ref.residual,
            float(np.quantile(d, quantile)))


def reference(st: Store, model_id: str, seed: int = 0) -> dict:
    """Normalisation and OOD reference of the model's latents: from `latent_stats` when the latents have not
    changed since they were computed (the part names are content hashes), else computed and stored."""
    parts = st.latents(model_id).parts()
    if not parts:
        raise StoreError(f"no latents of model {model_id} in {st.root}; run `latentstore encode` first")
    # the method's version is part of the key: a reference computed the old way is recomputed, not reused
    digest = hashlib.sha256("\n".join([f"reference/{REFERENCE_VERSION}", *sorted(parts)]).encode()).hexdigest()
    con = catalog.reader(st)
    try:
        hit = con.sql("SELECT * FROM latent_stats WHERE model_id = ? AND parts_hash = ? LIMIT 1",
                      params=[model_id, digest]).to_arrow_table().to_pylist()
    finally:
        con.close()
    if hit:
        r = hit[0]
        return {k: np.asarray(v, np.float64 if k == "ood_variances" else np.float32) if isinstance(v, list) else v
                for k, v in r.items()}
    t0 = time.perf_counter()
    # the pass over every latent also fills the labelled-latents cache for this version of the latents
    mean, std, n, ref_ids, ref_z, (lab_ids, lab_z) = latent_stats(st, model_id, seed, keep=labelled_ids(st))
    _cache_labelled(st, model_id, latents_version(st, model_id, parts), lab_ids, lab_z, replace=True)
    m, comps, lam, resid, thr = ood_reference((ref_z - mean) / std, _patients_of(st, ref_ids), seed)
    r = {"model_id": model_id, "parts_hash": digest, "n_latents": n, "z_mean": mean, "z_std": std, "ood_mean": m,
         "ood_components": comps, "ood_variances": lam, "ood_residual": resid, "ood_threshold": thr,
         "seconds": time.perf_counter() - t0}
    with catalog.writer(st) as con:
        con.execute(f"INSERT INTO latent_stats ({', '.join(r)}, created) VALUES ({', '.join('?' * (len(r) + 1))})",
                    [v.tolist() if isinstance(v, np.ndarray) else v for v in r.values()] + [catalog.utcnow()])
    return r


def _patients_of(st: Store, slice_ids: np.ndarray) -> np.ndarray:
    t = st.slices.take("slice_id", slice_ids, ["slice_id", "patient_key"])
    look = dict(zip(t.column("slice_id").to_pylist(), t.column("patient_key").to_pylist()))
    return np.array([look.get(int(s), f"slice-{s}") for s in slice_ids], dtype=object)
