"""`latentstore synth`: files, geometry, ground truth, determinism, DICOM and the CLI.

One small archive (3 patients, T12-L4, with DICOM) is made once per module and checked from many
sides; a few tests make tiny archives of their own (2 patients, 3 levels)."""

import csv
import json
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_rescale
from typer.testing import CliRunner

from latentstore.cli import app
from latentstore.errors import InputError
from latentstore.synth import SynthConfig, assign_splits, genant_grade, measure_scan, synth_archive
from latentstore.synth.anatomy import body_layers
from latentstore.synth.measure import THRESHOLDS, heights_from_plane, neighbours
from latentstore.synth.patient import plan_patient, sample_grades
from latentstore.synth.phantom import local_coords, rasterise
from latentstore.verse import read_centroids

SEED = 7


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "archive"
    summary = synth_archive(out, patients=3, seed=SEED, dicom=True, levels="T12-L4", workers=1, progress=False)
    assert summary["patients"] == 3 and summary["vertebrae"] == 15  # 5 visible levels each
    return out


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _scans(archive: Path) -> list[dict]:
    return _rows(archive / "scans.csv")


def _world_centroids(archive: Path, scan: str) -> tuple[nib.Nifti1Image, dict[int, np.ndarray]]:
    img = nib.load(archive / "derivatives" / scan / f"{scan}_seg-vert_msk.nii.gz")
    ctd = read_centroids(archive / "derivatives" / scan / f"{scan}_seg-subreg_ctd.json")
    world = {lab: img.affine[:3, :3] @ np.asarray(p) + img.affine[:3, 3] for lab, p in ctd.points.items()}
    return img, world


def test_files_load_with_promised_orientation_spacing_and_dtype(archive):
    scans = _scans(archive)
    assert len({s["orientation"] for s in scans}) > 1  # acquisitions vary between scans
    for s in scans:
        sub = s["scan"]
        ct = nib.load(archive / "rawdata" / sub / f"{sub}_ct.nii.gz")
        mask = nib.load(archive / "derivatives" / sub / f"{sub}_seg-vert_msk.nii.gz")
        assert "".join(nib.aff2axcodes(ct.affine)) == s["orientation"]
        assert ct.get_data_dtype() == np.int16 and mask.get_data_dtype() == np.uint8
        assert np.allclose(ct.affine, mask.affine) and ct.shape == mask.shape
        assert "x".join(map(str, ct.shape)) == s["shape"]
        # Zooms follow the array axes; the table gives them per world axis (x, y, z).
        world_sp = {"RL": float(s["spacing_x"]), "AP": float(s["spacing_y"]), "SI": float(s["spacing_z"])}
        for code, zoom in zip(s["orientation"], ct.header.get_zooms()):
            assert zoom == pytest.approx(next(v for k, v in world_sp.items() if code in k), abs=1e-4)
        hu = np.asarray(ct.dataobj)
        assert hu.min() == -1024 and 500 < hu.max() < 3072  # air present, bone bright
        ctd = read_centroids(archive / "derivatives" / sub / f"{sub}_seg-subreg_ctd.json")
        assert "".join(ctd.direction) == s["orientation"]
        assert sorted(ctd.points) == sorted(int(lab) for lab in np.unique(np.asarray(mask.dataobj)) if lab)


def test_centroid_json_entries_look_like_the_real_verse_file(archive, real_data):
    real = json.loads((real_data / "verse-sample" / "sub-verse004_seg-subreg_ctd.json").read_text())
    sub = _scans(archive)[0]["scan"]
    ours = json.loads((archive / "derivatives" / sub / f"{sub}_seg-subreg_ctd.json").read_text())
    assert list(ours[0]) == list(real[0]) == ["direction"]
    assert [set(e) for e in ours[1:]] == [set(real[1])] * (len(ours) - 1)


def test_centroids_lie_in_the_body_not_the_posterior_elements(archive):
    for s in _scans(archive):
        img, world = _world_centroids(archive, s["scan"])
        mask = np.asarray(img.dataobj)
        ctd = read_centroids(archive / "derivatives" / s["scan"] / f"{s['scan']}_seg-subreg_ctd.json")
        for lab, p in ctd.points.items():
            assert mask[tuple(int(round(c)) for c in p)] == lab
            # VerSe's property: the body centroid lies well anterior of the whole vertebra's centre of mass.
            vox = np.argwhere(mask == lab)
            com = img.affine[:3, :3] @ vox.mean(axis=0) + img.affine[:3, 3]
            assert world[lab][1] - com[1] > 4.0, (s["scan"], lab)


def test_centroid_is_deep_inside_the_rasterised_body():
    cfg = SynthConfig(patients=1, seed=SEED, levels=(20, 21, 22))
    p = plan_patient(cfg, 0)
    vols = rasterise(p, cfg.seed)
    assert sorted(vols.centroids) == [20, 21, 22]
    for vb in p.visible:
        pt = [np.array([x], np.float32) for x in vols.centroids[vb.label]]
        w, u, v = local_coords(vb, pt)
        assert body_layers(vb, w, u, v)["outer"].item() < -6.0  # mm inside the body: near its middle


def _remeasure(archive: Path) -> list[tuple[dict, dict, object]]:
    """(scan row, ground-truth row, measurement from the written mask) for every vertebra."""
    gt = _rows(archive / "ground_truth.csv")
    out = []
    for s in _scans(archive):
        img, world = _world_centroids(archive, s["scan"])
        measured = measure_scan(np.asarray(img.dataobj), img.affine, world)
        out += [(s, r, measured[int(r["level"])]) for r in gt if r["scan"] == s["scan"]]
    return out


def test_heights_remeasured_from_the_mask_are_within_a_voxel(archive):
    for s, r, m in _remeasure(archive):
        tol = max(float(s[k]) for k in ("spacing_x", "spacing_y", "spacing_z")) + 0.6  # mm: two voxel edges
        for got, want in ((m.heights.ha, r["ha_mm"]), (m.heights.hm, r["hm_mm"]), (m.heights.hp, r["hp_mm"])):
            assert abs(got - float(want)) <= tol, (r["scan"], r["level"], got, want)
        assert genant_grade(float(r["height_loss"])) == int(r["grade"])  # the table's grade is its loss's


def test_grades_remeasured_from_a_1mm_mask_match_the_table(tmp_path):
    out = tmp_path / "iso"
    synth_archive(out, patients=3, seed=2, levels="T11-L3", prevalence=(0.5, 0.1, 0.2, 0.2), spacing=(1, 1, 1),
                  workers=1, progress=False, sheet=False)
    rows = _remeasure(out)
    errors = np.array([[m.heights.ha - float(r["ha_mm"]), m.heights.hm - float(r["hm_mm"]),
                        m.heights.hp - float(r["hp_mm"])] for _, r, m in rows])
    assert np.abs(errors).max() < 1.5 and np.abs(errors).mean() < 0.6  # mm
    fractured = [(r, m) for _, r, m in rows if r["grade"] != "0"]
    assert len(fractured) >= 3
    for _, r, m in rows:
        loss = float(r["height_loss"])
        if min(abs(loss - t) for t in THRESHOLDS) > 0.04:  # 0.04 of ~25 mm = 1 mm: one voxel edge each side
            assert m.grade == int(r["grade"]), (r["scan"], r["level"], m.loss, loss)
    assert sum(m.grade == int(r["grade"]) for r, m in fractured) >= len(fractured) - 1


def test_tables_agree_with_each_other(archive):
    gt = _rows(archive / "ground_truth.csv")
    wide = _rows(archive / "grades.csv")
    scans = _scans(archive)
    assert [w["verse_ID"] for w in wide] == [s["scan"] for s in scans] == sorted({r["scan"] for r in gt})
    for w in wide:
        rows = {r["level_name"]: r for r in gt if r["scan"] == w["verse_ID"]}
        for level in ["T1", "T11", "T12", "L1", "L4", "L5", "L6"]:
            if level in rows:
                assert w[f"{level}_fx-g"] == rows[level]["grade"]
                assert w[f"{level}_fx-s"] == (rows[level]["shape_code"] if rows[level]["grade"] != "0" else "0")
            else:
                assert w[f"{level}_fx-g"] == w[f"{level}_fx-s"] == "x"
    for r in gt:
        if r["grade"] == "0":
            assert r["shape"] == "none" and float(r["deformation"]) == 0.0
        parts = [float(r[k]) for k in ("loss_wedge", "loss_biconcave", "loss_crush")]
        assert float(r["height_loss"]) == pytest.approx(max(parts), abs=1e-4)
    assert {r["split"] for r in gt} <= {"train", "val", "test"}
    manifest = json.loads((archive / "manifest.json").read_text())
    assert manifest["complete"] and manifest["config"]["seed"] == SEED and manifest["config"]["levels"] == "T12-L4"
    assert (archive / "contact_sheet.png").stat().st_size > 10_000


def test_dicom_series_sorted_by_position_reconstructs_the_nifti(archive):
    s = _scans(archive)[0]
    sub = s["scan"]
    folder = archive / "dicom" / sub
    datasets = [pydicom.dcmread(f) for f in sorted(folder.iterdir()) if f.name != "centroids.json"]
    series = {}
    for ds in datasets:
        series.setdefault(ds.SeriesInstanceUID, []).append(ds)
    assert len(series) == 3 and any("LOCALIZER" in v[0].ImageType for v in series.values())
    main = [v for v in series.values() if list(v[0].ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]]
    assert len(main) == 1
    slices = main[0]
    assert all(ds.PatientID == sub and ds.PatientIdentityRemoved == "YES" for ds in slices)
    normal = np.cross(*np.reshape(slices[0].ImageOrientationPatient, (2, 3)))
    slices.sort(key=lambda ds: float(np.dot(ds.ImagePositionPatient, normal)))
    instance = [int(ds.InstanceNumber) for ds in slices]
    assert instance != sorted(instance) and instance != sorted(instance, reverse=True)  # shuffled on purpose
    vol = np.stack([apply_rescale(ds.pixel_array, ds) for ds in slices])  # (k, row, col) HU
    canon = nib.as_closest_canonical(nib.load(archive / "rawdata" / sub / f"{sub}_ct.nii.gz"))
    ras = np.asarray(canon.dataobj)
    # Axial pixel (r, c) of slice k is RAS voxel (nx-1-c, ny-1-r, k).
    np.testing.assert_array_equal(vol, ras[::-1, ::-1, :].transpose(2, 1, 0))
    first = np.asarray(slices[0].ImagePositionPatient, float) * [-1, -1, 1]  # LPS -> RAS
    nx, ny, _ = ras.shape
    np.testing.assert_allclose(first, (canon.affine @ np.array([nx - 1, ny - 1, 0, 1]))[:3], atol=1e-3)
    sidecar = json.loads((folder / "centroids.json").read_text())
    assert sidecar["space"] == "LPS" and sidecar["series_instance_uid"] == slices[0].SeriesInstanceUID
    _, world = _world_centroids(archive, sub)
    for c in sidecar["centroids"]:
        ras_c = np.array([-c["x"], -c["y"], c["z"]])
        assert np.abs(ras_c - world[c["label"]]).max() < 0.2  # mm; the VerSe JSON keeps 0.1 voxel


def test_same_seed_same_files_in_any_worker_count_other_seed_different(tmp_path):
    kw = dict(patients=2, levels="L1-L3", progress=False)
    a = synth_archive(tmp_path / "a", seed=3, workers=1, **kw)
    synth_archive(tmp_path / "b", seed=3, workers=2, **kw)
    synth_archive(tmp_path / "c", seed=4, workers=1, **kw)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 2 * 4 + 6  # per scan: CT, mask, centroids, preview; tables, manifest, README, sheet
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    ct = Path("rawdata/sub-synth0001/sub-synth0001_ct.nii.gz")
    assert (tmp_path / "a" / ct).read_bytes() != (tmp_path / "c" / ct).read_bytes()
    assert a["splits"] == {"train": 1, "val": 0, "test": 1}


def test_rerun_replaces_a_previous_archive_but_refuses_a_foreign_folder(tmp_path):
    synth_archive(tmp_path / "a", patients=2, seed=1, levels="L2-L4", workers=1, progress=False, sheet=False)
    synth_archive(tmp_path / "a", patients=1, seed=1, levels="L2-L4", workers=1, progress=False, sheet=False)
    assert [p.name for p in (tmp_path / "a" / "rawdata").iterdir()] == ["sub-synth0001"]  # no stale patient
    foreign = tmp_path / "f"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not a synth archive"):
        synth_archive(foreign, patients=1, levels="L2-L4", workers=1, progress=False)
    synth_archive(foreign, patients=1, levels="L2-L4", workers=1, progress=False, sheet=False, force=True)
    assert (foreign / "notes.txt").read_text() == "mine" and (foreign / "manifest.json").is_file()


def test_measured_grades_follow_the_prevalence_and_stay_clear_of_thresholds():
    cfg = SynthConfig(patients=30, seed=11)
    measured = [m for i in range(cfg.patients) for m in plan_patient(cfg, i).measured.values()]
    n = len(measured)
    assert n > 200
    counts = Counter(m.grade for m in measured)
    for g, p in enumerate(cfg.prevalence):
        assert abs(counts[g] / n - p) < 4 * np.sqrt(p * (1 - p) / n) + 1e-9, (g, counts, n)
    assert all(min(abs(m.loss - t) for t in THRESHOLDS) >= cfg.margin / 2 for m in measured)
    draws = sample_grades(np.random.default_rng(0), 2000, (0.5, 0.2, 0.2, 0.1))
    assert np.allclose(np.bincount(draws, minlength=4) / 2000, (0.5, 0.2, 0.2, 0.1), atol=0.035)


def test_boundary_mode_puts_fractures_next_to_the_thresholds():
    cfg = SynthConfig(patients=12, seed=5, boundary=True, prevalence=(0.4, 0.2, 0.2, 0.2))
    plans = [plan_patient(cfg, i) for i in range(cfg.patients)]
    fractured = [m for p in plans for lab, m in p.measured.items() if p.targets[lab][0] > 0]
    assert len(fractured) > 15
    assert all(min(abs(m.loss - t) for t in THRESHOLDS) < 0.025 for m in fractured)
    assert len({m.grade for m in fractured}) >= 3


def test_heights_from_a_drawn_wedge_plane():
    step = 0.1
    u = (np.arange(300) + 0.5) * step  # 30 mm deep, column 0 posterior
    v = (np.arange(300) + 0.5) * step
    top = 25 - 10 * u / 30  # 25 mm posterior, 15 mm anterior
    plane = v[:, None] < top[None, :]
    h = heights_from_plane(plane, step)
    assert h.depth == pytest.approx(30, abs=0.01)
    assert h.hp == pytest.approx(25 - 10 * 0.1, abs=0.15) and h.ha == pytest.approx(15 + 10 * 0.1, abs=0.15)
    assert h.hm == pytest.approx(20, abs=0.15)
    assert [genant_grade(x) for x in (0.19, 0.2, 0.249, 0.25, 0.4, 0.41)] == [0, 1, 1, 2, 2, 3]
    assert neighbours([18, 19, 20], 20) == [19] and neighbours([18, 20], 20) == []


def test_splits_are_by_patient_with_exact_counts():
    splits = assign_splits(20, 0, (0.6, 0.2, 0.2))
    assert Counter(splits) == {"train": 12, "val": 4, "test": 4}
    assert splits == assign_splits(20, 0, (0.6, 0.2, 0.2)) != assign_splits(20, 1, (0.6, 0.2, 0.2))


@pytest.mark.parametrize(
    "args, message",
    [(["--prevalence", "0.5,0.1,0.1,0.1"], "sum to 1"), (["--prevalence", "0.8,0.2"], "4 comma-separated"),
     (["--patients", "0"], "positive"), (["--levels", "T8-X3"], "unknown vertebra level"),
     (["--levels", "L5-T8"], "superior-to-inferior")],
)
def test_cli_rejects_bad_arguments(tmp_path, args, message):
    result = CliRunner().invoke(app, ["synth", str(tmp_path / "out"), *args])
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "out").exists()  # nothing written


def test_cli_json_summary(tmp_path):
    result = CliRunner().invoke(app, ["synth", str(tmp_path / "out"), "--patients", "1", "--levels", "L1-L2",
                                      "--seed", "2", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["patients"] == 1 and summary["vertebrae"] == 2 and sum(summary["grades"].values()) == 2
    assert (tmp_path / "out" / "rawdata" / "sub-synth0001" / "sub-synth0001_ct.nii.gz").is_file()


# ------------------------------------------------------------------------------------- realism (issue 8)


def _slices(p, vols):
    """The 96x96 sagittal slices `latentstore ingest` cuts from a rasterised patient."""
    from latentstore.ingest.load import Volume
    from latentstore.ingest.slicing import cut_slices

    vol = Volume(vols.hu, vols.affine, {k: np.asarray(c) for k, c in vols.centroids.items()}, None)
    return [c.image.astype(np.float32) for c in cut_slices(vol)[0]]


@pytest.fixture(scope="module")
def iso_patient():
    """One patient at 1 mm (the slices' own grid), rasterised once for the texture tests."""
    cfg = SynthConfig(patients=1, seed=SEED, levels=(19, 20, 21, 22), spacing=(1.0, 1.0, 1.0))
    p = plan_patient(cfg, 0)
    return p, rasterise(p, cfg.seed)


def test_soft_tissue_has_fine_grained_noise_fat_and_no_flat_grey(iso_patient):
    from scipy import ndimage

    p, vols = iso_patient
    hp, fat, sd = [], [], []
    for img in _slices(p, vols):
        soft = (img >= -200) & (img <= 200)
        core = ndimage.binary_erosion(soft, np.ones((5, 5)))
        hp.append((img - ndimage.gaussian_filter(img, 1.5))[core].std())  # the old phantom: 9-16 HU here
        body = ndimage.binary_fill_holes(img > -500)
        fat.append(((img >= -190) & (img <= -30) & body).sum() / body.sum())
        sd.append(img[soft].std())
    assert 13 < np.median(hp) < 40, hp
    assert np.median(fat) > 0.06, fat  # fat (prevertebral, mesenteric, intermuscular): the old one had ~4 %
    assert np.median(sd) > 50, sd  # fat, muscle and organs, not a flat grey (old: SD 34-49)


def test_ct_noise_has_the_requested_sd_and_a_fine_grain():
    from latentstore.synth.phantom import _Grid, ct_noise

    grid = _Grid((0, 0, 0), (0.8, 0.8, 1.0), (64, 64, 48))
    n = ct_noise(grid, 30.0, 0.45, np.random.default_rng(0))
    assert n.std() == pytest.approx(30.0, rel=0.12)
    lag1 = np.corrcoef(n[1:].ravel(), n[:-1].ravel())[0, 1]
    assert 0.1 < lag1 < 0.6  # correlated, but still grain at 1 voxel (not smooth blotches)


def test_trabecular_texture_streaks_vertically_and_cortex_is_bright():
    from latentstore.synth.phantom import _texture

    f = _texture((40, 40, 60), (1.0, 1.0, 1.0), np.random.default_rng(1), (0.55, 0.55, 3.0))
    along_z = np.corrcoef(f[:, :, 2:].ravel(), f[:, :, :-2].ravel())[0, 1]
    along_y = np.corrcoef(f[:, 2:].ravel(), f[:, :-2].ravel())[0, 1]
    assert along_z > 0.6 and along_y < 0.1


def test_cortex_and_endplates_are_bright_on_the_slices(iso_patient):
    p, vols = iso_patient
    p95 = [np.percentile(img[28:69, 28:69][img[28:69, 28:69] > 250], 95) for img in _slices(p, vols)]
    assert 610 < np.median(p95) < 1100, p95  # the old phantom: 470-600


def test_lookalikes_measure_g0_and_are_recorded():
    from latentstore.synth.patient import LOOKALIKE_MAX
    from latentstore.synth.write import gt_rows

    cfg = SynthConfig(patients=40, seed=0)
    seen = Counter()
    for i in range(cfg.patients):
        p = plan_patient(cfg, i)
        rows = {int(r["level"]): r for r in gt_rows(p, type("V", (), {"centroids": {}})(), "train")}
        for vb in p.visible:
            m = p.measured[vb.label]
            assert rows[vb.label]["lookalike"] == ("none", "short", "developmental_wedge")[vb.lookalike]
            if not vb.lookalike:
                continue
            seen[vb.lookalike] += 1
            assert vb.shape == 0 and m.grade == 0 and m.loss <= LOOKALIKE_MAX + 1e-9, (i, vb.label, m)
            if vb.lookalike == 1:  # short: shorter than the neighbours, its own ratios intact
                assert m.parts[2] > 0.04 and m.parts[0] < 0.12, m.parts
            else:  # developmental wedge: the anterior height is lower
                assert m.parts[0] > 0.07, m.parts
    assert seen[1] >= 2 and seen[2] >= 3, seen


def test_implants_in_a_few_percent_of_scans_with_saturated_metal_outside_the_mask():
    from latentstore.synth.patient import IMPLANT_P, has_implant

    share = np.mean([has_implant(np.random.default_rng([0, i, 3])) for i in range(3000)])
    assert 0.03 <= share <= 0.05 and abs(share - IMPLANT_P) < 0.01
    cfg = SynthConfig(patients=4, seed=0, levels=(19, 20, 21), spacing=(1.5, 1.5, 1.5))
    p = plan_patient(cfg, 3)  # patient 3 of seed 0 has screws
    assert p.implant == "pedicle_screws" and sum(v.implant for v in p.vertebrae) >= 2
    vols = rasterise(p, cfg.seed)
    metal = vols.hu >= 3000
    assert metal.sum() > 100 and vols.hu.max() == 3071  # saturated at the scanner's ceiling
    assert not (vols.labels[metal] > 0).all()  # screws are no vertebra
    assert _scans_row_implant(p) == "pedicle_screws"


def _scans_row_implant(p) -> str:
    from latentstore.synth.write import scan_row

    return scan_row(p, "train", (1, 1, 1))["implant"]


def test_fracture_risk_rises_at_the_junction_and_with_osteoporosis_keeping_the_prevalence():
    from latentstore.synth.patient import fracture_risk

    cfg = SynthConfig(patients=1)
    r = fracture_risk([16, 19, 20, 23], 150.0, cfg)
    assert r[1] > 1.5 * r[0] and r[2] > 2 * r[3]  # T12, L1 above T9 and L4
    assert fracture_risk([20], 90.0, cfg)[0] > 3 * fracture_risk([20], 200.0, cfg)[0]
    risk = np.repeat([0.5, 1.5], 10000)
    g = sample_grades(np.random.default_rng(0), risk.size, (0.8, 0.1, 0.07, 0.03), risk)
    assert abs((g > 0).mean() - 0.2) < 0.012  # the mean risk is 1: the prevalence is kept
    assert (g[10000:] > 0).mean() > 2.5 * (g[:10000] > 0).mean()
    counts = np.bincount(g[g > 0], minlength=4)[1:]
    assert np.allclose(counts / counts.sum(), (0.5, 0.35, 0.15), atol=0.03)
    # A whole archive plan: fractures concentrate at T11-L2 and in the low-density patients.
    cfg = SynthConfig(patients=40, seed=4)
    rows = [(v.label, p.trab_hu, p.measured[v.label].grade > 0) for i in range(cfg.patients)
            for p in [plan_patient(cfg, i)] for v in p.visible]
    junction = [f for lab, _, f in rows if 18 <= lab <= 21]
    other = [f for lab, _, f in rows if not 18 <= lab <= 21]
    assert np.mean(junction) > np.mean(other)


def test_degenerative_changes_are_drawn_and_recorded(archive):
    gt = _rows(archive / "ground_truth.csv")
    assert {"lookalike", "osteophyte", "schmorl", "vacuum_disc", "implant"} <= set(gt[0])
    assert "implant" in _scans(archive)[0]
    cfg = SynthConfig(patients=30, seed=1)
    vs = [v for i in range(cfg.patients) for v in plan_patient(cfg, i).vertebrae]
    n = len(vs)
    assert 0.1 < np.mean([v.osteo_sup > 0 or v.osteo_inf > 0 for v in vs]) < 0.8
    assert 0.02 < np.mean([v.schmorl > 0 for v in vs]) < 0.2
    assert 0.0 < np.mean([v.vacuum for v in vs]) < 0.15
    hu = np.array([v.disc_hu for v in vs])
    assert hu.min() < 60 and hu.max() > 100 and n > 200  # discs 30-120 HU, not an even band
