"""fit and regrade speed (issue 12), as ratios and seconds measured in one run.

    python bench/grading.py --labelled 10000 --latents 1000000 [--out DIR]

Builds a store of `--latents` random 512-d latents with a planted fracture direction (slices rows only for
the `--labelled` ones, a random subset spread over every part, which get labels), then measures:

- fit on the labelled latents: the first fit on these latents (it computes and caches the normalisation and
  OOD reference over all of them), then refits: the hyperplane + calibration alone (`--bootstrap 0`, no
  cross-validation) and the CLI default (16 bootstrap refits and the grouped 5-fold AUC on top), for
  logistic regression and the linear SVM (targets: <= 1 s and <= 5 s);
- grade over all latents (read, score, write into the catalog) against only reading them the same way
  (the same `latent_arrays` stream into numpy), as a throughput ratio (target >= 0.8); the two alternate
  `--repeat` times after one untimed read, the best of each is compared, and the median of the pairs'
  ratios is printed beside it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import latentstore  # noqa: E402
from latentstore import catalog  # noqa: E402
from latentstore.encode import latent_part_name, latents_table  # noqa: E402
from latentstore.schema import IMAGE_PX, arrow_schema  # noqa: E402

MODEL = "bench0000grading"
D = 512


def build(root: Path, n_latents: int, n_labelled: int, seed: int = 0) -> latentstore.Store:
    rng = np.random.default_rng(seed)
    st = latentstore.connect(root)
    u = rng.normal(size=D).astype(np.float32)
    u /= np.linalg.norm(u)
    ids = np.arange(1, n_latents + 1, dtype=np.int64) * 7919
    grades = rng.choice([0, 1, 2, 3], size=n_latents, p=[0.75, 0.08, 0.1, 0.07])
    ds = st.latents(MODEL)
    for a in range(0, n_latents, 65536):
        sl = slice(a, min(a + 65536, n_latents))
        z = rng.standard_normal((sl.stop - sl.start, D), dtype=np.float32) * 0.5 + 1.0
        z += np.outer(grades[sl] * 1.0, u).astype(np.float32)
        name = latent_part_name(ids[sl])
        ds.write_staged(latents_table(ids[sl], z), "bench", name)
        ds.publish("bench", name)
    # the labelled latents are a random subset, as in a real store, where slice ids are hashes: every part,
    # and nearly every row group, holds some of them
    pick = np.sort(rng.choice(n_latents, size=n_labelled, replace=False))
    lab, lab_grades = ids[pick], grades[pick]
    scans = [f"scan-{i // 4:06d}" for i in range(n_labelled)]
    schema = arrow_schema("slices")
    cols = {
        "slice_id": pa.array(lab), "scan_id": pa.array(scans), "patient_key": pa.array(scans),
        "site": pa.array(["bench"] * n_labelled), "level": pa.array([20 + i % 4 for i in range(n_labelled)], pa.int16()),
        "level_name": pa.array([f"L{1 + i % 4}" for i in range(n_labelled)]),
        "source_uri": pa.array(["file-0"] * n_labelled), "source_format": pa.array(["nifti"] * n_labelled),
        "content_hash": pa.array(["0"] * n_labelled),
        "centroid_mm": pa.array([[0.0, 0.0, 0.0]] * n_labelled, schema.field("centroid_mm").type),
        "spacing_mm": pa.array([[1.0, 1.0, 1.0]] * n_labelled, schema.field("spacing_mm").type),
        "slicing": pa.array(["{}"] * n_labelled), "slicing_hash": pa.array(["0"] * n_labelled),
        "image": pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(n_labelled * IMAGE_PX, np.int16)),
                                                   type=schema.field("image").type),
    }
    (root / "slices").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(cols, schema=schema), root / "slices" / "part-bench.parquet")
    with catalog.writer(st) as con:
        con.executemany("INSERT INTO label_rows VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [["bench-import", "bench", s, 20 + i % 4, f"L{1 + i % 4}", int(lab_grades[i]), bool(lab_grades[i] >= 1),
                          None, None, i] for i, s in enumerate(scans)])
        con.execute("INSERT INTO label_imports VALUES ('bench-import', 'bench', 'long', 'x', ?, ?, ?, 0, '[]')",
                    [catalog.utcnow(), n_labelled, n_labelled])
    return st


def timed(fn, *a, **k) -> tuple[float, object]:
    t0 = time.perf_counter()
    r = fn(*a, **k)
    return time.perf_counter() - t0, r


def read_only(st) -> float:
    from latentstore.grade import latent_arrays

    t0 = time.perf_counter()
    n = 0
    for _, z in latent_arrays(st.latents(MODEL)):
        n += len(z)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--labelled", type=int, default=10_000)
    ap.add_argument("--latents", type=int, default=1_000_000)
    ap.add_argument("--out", type=Path, default=None, help="keep the store here (default: a temp folder)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--repeat", type=int, default=3, help="read/grade alternations (best of each is reported)")
    args = ap.parse_args(argv)
    from latentstore.fit import fit
    from latentstore.grade import grade

    root = args.out or Path(tempfile.mkdtemp(prefix="bench-grading-"))
    try:
        t_build, st = timed(build, root, args.latents, args.labelled)
        print(f"store: {args.latents} latents, {args.labelled} labelled, built in {t_build:.1f} s ({root})", flush=True)
        res = {"latents": args.latents, "labelled": args.labelled}
        import sklearn.linear_model  # noqa: F401 (imports are the interpreter's start-up, not the fit)
        import sklearn.svm  # noqa: F401

        cold, _ = timed(fit, st, MODEL, bootstrap=0, cv=False)
        res["fit_cold_s"] = round(cold, 3)
        print(f"fit, first on these latents (normalisation + OOD reference computed and cached): {cold:.2f} s", flush=True)
        for kind in ("logistic", "svm"):
            core, s = timed(fit, st, MODEL, classifier=kind, bootstrap=0, cv=False)
            full, _ = timed(fit, st, MODEL, classifier=kind)
            res[f"fit_{kind}_core_s"], res[f"fit_{kind}_default_s"] = round(core, 3), round(full, 3)
            res[f"fit_{kind}_train_auc"] = round(s.train_auc, 4)
            print(f"fit {kind}: {core:.2f} s (hyperplane + calibration, cached reference), {full:.2f} s with "
                  f"16 bootstrap refits and the grouped 5-fold AUC; train AUC {s.train_auc:.3f}", flush=True)
        # Read and grade alternate, `--repeat` times, best of each: on a shared 2-core VM a pass can lose
        # seconds to the hypervisor or the page cache, and alternating exposes both sides to the same spells.
        # Each grade follows a refit (a new calibration), so each grades every latent again.
        # One read first, untimed: the store was just written, and the first full pass over it met a colder
        # page cache than every later one (in session 9 the first pair's ratio was the highest of every run).
        read_only(st)
        t_read, t_grade, g, pairs = None, None, None, []
        for _ in range(args.repeat):
            r = read_only(st)
            fit(st, MODEL, cv=False)
            t, out = timed(grade, st, MODEL, progress=False)
            pairs.append(round(r / t, 3))
            t_read = r if t_read is None else min(t_read, r)
            t_grade, g = (t, out) if t_grade is None or t < t_grade else (t_grade, g)
        res["pair_ratios"] = pairs
        res["pair_ratio_median"] = float(np.median(pairs))
        t_again, g2 = timed(grade, st, MODEL, progress=False)
        res.update(read_s=round(t_read, 2), grade_s=round(t_grade, 2), grade_noop_s=round(t_again, 2),
                   graded=g.graded, throughput_ratio=round(t_read / t_grade, 3))
        print(f"grade: {g.graded} latents in {t_grade:.2f} s ({g.graded / t_grade:.0f}/s); reading them alone "
              f"{t_read:.2f} s; throughput ratio grade / read = {t_read / t_grade:.2f} (target >= 0.8); "
              f"a second grade (nothing new) {t_again:.2f} s, {g2.graded} graded; read/grade of each alternation: {pairs} "
              f"(median {np.median(pairs):.2f})")
        if args.json:
            args.json.write_text(json.dumps(res, indent=2) + "\n")
        print(json.dumps(res))
    finally:
        if args.out is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
