"""Labels, the FAISS index and search (issue 11) on one synthetic store made by ingest and encode with the
shipped default model, plus the label formats on small files and SQL staying read-only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import latentstore
from latentstore.cli import app
from latentstore.errors import InputError
from latentstore.index import build_index, load_index, read_latents
from latentstore.labels import import_labels, read_labels
from latentstore.search import search

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("no_env_salt")


@pytest.fixture(scope="module")
def store(tmp_path_factory, ray_local):
    """20 synthetic patients (with fractures), ingested and encoded with the default model."""
    from latentstore.encode import encode
    from latentstore.ingest.run import ingest
    from latentstore.synth import synth_archive

    root = tmp_path_factory.mktemp("search")
    archive = root / "archive"
    synth_archive(archive, patients=20, seed=11, workers=1, progress=False)
    st = latentstore.connect(root / "store")
    ingest(st, archive, progress=False)
    encode(st, progress=False)
    return st, archive


def test_label_formats_round_trip(tmp_path, real_data):
    fmt, rows, rejects = read_labels(real_data / "grades/verse19_grades_healthivert.json")
    assert fmt == "grades-json" and len(rows) == 1460 and not rejects
    g = {(r.scan, r.level): r.grade for r in rows}
    assert g[("sub-verse012", 20)] == 3 and g[("sub-verse012", 22)] == 1
    fmt, rows, rejects = read_labels(real_data / "grades/verse19_grades_manifest.csv")
    assert fmt == "manifest" and len(rows) == 1129 and not rejects
    m = {(r.scan, r.level): r.grade for r in rows}
    assert all(m[key] == g[key] for key in set(m) & set(g)) and len(set(m) & set(g)) == 891

    wide = tmp_path / "verse.csv"
    wide.write_text("verse_ID,dataset,L1_fx-g,L2_fx-g,T12_fx-g\nverse004,train,3,0,x\nsub-verse005,train,0,,7\n")
    fmt, rows, rejects = read_labels(wide)
    assert fmt == "verse-wide" and {(r.scan, r.level, r.grade) for r in rows} == {
        ("sub-verse004", 20, 3), ("sub-verse004", 21, 0), ("sub-verse005", 20, 0)}
    assert rejects == ["line 3, T12_fx-g: grade '7' outside 0-3"]

    long = tmp_path / "long.csv"
    long.write_text("scan,level,grade,fracture\nsub-1,L1,2,\nsub-1,T12,,0\nsub-1,L9,0,\nsub-2,L1,,maybe\n")
    fmt, rows, rejects = read_labels(long)
    assert fmt == "long" and [(r.scan, r.level, r.grade, r.fracture) for r in rows] == [
        ("sub-1", 20, 2, True), ("sub-1", 19, None, False)]
    assert [r.split(":")[0] for r in rejects] == ["line 4", "line 5"]
    with pytest.raises(InputError, match="not a known label format"):
        (tmp_path / "odd.csv").write_text("a,b\n1,2\n")
        read_labels(tmp_path / "odd.csv")


def test_labels_import_matches_pseudonyms_is_versioned_and_idempotent(store, tmp_path):
    st, archive = store
    first = import_labels(st, archive / "ground_truth.csv", source="truth")
    n_slices = len(st.slices.read(columns=["slice_id"]))
    assert first.import_id and first.rows == first.matched == n_slices and first.rejected == 0
    again = import_labels(st, archive / "ground_truth.csv", source="truth")
    assert again.import_id is None  # the same bytes: nothing changed
    labels = st.labels
    assert labels.num_rows == n_slices and all(s.startswith("scan-") for s in labels.column("scan_id").to_pylist())
    # No raw scan name in the catalog.
    t = st.sql("SELECT * FROM label_rows")
    assert "sub-synth" not in json.dumps(t.to_pylist(), default=str)

    # A corrected file for the same source becomes current; the old rows stay in the history.
    edited = tmp_path / "truth.csv"
    lines = (archive / "ground_truth.csv").read_text().splitlines()
    edited.write_text("\n".join(lines[:-1] + ["sub-synth0000,sub-synth0000,train,99,XX,9"]) + "\n")
    second = import_labels(st, edited, source="truth")
    assert second.import_id and second.rows == n_slices - 1 and second.rejected == 1 and "line" in second.rejects[0]
    assert st.labels.num_rows == n_slices - 1
    n_hist = st.sql("SELECT count(*) AS n FROM label_rows").column("n")[0].as_py()
    assert n_hist == 2 * n_slices - 1
    result = runner.invoke(app, ["labels", "import", str(archive / "ground_truth.csv"), "--source", "truth",
                                 "--store", st.root, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["import_id"]  # the first file again: a new version, now current


def test_index_is_exact_here_and_an_added_batch_equals_a_rebuild(store, tmp_path):
    st, _ = store
    built = build_index(st)
    assert built.factory == "IDMap2,Flat" and built.count == len(read_latents(st, built.model_id)[0])
    side = json.loads(Path(st.index_path(built.model_id)[:-6] + ".json").read_text())
    assert side["count"] == built.count and side["factory"] == built.factory and side["model_id"] == built.model_id
    # Drop the index's last 10 ids (as if they were encoded later), then update: same results as a rebuild.
    import faiss

    index, _ = load_index(st, built.model_id)
    ids = faiss.vector_to_array(index.id_map)
    index.remove_ids(faiss.IDSelectorBatch(ids[-10:]))
    faiss.write_index(index, st.index_path(built.model_id))
    updated = build_index(st)
    assert (updated.added, updated.rebuilt, updated.count) == (10, False, built.count)
    ids_all, z = read_latents(st, built.model_id)
    a, _ = load_index(st, built.model_id)
    qa = a.search(z[:20] / np.linalg.norm(z[:20], axis=1, keepdims=True), 10)[1]
    build_index(st, rebuild=True)
    b, _ = load_index(st, built.model_id)
    qb = b.search(z[:20] / np.linalg.norm(z[:20], axis=1, keepdims=True), 10)[1]
    assert np.array_equal(qa, qb)


def test_index_above_the_exact_size_is_hnsw_on_8bit_codes_with_exact_rerank(store, tmp_path, monkeypatch):
    """Above EXACT_MAX (lowered here) the index is `IDMap2,HNSW32,SQ8,RFlat`: trained, tuned, written with
    its parameters, searched through `search` with the query first; a later added batch is taken in."""
    import shutil

    import latentstore.index as ix
    from latentstore.search import search

    st = latentstore.connect(shutil.copytree(store[0].root, tmp_path / "store"))
    monkeypatch.setattr(ix, "EXACT_MAX", 50)
    built = build_index(st, rebuild=True)
    assert built.factory == "IDMap2,HNSW32,SQ8,RFlat" and built.rebuilt
    assert built.params["refine_k"] == ix.REFINE_K and built.params["efConstruction"] == ix.EF_CONSTRUCTION
    assert built.recall_at_10 >= ix.TARGET_RECALL
    index, meta = load_index(st, built.model_id)
    assert ix.hnsw_of(index).hnsw.efSearch == meta["params"]["efSearch"]
    import faiss

    assert faiss.downcast_index(index.index).k_factor == ix.REFINE_K
    sid = int(read_latents(st, built.model_id)[0][3])
    assert search(st, sid, k=5).rows[0]["slice_id"] == sid
    ids, z = read_latents(st, built.model_id)  # an index without the last 10, as if encoded after the build
    z = ix.normalise(z)
    partial = ix._new_index(built.factory, z[:-10])
    partial.add_with_ids(z[:-10], ids[:-10])
    faiss.write_index(partial, st.index_path(built.model_id))
    updated = build_index(st)
    assert (updated.added, updated.rebuilt, updated.count) == (10, False, built.count)


def test_search_returns_the_query_first_and_fractures_near_fractures(store):
    st, archive = store
    import_labels(st, archive / "ground_truth.csv", source="truth")
    build_index(st)
    lab = st.sql("SELECT s.slice_id, l.grade FROM slices s JOIN labels l USING (scan_id, level)").to_pylist()
    grade = {r["slice_id"]: r["grade"] for r in lab}
    fractured = [s for s, g in grade.items() if g >= 2]
    base = len(fractured) / len(grade)
    assert fractured, "the synthetic store holds fractures"
    shares = []
    for sid in fractured:
        res = search(st, slice_id=sid, k=6)
        assert res.rows[0]["slice_id"] == sid and res.rows[0]["distance"] < 1e-5
        shares.append(np.mean([r["grade"] >= 2 for r in res.rows[1:]]))
    assert np.mean(shares) > base, (np.mean(shares), base)


def test_filtered_search_returns_k_results_even_when_narrow(store, tmp_path):
    st, archive = store
    import_labels(st, archive / "ground_truth.csv", source="truth")
    build_index(st)
    sid = st.sql("SELECT slice_id FROM slices LIMIT 1").column("slice_id")[0].as_py()
    n_l1 = st.sql("SELECT count(*) AS n FROM slices WHERE level_name = 'L1'").column("n")[0].as_py()
    for where, expect in [("s.level_name = 'L1'", min(5, n_l1)), ("l.grade >= 2", 5), ("s.slice_id = -1", 0)]:
        res = search(st, slice_id=sid, k=5, where=where)
        assert len(res.rows) == expect, (where, res.method)
    only = search(st, slice_id=sid, k=5, where="l.grade >= 2")
    assert all(r["grade"] >= 2 for r in only.rows)
    # The same through the CLI, with a picture and JSON; a vector query from the Python API.
    out = tmp_path / "n.png"
    cli = runner.invoke(app, ["search", str(sid), "-k", "3", "--where", "s.level_name = 'L1'", "--out", str(out),
                              "--store", st.root, "--json"])
    assert cli.exit_code == 0, cli.output
    assert len(json.loads(cli.stdout)["neighbours"]) == min(3, n_l1) and out.exists()
    _, z = read_latents(st, only.model_id, np.array([sid]))
    assert st.search(z[0], k=1).rows[0]["slice_id"] == sid
    bad = runner.invoke(app, ["search", str(sid), "--where", "1=1; DROP TABLE runs", "--store", st.root])
    assert bad.exit_code == 2


def test_search_by_image_encodes_on_the_fly(store, tmp_path):
    st, _ = store
    build_index(st)
    row = st.slices.read(columns=["slice_id", "image"]).slice(3, 1).to_pylist()[0]
    np.save(tmp_path / "q.npy", np.asarray(row["image"], np.int16).reshape(96, 96))
    res = search(st, image=tmp_path / "q.npy", k=3)
    assert res.rows[0]["slice_id"] == row["slice_id"]
    with pytest.raises(InputError, match="96x96"):
        np.save(tmp_path / "bad.npy", np.zeros((10, 10)))
        search(st, image=tmp_path / "bad.npy")
    # A CT with a centroid: cut as ingest cuts it, so the stored slice comes back first.
    import csv

    _, archive = store
    gt = next(csv.DictReader((archive / "ground_truth.csv").open()))
    ct = archive / "rawdata" / gt["scan"] / f"{gt['scan']}_ct.nii.gz"
    xyz = tuple(float(gt[f"centroid_{a}"]) for a in "xyz")
    hit = search(st, image=ct, centroid=xyz, k=1).rows[0]
    assert hit["level_name"] == gt["level_name"] and hit["distance"] < 1e-3
    with pytest.raises(InputError, match="--centroid"):
        search(st, image=ct)


@pytest.mark.parametrize("sql", [
    "COPY (SELECT 1) TO 'x.csv'",
    "ATTACH 'other.duckdb' AS o",
    "CREATE TEMP TABLE t AS SELECT 1",
    "SELECT 1; DELETE FROM runs",
])
def test_sql_refuses_every_write_path(store, sql, tmp_path):
    st, _ = store
    with pytest.raises(InputError, match="SELECT queries only"):
        st.sql(sql)
    assert not list(Path(st.root).glob("*.csv")) and not list(Path(st.root).glob("other.duckdb"))


def test_sql_parquet_format_writes_a_file(store, tmp_path):
    import pyarrow.parquet as pq

    st, _ = store
    out = tmp_path / "levels.parquet"
    res = runner.invoke(app, ["sql", "SELECT level_name, count(*) AS n FROM slices GROUP BY 1", "--format", "parquet",
                              "--out", str(out), "--store", st.root])
    assert res.exit_code == 0, res.output
    assert pq.read_table(out).column_names == ["level_name", "n"]
    assert runner.invoke(app, ["sql", "SELECT 1", "--format", "parquet", "--store", st.root]).exit_code == 2


def test_knn_on_hnsw_keeps_to_the_filter_without_trusting_idselector():
    """faiss 1.15.1's HNSW ignores an IDSelector unless `bounded_queue` is on (faiss issue 5504; measured:
    1.5 % of results inside a 1 % selector without it). `knn` filters its own results instead."""
    import faiss

    from latentstore.index import _new_index, factory_for, hnsw_of
    from latentstore.search import knn

    rng = np.random.default_rng(0)
    z = rng.standard_normal((4000, 64)).astype(np.float32)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    ids = np.arange(4000, dtype=np.int64) * 3 + 1
    factory = factory_for(10**6)
    assert "HNSW" in factory
    index = _new_index(factory, z)
    index.add_with_ids(z, ids)
    for share in (0.5, 0.02):
        allowed = np.sort(rng.choice(ids, int(4000 * share), replace=False))
        pos = (allowed - 1) // 3
        got, _, _ = knn(index, z[7], 10, allowed, lambda a: (allowed, z[pos]))
        assert len(got) == 10 and np.isin(got, allowed).all()
    p = faiss.SearchParametersHNSW()
    p.sel, p.bounded_queue = faiss.IDSelectorBatch(pos), True
    _, inner = hnsw_of(index).search(z[:5], 10, params=p)
    # With the bounded queue the selector holds, but a narrow one can leave slots empty (-1, fewer than k).
    assert np.isin(inner[inner >= 0], pos).all()


# Vertebral bodies of the real CT (`ct-nifti/example_ct.nii.gz`, 3 mm, RAS), picked from its bone-density
# profile along the spine (discs are the minima, bodies between them) and checked on the cut slices:
# L5, L4, L3, L2 (L1 lies at the edge of the scan).
REAL_CT_BODIES = {"L5": (59, 40, 50), "L4": (59, 39, 62), "L3": (59, 39, 73.5), "L2": (57, 39, 86)}


def test_ood_flag_marks_real_ct_vertebrae_graded_by_a_phantom_model(store, real_data):
    """The default model saw only phantoms: a real CT's vertebrae lie beyond the held-out phantom patients
    and are flagged, while the store's own phantom latents are flagged at about the reference's 1 %.

    On this 20-patient store the 99 % threshold is about the 2nd largest of ~160 held-out distances and
    moves with the salt (63-67 here, against real vertebrae at 66-72), so the firm check is against the
    95th percentile (40-45), and at least half of the real vertebrae must carry the flag itself."""
    import nibabel as nib

    from latentstore.fit import fit, load_fit
    from latentstore.reference import _patients_of, latent_stats, ood_reference
    from latentstore.grade import score_latents
    from latentstore.index import resolve_model_id
    from latentstore.search import _encode_image

    st, archive = store
    import_labels(st, archive / "ground_truth.csv")
    fit(st, bootstrap=4, cv=False)
    h, c = load_fit(st, resolve_model_id(st, None))
    _, z = read_latents(st, h.model_id)
    assert score_latents(h, c, z)["ood"].mean() < 0.05
    ct = real_data / "ct-nifti" / "example_ct.nii.gz"
    affine = nib.load(ct).affine
    real = np.stack([_encode_image(st, h.model_id, ct, tuple(affine[:3, :3] @ v + affine[:3, 3]))
                     for v in REAL_CT_BODIES.values()])
    s = score_latents(h, c, real)
    mean, std, _, ids, ref, _ = latent_stats(st, h.model_id)
    p95 = ood_reference((ref - mean) / std, _patients_of(st, ids), quantile=0.95)[-1]
    detail = f"real CT OOD distances {s['ood_distance']}, 95th percentile {p95:.1f}, threshold {h.ood_threshold:.1f}"
    assert (s["ood_distance"] > p95).all() and s["ood"].sum() >= len(real) // 2, detail


def test_grade_reports_a_real_ct_scan_as_out_of_distribution(store, real_data, tmp_path):
    """Scan level: a real CT ingested into a store of phantoms, encoded and graded, is named in the grade
    summary as a scan unlike the model's latents (half or more of its vertebrae flagged), not silently graded.
    Its vertebrae must not become part of the reference they are judged against (`reference.ood_reference` leaves
    such patients out). Of the phantom scans only those with metal implants may be named with it."""
    import csv
    import shutil

    from latentstore.encode import encode
    from latentstore.fit import fit
    from latentstore.grade import grade, ood_scans
    from latentstore.ingest.privacy import known_sites, pseudonym
    from latentstore.ingest.run import ingest
    from latentstore.verse import Centroids, write_centroids

    st0, archive = store
    st = latentstore.connect(shutil.copytree(st0.root, tmp_path / "store"))
    real = tmp_path / "real"
    (real / "rawdata" / "sub-realct").mkdir(parents=True)
    (real / "derivatives" / "sub-realct").mkdir(parents=True)
    (real / "rawdata" / "sub-realct" / "sub-realct_ct.nii.gz").symlink_to(real_data / "ct-nifti" / "example_ct.nii.gz")
    labels = {"L5": 24, "L4": 23, "L3": 22, "L2": 21}
    write_centroids(real / "derivatives" / "sub-realct" / "sub-realct_seg-subreg_ctd.json",
                    Centroids(("R", "A", "S"), {labels[k]: v for k, v in REAL_CT_BODIES.items()}))
    before = set(st.slices.read(columns=["scan_id"]).column("scan_id").to_pylist())
    ingest(st, real, progress=False)
    real_scans = set(st.slices.read(columns=["scan_id"]).column("scan_id").to_pylist()) - before
    assert len(real_scans) == 1
    encode(st, progress=False)
    import_labels(st, archive / "ground_truth.csv")
    fit(st, bootstrap=4, cv=False)
    summary = grade(st, progress=False)
    flagged = set(summary.ood_scan_ids)
    assert real_scans <= flagged, ood_scans(st, summary.model_id)
    # a phantom scan may be flagged too, but only one with metal implants (streak artefacts)
    salt, sites = st.existing_salt(), known_sites(st)
    with open(archive / "scans.csv") as f:
        implants = {pseudonym("scan", r["scan"], salt, site) for r in csv.DictReader(f) if r["implant"] != "none"
                    for site in sites}
    assert flagged - real_scans <= implants, ood_scans(st, summary.model_id)
    assert "unlike the model's latents" in str(summary.__rich__())
