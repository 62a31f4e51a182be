"""fit / grade / regrade (issue 12) on a store whose latents carry a planted fracture direction.

The slices are the tiny synthetic ones; the latents of a made-up model are written straight into
`latents/model_id=<id>/` (no encoder needed): z = noise + grade * u, so the right hyperplane is known.
"""

from __future__ import annotations

import json
import shutil

import time

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import latentstore
from latentstore import catalog
from latentstore.cli import app
from latentstore.encode import latent_part_name, latents_table
from latentstore.errors import InputError, StoreError
from latentstore.fit import fit, load_fit, to_grade
from latentstore.grade import grade, regrade, score_latents
from tiny_store import make_store

MODEL = "feedfacecafe0001"
D = 512
runner = CliRunner()


def direction(seed: int = 7) -> np.ndarray:
    u = np.random.default_rng(seed).normal(size=D)
    return u / np.linalg.norm(u)


def add_latents(st, slice_ids: np.ndarray, grades: np.ndarray, seed: int, shift: float = 0.0) -> None:
    """z = N(0, I) * 0.5 + 1 + grade * 1.5 * u (+ shift): a planted fracture direction u."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(len(slice_ids), D)) * 0.5 + 1.0 + np.outer(grades * 1.5, direction()) + shift
    ds = st.latents(MODEL)
    name = latent_part_name(slice_ids)
    ds.write_staged(latents_table(slice_ids, z), "test-run", name)
    ds.publish("test-run", name)


def put_labels(st, rows: list[tuple[str, int, int]], source: str = "truth", split=lambda scan, level: None) -> None:
    """Label rows (scan_id, level, grade) as one import of `source` (the current labels of that source)."""
    with catalog.writer(st) as con:
        iid = catalog.new_run_id("labels")
        con.executemany("INSERT INTO label_rows VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [[iid, source, s, lv, f"L{lv - 19}", g, g >= 1, None, split(s, lv), i]
                         for i, (s, lv, g) in enumerate(rows)])
        con.execute("INSERT INTO label_imports VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [iid, source, "long", iid, catalog.utcnow(), len(rows), len(rows), 0, "[]"])


def planted_grades(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).choice([0, 1, 2, 3], size=n, p=[0.6, 0.1, 0.15, 0.15])


def planted_store(root, labelled=lambda scan: True):
    """80 scans x 4 levels with planted latents; labels for the scans `labelled` says yes to."""
    st = latentstore.connect(make_store(root, n_scans=80, levels=4, seed=1))
    t = st.slices.read(columns=["slice_id", "scan_id", "level"])
    ids = t.column("slice_id").to_numpy()
    g = planted_grades(len(ids), seed=2)
    add_latents(st, ids, g, seed=3)
    scans = t.column("scan_id").to_pylist()
    put_labels(st, [(s, lv, gr) for s, lv, gr in zip(scans, t.column("level").to_pylist(), g.tolist()) if labelled(s)])
    return st, ids, scans, g


@pytest.fixture
def store(tmp_path):
    st, ids, _, g = planted_store(tmp_path / "store")
    return st, dict(zip(ids.tolist(), g.tolist()))


def test_planted_direction_is_found_and_linear_calibration_is_exact(store):
    st, truth = store
    s = fit(st, MODEL)
    assert s.hyperplane_version == 1 and s.calibration_version == 1
    assert s.n_labelled == sum(g != 1 for g in truth.values())  # G1 never trains the classifier
    assert s.train_auc > 0.99 and s.cv_auc > 0.97
    h, c = load_fit(st, MODEL)
    # the normal points along u as seen in standardised space (u / std), towards fracture
    target = direction() / h.z_std
    cos = float(h.normal @ target / np.linalg.norm(target))
    assert cos > 0.8, cos
    # raw and standardised forms are the same hyperplane
    z = np.random.default_rng(0).normal(size=(5, D)).astype(np.float32) + 1
    assert np.allclose(z @ h.normal_raw + h.bias_raw, h.distance(h.standardise(z)), atol=1e-3)
    # linear calibration: the G0 and G3 mean distances map to exactly 0 and 3
    assert c.score(c.grade_means["0"]) == pytest.approx(0, abs=1e-9)
    assert c.score(c.grade_means["3"]) == pytest.approx(3, abs=1e-9)
    assert len(c.boot_coefficients) == len(h.boot_normals) > 8


def test_grades_are_monotone_in_distance_incremental_and_idempotent(store, tmp_path):
    st, truth = store
    fit(st, MODEL)
    first = grade(st, MODEL, progress=False)
    assert first.graded == len(truth) and first.already_graded == 0 and first.status == "ok"
    g = st.sql("SELECT slice_id, distance, score, score_sd, grade FROM current_grades ORDER BY distance")
    grades = g.column("grade").to_numpy()
    assert (np.diff(grades) >= 0).all()  # monotone in the distance
    assert (g.column("score_sd").to_numpy() > 0).all()
    pred = dict(zip(g.column("slice_id").to_pylist(), grades.tolist()))
    assert np.mean([pred[s] == t for s, t in truth.items() if t != 1]) > 0.7
    again = regrade(st, MODEL, progress=False)
    assert again.graded == 0 and not again.refit and again.already_graded == len(truth)  # a no-op
    assert st.sql("SELECT count(*) AS n FROM grades").column("n")[0].as_py() == len(truth)
    # new scans (ingest + encode) get graded by the next regrade, nothing else
    more = make_store(tmp_path / "more", n_scans=5, levels=4, seed=9, first=500)
    shutil.copy(more / "slices" / "part.parquet", st.slices.part_path("part-more.parquet"))
    new_ids = pq.read_table(more / "slices" / "part.parquet", columns=["slice_id"]).column("slice_id").to_numpy()
    add_latents(st, new_ids, planted_grades(len(new_ids), 4), seed=5)
    third = regrade(st, MODEL, progress=False)
    assert third.graded == len(new_ids) and not third.refit
    runs = st.sql("SELECT stage, status FROM runs ORDER BY started").to_pylist()
    assert [r["stage"] for r in runs] == ["grade", "regrade", "regrade"] and all(r["status"] == "ok" for r in runs)


def test_changed_labels_refit_and_regrade_everything(store):
    st, truth = store
    fit(st, MODEL)
    grade(st, MODEL, progress=False)
    t = st.sql("SELECT scan_id, level, grade FROM labels ORDER BY scan_id, level").to_pylist()
    t[0]["grade"] = 3 if t[0]["grade"] == 0 else 0  # one corrected label
    put_labels(st, [(r["scan_id"], r["level"], r["grade"]) for r in t])
    s = regrade(st, MODEL, progress=False)
    assert s.refit and s.calibration_version == 2 and s.graded == len(truth)
    assert st.sql("SELECT count(*) AS n FROM current_grades").column("n")[0].as_py() == len(truth)
    assert st.sql("SELECT count(*) AS n FROM grades").column("n")[0].as_py() == 2 * len(truth)  # history kept
    assert not regrade(st, MODEL, progress=False).refit
    # the latents did not change: one normalisation / OOD reference served both fits
    assert st.sql("SELECT count(*) AS n FROM latent_stats").column("n")[0].as_py() == 1


def test_labelled_latents_come_from_a_cache_kept_per_version_of_the_latents(tmp_path):
    from latentstore.fit import label_set
    from latentstore.reference import latents_version
    from latentstore.index import read_latents

    st, ids, scans, g = planted_store(tmp_path / "store", labelled=lambda s: s < "sub-040")
    first = {s for s in scans if s < "sub-040"}
    assert 0 < len(first) < len(set(scans))

    def cached(version=None):
        where = "" if version is None else f" WHERE parts_hash = '{version}'"
        return st.sql(f"SELECT count(*) AS n FROM labelled_latents{where}").column("n")[0].as_py()

    fit(st, MODEL, cv=False, bootstrap=0)  # the reference pass caches every labelled latent
    v1 = latents_version(st, MODEL)
    n_first = sum(s in first for s in scans)
    assert cached(v1) == n_first
    # labels imported later: the next fit reads those latents from the Parquet, once, and caches them
    put_labels(st, [(s, lv, gr) for s, lv, gr in zip(scans, st.slices.read(columns=["level"]).column("level").to_pylist(),
                                                    g.tolist()) if s not in first], source="more")
    fit(st, MODEL, cv=False, bootstrap=0)  # G1 does not train: those latents are not read
    assert cached(v1) == n_first + sum(s not in first and gr != 1 for s, gr in zip(scans, g))
    ls = label_set(st, MODEL, "TRUE", g1=True)
    assert cached(v1) == len(ids)
    pid, pz = read_latents(st, MODEL, ls.slice_id)
    order = np.argsort(pid)
    assert np.array_equal(pid[order], ls.slice_id) and np.array_equal(pz[order], ls.z)  # exactly the Parquet's
    # new latents are a new version: its reference pass replaces the model's cached rows
    more = make_store(tmp_path / "more", n_scans=2, levels=4, seed=9, first=500)
    shutil.copy(more / "slices" / "part.parquet", st.slices.part_path("part-more.parquet"))
    new_ids = pq.read_table(more / "slices" / "part.parquet", columns=["slice_id"]).column("slice_id").to_numpy()
    add_latents(st, new_ids, planted_grades(len(new_ids), 4), seed=5)
    fit(st, MODEL, cv=False, bootstrap=0)
    v2 = latents_version(st, MODEL)
    assert v2 != v1 and cached(v2) == len(ids) and cached() == len(ids)
    # a pass over the latents after a fit that read labelled latents itself: each slice cached once
    with catalog.writer(st) as con:
        con.execute("DELETE FROM latent_stats")
    label_set(st, MODEL, "TRUE", g1=True)
    fit(st, MODEL, cv=False, bootstrap=0)
    assert cached() == len(ids)


def test_ood_flag_marks_a_shifted_distribution(store):
    st, _ = store
    fit(st, MODEL)
    h, c = load_fit(st, MODEL)
    rng = np.random.default_rng(11)
    like = rng.normal(size=(400, D)) * 0.5 + 1.0
    shifted = like * 1.6 + rng.normal(size=D)  # another scanner, another anatomy
    assert score_latents(h, c, like)["ood"].mean() < 0.1
    assert score_latents(h, c, shifted)["ood"].mean() > 0.9


def test_polynomial_calibrations_and_svm(store):
    st, _ = store
    for kind in ("poly1", "poly3"):
        s = fit(st, MODEL, classifier="svm", calibration=kind, bootstrap=4)
        assert s.train_auc > 0.99 and s.calibration_macro_f1 > 0.6
    h, c = load_fit(st, MODEL)
    assert c.kind == "poly3" and len(c.coefficients) == 4 and h.classifier == "svm"


def test_bad_inputs_are_clear_and_store_nothing(store):
    st, _ = store
    with pytest.raises(StoreError, match="no fit for model"):
        grade(st, MODEL, progress=False)
    with pytest.raises(InputError, match="no labelled slices match"):
        fit(st, MODEL, labels="l.source = 'nobody'")
    with pytest.raises(InputError, match="G0 and G3"):
        fit(st, MODEL, labels="l.grade <> 3")
    with pytest.raises(InputError, match="one SQL predicate"):
        fit(st, MODEL, labels="TRUE; DROP TABLE labels")
    with pytest.raises(InputError, match="--classifier"):
        fit(st, MODEL, classifier="forest")
    assert st.sql("SELECT count(*) AS n FROM hyperplanes").column("n")[0].as_py() == 0
    put_labels(st, [(r["scan_id"], r["level"], 3 - (r["grade"] or 0)) for r in
                    st.sql("SELECT scan_id, level, grade FROM labels").to_pylist()], source="other")
    with pytest.raises(InputError, match="different labels from different sources"):
        fit(st, MODEL)
    assert fit(st, MODEL, labels="l.source = 'truth'").n_labelled > 0


def test_cli_fit_grade_regrade_json(store):
    st, truth = store
    r = runner.invoke(app, ["fit", "--model", MODEL, "--store", st.root, "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["hyperplane_version"] == 1
    r = runner.invoke(app, ["grade", "--model", MODEL, "--store", st.root, "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["graded"] == len(truth)
    r = runner.invoke(app, ["regrade", "--model", MODEL, "--store", st.root])
    assert r.exit_code == 0 and "0 latents graded" in r.output
    r = runner.invoke(app, ["fit", "--model", MODEL, "--store", st.root, "--calibration", "cubic"])
    assert r.exit_code == 2 and "--calibration must be one of" in r.output


def test_to_grade_rounds_and_clips():
    assert to_grade(np.array([-3.0, 0.49, 0.5, 1.5, 2.51, 9.0])).tolist() == [0, 0, 0, 2, 3, 3]


def test_cuml_and_scikit_learn_agree(store):
    cuml = pytest.importorskip("cuml")  # noqa: F841
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("cuML needs a GPU")
    from latentstore.fit import fit_classifier

    rng = np.random.default_rng(0)
    y = (rng.random(2000) < 0.3).astype(int)
    X = rng.normal(size=(2000, 64)) + np.outer(y, direction()[:64] * 3)
    w1, _ = fit_classifier("logistic", 0.1, X, y, "scikit-learn")
    w2, _ = fit_classifier("logistic", 0.1, X, y, "cuml")
    assert float(w1 @ w2 / np.linalg.norm(w1) / np.linalg.norm(w2)) > 0.999


def test_the_scheduled_job_is_the_regrade_command(store):
    import subprocess
    import sys
    from pathlib import Path

    st, truth = store
    fit(st, MODEL)
    job = Path(__file__).resolve().parents[1] / "jobs" / "regrade.py"
    r = subprocess.run([sys.executable, str(job), "--store", st.root, "--model", MODEL, "--json"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["graded"] == len(truth)
    r = subprocess.run([sys.executable, str(job), "--store", st.root, "--model", "0000000000000000"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "no fit for model" in (r.stdout + r.stderr)


def test_labels_suggest_picks_uncertain_unlabelled_and_spread_out(tmp_path):
    from latentstore.suggest import suggest

    labelled = {f"sub-{i:03d}" for i in range(40)}  # half the patients labelled
    st, ids, scans, _ = planted_store(tmp_path / "store", lambda scan: scan in labelled)
    with pytest.raises(StoreError, match="no fit"):
        suggest(st, 5, MODEL)
    fit(st, MODEL, bootstrap=8)
    out = suggest(st, 10, MODEL, picture=tmp_path / "s.png")
    assert out.unlabelled == sum(s not in labelled for s in scans) and len(out.rows) == 10
    assert all(r["scan_id"] not in labelled for r in out.rows)
    assert len({r["slice_id"] for r in out.rows}) == 10 and (tmp_path / "s.png").stat().st_size > 0
    # the picked ones lie nearer the hyperplane than the unlabelled vertebrae do on average
    h, c = load_fit(st, MODEL)
    from latentstore.index import read_latents

    _, z = read_latents(st, MODEL, ids[[s not in labelled for s in scans]])
    d_all = np.abs(h.distance(h.standardise(z)))
    assert np.median([abs(r["distance"]) for r in out.rows]) < np.median(d_all) / 2
    r = runner.invoke(app, ["labels", "suggest", "-n", "3", "--model", MODEL, "--store", st.root, "--json"])
    assert r.exit_code == 0 and len(json.loads(r.stdout)["rows"]) == 3


def test_folded_scoring_equals_the_standardised_formulas(store):
    st, _ = store
    fit(st, MODEL, bootstrap=5)
    h, _ = load_fit(st, MODEL)
    z = (np.random.default_rng(5).normal(size=(300, D)) * 0.7 + 1.2).astype(np.float32)
    zs = h.standardise(z)
    d, boot, ood = h.raw_scores(z)
    assert np.allclose(d, h.distance(zs), atol=1e-3)
    assert np.allclose(boot, h.boot_distances(zs), atol=1e-3)
    assert np.allclose(ood, h.ood_distance(zs), rtol=1e-3)


def test_eval_grading_table_on_a_patient_split(store, tmp_path):
    from latentstore.eval_grading import eval_grading

    st, truth = store
    r = eval_grading(st, MODEL, densenet_steps=2, curve=(10, None), curve_seeds=2, out=tmp_path / "rep", progress=False)
    rows = r["rows"]
    assert {"probe logistic", "probe svm", "hyperplane logistic linear", "hyperplane svm poly3", "densenet121"} <= set(rows)
    main = rows["hyperplane logistic linear"]
    assert main["auc"] > 0.95 and main["macro_f1"] > 0.6
    # 95 % intervals over test patients hold the point estimate; per-class F1 average to the macro-F1
    for key in ("auc_ci", "macro_f1_ci"):
        lo, hi = main[key]
        assert 0 <= lo <= hi <= 1
    assert main["macro_f1_ci"][0] < main["macro_f1_ci"][1]  # a test split of patients is a sample
    assert main["auc_ci"][0] <= main["auc"] <= main["auc_ci"][1]
    assert abs(np.mean(list(main["f1_per_class"].values())) - main["macro_f1"]) < 1e-9
    assert 0 <= r["severity_main"]["g2_vs_g3_auc"] <= 1
    assert 0 <= rows["densenet121"]["auc"] <= 1  # 2 steps: a plumbing check, not a result
    assert r["split"].startswith("hash of patient_key") and r["n_train"] + r["n_test"] == sum(g != 1 for g in truth.values())
    conf = np.array(r["confusion_main"]["counts"])
    assert conf.sum() == r["n_test_all"] > r["n_test"]  # every test vertebra, G1 included
    assert set(r["label_efficiency"]["dae"]) == {"10", "all"} and set(r["label_efficiency"]["densenet121"]) == {"10", "all"}
    md = (tmp_path / "rep" / "grading.md").read_text()
    assert "| hyperplane logistic linear |" in md and (tmp_path / "rep" / "grading.png").stat().st_size > 0
    def refuse(name):
        raise AssertionError(f"{name} in grading.json: not JSON")

    assert json.loads((tmp_path / "rep" / "grading.json").read_text(), parse_constant=refuse)["model_id"] == MODEL


def test_eval_grading_uses_the_labels_split_by_patient_and_refuses_one_that_leaks(tmp_path):
    from latentstore.eval_grading import grading_data

    st, ids, scans, g = planted_store(tmp_path / "store")
    t = st.slices.read(columns=["scan_id", "patient_key", "level"])
    patient_of = dict(zip(t.column("scan_id").to_pylist(), t.column("patient_key").to_pylist()))
    order = sorted(set(scans))
    rows = list(zip(scans, t.column("level").to_pylist(), g.tolist()))
    put_labels(st, rows, "by-patient", split=lambda s, lv: "test" if order.index(s) < 20 else "train")
    d = grading_data(st, MODEL, "l.source = 'by-patient'")
    assert d.split_rule == "the labels' split column (test held out)"
    assert set(np.asarray(d.patient)[d.test]) == {patient_of[s] for s in order[:20]}
    # one vertebra of a test patient marked train: that patient would sit on both sides
    first = rows[scans.index(order[0])]
    put_labels(st, rows, "leaky", split=lambda s, lv: "train" if (s, lv) == first[:2] or order.index(s) >= 20 else "test")
    d = grading_data(st, MODEL, "l.source = 'leaky'")
    assert d.split_rule.startswith("the labels' split column puts 1 patient(s) in both train and test; hash of")
    assert not set(np.asarray(d.patient)[d.test]) & set(np.asarray(d.patient)[~d.test])


def test_reports_are_strict_json_a_level_without_fractures_has_a_null_auc():
    from latentstore.result import to_json

    levels = {"L5": {"n": 20, "fractured": 0, "auc": float("nan"), "macro_f1": np.float64(0.25), "k": np.int64(3)}}
    assert json.loads(to_json(levels)) == {"L5": {"n": 20, "fractured": 0, "auc": None, "macro_f1": 0.25, "k": 3}}


def test_latent_arrays_reads_ahead_in_order_and_stops_when_left(tmp_path):
    """The read-ahead stream yields every latent once, aligned with its id, in part order; skips parts
    that are all `done` without reading z_sem; and its reader thread ends when the caller stops early."""
    import threading

    from latentstore.grade import latent_arrays
    from latentstore.index import read_latents

    store = planted_store(tmp_path / "store")[0]
    ids, z = read_latents(store, MODEL)
    got = list(latent_arrays(store.latents(MODEL), batch_size=7, ahead=1))
    gid = np.concatenate([i for i, _ in got])
    gz = np.concatenate([b for _, b in got])
    order, ref = np.argsort(gid), np.argsort(ids)
    assert len(gid) == len(ids) and np.array_equal(gid[order], ids[ref]) and np.array_equal(gz[order], z[ref])
    skipped = list(latent_arrays(store.latents(MODEL), done=np.sort(ids)))
    assert all(b is None for _, b in skipped) and sum(len(i) for i, _ in skipped) == len(ids)
    before = threading.active_count()
    stream = latent_arrays(store.latents(MODEL), batch_size=3, ahead=2)
    next(stream)
    stream.close()
    assert threading.active_count() <= before
    # two batches, one slot: the reader queues the second and waits to queue its end; leaving must not hang
    stream = latent_arrays(store.latents(MODEL), batch_size=len(ids) // 2, ahead=1)
    next(stream)
    time.sleep(0.5)
    closer = threading.Thread(target=stream.close)
    closer.start()
    closer.join(10)
    assert not closer.is_alive() and threading.active_count() <= before


def test_bootstrap_metrics_equal_scikit_learn_with_weights():
    from sklearn.metrics import f1_score, roc_auc_score

    from latentstore.eval_grading import patient_bootstrap, weighted_auc
    from latentstore.fit import f1_per_class

    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.normal(size=200) + y, 1)  # rounded: many ties
    patient = rng.integers(0, 40, 200)
    w = patient_bootstrap(patient, n=5, seed=1)
    assert w.shape == (5, 200) and (w >= 0).all()
    # a patient's vertebrae are drawn together
    for row in w:
        for p in np.unique(patient):
            assert len(set(row[patient == p])) == 1
    assert (w == 0).any()  # patients left out of a draw: zero weights
    for row in w:
        assert abs(weighted_auc(y, s, row) - roc_auc_score(y, s, sample_weight=row)) < 1e-12
    assert np.isnan(weighted_auc(y, s, np.zeros(200))) and np.isnan(weighted_auc(y, s, (y == 1).astype(float)))
    true = rng.choice([0, 1, 2, 3], 200, p=[0.6, 0.1, 0.2, 0.1])
    pred = rng.choice([0, 1, 2, 3], 200)
    sel = true != 1
    for row in w:
        ref = f1_score(true[sel], np.where(pred < 2, 0, pred)[sel], labels=[0, 2, 3], average=None,
                       sample_weight=row[sel], zero_division=0)
        assert np.allclose(f1_per_class(true, pred, row), ref)


def test_intervals_leave_out_draws_without_a_grade_and_give_up_when_most_lack_one():
    from latentstore.eval_grading import interval, patient_bootstrap, resampled_macro_f1

    # perfect predictions: every draw that holds G0, G2 and G3 scores 1; a draw without the one G3
    # patient is not a macro-F1 of 2/3
    patient = np.repeat(np.arange(40), 5)
    true = np.zeros(200, int)
    true[patient == 0] = 3
    true[(patient >= 1) & (patient <= 10)] = 2
    w = patient_bootstrap(patient, n=400, seed=0)
    assert ((w[:, patient == 0] == 0).all(1)).mean() > 0.2  # about (39/40)^40 = 36 % of draws lack it
    assert interval(lambda r: resampled_macro_f1(true, true, r), w) == [1.0, 1.0]
    # fewer than half the draws defined (patient 0 drawn twice or more: ~26 %): no interval
    assert np.isnan(interval(lambda r: np.nan if r[0] < 2 else 1.0, w)).all()
    assert not np.isnan(interval(lambda r: np.nan if r[0] == 0 else 1.0, w)).any()  # 64 % defined
