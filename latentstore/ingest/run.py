"""`latentstore ingest`: an archive of CT scans -> the store's `slices/` dataset, one Ray task per scan.

The driver (this process) scans the archive, hashes patient identifiers, submits one task per scan,
publishes each staged part as its task finishes and records every rejected input in the catalog's
`errors` table. A task hashes the scan's bytes, returns at once when a part with that content and
slicing is already published, and otherwise loads the volume, cuts the slices and writes them as a
staged Parquet part. Only small summaries travel back to the driver, so its memory does not grow with
the archive, and at most a few tasks are queued ahead of the workers.

Why it is safe to kill and rerun (DESIGN section 4):
- a part is renamed into `slices/` only once it is completely written, so nothing half-written is
  ever visible;
- a part's name is a hash of its scan's content and the slicing parameters, so a rerun skips what is
  published and a duplicate file in the archive is caught as such;
- one ingest at a time holds `<store>/ingest.lock`, so leftovers in `slices/_staging/` belong to dead
  runs and are removed at the start of the next one.

Exit status (the CLI and `jobs/ingest.py`): 0 when every input was used; `PartialFailure` (4) when
any input (a file, a scan or a single vertebra) was rejected, even if all of them were: the run itself
worked and its error rows say what to fix. Argument and store problems stop the run before it starts
(`InputError` 2, `StoreError` 3).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import secrets
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from .. import catalog
from ..catalog import ErrorRow
from ..errors import InputError, LatentstoreError, StoreError
from ..progress import Bar
from ..levels import NAMES, ORDER, level_name
from ..schema import IMAGE_PX, arrow_schema
from ..result import Result
from ..store import Store, connect, part_name, patient_key, slice_id
from . import SlicingConfig, cut_slices, load_scan, scan_archive
from .privacy import Redactor, check_site, default_site, relative, shown

ERROR_FLUSH_S = 5.0  # error rows reach the catalog at least this often (they are in the journal at once)
FLUSH_WAIT_S = 1.0  # how long a flush during the run waits for a busy catalog before trying later
MAX_ERRORS_PER_SCAN = 20  # rows of one scan beyond this are summarised in one row
MAX_SHOWN = 30  # error lines printed with their real paths during the run


@dataclass
class IngestSummary(Result):
    """What one ingest run did; `to_dict()` is the `--json` output (real paths: for the terminal only)."""

    run_id: str
    archive: str
    store: str
    site: str = ""
    files_rejected: int = 0  # files in the archive that are no usable scan input (not CT, unreadable, ...)
    duplicates_rejected: int = 0  # copies with the same bytes as a file kept instead
    duplicates: list[str] = field(default_factory=list)  # "copy -> kept" (archive-relative; never stored)
    scans_seen: int = 0
    scans_ingested: int = 0
    scans_skipped: int = 0  # already published by an earlier run
    scans_rejected: int = 0  # no slice stored: unreadable, bad geometry, duplicate, ...
    slices_written: int = 0
    levels_rejected: int = 0  # single vertebrae left out of an otherwise good scan
    errors: int = 0
    errors_by_reason: dict[str, int] = field(default_factory=dict)
    staging_dropped: int = 0  # stale staged files of crashed runs removed at the start
    journal_rows_loaded: int = 0  # error rows of killed runs loaded from their journals at the start
    seconds: float = 0.0
    status: str = "running"

    @property
    def clean(self) -> bool:
        return self.errors == 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __rich__(self):
        return summary_table(self)


def ingest(
    store: "Store | str | os.PathLike | None",
    archive: str | os.PathLike,
    address: str | None = None,
    workers: int | None = None,
    slicing: "SlicingConfig | None" = None,
    progress: bool = True,
    site: str | None = None,
) -> IngestSummary:
    """Ingest every scan of `archive` into `store`'s `slices/` dataset; return the run's summary.

    Args:
        store: the store (`latentstore.connect(...)`; a folder or URI is opened here).
        archive: folder with NIfTI (VerSe layout) and/or DICOM scans and their centroid files.
        address: Ray cluster address; None uses `$RAY_ADDRESS`, else starts a local Ray.
        workers: scans processed at once (default: the local Ray's / the cluster's CPUs).
        slicing: how slices are cut (default `SlicingConfig()`: 96 x 96 px of 1 mm).
        progress: show a progress bar on stderr (and rejected inputs with their real paths).
        site: the archive's site, part of every key (default: derived once per archive, `privacy.py`).

    Rejected inputs do not raise: they are counted in the summary and recorded in `errors`. An archive
    without a single scan raises `InputError` before anything is written (no store is created). Nothing
    identifying is stored: scans and files are pseudonyms (`privacy.py`, `latentstore locate`).
    """
    slicing = slicing or SlicingConfig()
    if slicing.size * slicing.size != IMAGE_PX:
        raise InputError(f"slicing size {slicing.size} does not fit the store's 96x96 image column")
    if workers is not None and workers < 1:
        raise InputError(f"--workers must be at least 1, got {workers}")
    if site is not None:
        check_site(site)
    root = Path(archive).expanduser().resolve()
    if not root.is_dir():
        raise InputError(f"archive {archive} is not a folder")
    t0 = time.monotonic()
    st = connect(store)
    # Hash with the store's salt from the start; a new store's salt is written only once there is a scan.
    salt = st.existing_salt()
    fresh_salt = None if salt else secrets.token_hex(32).encode()
    sources, scan_errors = scan_archive(root, salt or fresh_salt)
    if not sources:
        reasons = Counter(reason_key(e.stage, e.reason) for e in scan_errors)
        why = "; ".join(f"{n} x {r}" for r, n in reasons.most_common(5)) or "the folder holds no files"
        raise InputError(f"no usable CT scan in {shown(archive)} ({why}); nothing was written")
    with st.lock("ingest"):
        if st.salt(initial=fresh_salt) != (salt or fresh_salt):
            raise StoreError(f"another run created {st.root} while this one scanned the archive; run ingest again")
        salt = salt or fresh_salt
        _check_one_slicing(st, slicing)
        site = site or default_site(st, [s.content_hash for s in sources], salt)
        red = Redactor(root, salt, site)
        # No archive root, store path, file or scan name in the catalog: the site and the run's settings only.
        args = {"site": site, "address": address, "workers": workers, "slicing": json.loads(slicing.to_json())}
        loaded = catalog.apply_journals(st, "ingest")  # rows and ends of runs killed, or whose catalog was busy
        catalog.close_dead_runs(st, "ingest")  # we hold the ingest lock: any "running" ingest is dead
        run_id = catalog.start_run(st, "ingest", args)
        summary = IngestSummary(run_id=run_id, archive=shown(root), store=st.root, site=site, journal_rows_loaded=loaded)
        errors = _ErrorSink(st, run_id, summary, red, show=progress)
        try:
            summary.staging_dropped = st.slices.clear_staging()
            for e in scan_errors:
                if e.duplicate:
                    summary.duplicates_rejected += 1
                    summary.duplicates.append(f"{shown(relative(e.source, root))} -> {shown(relative(e.related, root))}")
                else:
                    summary.files_rejected += 1
                reason = e.reason + (f" ({red.file(e.related)})" if e.related else "")
                errors.add(e.source, e.stage, reason, name=e.name, level=e.level, paths=(e.source, e.related))
            summary.scans_seen = len(sources)
            ids = {s.name: (red.scan(s.name), red.file(s.ct), site, patient_key(s.patient, salt, site)) for s in sources}
            del salt  # the salt stays in the driver; tasks get finished keys only
            _run(sources, ids, slicing, st, run_id, root, address, workers, progress, summary, errors)
        except BaseException as e:
            summary.status = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
            summary.seconds = round(time.monotonic() - t0, 3)
            _finish_quietly(st, run_id, errors, summary)
            raise
        st.slices.clear_staging(run_id)  # empty by now unless a publish failed; its leftovers are not needed
        summary.status = "ok" if summary.clean else "partial"
        summary.seconds = round(time.monotonic() - t0, 3)
        errors.finish(summary.status, _counts(summary))
    return summary


def _check_one_slicing(st: Store, slicing: "SlicingConfig") -> None:
    """A store holds slices of one slicing config: with two, every vertebra would be stored twice and
    training and search would see both copies. Another config needs another store."""
    import pyarrow.parquet as pq

    parts = st.slices.parts()
    if not parts:
        return
    with st.fs.open_input_file(st.slices.part_path(parts[0])) as f:
        stored = pq.read_table(f, columns=["slicing_hash", "slicing"]).slice(0, 1).to_pylist()
    if stored and stored[0]["slicing_hash"] != slicing.hash:
        raise InputError(
            f"{st.root} holds slices cut with {stored[0]['slicing']}; slicing {slicing.to_json()} needs "
            "its own store (--store)"
        )


def _run(sources, ids, slicing, st: Store, run_id: str, root: Path, address, workers, progress, summary, errors) -> None:
    """Submit one task per new scan with a bounded queue; publish and record results as they arrive."""
    published_here: dict[str, str] = {}  # part name -> the raw name of the scan that owns it in this run
    bar = _Progress(progress, len(sources))
    errors.bar = bar
    try:
        todo = list(_new_scans(sources, slicing, st, published_here, summary, errors, bar))
        if todo:  # a rerun with nothing new does not pay for starting Ray
            _submit_all(todo, ids, slicing, st, run_id, root, address, workers, published_here, summary, errors, bar)
    finally:
        bar.close()


def _submit_all(todo, ids, slicing, st: Store, run_id, root, address, workers, published_here, summary, errors, bar) -> None:
    import ray

    from .. import cluster

    with cluster.session(address, num_cpus=workers) as started:
        cpus = int(cluster.resources()["CPU"]) or 1
        # With our own local Ray, Ray caps the running tasks at `workers` CPUs and one more task per
        # CPU waits ready; on a shared cluster `--workers` itself is the cap.
        limit = 2 * cpus if (started or workers is None) else workers
        # The raw patient identifier stays in the driver: tasks get the source without it.
        args = lambda src: (dataclasses.replace(src, patient=""), ids[src.name], slicing, st.root, run_id)  # noqa: E731
        for src, result in cluster.task_pool(ingest_scan, todo, args, limit):
            if isinstance(result, ray.exceptions.RayError):
                # A worker that died (out of memory, segfault in a decoder) takes one scan with it.
                result = _error("worker", f"worker failed: {type(result).__name__}: {str(result).splitlines()[0][:300]}")
            _handle(result, src, st, run_id, published_here, summary, errors)
            bar.advance(summary)
            errors.maybe_flush()


def _new_scans(sources, slicing, st: Store, published_here: dict, summary, errors, bar):
    """The scans that need a task, in archive order. A scan whose content hash the scanner already
    knows is skipped here when its part is published, and rejected as a duplicate when an earlier scan
    of this run has the same bytes (the first one in archive order is kept, so reruns agree)."""
    published = set(st.slices.parts())
    for src in sources:
        if not src.content_hash:
            yield src  # the task hashes it; duplicates are then caught as results arrive
            continue
        part = part_name(src.content_hash, slicing.hash)
        first = published_here.setdefault(part, src.name)
        if first != src.name:
            summary.scans_rejected += 1
            errors.scan_error(src, "publish", f"duplicate: same content as scan {errors.red.scan(first)}")
            bar.advance(summary)
        elif part in published:
            summary.scans_skipped += 1
            bar.advance(summary)
        else:
            yield src


def _handle(result: dict, src, st: Store, run_id: str, published_here: dict, summary: IngestSummary, errors: "_ErrorSink") -> None:
    kind = result["kind"]
    if kind == "error":
        summary.scans_rejected += 1
        errors.scan_error(src, result["stage"], result["reason"])
        return
    part = result["part"]
    first = published_here.setdefault(part, src.name)
    if first != src.name:
        # Same bytes as a scan already handled in this run: store it once, say so for the other.
        summary.scans_rejected += 1
        errors.scan_error(src, "publish", f"duplicate: same content as scan {errors.red.scan(first)}")
        if kind == "staged":
            st.slices.discard_staged(run_id, part)
        return
    if kind == "skipped":
        summary.scans_skipped += 1
        return
    # The scan's error rows are on disk before its part is visible: a kill between the two loses none.
    for level, reason in result["rejected_levels"]:
        summary.levels_rejected += 1
        errors.scan_error(src, "cut", f"{_name(level)}: {reason}", level=level)
    errors.end_scan(src)
    errors.sync()
    try:
        fresh = st.slices.publish(run_id, part)
    except OSError as e:
        summary.scans_rejected += 1
        errors.scan_error(src, "publish", f"cannot publish part: {e}")
        st.slices.discard_staged(run_id, part)
        return
    if not fresh:
        summary.scans_skipped += 1  # the same content was published between the task's check and now
        return
    summary.scans_ingested += 1
    summary.slices_written += result["rows"]


# -- the task: plain Python, run by Ray workers -----------------------------------------------------------


def ingest_scan(src, ids: tuple[str, str, str, str], slicing, store_root: str, run_id: str) -> dict:
    """One scan -> a staged part file. Returns a small dict: `kind` is "staged", "skipped" or "error".

    `ids`: the scan's (scan_id, source_uri, site, patient_key), pseudonyms made by the driver.
    Never raises for bad input: the driver turns an "error" result into an `errors` row.
    """
    content_hash = src.content_hash
    if not content_hash:
        try:
            content_hash = hash_files(src.files or (src.ct,))
        except OSError as e:
            return _error("read", f"cannot read: {e.strerror or e}")
    part = part_name(content_hash, slicing.hash)
    st = Store(store_root)
    if st.slices.has_part(part):  # the driver checked already, unless the scanner left the hash to us
        return {"kind": "skipped", "part": part}
    try:
        vol = load_scan(src)
    except LatentstoreError as e:
        return _error("load", str(e))
    except Exception as e:  # decoders raise many types on corrupt files; each is a bad input here
        return _error("load", f"unreadable ({type(e).__name__}): {e}")
    try:
        cuts, rejected = cut_slices(vol, slicing)
    except LatentstoreError as e:
        return _error("cut", str(e))
    except Exception as e:
        return _error("cut", f"cannot cut slices ({type(e).__name__}): {e}")
    if not cuts:
        why = "; ".join(f"{_name(lv)}: {r}" for lv, r in rejected[:5]) or "no centroids"
        more = f"; and {len(rejected) - 5} more" if len(rejected) > 5 else ""
        return _error("cut", f"no vertebra could be cut ({why}{more})")
    table = slices_table(src, ids, content_hash, vol, cuts, slicing)
    try:
        st.slices.write_staged(table, run_id, part)
    except OSError as e:
        return _error("write", f"cannot write staged part: {e}")
    return {"kind": "staged", "part": part, "rows": table.num_rows, "rejected_levels": [(int(lv), str(r)) for lv, r in rejected]}


def slices_table(src, ids: tuple[str, str, str, str], content_hash: str, vol, cuts, slicing) -> pa.Table:
    """The rows of one scan, in the Arrow schema of `schemas/slices.sql`, superior level first."""
    scan_id, source_uri, site, key = ids
    rank = {label: i for i, label in enumerate(ORDER)}
    cuts = sorted(cuts, key=lambda c: rank.get(int(c.level), 99))
    n = len(cuts)
    images = np.stack([np.asarray(c.image) for c in cuts])  # (n, 96, 96) HU
    if images.shape[1:] != (slicing.size, slicing.size):
        raise ValueError(f"cut_slices returned images of shape {images.shape[1:]}, expected {slicing.size}^2")
    images = images.astype(np.int16, copy=False).reshape(n, IMAGE_PX)
    spacing = np.asarray(vol.spacing_mm, dtype=float)  # mm per voxel along the source's array axes
    centroids = np.array([np.asarray(c.centroid_mm, dtype=float) for c in cuts]).reshape(n, 3)
    slicing_json, slicing_hash = slicing.to_json(), slicing.hash
    schema = arrow_schema("slices")
    columns = {
        "slice_id": pa.array([slice_id(content_hash, c.level, slicing_hash) for c in cuts], pa.int64()),
        "scan_id": pa.array([scan_id] * n, pa.string()),
        "patient_key": pa.array([key] * n, pa.string()),
        "site": pa.array([site] * n, pa.string()),
        "level": pa.array([int(c.level) for c in cuts], pa.int16()),
        "level_name": pa.array([level_name(c.level) for c in cuts], pa.string()),
        "source_uri": pa.array([source_uri] * n, pa.string()),
        "source_format": pa.array([src.format] * n, pa.string()),
        "content_hash": pa.array([content_hash] * n, pa.string()),
        "centroid_mm": _fixed(centroids.ravel(), 3, schema.field("centroid_mm").type),
        "spacing_mm": _fixed(np.tile(spacing, n), 3, schema.field("spacing_mm").type),
        "slicing": pa.array([slicing_json] * n, pa.string()),
        "slicing_hash": pa.array([slicing_hash] * n, pa.string()),
        "image": _fixed(images.ravel(), IMAGE_PX, schema.field("image").type),
    }
    return pa.Table.from_arrays([columns[f.name] for f in schema], schema=schema)


def hash_files(files) -> str:
    """sha256 hex of a scan's bytes, by the scanner's rule (`ScanSource.content_hash`): of the file for
    one file; for a series, of the concatenated raw sha256 digests of its files in the given order.
    Only used when the scanner left the hash empty."""
    digests = []
    for path in files:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        digests.append(h.digest())
    if len(digests) == 1:
        return digests[0].hex()
    return hashlib.sha256(b"".join(digests)).hexdigest()


def _name(level: int) -> str:
    # Rejected levels may carry labels that are no vertebra (a mask's stray label): name them, never raise.
    return NAMES.get(int(level), f"label {level}")


def _fixed(values: np.ndarray, size: int, type_: pa.DataType) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(values, type_.value_type), type=type_)


def _error(stage: str, reason: str) -> dict:
    return {"kind": "error", "stage": stage, "reason": str(reason)}


# -- driver helpers -------------------------------------------------------------------------------------


class _ErrorSink:
    """The run's error rows: scrubbed of names, shown with their real paths on the terminal, written
    through a journal (`catalog.Journal`) that is on disk before the catalog, and loaded into the
    catalog in batches (one short catalog lock each; a busy catalog is retried later)."""

    def __init__(self, st: Store, run_id: str, summary: IngestSummary, red: Redactor, show: bool = True):
        self.st, self.run_id, self.summary, self.red, self.show = st, run_id, summary, red, show
        self.journal = catalog.Journal(st, run_id)
        self.pending: list[ErrorRow] = []
        self.applied = 0  # journal rows already in the catalog
        self.reasons: Counter[str] = Counter()
        self.per_scan: Counter[str] = Counter()
        self.overflow: dict[str, Counter] = {}
        self.last = time.monotonic()
        self.bar = None

    def add(self, source, stage: str, reason: str, name: str | None = None, level: int | None = None, paths=()) -> None:
        """One error row: `source` is a real path (stored as its pseudonym), `name` the raw scan name."""
        scan_id = self.red.scan(name) if name else None
        if scan_id is not None:
            self.per_scan[scan_id] += 1
            if self.per_scan[scan_id] > MAX_ERRORS_PER_SCAN:
                self.overflow.setdefault(scan_id, Counter())[reason_key(stage, self.red.scrub(reason, paths))] += 1
                self._count(stage, reason)
                return
        clean = self.red.scrub(reason, (source, *paths))
        row = ErrorRow(self.red.file(source), stage, clean, scan_id, level)
        self.journal.add(row)
        self.pending.append(row)
        self._count(stage, clean)
        if self.show and self.summary.errors <= MAX_SHOWN:
            self._print(f"rejected {shown(relative(source, self.red.root))}: {stage}: {reason}")
        elif self.show and self.summary.errors == MAX_SHOWN + 1:
            self._print("more rejected inputs: see the errors table; `latentstore locate` maps a pseudonym to its file")

    def scan_error(self, src, stage: str, reason: str, level: int | None = None) -> None:
        self.add(src.ct, stage, reason, name=src.name, level=level, paths=(src.ct, src.centroids, src.mask, *src.files))

    def end_scan(self, src) -> None:
        """One row summarising the rows of `src` beyond `MAX_ERRORS_PER_SCAN`, if there were any."""
        scan_id = self.red.scan(src.name)
        if scan_id in self.overflow:
            self._summarise(scan_id, self.red.file(src.ct))

    def _summarise(self, scan_id: str, source: str) -> None:
        extra = self.overflow.pop(scan_id)
        top = "; ".join(f"{k} x{v}" for k, v in extra.most_common(3))
        row = ErrorRow(source, "summary", f"{sum(extra.values())} more error row(s) of this scan not stored one by one: {top}", scan_id)
        self.journal.add(row)
        self.pending.append(row)

    def _count(self, stage: str, reason: str) -> None:
        self.summary.errors += 1
        self.reasons[reason_key(stage, reason)] += 1
        self.summary.errors_by_reason = dict(self.reasons.most_common())

    def _print(self, line: str) -> None:
        import sys

        console = getattr(getattr(self.bar, "progress", None), "console", None)
        if console is not None:
            console.print(line, markup=False, highlight=False, soft_wrap=True, style="red")
        else:
            print(line, file=sys.stderr)

    def sync(self) -> None:
        self.journal.sync()

    def maybe_flush(self) -> None:
        if self.pending and time.monotonic() - self.last > ERROR_FLUSH_S:
            try:
                self.flush(FLUSH_WAIT_S)
            except StoreError:
                self.last = time.monotonic()  # the catalog is busy: the rows are in the journal; try later

    def flush(self, timeout_s: float | None = None) -> None:
        catalog.record_errors(self.st, self.run_id, self.pending, first_seq=self.applied, timeout_s=timeout_s)
        self.applied += len(self.pending)
        self.pending = []
        self.last = time.monotonic()

    def finish(self, status: str, counts: dict) -> None:
        """The run's end: journal first, then the catalog; a catalog that stays busy is a clear error
        and the journal keeps everything for the next run."""
        for scan_id in list(self.overflow):  # scans that ended without a published part
            self._summarise(scan_id, "")
        self.journal.finish(status, counts)
        try:
            self.flush()
            catalog.finish_run(self.st, self.run_id, status, counts)
        except StoreError as e:
            self.journal.close()
            raise StoreError(f"{e}. The run's {self.journal.rows} error row(s) and its end ({status}) are safe in "
                             f"{self.journal.path} and enter the catalog at the next ingest") from None
        self.journal.close(remove=True)


def reason_key(stage: str, reason: str) -> str:
    """A reason without file names, details in brackets and numbers, so alike errors count together
    in a summary: "load: sub-x_ct.nii.gz: CT has 12 NaN/inf voxel(s)" -> "load: CT has N NaN/inf voxel(s)"."""
    text = re.sub(r"^\s*[^\s:]+\.(nii(\.gz)?|json|csv|dcm)\S*:\s*", "", reason)  # leading "file.nii.gz: "
    text = re.sub(r"^(C|T|L)\d+:\s*|^(S|Co|T13):\s*", "", text)  # leading level name
    while re.search(r"\s*\([^()]*\)", text):  # "(identical bytes)", "(e.g. sub-x_ctd.json)", nested
        text = re.sub(r"\s*\([^()]*\)", "", text)
    text = re.sub(r"\S*/\S*\.\w+|\S+\.(nii(\.gz)?|json|csv|dcm)\b", "FILE", text)
    text = re.sub(r"(?<![\w.])[-+]?\d+(\.\d+)?(e[-+]?\d+)?(?![\w.])", "N", text)
    return f"{stage}: {text.strip()[:80]}"


def _counts(summary: IngestSummary) -> dict:
    keep = ("site", "files_rejected", "duplicates_rejected", "scans_seen", "scans_ingested", "scans_skipped", "scans_rejected", "slices_written", "levels_rejected", "errors", "errors_by_reason", "seconds")
    return {k: getattr(summary, k) for k in keep}


def _finish_quietly(st: Store, run_id: str, errors: _ErrorSink, summary: IngestSummary) -> None:
    # The run is failing already; keep what it learned, but let its own exception be the one shown.
    try:
        errors.finish(summary.status, _counts(summary))
    except Exception:  # noqa: BLE001
        pass


class _Progress(Bar):
    """The ingest bar: scans, with slices written, skipped and errors so far."""

    def __init__(self, enabled: bool, total: int):
        super().__init__("ingest", total, "scans", enabled=enabled)
        self.__enter__()

    def advance(self, s: IngestSummary) -> None:  # type: ignore[override]
        super().advance(1, info=f"{s.slices_written} slices, {s.scans_skipped} skipped, {s.errors} errors")


def summary_table(s: IngestSummary):
    """The run's summary as a rich renderable: a table of counts, errors by reason, the run id."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    table = Table(show_header=False, box=None)
    table.add_column(style="bold", min_width=32)
    table.add_column(justify="right")
    for label, value in [
        ("files rejected (no scan)", s.files_rejected), ("duplicate copies rejected", s.duplicates_rejected), ("scans seen", s.scans_seen), ("scans ingested", s.scans_ingested), ("scans skipped (already stored)", s.scans_skipped),
        ("scans rejected", s.scans_rejected), ("slices written", s.slices_written), ("vertebrae rejected", s.levels_rejected),
        ("error records", s.errors),
    ]:  # fmt: skip
        table.add_row(label, str(value))
    for reason, n in list(s.errors_by_reason.items())[:12]:
        table.add_row(f"  {reason}", str(n), style="red")
    for dup in s.duplicates[:10]:
        table.add_row(f"  duplicate {dup}", "", style="yellow")
    if len(s.duplicates) > 10:
        table.add_row(f"  ... {len(s.duplicates) - 10} more duplicates", "", style="yellow")
    return Group(table, Text(f"run {s.run_id} (site {s.site}): {s.status}, {s.seconds:.1f} s", style="dim"))
