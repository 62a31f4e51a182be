import csv
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from latentstore.cli import app
from latentstore.errors import InputError
from latentstore.probe import detection_probe, eval_probe, load_labels, probe_table, severity_probe, zsem_diagnostics
from latentstore.slices import read_slices
from latentstore.train import TrainConfig, train
from tiny_store import make_store


@pytest.fixture(scope="module")
def store_and_model(tmp_path_factory):
    store = make_store(tmp_path_factory.mktemp("store"), n_scans=30, levels=4)
    cfg = TrainConfig(config="tiny", steps=2, batch_size=4, lr=1e-3, preview_every=0)
    return store, train(store, cfg, out=store / "run", progress=False).model_id


def _write_labels(store, path, rule) -> None:
    """A long CSV (scan, level name, grade, height_loss) whose grades follow `rule(image) -> grade`."""
    t = read_slices(store, columns=["scan_id", "level_name", "image"]).to_pylist()
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["scan", "level", "grade", "height_loss"])
        for i, r in enumerate(t):
            img = np.asarray(r["image"], dtype=float).reshape(96, 96)
            g = rule(img, i)
            w.writerow([r["scan_id"], r["level_name"], g, 0.1 * g])


def _body_hu(img):
    return np.median(img[40:56, 40:56])


def test_pixels_find_a_pixel_defined_fracture_and_random_labels_stay_near_chance(store_and_model, tmp_path):
    store, model_id = store_and_model
    his = sorted(_body_hu(np.asarray(r["image"], float).reshape(96, 96))
                 for r in read_slices(store, columns=["image"]).to_pylist())
    cut = his[int(0.7 * len(his))]
    # among those fractures, G3 where the centre's 2x2 pooled cells (pixels 36-60) are brightest: a linear
    # function of the 8x8 pooled pixels, so severity is in them too
    centre = [np.asarray(r["image"], float).reshape(96, 96)[36:60, 36:60].mean()
              for r in read_slices(store, columns=["image"]).to_pylist() if _body_hu(np.asarray(r["image"], float).reshape(96, 96)) > cut]
    cut3 = float(np.median(centre))
    _write_labels(store, tmp_path / "bright.csv", lambda img, i: (3 if img[36:60, 36:60].mean() > cut3 else 2)
                  if _body_hu(img) > cut else 0)
    result = eval_probe(store, model_id, tmp_path / "bright.csv", seeds=(0,), k=5)
    pix = result["features"]["pix8"]
    assert pix["logistic"]["auc"] > 0.85 and pix["svm"]["auc"] > 0.85
    assert pix["height_loss_r2"] > 0.3 and 0 <= pix["level_accuracy"] <= 1
    assert pix["severity_auc"] > 0.65  # ~60 fractures of 30 patients; random labels below stay 0.25-0.75
    assert set(result["features"]) == {"zsem", "untrained", "pix8"} and result["n_patients"] == 30
    diag = result["diagnostics"]["zsem"]
    assert diag["effective_rank"] >= 1 and 0 < diag["top_pc_share"] <= 1 and diag["mse_own_z"] > 0
    assert len(probe_table(result)) == 4

    rng = np.random.default_rng(0)
    coin = rng.random(200) < 0.3
    coin3 = rng.random(200) < 0.5
    _write_labels(store, tmp_path / "coin.csv", lambda img, i: (3 if coin3[i] else 2) if coin[i] else 0)
    chance = eval_probe(store, model_id, tmp_path / "coin.csv", seeds=(0, 1), k=5)
    assert 0.25 < chance["features"]["pix8"]["logistic"]["auc"] < 0.75
    assert 0.25 < chance["features"]["pix8"]["severity_auc"] < 0.75


def test_detection_probe_folds_are_patient_grouped():
    # every slice of a patient carries the patient's own random vector and label: a probe that let a
    # patient's slices straddle folds would memorise them and score near 1; grouped folds stay at chance.
    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(40), 5)
    X = np.repeat(rng.normal(size=(40, 30)), 5, axis=0) + 0.01 * rng.normal(size=(200, 30))
    y = np.repeat(rng.random(40) < 0.4, 5).astype(int)
    assert detection_probe(X, y, groups, "logistic", (0, 1), 5)["auc"] < 0.8


def test_diagnostics_see_a_collapsed_code():
    rng = np.random.default_rng(2)
    mean = rng.normal(size=300)
    collapsed = np.outer(mean, rng.normal(size=16)) + 1e-3 * rng.normal(size=(300, 16))
    d = zsem_diagnostics(collapsed, mean)
    assert d["effective_rank"] < 1.1 and d["top_pc_share"] > 0.99 and d["top_pc_r2_mean_intensity"] > 0.99
    assert zsem_diagnostics(rng.normal(size=(300, 16)), mean)["effective_rank"] > 12


def test_labels_errors_name_the_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("scan,level,grade\nsub-1,L1,0\nsub-1,L2,7\n")
    with pytest.raises(InputError, match=r"bad.csv: line 3: grade '7' outside 0-3"):
        load_labels(bad)
    (tmp_path / "cols.csv").write_text("scan,grade\nsub-1,0\n")
    with pytest.raises(InputError, match="not a known label format"):
        load_labels(tmp_path / "cols.csv")
    (tmp_path / "lvl.csv").write_text("scan,level,grade\nsub-1,Q9,0\n")
    with pytest.raises(InputError, match="lvl.csv: line 2"):
        load_labels(tmp_path / "lvl.csv")
    ok = tmp_path / "ok.csv"
    ok.write_text("scan,level,grade,height_loss\nsub-1,20,2,0.3\nsub-1,T12,0,\n")
    labels = load_labels(ok)
    assert labels[("sub-1", 20)].grade == 2 and np.isnan(labels[("sub-1", 19)].height_loss)
    (tmp_path / "fx.csv").write_text("scan,level,fracture\nsub-1,L1,yes\n")
    with pytest.raises(InputError, match="fx.csv: line 2: no grade"):
        load_labels(tmp_path / "fx.csv")


def test_cli_eval_probe(store_and_model, tmp_path):
    store, model_id = store_and_model
    runner = CliRunner()
    missing = runner.invoke(app, ["eval", "probe", "--model", model_id, "--store", str(store)])
    assert missing.exit_code == 2 and "--labels" in missing.output
    unmatched = tmp_path / "other.csv"
    unmatched.write_text("scan,level,grade\nsub-999,L1,0\n")
    res = runner.invoke(app, ["eval", "probe", "--model", model_id, "--store", str(store), "--labels", str(unmatched)])
    assert res.exit_code == 2 and "have a label" in res.output
    _write_labels(store, tmp_path / "l.csv", lambda img, i: 2 if i % 4 == 0 else 0)
    res = runner.invoke(app, ["eval", "probe", "--model", model_id, "--store", str(store), "--labels",
                              str(tmp_path / "l.csv"), "--seeds", "1", "--json"])
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    assert result["model_id"] == model_id and result["seeds"] == [0] and result["n_fractured"] == 30


def test_severity_probe_says_none_when_a_grade_sits_in_too_few_patients():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(30), 4)
    grade = np.zeros(120, int)
    grade[:12] = 3  # 12 G3 vertebrae of 3 patients: fewer than k = 5 patients
    grade[40:60] = 2
    X = rng.normal(size=(120, 8))
    assert severity_probe(X, grade, groups, seeds=(0,), k=5) is None
    grade[:12] = 0
    grade[::10][:8] = 3  # G3 in 8 patients, with a planted direction: a number
    X[grade == 3, 0] += 3
    auc = severity_probe(X, grade, groups, seeds=(0,), k=5)
    assert auc is not None and auc > 0.7


def test_probe_refuses_fractures_held_by_fewer_patients_than_folds():
    from latentstore.probe import ProbeData, run_probes

    n = 60
    groups = np.repeat(np.arange(20), 3).astype(str)
    grade = np.zeros(n, int)
    grade[:9] = 2  # 9 fractures, but of 3 patients: a 5-fold patient split cannot put one in every fold
    data = ProbeData(np.zeros((n, 96, 96), np.int16), np.arange(n), groups, np.full(n, 20), grade, np.full(n, np.nan))
    with pytest.raises(InputError, match="at least 5 patients each"):
        run_probes({"f": np.random.default_rng(0).normal(size=(n, 4))}, data, seeds=(0,), k=5)
