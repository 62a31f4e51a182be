"""`eval probe`: how much fracture information a model's z_sem carries, against baselines on the same folds.

The yardstick for every model (issue 8). On the store's labelled slices:

* **Fracture detection**, G0 against G2/G3 (G1 is left out, as in the paper's binary task): linear
  probes, logistic regression and a linear SVM, on standardised features (the scaler is fitted inside each
  training fold), patient-grouped stratified k-fold cross-validation repeated over several split seeds.
  The regularisation C is chosen per outer fold by an inner grouped 3-fold search over `C_GRID`, so a
  512-d feature set is not handicapped against a 64-d one by a fixed C. AUC is computed on the pooled
  out-of-fold scores of each seed; balanced accuracy at the classifier's own threshold (classes weighted).
* **Severity**, G2 against G3 among the fractures (the same logistic probe): what a binary hyperplane's
  distance must order for a macro-F1 over G0/G2/G3, and what the detection AUC does not show.
* **Height loss** (when the labels carry it): ridge regression (alpha by inner CV), out-of-fold R^2.
* **Vertebral level**: multinomial logistic regression, out-of-fold accuracy.

Feature sets, computed in the same run on the same slices and folds:

* `zsem`: the model's semantic encoder;
* `untrained`: the same architecture at its seeded random init (random convolutional features);
* `pix8`: the windowed slice average-pooled to 8x8 (model-independent).

Diagnostics of z_sem (docs/reference/cpu-training.md): effective rank (exp of the entropy of the
covariance eigenvalues), the share of variance on the top principal component and its R^2 against the
slice's mean intensity (the trivial direction a collapsed encoder keeps), and z usage: the eps-MSE of the
UNet with each slice's own z_sem against a shuffled one, on the same x_t.

Labels: a synth archive's `ground_truth.csv`, or a long CSV with `scan`, `level` (VerSe number or name,
e.g. L1) and `grade` (0-3), optionally `height_loss`. Rows are matched to slices by (scan_id, level).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import InputError, StoreError
from .fit import grouped_folds, linear_classifier
from .result import Report
from .schema import SLICE_PX

# Inverse regularisation strengths searched per classifier (squared hinge needs ~10x less C than logistic
# for the same margin; beyond these the probes only overfit 512 standardised dimensions).
C_GRID = {"logistic": (0.001, 0.01, 0.1, 1.0), "svm": (0.0001, 0.001, 0.01, 0.1)}
RIDGE_ALPHAS = (0.1, 1.0, 10.0, 100.0, 1000.0)


# ------------------------------------------------------------------------------------------------- labels


@dataclass(frozen=True)
class Label:
    grade: int
    height_loss: float  # nan when the labels do not carry it


def load_labels(path: str | Path) -> dict[tuple[str, int], Label]:
    """(scan, VerSe level) -> Label from any label file `latentstore labels import` reads (a synth
    ground_truth.csv, a long CSV of scan, level, grade[, height_loss], a VerSe table, a grades JSON).

    Strict where an import is lenient: the first malformed row, or a row without a grade, is an InputError
    naming the file and line.
    """
    from .labels import read_labels

    _, rows, rejects = read_labels(path)
    if rejects:
        raise InputError(f"{path}: {rejects[0]}")
    out: dict[tuple[str, int], Label] = {}
    for r in rows:
        if r.grade is None:
            raise InputError(f"{path}: line {r.line}: no grade (the probe needs Genant grades)")
        out[(r.scan, r.level)] = Label(r.grade, math.nan if r.height_loss is None else r.height_loss)
    if not out:
        raise InputError(f"{path}: no label rows")
    return out


@dataclass(frozen=True)
class ProbeData:
    """The labelled slices of a store, in slice-id order."""

    images: np.ndarray  # (N, 96, 96) int16 HU
    slice_id: np.ndarray  # (N,) int64
    groups: np.ndarray  # (N,) patient_key
    level: np.ndarray  # (N,) VerSe label
    grade: np.ndarray  # (N,) 0-3
    height_loss: np.ndarray  # (N,) float, nan where unknown

    def __len__(self) -> int:
        return len(self.slice_id)


def catalog_labels(st) -> dict[tuple[str, int], Label]:
    """(scan_id, level) -> Label from the catalog's current labels (`latentstore labels import`)."""
    from . import catalog
    from .errors import StoreError

    try:
        con = catalog.reader(st)
    except StoreError:
        con = None
    rows = []
    if con is not None:
        try:
            rows = con.execute("SELECT scan_id, level, grade, height_loss FROM labels WHERE grade IS NOT NULL").fetchall()
        finally:
            con.close()
    if not rows:
        raise InputError("no labels: pass --labels FILE (a synth ground_truth.csv, or a CSV of scan, level, grade), "
                         "or import them first with `latentstore labels import FILE`")
    return {(s, int(lv)): Label(int(g), math.nan if h is None else float(h)) for s, lv, g, h in rows}


def probe_data(store, labels: str | Path | None) -> ProbeData:
    """Join the store's slices with the labels file on (scan_id, level): the labels name scans as the
    archive does, matched to the store's pseudonyms under the store's salt (`privacy.by_scan_id`)."""
    from .ingest.privacy import by_scan_id
    from .slices import read_slices
    from .store import connect

    table = read_slices(store, columns=["slice_id", "scan_id", "patient_key", "level", "image"])
    table = table.sort_by("slice_id")
    lab = by_scan_id(connect(store), load_labels(labels)) if labels is not None else catalog_labels(connect(store))
    scans, levels = table.column("scan_id").to_pylist(), table.column("level").to_pylist()
    hit = [lab.get((s, int(lv))) for s, lv in zip(scans, levels)]
    keep = np.array([h is not None for h in hit])
    if keep.sum() < 20:
        raise InputError(f"only {int(keep.sum())} of {len(hit)} stored slices have a label in {labels} "
                         "(matched on scan and level); a probe needs at least 20")
    idx = np.flatnonzero(keep)
    image = table.column("image").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    images = image.astype(np.int16, copy=False).reshape(-1, SLICE_PX, SLICE_PX)[idx]
    return ProbeData(
        images=images,
        slice_id=table.column("slice_id").to_numpy()[idx],
        groups=np.asarray(table.column("patient_key").to_pylist(), dtype=object)[idx],
        level=np.asarray(levels)[idx],
        grade=np.array([hit[i].grade for i in idx]),
        height_loss=np.array([hit[i].height_loss for i in idx], dtype=float),
    )


# ----------------------------------------------------------------------------------------------- features


@torch.no_grad()
def encode_images(net, preprocess, images: np.ndarray, batch_size: int = 64, device="cpu") -> np.ndarray:
    """(N, 96, 96) HU -> (N, Z) float64 z_sem of `net`'s encoder."""
    net.eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = preprocess.to_model(images[i : i + batch_size]).to(device)
        out.append(net.encoder(x).double().cpu().numpy())
    return np.concatenate(out)


def pix8_features(preprocess, images: np.ndarray) -> np.ndarray:
    """(N, 96, 96) HU -> (N, 64): the windowed slice in [-1, 1] area-pooled to 8x8."""
    x = preprocess.to_model(images)  # (N, 1, S, S)
    return torch.nn.functional.adaptive_avg_pool2d(x, 8).flatten(1).double().numpy()


def zsem_diagnostics(z: np.ndarray, mean_intensity: np.ndarray) -> dict:
    """Effective rank, top-PC variance share, and R^2 of the top PC against mean slice intensity."""
    zc = z - z.mean(0)
    eig = np.clip(np.linalg.eigvalsh(zc.T @ zc / max(len(z) - 1, 1))[::-1], 0, None)
    total = eig.sum()
    if total <= 0:
        return {"effective_rank": 0.0, "top_pc_share": float("nan"), "top_pc_r2_mean_intensity": float("nan")}
    p = eig / total
    p = p[p > 0]
    _, _, vt = np.linalg.svd(zc, full_matrices=False)
    pc1 = zc @ vt[0]
    r = np.corrcoef(pc1, mean_intensity)[0, 1]
    return {"effective_rank": float(np.exp(-(p * np.log(p)).sum())), "top_pc_share": float(eig[0] / total),
            "top_pc_r2_mean_intensity": float(r * r) if np.isfinite(r) else float("nan")}


@torch.no_grad()
def z_usage(net, preprocess, images: np.ndarray, n: int = 256, seed: int = 0, device="cpu") -> dict:
    """eps-MSE with each slice's own z_sem against a shuffled one, on the same x_t (t uniform, seeded).

    `ratio` > 1 means the UNet uses z_sem; 1.0 means it denoises from x_t alone.
    """
    from .diffusion import default_schedule, q_sample

    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(images), generator=g)[: min(n, len(images))].numpy()
    x0 = preprocess.to_model(images[np.sort(pick)]).to(device)
    net.eval()
    z = net.encoder(x0)
    t = torch.randint(0, default_schedule().num_timesteps, (len(x0),), generator=g).to(device)
    eps = torch.randn(x0.shape, generator=g).to(device)
    x_t = q_sample(x0, t, eps)
    own = float(((net(x_t, t, z) - eps) ** 2).mean())
    perm = torch.roll(torch.arange(len(x0)), 1)
    other = float(((net(x_t, t, z[perm]) - eps) ** 2).mean())
    return {"mse_own_z": own, "mse_shuffled_z": other, "ratio": other / own if own > 0 else float("nan")}


# ------------------------------------------------------------------------------------------------- probes


def _scores(kind: str, C: float, Xtr, ytr, Xte) -> np.ndarray:
    from sklearn.preprocessing import StandardScaler

    sc = StandardScaler().fit(Xtr)
    clf = linear_classifier(kind, C).fit(sc.transform(Xtr), ytr)
    return clf.decision_function(sc.transform(Xte))


def _choose_c(kind: str, X, y, groups, seed: int) -> float:
    """C with the best pooled out-of-fold AUC in an inner grouped 3-fold split of the training fold."""
    from sklearn.metrics import roc_auc_score

    inner = grouped_folds(y, groups, 3, seed)
    best, best_auc = C_GRID[kind][0], -1.0
    for C in C_GRID[kind]:
        s = np.empty(len(y))
        for tr, te in inner:
            s[te] = _scores(kind, C, X[tr], y[tr], X[te])
        auc = roc_auc_score(y, s)
        if auc > best_auc + 1e-9:
            best, best_auc = C, auc
    return best


def detection_probe(X: np.ndarray, y: np.ndarray, groups: np.ndarray, kind: str, seeds, k: int) -> dict:
    """Out-of-fold AUC and balanced accuracy of a linear probe (mean and SD over split seeds)."""
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    aucs, baccs, cs = [], [], []
    for seed in seeds:
        s = np.empty(len(y))
        for tr, te in grouped_folds(y, groups, k, seed):
            C = _choose_c(kind, X[tr], y[tr], groups[tr], seed)
            s[te] = _scores(kind, C, X[tr], y[tr], X[te])
            cs.append(C)
        aucs.append(roc_auc_score(y, s))
        baccs.append(balanced_accuracy_score(y, s > 0))
    return {"auc": float(np.mean(aucs)), "auc_sd": float(np.std(aucs)), "auc_per_seed": [float(a) for a in aucs],
            "balanced_accuracy": float(np.mean(baccs)), "c_chosen": sorted(set(cs))}


def severity_probe(X: np.ndarray, grade: np.ndarray, groups: np.ndarray, seeds, k: int) -> float | None:
    """AUC of the logistic probe of G3 against G2 among the fractures, or None when there are too few
    patients of either grade to split (k patients each, and every inner training fold with both)."""
    frac = grade >= 2
    g3, g = (grade[frac] == 3).astype(int), groups[frac]
    if min(len(set(g[g3 == 1])), len(set(g[g3 == 0]))) < k:
        return None
    try:
        return detection_probe(X[frac], g3, g, "logistic", seeds, k)["auc"]
    except ValueError:  # a grouped fold without one of the grades (patients with many vertebrae of one)
        return None


def height_r2(X: np.ndarray, h: np.ndarray, groups: np.ndarray, seeds, k: int) -> float:
    """Out-of-fold R^2 of ridge regression (alpha by inner CV) of height loss, mean over split seeds."""
    from sklearn.linear_model import RidgeCV
    from sklearn.metrics import r2_score
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    r2 = []
    for seed in seeds:
        pred = np.empty(len(h))
        for tr, te in GroupKFold(n_splits=k, shuffle=True, random_state=seed).split(X, h, groups):
            m = make_pipeline(StandardScaler(), RidgeCV(alphas=RIDGE_ALPHAS)).fit(X[tr], h[tr])
            pred[te] = m.predict(X[te])
        r2.append(r2_score(h, pred))
    return float(np.mean(r2))


def level_accuracy(X: np.ndarray, level: np.ndarray, groups: np.ndarray, seed: int, k: int) -> float:
    """Out-of-fold accuracy of multinomial logistic regression on the vertebral level (one split seed)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pred = np.empty(len(level), dtype=level.dtype)
    for tr, te in GroupKFold(n_splits=k, shuffle=True, random_state=seed).split(X, level, groups):
        m = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=3000)).fit(X[tr], level[tr])
        pred[te] = m.predict(X[te])
    return float((pred == level).mean())


def run_probes(features: dict[str, np.ndarray], data: ProbeData, seeds=(0, 1, 2), k: int = 5,
               classifiers=("logistic", "svm"), extras: bool = True) -> dict:
    """Every probe for every feature set, on the same folds. `extras`: height R^2 and level accuracy too."""
    det = np.isin(data.grade, (0, 2, 3))
    y = (data.grade[det] >= 2).astype(int)
    groups = data.groups[det]
    # the folds are by patient: k patients with each class, or some training fold lacks one
    pat0, pat1 = len(set(groups[y == 0])), len(set(groups[y == 1]))
    if min(pat0, pat1) < k:
        raise InputError(f"need G0 and G2/G3 labelled slices in at least {k} patients each (--folds {k}), got "
                         f"{int((1 - y).sum())} G0 slices of {pat0} patients and {int(y.sum())} G2/G3 of {pat1}")
    has_h = np.isfinite(data.height_loss)
    out = {}
    for name, X in features.items():
        row = {kind: detection_probe(X[det], y, groups, kind, seeds, k) for kind in classifiers}
        if extras:
            # severity: G2 against G3 among the fractures, what a binary hyperplane's distance has to order for
            # the macro-F1 over G0/G2/G3 (eval grading), and what no detection AUC shows
            row["severity_auc"] = severity_probe(X, data.grade, data.groups, seeds, k)
            row["height_loss_r2"] = (height_r2(X[has_h], data.height_loss[has_h], data.groups[has_h], seeds, k)
                                     if has_h.sum() >= 20 else None)
            row["level_accuracy"] = level_accuracy(X, data.level, data.groups, seeds[0], k)
        out[name] = row
    return {"n_slices": len(data), "n_detection": int(det.sum()), "n_fractured": int(y.sum()),
            "n_patients": len(set(data.groups)), "folds": k, "seeds": list(seeds), "features": out}


# ---------------------------------------------------------------------------------------------- eval probe


def eval_probe(store, model: str | None = None, labels: str | Path | None = None, seeds=(0, 1, 2),
               k: int = 5, device: str | None = None, record: bool = False) -> Report:
    """The probe table of a model (id, folder, or None = the shipped default) on the store's labelled slices;
    `record` writes it into the model's card."""
    from .checkpoint import load_model
    from .model import DiffusionAutoencoder

    if k < 2 or not seeds:
        raise InputError(f"need --folds >= 2 and at least one seed (got folds={k}, seeds={list(seeds)})")
    t0 = time.perf_counter()
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    lm = load_model(model, store, device=device)
    data = probe_data(store, labels)
    torch.manual_seed(0)
    untrained = DiffusionAutoencoder(lm.model_config).to(device).eval()
    feats = {
        "zsem": encode_images(lm.net, lm.preprocess, data.images, device=device),
        "untrained": encode_images(untrained, lm.preprocess, data.images, device=device),
        "pix8": pix8_features(lm.preprocess, data.images),
    }
    if not np.isfinite(feats["zsem"]).all():
        raise StoreError(f"model {lm.model_id} gives non-finite z_sem")
    result = run_probes(feats, data, seeds, k)
    mean_int = lm.preprocess.to_model(data.images).mean(dim=(1, 2, 3)).double().numpy()
    result.update(
        model_id=lm.model_id,
        config=lm.card.get("config"),
        labels=str(labels),
        diagnostics={"zsem": zsem_diagnostics(feats["zsem"], mean_int) | z_usage(lm.net, lm.preprocess, data.images,
                                                                                   device=device),
                     "untrained": zsem_diagnostics(feats["untrained"], mean_int)},
        seconds=round(time.perf_counter() - t0, 1),
    )
    if record:
        from .checkpoint import update_card

        update_card(lm.path, probe=result)
    title = (f"eval probe: model {result['model_id']}, {result['n_detection']} G0/G2/G3 slices "
             f"({result['n_fractured']} G2/G3) of {result['n_patients']} patients, {k}-fold x {len(seeds)} seeds")
    d = result["diagnostics"]["zsem"]
    note = (f"z_sem: effective rank {d['effective_rank']:.1f}, top PC {d['top_pc_share']:.0%} of variance "
            f"(R^2 vs mean intensity {d['top_pc_r2_mean_intensity']:.2f}); z usage: eps-MSE own z "
            f"{d['mse_own_z']:.4f} vs shuffled {d['mse_shuffled_z']:.4f} (x{d['ratio']:.3f}); {result['seconds']:.0f} s")
    return Report(title, probe_table(result), result, [note])


FEATURE_TITLES = {"zsem": "z_sem (model)", "untrained": "z_sem (same net, untrained)", "pix8": "8x8 pooled pixels"}


def probe_table(result: dict) -> list[list[str]]:
    """Header + one row per feature set: AUC and balanced accuracy per classifier, G2-vs-G3 AUC, height R^2,
    level accuracy."""
    f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    rows = [["features", "AUC logistic", "AUC SVM", "bal. acc. logistic", "bal. acc. SVM", "AUC G2 vs G3",
             "height-loss R^2", "level acc."]]
    for name, r in result["features"].items():
        lg, sv = r.get("logistic"), r.get("svm")
        rows.append([FEATURE_TITLES.get(name, name),
                     f"{lg['auc']:.3f} ± {lg['auc_sd']:.3f}" if lg else "-",
                     f"{sv['auc']:.3f} ± {sv['auc_sd']:.3f}" if sv else "-",
                     f(lg and lg["balanced_accuracy"]), f(sv and sv["balanced_accuracy"]),
                     f(r.get("severity_auc")), f(r.get("height_loss_r2")), f(r.get("level_accuracy"))])
    return rows
