"""`latentstore labels suggest`: the unlabelled vertebrae whose labels would help the hyperplane most.

Labels are what is scarce, so ask for the ones the current fit is least sure of, and not ten of the same.
For every latent of the model without a label (any source), under the current fit (`latentstore fit`):

- closeness: how many bootstrap standard deviations the latent's distance lies from the hyperplane,
  |d| / sd(d over the bootstrap hyperplanes): small = the fit cannot tell which side it is on;
- diversity: from the POOL_FACTOR * n closest candidates, a greedy pick that trades closeness against the
  standardised z_sem distance to the vertebrae already picked (exp(-closeness) * distance), so the list
  spans the uncertain region instead of one cluster.

Streams the latents (memory flat in their number); writes a picture of the picked slices.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputError
from .result import Result
from .store import Store, connect

POOL_FACTOR = 10


@dataclass
class Suggestion(Result):
    model_id: str
    hyperplane_version: int
    unlabelled: int
    rows: list[dict] = field(default_factory=list)
    picture: str | None = None

    def __rich__(self):
        from rich.table import Table

        t = Table("slice_id", "scan_id", "level", "distance", "score", "score sd", "closeness",
                  title=f"label these next: {len(self.rows)} of {self.unlabelled} unlabelled vertebrae "
                        f"(model {self.model_id}, hyperplane v{self.hyperplane_version})")
        for r in self.rows:
            t.add_row(str(r["slice_id"]), r["scan_id"], r["level_name"], f"{r['distance']:+.3f}", f"{r['score']:.2f}",
                      f"{r['score_sd']:.2f}", f"{r['closeness']:.2f}")
        if self.picture:
            t.caption = f"picture: {self.picture}"
        return t


def suggest(store: Store | str | None, n: int = 20, model: str | None = None,
            picture: bool | str | Path = True) -> Suggestion:
    from .fit import load_fit
    from .grade import latent_arrays, score_latents
    from .index import isin_sorted, resolve_model_id
    from .slices import read_slices
    from .sql import query

    if n < 1:
        raise InputError(f"-n must be at least 1, got {n}")
    st = connect(store)
    model_id = resolve_model_id(st, model)
    h, c = load_fit(st, model_id)
    labelled = query(st, "SELECT DISTINCT s.slice_id FROM labels l JOIN slices s ON s.scan_id = l.scan_id "
                         "AND s.level = l.level").column("slice_id").to_numpy().astype(np.int64)
    labelled.sort()
    pool = POOL_FACTOR * n
    keep_ids, keep_z, keep_close = np.empty(0, np.int64), np.empty((0, len(h.z_mean)), np.float32), np.empty(0)
    unlabelled = 0
    for ids, z in latent_arrays(st.latents(model_id), labelled):  # parts labelled throughout: ids only
        new = ~isin_sorted(ids, labelled) if z is not None else np.zeros(len(ids), bool)
        if not new.any():
            continue
        unlabelled += int(new.sum())
        zs = h.standardise(z[new])
        bd = h.boot_distances(zs)
        close = np.abs(h.distance(zs)) / np.maximum(bd.std(axis=1), 1e-6)
        keep_ids = np.concatenate([keep_ids, ids[new]])
        keep_z = np.concatenate([keep_z, zs])
        keep_close = np.concatenate([keep_close, close])
        if len(keep_ids) > pool:  # keep the pool's best only: memory stays at `pool` latents
            top = np.argsort(keep_close, kind="stable")[:pool]
            keep_ids, keep_z, keep_close = keep_ids[top], keep_z[top], keep_close[top]
    if unlabelled == 0:
        raise InputError(f"every latent of model {model_id} has a label: nothing to suggest")
    order = _diverse(keep_z, keep_close, n)
    ids = keep_ids[order]
    z_raw = keep_z[order] * h.z_std + h.z_mean
    s = score_latents(h, c, z_raw)
    cols = ["slice_id", "scan_id", "level_name"] + (["image"] if picture else [])
    meta = {r["slice_id"]: r for r in read_slices(st, slice_ids=[int(i) for i in ids], columns=cols).to_pylist()}
    rows = [{"slice_id": int(i), **{col: meta.get(int(i), {}).get(col, "?") for col in ("scan_id", "level_name")},
             "distance": float(s["distance"][k]), "score": float(s["score"][k]), "score_sd": float(s["score_sd"][k]),
             "closeness": float(keep_close[order][k]), "ood": bool(s["ood"][k])} for k, i in enumerate(ids)]
    result = Suggestion(model_id, h.hyperplane_version, unlabelled, rows)
    if picture:
        result.picture = str(_picture(st, rows, meta, model_id, None if picture is True else picture))
    return result


def _diverse(zs: np.ndarray, close: np.ndarray, n: int) -> np.ndarray:
    """Greedy: first the closest; then argmax exp(-closeness) * (distance to the nearest one picked)."""
    if len(zs) <= n:
        return np.argsort(close, kind="stable")
    picked = [int(np.argmin(close))]
    nearest = np.linalg.norm(zs - zs[picked[0]], axis=1)
    weight = np.exp(-close)
    for _ in range(n - 1):
        gain = weight * nearest
        gain[picked] = -1
        k = int(np.argmax(gain))
        picked.append(k)
        nearest = np.minimum(nearest, np.linalg.norm(zs - zs[k], axis=1))
    return np.array(picked)


def _picture(st: Store, rows: list[dict], meta: dict, model_id: str, out) -> Path:
    from .pictures import picture_path, render_grid
    from .schema import SLICE_PX

    have = [r for r in rows if r["slice_id"] in meta]
    path = picture_path(st, f"suggest-{model_id}", out)
    path.parent.mkdir(parents=True, exist_ok=True)
    labels = [f"{r['level_name']} score {r['score']:.1f}±{r['score_sd']:.1f}" for r in have]
    images = np.stack([np.asarray(meta[r["slice_id"]]["image"], np.int16).reshape(SLICE_PX, SLICE_PX) for r in have])
    render_grid(images, labels, f"label these next ({model_id})").save(path, format="PNG")
    return path
