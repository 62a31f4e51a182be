"""`latentstore eval grading`: the paper's Table 2 on the store's labelled vertebrae, split by patient.

Split: the labels' own `split` column when they carry one (synth: train/val/test by patient; `test` is
held out, the rest trains), else a hash of `patient_key` (TEST_FRACTION held out). Every method trains on
the same training vertebrae (G0, G2, G3; G1 never trains) and is scored on the same test vertebrae:

- linear probes trained on G0, G2 and G3 (multinomial logistic regression, the paper's "linear layer", and a
  linear SVM): detection AUC from the fracture classes' scores, grades from the predicted class;
- hyperplane regressions (the method, `latentstore fit`): logistic / SVM hyperplane on G0 vs G2/G3, distance
  calibrated linearly (G0 and G3 means) or by polynomials of degree 1 and 3 (G0, G2, G3);
- the supervised end-to-end baseline: MONAI's DenseNet121 on the same labelled training images
  (3 classes, class-weighted cross-entropy, `--densenet-steps` Adam steps);
- a label-efficiency curve: macro-F1 of the hyperplane method and of the DenseNet trained on 10, 25, 50 and
  all labelled training fractures (with G0 in the training set's proportion; seeded subsets).

Metrics as the paper: detection AUC G0 vs G2/G3; macro-F1 over G0/G2/G3 with predicted grades below G2
counted as healthy. The main method (logistic hyperplane, linear calibration) also gets a confusion matrix
(G1 rows included, for reading) and a per-level breakdown. Markdown + JSON + a plot in `--out`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError
from .fit import DEFAULT_C, calibrate, f1_per_class, fit_classifier, linear_classifier, macro_f1_023, to_grade, unit
from .levels import NAMES, ORDER
from .result import Report, to_json
from .store import Store, connect

TEST_FRACTION = 0.3
RANK = {NAMES[label]: i for i, label in enumerate(ORDER)}  # level names in anatomical order
CURVE = (10, 25, 50, None)  # labelled training fractures; None = all
DENSENET_STEPS = 400
BOOTSTRAP_CI = 1000  # patient resamples of the test split for the 95 % intervals
PAPER = {  # Table 2 of the paper (VerSe'19, real CT): (AUC, F1)
    "probe logistic": (0.96, 0.23), "probe svm": (0.93, 0.59), "hyperplane logistic linear": (0.96, 0.44),
    "hyperplane svm linear": (0.93, 0.51), "hyperplane svm poly1": (0.93, 0.42), "hyperplane svm poly3": (0.93, 0.56),
    "densenet121": (0.98, 0.65),
}


@dataclass
class GradingData:
    slice_id: np.ndarray
    patient: np.ndarray
    level_name: np.ndarray
    grade: np.ndarray
    test: np.ndarray  # bool
    z: np.ndarray  # raw z_sem
    split_rule: str


def grading_data(st: Store, model_id: str, labels: str = "TRUE") -> GradingData:
    """Graded vertebrae (G1 included) with a latent of `model_id`, and the train/test split by patient."""
    from .fit import label_set
    from .slicedata import is_holdout

    ls = label_set(st, model_id, labels, g1=True, extra=("s.level_name", "l.split"))
    graded = ls.grade >= 0  # fracture-only labels carry no grade to score
    if not graded.any():
        raise InputError(f"no graded vertebra with a latent of model {model_id} matches --labels {labels!r}; "
                         "run `latentstore labels import` / `latentstore encode`")
    splits = ls.columns["l.split"][graded]
    patient = ls.patient[graded]
    test, rule = None, ""
    if all(s in ("train", "val", "test") for s in splits) and "test" in set(splits) and len(set(splits)) > 1:
        test = splits == "test"
        # the split is by patient: one patient in both parts (sources that split differently) would leak
        mixed = set(patient[test]) & set(patient[~test])
        if mixed:
            test, rule = None, f"the labels' split column puts {len(mixed)} patient(s) in both train and test; "
        else:
            rule = "the labels' split column (test held out)"
    if test is None:
        test = np.array([is_holdout(p, TEST_FRACTION) for p in patient])
        rule += f"hash of patient_key ({TEST_FRACTION:.0%} of patients held out)"
    d = GradingData(ls.slice_id[graded], patient, ls.columns["s.level_name"][graded], ls.grade[graded],
                    test.astype(bool), ls.z[graded], rule)
    for part, mask in (("training", ~d.test), ("test", d.test)):
        g = d.grade[mask]
        if (g == 0).sum() < 2 or (g >= 2).sum() < 2 or (g == 3).sum() < 1:
            raise InputError(f"the {part} split has too few graded vertebrae (G0 {int((g == 0).sum())}, "
                             f"G2/G3 {int((g >= 2).sum())}, G3 {int((g == 3).sum())}); import more labels")
    return d


def _auc(y: np.ndarray, s: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, s)) if len(set(y)) == 2 else float("nan")


def weighted_auc(y: np.ndarray, s: np.ndarray, w: np.ndarray) -> float:
    """ROC AUC with sample weights (ties count half), O(n log n): the bootstrap's AUC, where `w` counts how
    often each vertebra was drawn. Equals `roc_auc_score(y, s, sample_weight=w)`."""
    order = np.argsort(s, kind="stable")
    s, y, w = s[order], y[order].astype(bool), w[order].astype(np.float64)
    wp, wn = np.where(y, w, 0.0), np.where(y, 0.0, w)
    total_p, total_n = wp.sum(), wn.sum()
    if total_p == 0 or total_n == 0:
        return float("nan")
    # per block of tied scores: negatives strictly below + half the tied ones
    edges = np.flatnonzero(np.diff(s)) + 1
    starts = np.concatenate([[0], edges])
    bp, bn = np.add.reduceat(wp, starts), np.add.reduceat(wn, starts)
    below = np.cumsum(bn) - bn
    return float((bp * (below + 0.5 * bn)).sum() / (total_p * total_n))


def patient_bootstrap(patient: np.ndarray, n: int = BOOTSTRAP_CI, seed: int = 0) -> np.ndarray:
    """(n, rows) draw counts: test patients resampled with replacement, each drawn patient's vertebrae
    counted once per draw (the test vertebrae of one patient are not independent)."""
    ids, inverse = np.unique(patient, return_inverse=True)
    draws = np.random.default_rng(seed).integers(0, len(ids), size=(n, len(ids)))
    per_patient = np.stack([np.bincount(d, minlength=len(ids)) for d in draws])
    return per_patient[:, inverse]


def interval(fn, weights: np.ndarray) -> list[float]:
    """The 2.5th and 97.5th percentiles of `fn(w)` over bootstrap weights. A draw where the metric is
    undefined (NaN: a class not drawn) is left out; when that is half of them or more, the interval is
    NaN (n/a in the report): too few patients of a class to say."""
    v = np.array([fn(w) for w in weights])
    v = v[~np.isnan(v)]
    if 2 * len(v) <= len(weights):
        return [float("nan")] * 2
    return [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))]


def resampled_macro_f1(true: np.ndarray, pred: np.ndarray, w: np.ndarray) -> float:
    """Macro-F1 of one bootstrap draw; NaN when G0, G2 or G3 was not drawn (its F1 would be 0 by the
    draw, not by the predictions)."""
    drawn = np.bincount(true.astype(int), weights=w, minlength=4)
    return float(f1_per_class(true, pred, w).mean()) if (drawn[[0, 2, 3]] > 0).all() else float("nan")


def _standardise(st: Store, model_id: str, z: np.ndarray) -> np.ndarray:
    from .reference import reference

    ref = reference(st, model_id)
    return (z - ref["z_mean"]) / ref["z_std"]


def hyperplane_method(Xtr, gtr, kind: str, calibration: str, c: float = DEFAULT_C):
    """The paper's method trained on (Xtr, gtr) (G1 excluded by the caller): a function of X giving
    (distances, grades)."""
    y = (gtr >= 2).astype(int)
    w, b = unit(*fit_classifier(kind, c, Xtr, y))
    coef = calibrate(calibration, Xtr @ w + b, gtr)

    def predict(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        d = X @ w + b
        return d, to_grade(np.polyval(coef, d))

    return predict


def linear_probe(Xtr, gtr, Xte, kind: str, c: float = DEFAULT_C) -> tuple[np.ndarray, np.ndarray]:
    """(test fracture score, test grades) of a 3-class (G0/G2/G3) linear probe."""
    clf = linear_classifier(kind, c).fit(Xtr, gtr)
    cls = list(clf.classes_)
    if kind == "logistic":
        p = clf.predict_proba(Xte)
        score = sum(p[:, cls.index(g)] for g in (2, 3) if g in cls)
    else:
        dec = clf.decision_function(Xte)
        score = dec[:, [cls.index(g) for g in (2, 3) if g in cls]].max(1) - dec[:, cls.index(0)]
    return score, clf.predict(Xte).astype(int)


def densenet(images_tr: np.ndarray, g_tr: np.ndarray, images_te: np.ndarray, steps: int, seed: int = 0,
             batch_size: int = 32, progress: bool = False) -> np.ndarray:
    """Test probabilities (N, 3) for G0/G2/G3 of MONAI's DenseNet121 trained end to end on the images."""
    import torch
    from monai.networks.nets import DenseNet121

    from .progress import Bar
    from .slicedata import Preprocess

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    pre = Preprocess()
    cls = np.searchsorted([0, 2, 3], g_tr)  # 0, 2, 3 -> 0, 1, 2
    xtr = pre.to_model(images_tr)
    net = DenseNet121(spatial_dims=2, in_channels=1, out_channels=3)
    weight = torch.tensor(len(cls) / (3 * np.maximum(np.bincount(cls, minlength=3), 1)), dtype=torch.float32)
    loss_fn = torch.nn.CrossEntropyLoss(weight=weight)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net.train()
    with Bar("densenet121", steps, "steps", enabled=progress) as bar:
        for step in range(steps):
            idx = rng.integers(0, len(cls), batch_size)
            x = xtr[idx]
            shift = rng.integers(-4, 5, 2)  # small random translations: the only augmentation
            x = torch.roll(x, shifts=(int(shift[0]), int(shift[1])), dims=(2, 3))
            loss = loss_fn(net(x), torch.as_tensor(cls[idx]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            bar.update(step + 1, info=f"loss {float(loss.detach()):.3f}")
    net.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(images_te), 64):
            out.append(torch.softmax(net(pre.to_model(images_te[i : i + 64])), 1).numpy())
    return np.concatenate(out)


def _densenet_scores(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return p[:, 1] + p[:, 2], np.array([0, 2, 3])[p.argmax(1)]


def _subset(g: np.ndarray, n_fract: int | None, rng) -> np.ndarray:
    """Training rows with `n_fract` fractures (G2/G3) and G0 in the training set's proportion."""
    idx0, idxf = np.flatnonzero(g == 0), np.flatnonzero(g >= 2)
    if n_fract is None or n_fract >= len(idxf):
        return np.concatenate([idx0, idxf])
    f = rng.choice(idxf, n_fract, replace=False)
    if not (g[f] == 3).any():  # a linear calibration needs a G3: swap one in
        f[0] = rng.choice(np.flatnonzero(g == 3))
    h = rng.choice(idx0, max(2, round(n_fract * len(idx0) / len(idxf))), replace=False)
    return np.concatenate([h, f])


def eval_grading(store: Store | str | None, model: str | None = None, labels: str = "TRUE",
                 densenet_steps: int = DENSENET_STEPS, curve: tuple = CURVE, curve_seeds: int = 3,
                 out: str | Path | None = None, progress: bool = True) -> Report:
    from sklearn.metrics import confusion_matrix

    from .index import resolve_model_id
    from .slices import read_slices

    t0 = time.perf_counter()
    st = connect(store)
    model_id = resolve_model_id(st, model)
    d = grading_data(st, model_id, labels)
    X = _standardise(st, model_id, d.z)
    tr = ~d.test & (d.grade != 1)
    te = d.test & (d.grade != 1)
    Xtr, gtr, Xte, gte = X[tr], d.grade[tr], X[te], d.grade[te]
    yte = (gte >= 2).astype(int)
    rows: dict[str, dict] = {}
    boot = patient_bootstrap(d.patient[te])

    def add(name: str, score: np.ndarray, pred: np.ndarray) -> None:
        rows[name] = {"auc": _auc(yte, score), "macro_f1": macro_f1_023(gte, pred),
                      "auc_ci": interval(lambda w: weighted_auc(yte, score, w), boot),
                      "macro_f1_ci": interval(lambda w: resampled_macro_f1(gte, pred, w), boot),
                      "f1_per_class": dict(zip(("G0", "G2", "G3"), f1_per_class(gte, pred).tolist()))}

    for kind in ("logistic", "svm"):
        add(f"probe {kind}", *linear_probe(Xtr, gtr, Xte, kind))
    for kind in ("logistic", "svm"):
        for cal in ("linear", "poly1", "poly3"):
            predict = hyperplane_method(Xtr, gtr, kind, cal)
            add(f"hyperplane {kind} {cal}", *predict(Xte))
            if (kind, cal) == ("logistic", "linear"):
                main = predict
    main_dist, main_pred = main(Xte)
    frac = gte >= 2
    # how well the main distance orders severity among the test fractures: the part of macro-F1 the
    # binary hyperplane has to get from z_sem without ever being trained on it
    severity = {"g2_vs_g3_auc": _auc((gte[frac] == 3).astype(int), main_dist[frac]),
                "g2_vs_g3_auc_ci": interval(lambda w: weighted_auc(gte[frac] == 3, main_dist[frac], w[frac]), boot)}
    # the main method over every test vertebra (G1 too) for the confusion matrix and the levels
    conf = confusion_matrix(d.grade[d.test], main(X[d.test])[1], labels=[0, 1, 2, 3]).tolist()
    levels = {}
    for lv in sorted(set(d.level_name[te]), key=lambda name: RANK.get(name, 99)):
        m = d.level_name[te] == lv
        levels[lv] = {"n": int(m.sum()), "fractured": int(yte[m].sum()), "auc": _auc(yte[m], main_dist[m]),
                      "macro_f1": macro_f1_023(gte[m], main_pred[m])}
    images = None
    if densenet_steps:
        t = read_slices(st, slice_ids=[int(s) for s in d.slice_id], columns=["slice_id", "image"])
        img = {r["slice_id"]: np.asarray(r["image"], np.int16).reshape(96, 96) for r in t.to_pylist()}
        images = np.stack([img[int(s)] for s in d.slice_id])
        p = densenet(images[tr], gtr, images[te], densenet_steps, progress=progress)
        add("densenet121", *_densenet_scores(p))
    # label efficiency: macro-F1 against labelled training fractures
    eff = {"dae": {}, "densenet121": {}}
    runs: dict[str, list[float]] = {}  # the DAE's macro-F1 per training subset
    for n in curve:
        key = "all" if n is None else str(n)
        f1s = [] if n is not None else [rows["hyperplane logistic linear"]["macro_f1"]]
        for seed in range(curve_seeds if n is not None else 0):
            sub = _subset(gtr, n, np.random.default_rng(seed))
            try:
                f1s.append(macro_f1_023(gte, hyperplane_method(Xtr[sub], gtr[sub], "logistic", "linear")(Xte)[1]))
            except InputError:
                continue
        eff["dae"][key] = float(np.mean(f1s)) if f1s else None
        runs[key] = f1s
        if densenet_steps and images is not None:
            if n is None:
                eff["densenet121"][key] = rows["densenet121"]["macro_f1"]
            else:
                sub = _subset(gtr, n, np.random.default_rng(0))
                p = densenet(images[tr][sub], gtr[sub], images[te], densenet_steps, progress=progress)
                eff["densenet121"][key] = macro_f1_023(gte, _densenet_scores(p)[1])
    data = {
        "model_id": model_id, "split": d.split_rule, "labels": labels,
        "n_train": int(tr.sum()), "n_test": int(te.sum()), "n_test_fractured": int(yte.sum()),
        "n_test_all": int(d.test.sum()),
        "n_train_patients": len(set(d.patient[~d.test])), "n_test_patients": len(set(d.patient[d.test])),
        "rows": rows, "paper": {k: {"auc": a, "macro_f1": f} for k, (a, f) in PAPER.items()},
        "confusion_main": {"rows_true": [0, 1, 2, 3], "cols_pred": [0, 1, 2, 3], "counts": conf},
        "levels_main": levels, "severity_main": severity, "label_efficiency": eff, "label_efficiency_dae_runs": runs,
        "bootstrap": f"{BOOTSTRAP_CI} resamples of the test patients (95 % intervals)", "densenet_steps": densenet_steps,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    report = Report(f"eval grading: model {model_id}, {data['n_test']} test vertebrae "
                    f"({data['n_test_fractured']} G2/G3) of {data['n_test_patients']} patients",
                    grading_table(data), data, notes=[f"split: {d.split_rule}; train {data['n_train']} vertebrae "
                                                      f"(G0/G2/G3) of {data['n_train_patients']} patients"])
    folder = Path(out) if out else Path(st.local_path("reports", f"grading-{model_id}"))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "grading.json").write_text(to_json(data) + "\n")
    (folder / "grading.md").write_text(markdown(data))
    _plot(folder / "grading.png", data)
    data["files"] = [str(folder / n) for n in ("grading.md", "grading.json", "grading.png")]
    report.notes.append(f"report: {folder / 'grading.md'} (+ .json, .png)")
    return report


def _fmt(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.3f}"


def _ci(v, ci) -> str:
    return _fmt(v) + (f" [{_fmt(ci[0])}-{_fmt(ci[1])}]" if ci else "")


def grading_table(data: dict) -> list[list[str]]:
    rows = [["method", "AUC G0 vs G2/G3 [95 % CI]", "macro-F1 G0/G2/G3 [95 % CI]", "F1 G0 / G2 / G3",
             "paper AUC", "paper F1"]]
    for name, r in data["rows"].items():
        p = data["paper"].get(name, {})
        per = r.get("f1_per_class", {})
        rows.append([name, _ci(r["auc"], r.get("auc_ci")), _ci(r["macro_f1"], r.get("macro_f1_ci")),
                     " / ".join(f"{v:.2f}" for v in per.values()) or "n/a", _fmt(p.get("auc")), _fmt(p.get("macro_f1"))])
    return rows


def markdown(data: dict) -> str:
    lines = [f"# Grading: model `{data['model_id']}`", "",
             f"Split: {data['split']}. Train {data['n_train']} vertebrae (G0/G2/G3) of {data['n_train_patients']} "
             f"patients; test {data['n_test']} ({data['n_test_fractured']} G2/G3) of {data['n_test_patients']}. "
             "Macro-F1 over G0/G2/G3, predicted grades below G2 counted as healthy (as the paper). Paper: VerSe'19 "
             "real CT; these numbers are on the store's labels and are not comparable to it. Intervals: "
             f"{data['bootstrap']}.", ""]
    table = grading_table(data)
    lines += ["| " + " | ".join(table[0]) + " |", "|" + " --- |" * len(table[0])]
    lines += ["| " + " | ".join(r) + " |" for r in table[1:]]
    lines += ["", "Confusion matrix of the main method (logistic hyperplane, linear calibration), all test "
              "vertebrae (rows: true G0-G3; columns: predicted 0-3):", "", "| true \\ pred | 0 | 1 | 2 | 3 |",
              "| --- | --- | --- | --- | --- |"]
    lines += [f"| G{g} | " + " | ".join(str(v) for v in row) + " |" for g, row in enumerate(data["confusion_main"]["counts"])]
    sev = data["severity_main"]
    lines += ["", "Severity along the main method's distance: G2 vs G3 AUC among the test fractures "
              f"{_ci(sev['g2_vs_g3_auc'], sev['g2_vs_g3_auc_ci'])} (0.5: the distance does not order G2 below G3; "
              "the hyperplane is trained on G0 vs G2/G3 only, so the severity order is what z_sem gives it)."]
    lines += ["", "Per level (main method, test G0/G2/G3):", "", "| level | n | G2/G3 | AUC | macro-F1 |",
              "| --- | --- | --- | --- | --- |"]
    lines += [f"| {lv} | {r['n']} | {r['fractured']} | {_fmt(r['auc'])} | {_fmt(r['macro_f1'])} |"
              for lv, r in data["levels_main"].items()]
    eff = data["label_efficiency"]
    keys = list(eff["dae"])
    lines += ["", "Label efficiency (macro-F1 against labelled training fractures):", "",
              "| method | " + " | ".join(keys) + " |", "|" + " --- |" * (len(keys) + 1)]
    for name, vals in eff.items():
        if vals:
            lines.append(f"| {name} | " + " | ".join(_fmt(vals.get(k)) for k in keys) + " |")
    return "\n".join(lines) + "\n"


def _plot(path: Path, data: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    eff = data["label_efficiency"]
    for name, vals in eff.items():
        pts = [(k, v) for k, v in vals.items() if v is not None]
        if pts:
            line, = axes[0].plot([k for k, _ in pts], [v for _, v in pts], marker="o", label=name)
            if name == "dae":  # the spread over training subsets
                runs = data.get("label_efficiency_dae_runs", {})
                for k, _ in pts:
                    if len(runs.get(k, [])) > 1:
                        axes[0].vlines(k, min(runs[k]), max(runs[k]), color=line.get_color(), alpha=0.5)
    axes[0].set_xlabel("labelled training fractures (G2/G3)")
    axes[0].set_ylabel("macro-F1 G0/G2/G3 (test)")
    axes[0].set_title("label efficiency")
    axes[0].grid(alpha=0.3)
    axes[0].legend()
    conf = np.array(data["confusion_main"]["counts"])
    axes[1].imshow(conf, cmap="Blues")
    for i in range(4):
        for j in range(4):
            axes[1].text(j, i, str(conf[i, j]), ha="center", va="center")
    axes[1].set_xticks(range(4), [f"pred {g}" for g in range(4)])
    axes[1].set_yticks(range(4), [f"G{g}" for g in range(4)])
    axes[1].set_title("main method: hyperplane (logistic) + linear calibration")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
