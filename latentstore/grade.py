"""`latentstore grade` / `regrade`: a Genant grade for every latent, incrementally; refit when labels change.

`grade` scores each latent of a model that has no grade under the model's current calibration (its latest
fit): signed distance to the hyperplane, calibrated score, its bootstrap spread (`score_sd`), the grade
(round, clip 0..3) and the out-of-distribution flag; rows go to the catalog's `grades` with the model,
hyperplane and calibration versions, in transactions of GRADE_CHUNK rows, so a killed run keeps what it
committed and the next run grades only the rest. A second run grades nothing.

`regrade` is what a schedule runs (`jobs/regrade.py`, `infra/`): it re-runs the current fit's label query,
refits with the same settings when the label set's hash changed (new or corrected labels), then grades
what has no grade under the (possibly new) calibration: new latents after an ingest + encode, everything
after a refit. Both record a run.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import catalog
from .errors import InputError, StoreError
from .fit import Calibration, Hyperplane, fit, load_fit, select_labels, settings, to_grade
from .index import isin_sorted
from .progress import Bar
from .result import Result
from .store import Store, connect

GRADE_CHUNK = 262_144  # rows per catalog transaction
READ_BATCH = 65_536
READ_AHEAD = 3  # batches queued ahead of the scorer (~130 MB each at 512-d: with the one being decoded and
# the caller's, up to ~670 MB in flight)
OOD_SCAN_SHARE = 0.5  # a scan is out of distribution when at least this share of its graded vertebrae are
OOD_SCANS_LISTED = 20


@dataclass
class GradeSummary(Result):
    run_id: str
    stage: str
    model_id: str
    hyperplane_version: int = 0
    calibration_version: int = 0
    refit: bool = False
    refit_reason: str = ""
    latents: int = 0
    already_graded: int = 0
    graded: int = 0
    ood: int = 0
    by_grade: dict = field(default_factory=dict)
    ood_scans: int = 0  # scans with at least OOD_SCAN_SHARE of their current grades flagged
    ood_scan_ids: list = field(default_factory=list)  # the first OOD_SCANS_LISTED of them, most flagged first
    ood_scans_note: str = ""  # why they could not be listed (the grades stand)
    status: str = "running"
    seconds: float = 0.0
    latents_per_s: float = 0.0

    def __rich__(self):
        refit = f"refitted ({self.refit_reason}) -> " if self.refit else ""
        grades = ", ".join(f"G{g} {n}" for g, n in sorted(self.by_grade.items()))
        text = (f"{self.stage}: model {self.model_id}, {refit}hyperplane v{self.hyperplane_version}, calibration "
                f"v{self.calibration_version}: {self.graded} latents graded ({grades or 'none'}; {self.ood} flagged "
                f"out of distribution), {self.already_graded} already graded, {self.seconds:.1f} s "
                f"({self.latents_per_s:.0f} latents/s); run {self.run_id}")
        if self.ood_scans:
            listed = ", ".join(self.ood_scan_ids[:5]) + (", ..." if self.ood_scans > 5 else "")
            text += (f"\n{self.ood_scans} scan(s) unlike the model's latents (half or more of their vertebrae out "
                     f"of distribution: check them before trusting their grades): {listed}")
        if self.ood_scans_note:
            text += f"\n{self.ood_scans_note}"
        return text


def score_latents(h: Hyperplane, c: Calibration, z: np.ndarray) -> dict[str, np.ndarray]:
    """Distance, score, score_sd, grade, OOD distance and flag of raw latents (N, D)."""
    d, boot_d, ood_d = h.raw_scores(z)
    score = c.score(d)
    boot = c.boot_scores(boot_d)
    return {"distance": d.astype(np.float32), "score": score.astype(np.float32),
            "score_sd": boot.std(axis=1).astype(np.float32), "grade": to_grade(score),
            "ood": ood_d > h.ood_threshold, "ood_distance": ood_d.astype(np.float32)}


def graded_ids(st: Store, calibration_version: int) -> np.ndarray:
    con = catalog.reader(st)
    try:
        t = con.sql("SELECT slice_id FROM grades WHERE calibration_version = ?",
                    params=[calibration_version]).to_arrow_table()
    finally:
        con.close()
    return np.sort(t.column("slice_id").to_numpy().astype(np.int64))


SCORED = ("distance", "score", "score_sd", "grade", "ood", "ood_distance")


def _write(st: Store, rows: list[pa.Table], h: Hyperplane, c: Calibration, run_id: str) -> None:
    """One transaction: the scored rows, with the versions, run and time as constants of the INSERT."""
    table = pa.concat_tables(rows)
    with catalog.writer(st) as con:
        con.execute("SET threads TO 1")  # the insert shares the cores with the decoder and the scorer
        con.register("new_grades", table)
        con.execute(f"INSERT INTO grades SELECT slice_id, ?, ?, ?, {', '.join(SCORED)}, ?, ? FROM new_grades",
                    [h.model_id, h.hyperplane_version, c.calibration_version, run_id, catalog.utcnow()])
        con.unregister("new_grades")


def _grade(st: Store, h: Hyperplane, c: Calibration, summary: GradeSummary, progress: bool) -> None:
    """Three stages overlap: the next batch is read and decoded (`latent_arrays`' thread), this one is
    scored here, the last chunk is written to the catalog (a writer thread). BLAS keeps one core free for
    the decoding: on 2 cores, 2 BLAS threads beside the reader made scoring 4x slower than alone."""
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    ds = st.latents(h.model_id)
    if not ds.parts():
        raise StoreError(f"no latents of model {h.model_id} in {st.root}; run `latentstore encode` first")
    done = graded_ids(st, c.calibration_version)
    total = ds.count()
    summary.latents = total
    pending, n_pending = [], 0
    counts = np.zeros(4, np.int64)
    writing = None

    def flush(rows: list[pa.Table], n: int) -> None:
        nonlocal writing
        if writing is not None:
            writing.result()  # one write at a time; its error (a full disk, say) ends the run here
        writing = writer.submit(_write, st, rows, h, c, summary.run_id)
        writing.add_done_callback(lambda f: f.exception() is None and _add_graded(summary, n))

    with (Bar(summary.stage, total, "latents", enabled=progress) as bar, ThreadPoolExecutor(1) as writer,
          threadpool_limits(max(1, (os.cpu_count() or 2) - 1), user_api="blas")):
        seen = 0
        for ids, z in latent_arrays(ds, done):
            seen += len(ids)
            new = ~isin_sorted(ids, done) if z is not None else np.zeros(len(ids), bool)
            summary.already_graded += int((~new).sum())
            if new.any():
                s = score_latents(h, c, z if new.all() else z[new])
                pending.append(pa.table({"slice_id": pa.array(ids[new]),
                                         **{k: pa.array(s[k]) for k in SCORED}}))
                n_pending += int(new.sum())
                counts += np.bincount(s["grade"], minlength=4)
                summary.ood += int(s["ood"].sum())
                if n_pending >= GRADE_CHUNK:
                    flush(pending, n_pending)
                    pending, n_pending = [], 0
            bar.update(seen, info=f"{summary.graded + n_pending} graded")
        if pending:
            flush(pending, n_pending)
        if writing is not None:
            writing.result()
    summary.by_grade = {int(g): int(n) for g, n in enumerate(counts) if n}


def _add_graded(summary: GradeSummary, n: int) -> None:
    summary.graded += n


def ood_scans(st: Store, model_id: str) -> list[dict]:
    """Scans whose current grades under `model_id` are at least OOD_SCAN_SHARE out of distribution, most
    flagged first: one real CT among phantoms, a scan of another body part, a broken reconstruction. A few
    flagged vertebrae in a scan are ordinary (the per-slice threshold is a 99th percentile); half is not."""
    from .sql import query

    quoted = model_id.replace("'", "''")
    t = query(st, "SELECT s.scan_id, count(*) AS vertebrae, sum(g.ood::INT) AS flagged, max(g.grade) AS worst_grade "
                  "FROM current_grades g JOIN slices s USING (slice_id) "
                  f"WHERE g.model_id = '{quoted}' GROUP BY s.scan_id "
                  f"HAVING avg(g.ood::INT) >= {OOD_SCAN_SHARE} ORDER BY flagged DESC, s.scan_id")
    return t.to_pylist()


def latent_arrays(ds, done: np.ndarray | None = None, batch_size: int = READ_BATCH, ahead: int = READ_AHEAD):
    """(slice ids int64, z_sem float32 (n, D) or None) per batch of a latents dataset, part file by part file.

    `done`: sorted ids to skip. A part's ids are read first (8 bytes a latent); a part whose latents are all
    in `done` yields (ids, None) and its z_sem is never read, so a regrade with nothing new costs a scan of
    the ids only. A reader thread decodes up to `ahead` batches ahead of the caller (Parquet decoding and
    numpy release the GIL), so the decoder, the slowest stage, does not wait while the caller scores or
    waits on a write."""
    import queue
    import threading

    def batches():
        for name in ds.parts():
            with ds.store.fs.open_input_file(ds.part_path(name)) as f:
                pf = pq.ParquetFile(f)
                ids = pf.read(columns=["slice_id"]).column("slice_id").to_numpy().astype(np.int64)
                if done is not None and isin_sorted(ids, done).all():
                    yield ids, None
                    continue
                start = 0
                for batch in pf.iter_batches(batch_size=batch_size, columns=["z_sem"]):
                    z = batch.column("z_sem").flatten().to_numpy(zero_copy_only=False).reshape(batch.num_rows, -1)
                    yield ids[start : start + len(z)], z
                    start += len(z)

    out: queue.Queue = queue.Queue(maxsize=max(1, ahead))
    stop = threading.Event()
    end = object()

    def put(item) -> bool:
        """Queue `item` unless the caller has left (then False): no put may block a reader nobody reads."""
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            for item in batches():
                if not put(item):
                    return
            put(end)
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            put(e)

    reader = threading.Thread(target=produce, name="latent-reader", daemon=True)
    reader.start()
    try:
        while (item := out.get()) is not end:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        reader.join()


def _run(st: Store, stage: str, model_id: str, progress: bool, refit=None) -> GradeSummary:
    """One recorded grade run under the model's lock. `refit(summary, h, c)` (regrade) may refit first and
    returns the fit to grade with."""
    t0 = time.monotonic()
    with st.lock(f"grade-{model_id}", timeout_s=30):
        h, c = load_fit(st, model_id)  # no fit: a clear error before a run is recorded
        catalog.close_dead_runs(st, stage)
        run_id = catalog.start_run(st, stage, {"model_id": model_id})
        summary = GradeSummary(run_id=run_id, stage=stage, model_id=model_id)
        with catalog.recorded(st, summary, t0, "graded", "latents_per_s"):
            if refit is not None:
                h, c = refit(summary, h, c)
            summary.hyperplane_version, summary.calibration_version = h.hyperplane_version, c.calibration_version
            _grade(st, h, c, summary, progress)
            if summary.graded:
                try:
                    flagged = ood_scans(st, model_id)
                except (InputError, StoreError) as e:  # the grades are committed: report, do not fail the run
                    summary.ood_scans_note = f"scans out of distribution not listed: {e}"
                else:
                    summary.ood_scans = len(flagged)
                    summary.ood_scan_ids = [r["scan_id"] for r in flagged[:OOD_SCANS_LISTED]]
    return summary


def grade(store: Store | str | None, model: str | None = None, progress: bool = True) -> GradeSummary:
    """Grade every latent of `model` without a grade under its current calibration."""
    from .index import resolve_model_id

    st = connect(store)
    return _run(st, "grade", resolve_model_id(st, model), progress)


def regrade(store: Store | str | None, model: str | None = None, progress: bool = True) -> GradeSummary:
    """Refit when the current fit's labels changed (same settings), then grade what has no current grade."""
    from .index import resolve_model_id

    st = connect(store)
    model_id = resolve_model_id(st, model)

    def refit_if_needed(summary: GradeSummary, h: Hyperplane, c: Calibration) -> tuple[Hyperplane, Calibration]:
        selected = select_labels(st, h.label_query)
        if selected.digest == h.label_hash:
            return h, c
        fit(st, **settings(h, c), cv=False, selected=selected)
        summary.refit, summary.refit_reason = True, "labels changed"
        return load_fit(st, model_id)

    return _run(st, "regrade", model_id, progress, refit=refit_if_needed)
