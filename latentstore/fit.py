"""`latentstore fit`: a fracture hyperplane in a model's z_sem space and its calibration to the Genant scale.

The paper's method (sections 2-3): labelled latents selected with SQL (G0 vs G2/G3 by default; G1 never
trains the classifier), z_sem standardised with the per-dimension mean and std of *all* the model's latents
in the store (DiffAE's normalisation, stored with the fit), a linear classifier (logistic regression, the
paper's "linear layer", or a linear SVM), its decision boundary as a hyperplane (unit normal n, bias b), the
signed distance to it calibrated to the Genant scale:

    linear  through the mean distances of G0 -> 0 and G3 -> 3 (the paper's main rows)
    poly1   least squares of the grade on the distance over G0, G2 and G3
    poly3   the same with a cubic

Beyond the paper, stored with the same row: bootstrap refits over the labelled *patients* (each with its
own calibration), whose spread is the uncertainty of every score, and an out-of-distribution reference (a
probabilistic-PCA Mahalanobis distance to the model's latents, thresholded at a quantile of each patient held
out of it in 5 folds) so that a latent unlike the reference is flagged rather than silently graded.
Everything lands in the catalog (`hyperplanes`, `calibrations`) as arrays and JSON, with a version, the
label query and the label set's hash; nothing is pickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from . import catalog
from .errors import InputError, StoreError
from .reference import PPCA, labelled_latents, reference
from .result import Result, to_json
from .store import Store, connect

CLASSIFIERS = ("logistic", "svm")
CALIBRATIONS = ("linear", "poly1", "poly3")
DEFAULT_C = 0.1  # on standardised z_sem; `eval probe` chooses C per fold, and 0.1 is its usual pick
BOOTSTRAP = 16
LABELS_COLUMNS = "s.slice_id, s.patient_key, s.level, l.grade, l.fracture, l.source"
LABELS_FROM = "labels l JOIN slices s ON s.scan_id = l.scan_id AND s.level = l.level"


@dataclass
class Hyperplane:
    """A stored fit: hyperplane, normalisation, bootstrap refits and OOD reference (one `hyperplanes` row)."""

    hyperplane_version: int
    model_id: str
    classifier: str
    c: float
    backend: str
    label_query: str
    label_hash: str
    n_labelled: int
    n_fractured: int
    n_latents: int
    z_mean: np.ndarray
    z_std: np.ndarray
    normal: np.ndarray
    bias: float
    normal_raw: np.ndarray
    bias_raw: float
    boot_normals: np.ndarray  # (B, D)
    boot_biases: np.ndarray  # (B,)
    ood_mean: np.ndarray
    ood_components: np.ndarray  # (k, D)
    ood_variances: np.ndarray  # (k,)
    ood_residual: float
    ood_threshold: float
    metrics: dict = field(default_factory=dict)

    def standardise(self, z: np.ndarray) -> np.ndarray:
        return (np.asarray(z, np.float32) - self.z_mean) / self.z_std

    def distance(self, zs: np.ndarray) -> np.ndarray:
        """Signed distances of standardised latents (N, D): > 0 on the fracture side."""
        return zs @ self.normal + self.bias

    def boot_distances(self, zs: np.ndarray) -> np.ndarray:
        """(N, B): the distances under each bootstrap hyperplane."""
        return zs @ self.boot_normals.T + self.boot_biases

    def raw_scores(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(distance, bootstrap distances (N, B), OOD distance) of *raw* latents, as `distance`,
        `boot_distances` and `ood_distance` of the standardised ones, from one float32 matrix product: the
        standardisation is folded into the weights, so the N x D latents are passed over twice (the product
        and a square, in cache-sized blocks), not five times. float32 throughout: the scores are stored as
        float32, and |x|^2 - |proj|^2 (~D) loses ~1e-5 of the OOD distance (~D^0.5)."""
        if getattr(self, "_folded", None) is None:
            inv = (1.0 / self.z_std).astype(np.float64)
            shift = self.z_mean.astype(np.float64) * inv  # zs = z * inv - shift
            rows = np.concatenate([self.normal[None], self.boot_normals, self.ood_components]).astype(np.float64)
            m = shift + self.ood_mean  # x = zs - ood_mean = z * inv - m
            off = -(rows @ shift) + np.concatenate([[self.bias], self.boot_biases, -(self.ood_components @ self.ood_mean)])
            w = np.concatenate([rows * inv, (-2 * inv * m)[None]])  # last column: the linear part of |x|^2
            self._folded = (np.ascontiguousarray(w.T, np.float32), np.append(off, m @ m).astype(np.float32),
                            (inv * inv).astype(np.float32), (1.0 / self.ood_variances).astype(np.float32))
        w, off, inv2, inv_var = self._folded
        z = np.asarray(z, np.float32)
        y = z @ w
        y += off
        nb = len(self.boot_biases)
        proj = y[:, 1 + nb : -1]
        sq = y[:, -1].copy()  # + sum_j inv2_j z_j^2, block by block (a 3-operand einsum is ~40 % slower)
        for a in range(0, len(z), 2048):
            b = z[a : a + 2048]
            sq[a : a + 2048] += (b * b) @ inv2
        pp = proj * proj
        resid = np.maximum(sq - pp.sum(1), 0.0) / np.float32(self.ood_residual)
        return y[:, 0].copy(), y[:, 1 : 1 + nb], np.sqrt(pp @ inv_var + resid)

    def ood_distance(self, zs: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of standardised latents under the fit's OOD reference."""
        return PPCA(self.ood_mean, self.ood_components, self.ood_variances, self.ood_residual).distance(zs)


@dataclass
class Calibration:
    """Distance -> continuous Genant score (one `calibrations` row)."""

    calibration_version: int
    hyperplane_version: int
    model_id: str
    kind: str
    coefficients: np.ndarray
    boot_coefficients: np.ndarray  # (B, degree + 1)
    grade_means: dict
    metrics: dict = field(default_factory=dict)

    def score(self, distance: np.ndarray) -> np.ndarray:
        return np.polyval(self.coefficients, distance)

    def boot_scores(self, boot_distance: np.ndarray) -> np.ndarray:
        """(N, B) scores, bootstrap hyperplane b calibrated by its own coefficients."""
        out = np.zeros_like(boot_distance)
        for coef in self.boot_coefficients.T:  # Horner over all B columns at once (highest power first)
            out = out * boot_distance + coef
        return out


def to_grade(score: np.ndarray) -> np.ndarray:
    """Continuous score -> Genant grade: rounded, clipped to 0..3."""
    return np.clip(np.rint(score), 0, 3).astype(np.int8)


@dataclass
class FitSummary(Result):
    hyperplane_version: int
    calibration_version: int
    model_id: str
    classifier: str
    calibration: str
    label_query: str
    n_labelled: int
    n_fractured: int
    n_by_grade: dict
    train_auc: float
    cv_auc: float | None
    calibration_macro_f1: float
    ood_threshold: float
    seconds: float
    notes: list[str] = field(default_factory=list)

    def __rich__(self):
        cv = f"{self.cv_auc:.3f}" if self.cv_auc is not None else "n/a"
        lines = [f"fit: hyperplane v{self.hyperplane_version} + {self.calibration} calibration v{self.calibration_version} "
                 f"for model {self.model_id} ({self.classifier}, {self.n_labelled} labelled latents, "
                 f"{self.n_fractured} fractured; by grade {self.n_by_grade})",
                 f"  AUC G0 vs G2/G3: {self.train_auc:.3f} on the labels, {cv} patient-grouped 5-fold; "
                 f"macro-F1 G0/G2/G3 of the calibrated grades on the labels: {self.calibration_macro_f1:.3f}",
                 f"  OOD threshold {self.ood_threshold:.1f} (Mahalanobis); {self.seconds:.2f} s. "
                 "Next: `latentstore grade`.", *self.notes]
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------ the label set


@dataclass
class LabelSet:
    slice_id: np.ndarray
    patient: np.ndarray
    grade: np.ndarray  # -1 where the source gives only fracture yes/no
    y: np.ndarray  # 1 = G2/G3 (or fracture without a grade)
    z: np.ndarray  # raw z_sem
    label_hash: str
    missing_latents: int
    columns: dict = field(default_factory=dict)  # the `extra` columns asked for, one value per row


class Labelled(NamedTuple):
    """What `select_labels` returns (also unpacks as a tuple)."""

    slice_id: np.ndarray
    patient: np.ndarray
    grade: np.ndarray  # -1 where the source gives only fracture yes/no
    fracture: np.ndarray
    digest: str  # the label set's hash
    columns: dict  # the `extra` columns, one value per row


def select_labels(st: Store, where: str, g1: bool = False, extra: tuple[str, ...] = ()) -> Labelled:
    """(slice_id, patient_key, grade (-1 unknown), fracture, the set's hash, {extra column: values}) of the
    labelled slices `where` selects, G1 left out unless `g1`. `extra` names more columns of the label (l) and
    slice (s) views, e.g. `s.level_name`. A slice labelled twice with different labels is an error; with the
    same labels it counts once."""
    from .sql import query

    if ";" in where:
        raise InputError("--labels is one SQL predicate over the label (l) and slice (s) columns (no ';')")
    cols = "".join(f", {c} AS extra_{i}" for i, c in enumerate(extra))
    g1_rule = "" if g1 else " AND (l.grade IS NULL OR l.grade <> 1)"
    t = query(st, f"SELECT {LABELS_COLUMNS}{cols} FROM {LABELS_FROM} WHERE ({where}){g1_rule} ORDER BY s.slice_id")
    sid = t.column("slice_id").to_numpy().astype(np.int64)
    grade = np.array([-1 if g is None else g for g in t.column("grade").to_pylist()], dtype=np.int64)
    frac = np.array(t.column("fracture").to_pylist(), dtype=bool)
    patient = np.array(t.column("patient_key").to_pylist(), dtype=object)
    more = {c: np.array(t.column(f"extra_{i}").to_pylist(), dtype=object) for i, c in enumerate(extra)}
    uniq, first, counts = np.unique(sid, return_index=True, return_counts=True)
    if (counts > 1).any():  # rows come sorted by slice id: a slice's labels are neighbours
        differ = (sid[1:] == sid[:-1]) & ((grade[1:] != grade[:-1]) | (frac[1:] != frac[:-1]))
        clash = np.unique(sid[1:][differ])
        if len(clash):
            raise InputError(f"{len(clash)} slice(s) have different labels from different sources (e.g. slice "
                             f"{clash[0]}); select one source, e.g. --labels \"l.source = 'NAME'\"")
        sid, grade, frac, patient = sid[first], grade[first], frac[first], patient[first]
        more = {c: v[first] for c, v in more.items()}
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(sid, "<i8").tobytes())
    h.update(np.ascontiguousarray(grade, "<i8").tobytes())
    h.update(frac.astype(np.uint8).tobytes())
    return Labelled(sid, patient, grade, frac, h.hexdigest(), more)


def label_set(st: Store, model_id: str, where: str, g1: bool = False, extra: tuple[str, ...] = (),
              selected: Labelled | None = None) -> LabelSet:
    """The selected labelled slices (`select_labels`, or `selected` when the caller has run that query with
    the same arguments) that have a latent of `model_id`, with their latents."""
    sid, patient, grade, frac, digest, more = selected or select_labels(st, where, g1, extra)
    if len(sid) == 0:
        raise no_labels(where)
    ids, z = labelled_latents(st, model_id, sid)
    keep = np.isin(sid, ids)
    y = np.where(grade >= 0, grade >= 2, frac).astype(np.int64)[keep]
    return LabelSet(sid[keep], patient[keep], grade[keep], y, z, digest, int((~keep).sum()),
                    {c: v[keep] for c, v in more.items()})


def no_labels(where: str) -> InputError:
    return InputError(f"no labelled slices match --labels {where!r} (run `latentstore labels import` first?)")


# ---------------------------------------------------------------------------------------- classifier


def _backend() -> str:
    """cuML when it and a GPU are present (same interface), else scikit-learn."""
    try:
        import cuml  # noqa: F401
        import torch

        return "cuml" if torch.cuda.is_available() else "scikit-learn"
    except ImportError:
        return "scikit-learn"


def linear_classifier(kind: str, C: float, backend: str = "scikit-learn"):
    """The one linear classifier set-up behind fits, probes and eval grading: class weights balanced,
    logistic regression (L-BFGS) or a primal linear SVM (fast at any C); cuML's on request."""
    if backend == "cuml":
        from cuml.linear_model import LogisticRegression
        from cuml.svm import LinearSVC

        return (LogisticRegression(C=C, class_weight="balanced", max_iter=5000) if kind == "logistic"
                else LinearSVC(C=C, class_weight="balanced", max_iter=5000))
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC

    if kind == "logistic":
        return LogisticRegression(C=C, class_weight="balanced", max_iter=5000)
    return LinearSVC(C=C, class_weight="balanced", dual=False, max_iter=5000)


def grouped_folds(y: np.ndarray, groups: np.ndarray, k: int, seed: int = 0) -> list:
    """Patient-grouped, class-stratified k folds: [(train rows, test rows)]."""
    from sklearn.model_selection import StratifiedGroupKFold

    return list(StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed).split(y, y, groups))


def fit_classifier(kind: str, C: float, X: np.ndarray, y: np.ndarray, backend: str = "scikit-learn",
                   start: tuple[np.ndarray, float] | None = None):
    """(w, b) of a linear classifier on standardised X (class weights balanced). `start`: a nearby solution
    (the full fit, for bootstrap and CV refits): logistic regression then takes Newton steps from it, 3-4
    instead of L-BFGS's ~50 on real latents."""
    if backend == "cuml":
        clf = linear_classifier(kind, C, backend).fit(X.astype(np.float32), y)
        return np.asarray(clf.coef_, np.float64).ravel(), float(np.asarray(clf.intercept_).ravel()[0])
    clf = linear_classifier(kind, C)
    if kind == "logistic" and start is not None:
        clf.set_params(max_iter=100, solver="newton-cholesky", warm_start=True)
        clf.coef_, clf.intercept_ = start[0][None].copy(), np.array([start[1]])
    clf.fit(X, y)
    return clf.coef_.ravel().astype(np.float64), float(clf.intercept_[0])


def unit(w: np.ndarray, b: float) -> tuple[np.ndarray, float]:
    norm = float(np.linalg.norm(w))
    if norm == 0:
        raise InputError("the classifier found no direction (all weights zero): too few or too similar labels")
    return w / norm, b / norm


def calibrate(kind: str, d: np.ndarray, grade: np.ndarray) -> np.ndarray:
    """Coefficients (numpy.polyval order) mapping distance -> Genant score, from graded latents."""
    g0, g2, g3 = (d[grade == g] for g in (0, 2, 3))
    if kind == "linear":
        if not len(g0) or not len(g3):
            raise InputError(f"linear calibration needs G0 and G3 labels (have {len(g0)} G0, {len(g3)} G3)")
        m0, m3 = g0.mean(), g3.mean()
        if m3 <= m0:
            raise InputError("G3 latents lie no further on the fracture side than G0: the hyperplane does not "
                             "separate them, so it cannot be calibrated")
        a = 3.0 / (m3 - m0)
        return np.array([a, -a * m0])
    deg = {"poly1": 1, "poly3": 3}[kind]
    sel = np.isin(grade, (0, 2, 3))
    if len({int(g) for g in grade[sel]}) < 3 or sel.sum() < deg + 2:
        raise InputError(f"{kind} calibration needs G0, G2 and G3 labels (have {np.bincount(grade[sel], minlength=4)[[0, 2, 3]].tolist()})")
    return np.polyfit(d[sel], grade[sel].astype(float), deg)


def f1_per_class(true: np.ndarray, pred: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """F1 of G0, G2 and G3 as the paper scores them: predicted grades below G2 count as healthy (G0); true G1
    is left out. `w`: weights per row (a bootstrap draw's counts)."""
    sel = np.isin(true, (0, 2, 3))
    t, p = true[sel].astype(int), np.where(pred[sel] < 2, 0, pred[sel]).astype(int)
    w = np.ones(len(t)) if w is None else np.asarray(w, np.float64)[sel]
    conf = np.bincount(t * 4 + p, weights=w, minlength=16).reshape(4, 4)[[0, 2, 3]][:, [0, 2, 3]]
    tp, fp, fn = np.diag(conf), conf.sum(0) - np.diag(conf), conf.sum(1) - np.diag(conf)
    denom = 2 * tp + fp + fn
    return np.divide(2 * tp, denom, out=np.zeros(3), where=denom > 0)


def macro_f1_023(true: np.ndarray, pred: np.ndarray) -> float:
    """Macro-F1 over G0, G2, G3 (`f1_per_class`'s mean; a class absent from truth and predictions scores 0)."""
    return float(f1_per_class(true, pred).mean())


def grouped_cv_auc(kind: str, C: float, X: np.ndarray, y: np.ndarray, groups: np.ndarray, k: int = 5,
                   start=None) -> float | None:
    """Out-of-fold AUC, patient-grouped k-fold (None when there are too few patients of either class)."""
    from sklearn.metrics import roc_auc_score

    if min(len(set(groups[y == 1])), len(set(groups[y == 0]))) < k:
        return None
    s = np.empty(len(y))
    folds = grouped_folds(y, groups, k)
    for (tr, te), (w, b) in zip(folds, parallel_map(lambda f: fit_classifier(kind, C, X[f[0]], y[f[0]], start=start), folds)):
        s[te] = X[te] @ w + b
    return float(roc_auc_score(y, s))


def parallel_map(fn, items: list, threads: int | None = None) -> list:
    """`[fn(x) for x in items]`, in order, on one thread per core with one BLAS thread each: refits of
    small problems scale better over cores than inside BLAS (4 linear SVMs on 10k x 512: 3.5 s -> 1.1 s
    on 2 cores; liblinear and numpy release the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    workers = min(len(items), threads or os.cpu_count() or 1)
    if workers <= 1:
        return [fn(x) for x in items]
    with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))


# ---------------------------------------------------------------------------------------------- fit


def fit(store: Store | str | None, model: str | None = None, classifier: str = "logistic",
        calibration: str = "linear", labels: str = "TRUE", c: float = DEFAULT_C, bootstrap: int = BOOTSTRAP,
        cv: bool = True, seed: int = 0, selected: Labelled | None = None) -> FitSummary:
    """Fit, calibrate and store a hyperplane for `model`'s latents; return the summary (versions inside).
    `selected`: `select_labels(st, labels)` when the caller has it already (regrade's change test)."""
    from sklearn.metrics import roc_auc_score

    from .index import resolve_model_id

    if classifier not in CLASSIFIERS:
        raise InputError(f"--classifier must be one of {', '.join(CLASSIFIERS)}, got {classifier!r}")
    if calibration not in CALIBRATIONS:
        raise InputError(f"--calibration must be one of {', '.join(CALIBRATIONS)}, got {calibration!r}")
    if not c > 0:
        raise InputError(f"--c must be > 0, got {c}")
    t0 = time.perf_counter()
    st = connect(store)
    model_id = resolve_model_id(st, model)
    selected = selected or select_labels(st, labels)
    if len(selected.slice_id) == 0:
        raise no_labels(labels)
    ref = reference(st, model_id, seed)  # first: its pass over new latents caches the labelled ones too
    ls = label_set(st, model_id, labels, selected=selected)
    notes = []
    if ls.missing_latents:
        notes.append(f"  {ls.missing_latents} labelled slice(s) have no latent of model {model_id} and were left "
                     "out (run `latentstore encode`)")
    n_pos = int(ls.y.sum())
    if n_pos < 2 or len(ls.y) - n_pos < 2:
        raise InputError(f"need at least 2 healthy and 2 fractured labelled latents, have {len(ls.y) - n_pos} and {n_pos}")
    mean, std, n_latents = ref["z_mean"], ref["z_std"], ref["n_latents"]
    X = (ls.z - mean) / std
    backend = _backend()
    raw = fit_classifier(classifier, c, X, ls.y, backend)
    w, b = unit(*raw)
    d = X @ w + b
    coef = calibrate(calibration, d, ls.grade)
    # bootstrap over patients: classifier and calibration refitted on each resample
    rng = np.random.default_rng(seed)
    pats, inverse = np.unique(ls.patient, return_inverse=True)
    order = np.argsort(inverse, kind="stable")  # rows grouped by patient, in one sort (not one scan each)
    by_patient = dict(zip(pats, np.split(order, np.cumsum(np.bincount(inverse, minlength=len(pats)))[:-1])))
    resamples = [np.concatenate([by_patient[p] for p in rng.choice(pats, size=len(pats), replace=True)])
                 for _ in range(bootstrap)]

    def refit(idx):
        if len(set(ls.y[idx])) < 2:
            return None
        try:
            wb, bb = unit(*fit_classifier(classifier, c, X[idx], ls.y[idx], backend, start=raw))
            return wb, bb, calibrate(calibration, X[idx] @ wb + bb, ls.grade[idx])
        except InputError:
            return None  # a resample without G3 (say): skip it

    # cuML refits queue on the one GPU anyway: one thread
    fitted = [r for r in parallel_map(refit, resamples, threads=1 if backend == "cuml" else None) if r is not None]
    boot_n, boot_b, boot_c = (list(t) for t in zip(*fitted)) if fitted else ([], [], [])
    if bootstrap and not boot_n:
        notes.append("  no bootstrap resample could be fitted (too few patients): score_sd will be 0")
    if not boot_n:  # the fit itself stands in, so every grade carries a (zero) spread
        boot_n, boot_b, boot_c = [w], [b], [coef]
    ood = [ref[k] for k in ("ood_mean", "ood_components", "ood_variances", "ood_residual", "ood_threshold")]
    graded = ls.grade >= 0
    score = np.polyval(coef, d)
    metrics = {
        "train_auc": float(roc_auc_score(ls.y, d)),
        "cv_auc": grouped_cv_auc(classifier, c, X, ls.y, ls.patient, start=raw) if cv else None,
        "n_by_grade": {str(g): int((ls.grade == g).sum()) for g in (0, 2, 3)} | {"fracture only": int((~graded).sum())},
        "n_patients": len(pats),
        "bootstrap": len(boot_n) if bootstrap else 0,
        "missing_latents": ls.missing_latents,
    }
    grade_means = {str(g): float(d[ls.grade == g].mean()) for g in (0, 2, 3) if (ls.grade == g).any()}
    cal_metrics = {"macro_f1_023": macro_f1_023(ls.grade[graded], to_grade(score[graded])) if graded.any() else None,
                   "grade_accuracy": float((to_grade(score[graded]) == ls.grade[graded]).mean()) if graded.any() else None}
    if calibration == "poly3" and not _monotone(coef, d):
        notes.append("  the cubic calibration is not monotone over the labelled distances: a larger distance can "
                     "get a lower score")
    seconds = time.perf_counter() - t0
    metrics["seconds"] = round(seconds, 3)
    hp_v, cal_v = _store_fit(st, dict(
        model_id=model_id, classifier=classifier, c=float(c), backend=backend, label_query=labels,
        label_hash=ls.label_hash, n_labelled=len(ls.y), n_fractured=n_pos, n_latents=n_latents,
        z_mean=mean, z_std=std, normal=w.astype(np.float32), bias=float(b),
        normal_raw=(w / std).astype(np.float32), bias_raw=float(b - (w * mean / std).sum()),
        boot_normals=np.array(boot_n, np.float32), boot_biases=np.array(boot_b),
        ood_mean=ood[0], ood_components=ood[1], ood_variances=ood[2], ood_residual=ood[3], ood_threshold=ood[4],
        metrics=metrics), dict(kind=calibration, coefficients=coef, boot_coefficients=np.array(boot_c),
                               grade_means=grade_means | {"counts": metrics["n_by_grade"]}, metrics=cal_metrics))
    return FitSummary(hp_v, cal_v, model_id, classifier, calibration, labels, len(ls.y), n_pos,
                      metrics["n_by_grade"], metrics["train_auc"], metrics["cv_auc"],
                      cal_metrics["macro_f1_023"] or 0.0, ood[4], round(seconds, 3), notes)


def _monotone(coef: np.ndarray, d: np.ndarray) -> bool:
    grid = np.linspace(d.min(), d.max(), 200)
    return bool((np.diff(np.polyval(coef, grid)) >= -1e-9).all())


def _store_fit(st: Store, hp: dict, cal: dict) -> tuple[int, int]:
    def arr(v):
        return v.tolist() if isinstance(v, np.ndarray) else v

    with catalog.writer(st) as con:
        hp_v = con.execute("SELECT coalesce(max(hyperplane_version), 0) + 1 FROM hyperplanes").fetchone()[0]
        cal_v = con.execute("SELECT coalesce(max(calibration_version), 0) + 1 FROM calibrations").fetchone()[0]
        now = catalog.utcnow()
        cols = ["hyperplane_version", *hp, "created"]
        vals = [hp_v, *(to_json(v) if k == "metrics" else arr(v) for k, v in hp.items()), now]
        con.execute(f"INSERT INTO hyperplanes ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", vals)
        cols = ["calibration_version", "hyperplane_version", "model_id", *cal, "created"]
        vals = [cal_v, hp_v, hp["model_id"], *(to_json(v) if k in ("metrics", "grade_means") else arr(v)
                                                for k, v in cal.items()), now]
        con.execute(f"INSERT INTO calibrations ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", vals)
    return int(hp_v), int(cal_v)


# -------------------------------------------------------------------------------------------- loading


def load_fit(st: Store, model_id: str, calibration_version: int | None = None) -> tuple[Hyperplane, Calibration]:
    """The model's latest calibration (or `calibration_version`) and its hyperplane, from the catalog."""
    try:
        con = catalog.reader(st)
    except StoreError:
        raise StoreError(f"no catalog in {st.root}; run `latentstore ingest`, `encode` and `fit` first") from None
    try:
        where, params = ("calibration_version = ?", [calibration_version]) if calibration_version else \
            ("model_id = ?", [model_id])
        cal = con.sql(f"SELECT * FROM calibrations WHERE {where} ORDER BY calibration_version DESC LIMIT 1",
                      params=params).to_arrow_table().to_pylist()
        if not cal:
            raise StoreError(f"no fit for model {model_id} in {st.root}; run `latentstore fit --model {model_id}` first")
        cal = cal[0]
        hp = con.sql("SELECT * FROM hyperplanes WHERE hyperplane_version = ?",
                     params=[cal["hyperplane_version"]]).to_arrow_table().to_pylist()[0]
    finally:
        con.close()
    f32 = ("z_mean", "z_std", "normal", "normal_raw", "boot_normals", "ood_mean", "ood_components")
    h = Hyperplane(**{k: (np.asarray(v, np.float32) if k in f32 else np.asarray(v, np.float64)
                          if k in ("boot_biases", "ood_variances") else json.loads(v) if k == "metrics" else v)
                      for k, v in hp.items() if k != "created"})
    c = Calibration(**{k: (np.asarray(v, np.float64) if k in ("coefficients", "boot_coefficients") else
                           json.loads(v) if k in ("grade_means", "metrics") else v)
                       for k, v in cal.items() if k != "created"})
    return h, c


def settings(h: Hyperplane, c: Calibration) -> dict:
    """The options a refit of this fit uses (regrade)."""
    return {"model": h.model_id, "classifier": h.classifier, "calibration": c.kind, "labels": h.label_query,
            "c": h.c, "bootstrap": int(h.metrics.get("bootstrap", 0))}


