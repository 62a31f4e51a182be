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

ERROR_FLUSH_S = 5.0  # errors reach the catalog at least this often, so a killed run keeps most of them


@dataclass
class IngestSummary(Result):
    """What one ingest run did; `to_dict()` is the `--json` output."""

    run_id: str
    archive: str
    store: str
    files_rejected: int = 0  # files in the archive that are no usable scan input (not CT, unreadable, ...)
    scans_seen: int = 0
    scans_ingested: int = 0
    scans_skipped: int = 0  # already published by an earlier run
    scans_rejected: int = 0  # no slice stored: unreadable, bad geometry, duplicate, ...
    slices_written: int = 0
    levels_rejected: int = 0  # single vertebrae left out of an otherwise good scan
    errors: int = 0
    errors_by_reason: dict[str, int] = field(default_factory=dict)
    staging_dropped: int = 0  # stale staged files of crashed runs removed at the start
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
) -> IngestSummary:
    """Ingest every scan of `archive` into `store`'s `slices/` dataset; return the run's summary.

    Args:
        store: the store (`latentstore.connect(...)`; a folder or URI is opened here).
        archive: folder with NIfTI (VerSe layout) and/or DICOM scans and their centroid files.
        address: Ray cluster address; None uses `$RAY_ADDRESS`, else starts a local Ray.
        workers: scans processed at once (default: the local Ray's / the cluster's CPUs).
        slicing: how slices are cut (default `SlicingConfig()`: 96 x 96 px of 1 mm).
        progress: show a progress bar on stderr.

    Rejected inputs do not raise: they are counted in the summary and recorded in `errors`. An archive
    without a single scan raises `InputError` before anything is written (no store is created).
    """
    slicing = slicing or SlicingConfig()
    if slicing.size * slicing.size != IMAGE_PX:
        raise InputError(f"slicing size {slicing.size} does not fit the store's 96x96 image column")
    if workers is not None and workers < 1:
        raise InputError(f"--workers must be at least 1, got {workers}")
    root = Path(archive).expanduser().resolve()
    if not root.is_dir():
        raise InputError(f"archive {archive} is not a folder")
    t0 = time.monotonic()
    sources, scan_errors = scan_archive(root)
    if not sources:
        reasons = Counter(reason_key(e.stage, e.reason) for e in scan_errors)
        why = "; ".join(f"{n} x {r}" for r, n in reasons.most_common(5)) or "the folder holds no files"
        raise InputError(f"no usable CT scan in {archive} ({why}); nothing was written")
    st = connect(store)
    with st.lock("ingest"):
        _check_one_slicing(st, slicing)
        salt = st.salt()
        args = {"archive": str(root), "store": st.root, "address": address, "workers": workers, "slicing": json.loads(slicing.to_json())}
        catalog.close_dead_runs(st, "ingest")  # we hold the ingest lock: any "running" ingest is dead
        run_id = catalog.start_run(st, "ingest", args)
        summary = IngestSummary(run_id=run_id, archive=str(root), store=st.root)
        errors = _ErrorSink(st, run_id, summary, root)
        try:
            summary.staging_dropped = st.slices.clear_staging()
            summary.files_rejected = len(scan_errors)
            for e in scan_errors:
                errors.add(ErrorRow(_relative(e.source, root), e.stage, e.reason, scan_id=e.scan_id, level=e.level))
            summary.scans_seen = len(sources)
            keys = {s.scan_id: patient_key(s.patient, salt) for s in sources}
            del salt  # the salt stays in the driver; tasks get finished keys only
            _run(sources, keys, slicing, st, run_id, root, address, workers, progress, summary, errors)
        except BaseException as e:
            summary.status = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
            summary.seconds = round(time.monotonic() - t0, 3)
            _finish_quietly(st, run_id, errors, summary)
            raise
        st.slices.clear_staging(run_id)  # empty by now unless a publish failed; its leftovers are not needed
        summary.status = "ok" if summary.clean else "partial"
        summary.seconds = round(time.monotonic() - t0, 3)
        errors.flush()
        catalog.finish_run(st, run_id, summary.status, _counts(summary))
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


def _run(sources, keys, slicing, st: Store, run_id: str, root: Path, address, workers, progress, summary, errors) -> None:
    """Submit one task per new scan with a bounded queue; publish and record results as they arrive."""
    published_here: dict[str, str] = {}  # part name -> the scan_id that owns it in this run
    bar = _Progress(progress, len(sources))
    try:
        todo = list(_new_scans(sources, slicing, st, root, published_here, summary, errors, bar))
        if todo:  # a rerun with nothing new does not pay for starting Ray
            _submit_all(todo, keys, slicing, st, run_id, root, address, workers, published_here, summary, errors, bar)
    finally:
        bar.close()


def _submit_all(todo, keys, slicing, st: Store, run_id, root, address, workers, published_here, summary, errors, bar) -> None:
    import ray

    from .. import cluster

    with cluster.session(address, num_cpus=workers) as started:
        cpus = int(cluster.resources()["CPU"]) or 1
        # With our own local Ray, Ray caps the running tasks at `workers` CPUs and one more task per
        # CPU waits ready; on a shared cluster `--workers` itself is the cap.
        limit = 2 * cpus if (started or workers is None) else workers
        # The raw patient identifier stays in the driver: tasks get the source without it.
        args = lambda src: (dataclasses.replace(src, patient=""), keys[src.scan_id], slicing, st.root, run_id, str(root))  # noqa: E731
        for src, result in cluster.task_pool(ingest_scan, todo, args, limit):
            if isinstance(result, ray.exceptions.RayError):
                # A worker that died (out of memory, segfault in a decoder) takes one scan with it.
                result = _error(src, root, "worker", f"worker failed: {type(result).__name__}: {str(result).splitlines()[0][:300]}")
            _handle(result, src, st, run_id, published_here, summary, errors)
            bar.advance(summary)
            errors.maybe_flush()


def _new_scans(sources, slicing, st: Store, root: Path, published_here: dict, summary, errors, bar):
    """The scans that need a task, in archive order. A scan whose content hash the scanner already
    knows is skipped here when its part is published, and rejected as a duplicate when an earlier scan
    of this run has the same bytes (the first one in archive order is kept, so reruns agree)."""
    published = set(st.slices.parts())
    for src in sources:
        if not src.content_hash:
            yield src  # the task hashes it; duplicates are then caught as results arrive
            continue
        part = part_name(src.content_hash, slicing.hash)
        first = published_here.setdefault(part, src.scan_id)
        if first != src.scan_id:
            summary.scans_rejected += 1
            errors.add(ErrorRow(_relative(src.ct, root), "publish", f"duplicate: same content as scan {first}", scan_id=src.scan_id))
            bar.advance(summary)
        elif part in published:
            summary.scans_skipped += 1
            bar.advance(summary)
        else:
            yield src


def _handle(result: dict, src, st: Store, run_id: str, published_here: dict, summary: IngestSummary, errors: "_ErrorSink") -> None:
    kind = result["kind"]
    source = result.get("source", src.scan_id)
    if kind == "error":
        summary.scans_rejected += 1
        errors.add(ErrorRow(source, result["stage"], result["reason"], scan_id=src.scan_id))
        return
    part = result["part"]
    first = published_here.setdefault(part, src.scan_id)
    if first != src.scan_id:
        # Same bytes as a scan already handled in this run: store it once, say so for the other.
        summary.scans_rejected += 1
        errors.add(ErrorRow(source, "publish", f"duplicate: same content as scan {first}", scan_id=src.scan_id))
        if kind == "staged":
            st.slices.discard_staged(run_id, part)
        return
    if kind == "skipped":
        summary.scans_skipped += 1
        return
    try:
        fresh = st.slices.publish(run_id, part)
    except OSError as e:
        summary.scans_rejected += 1
        errors.add(ErrorRow(source, "publish", f"cannot publish part: {e}", scan_id=src.scan_id))
        st.slices.discard_staged(run_id, part)
        return
    if not fresh:
        summary.scans_skipped += 1  # the same content was published between the task's check and now
        return
    summary.scans_ingested += 1
    summary.slices_written += result["rows"]
    for level, reason in result["rejected_levels"]:
        summary.levels_rejected += 1
        errors.add(ErrorRow(source, "cut", f"{_name(level)}: {reason}", scan_id=src.scan_id, level=level))


# -- the task: plain Python, run by Ray workers -----------------------------------------------------------


def ingest_scan(src, patient_key_: str, slicing, store_root: str, run_id: str, archive: str) -> dict:
    """One scan -> a staged part file. Returns a small dict: `kind` is "staged", "skipped" or "error".

    Never raises for bad input: the driver turns an "error" result into an `errors` row.
    """
    root = Path(archive)
    source = _relative(src.ct, root)
    content_hash = src.content_hash
    if not content_hash:
        try:
            content_hash = hash_files(src.files or (src.ct,))
        except OSError as e:
            return _error(src, root, "read", f"cannot read: {e.strerror or e}")
    part = part_name(content_hash, slicing.hash)
    st = Store(store_root)
    if st.slices.has_part(part):  # the driver checked already, unless the scanner left the hash to us
        return {"kind": "skipped", "part": part, "source": source}
    try:
        vol = load_scan(src)
    except LatentstoreError as e:
        return _error(src, root, "load", str(e))
    except Exception as e:  # decoders raise many types on corrupt files; each is a bad input here
        return _error(src, root, "load", f"unreadable ({type(e).__name__}): {e}")
    try:
        cuts, rejected = cut_slices(vol, slicing)
    except LatentstoreError as e:
        return _error(src, root, "cut", str(e))
    except Exception as e:
        return _error(src, root, "cut", f"cannot cut slices ({type(e).__name__}): {e}")
    if not cuts:
        why = "; ".join(f"{_name(lv)}: {r}" for lv, r in rejected) or "no centroids"
        return _error(src, root, "cut", f"no vertebra could be cut ({why})")
    table = slices_table(src, source, content_hash, patient_key_, vol, cuts, slicing)
    try:
        st.slices.write_staged(table, run_id, part)
    except OSError as e:
        return _error(src, root, "write", f"cannot write staged part: {e}")
    return {"kind": "staged", "part": part, "source": source, "rows": table.num_rows, "rejected_levels": [(int(lv), _scrub(str(r), root)) for lv, r in rejected]}


def slices_table(src, source: str, content_hash: str, patient_key_: str, vol, cuts, slicing) -> pa.Table:
    """The rows of one scan, in the Arrow schema of `schemas/slices.sql`, superior level first."""
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
        "scan_id": pa.array([src.scan_id] * n, pa.string()),
        "patient_key": pa.array([patient_key_] * n, pa.string()),
        "level": pa.array([int(c.level) for c in cuts], pa.int16()),
        "level_name": pa.array([level_name(c.level) for c in cuts], pa.string()),
        "source_uri": pa.array([source] * n, pa.string()),
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


def _error(src, root: Path, stage: str, reason: str) -> dict:
    return {"kind": "error", "source": _relative(src.ct, root), "stage": stage, "reason": _scrub(reason, root)}


def _relative(path, root: Path) -> str:
    """A source as stored: relative to the archive root, so the root's own (possibly identifying)
    folder names never enter the store; the root itself is in the run's `args`."""
    p = Path(path)
    try:
        return p.resolve().relative_to(root).as_posix()
    except (ValueError, OSError):
        return p.name


def _scrub(reason: str, root: Path) -> str:
    # Readers name files with absolute paths; keep them archive-relative in the catalog.
    return str(reason).replace(f"{root}/", "").replace(str(root), ".")


# -- driver helpers -------------------------------------------------------------------------------------


class _ErrorSink:
    """Buffers error rows and writes them to the catalog in batches (one short catalog lock each)."""

    def __init__(self, st: Store, run_id: str, summary: IngestSummary, root: Path):
        self.st, self.run_id, self.summary, self.root = st, run_id, summary, root
        self.buffer: list[ErrorRow] = []
        self.reasons: Counter[str] = Counter()
        self.last = time.monotonic()

    def add(self, row: ErrorRow) -> None:
        row = ErrorRow(row.source, row.stage, _scrub(row.reason, self.root), row.scan_id, row.level)
        self.buffer.append(row)
        self.summary.errors += 1
        self.reasons[reason_key(row.stage, row.reason)] += 1
        self.summary.errors_by_reason = dict(self.reasons.most_common())

    def maybe_flush(self) -> None:
        if self.buffer and time.monotonic() - self.last > ERROR_FLUSH_S:
            try:
                self.flush()
            except StoreError:
                self.last = time.monotonic()  # the catalog is busy: keep the rows, try again later

    def flush(self) -> None:
        catalog.record_errors(self.st, self.run_id, self.buffer)  # raises before the buffer is dropped
        self.buffer = []
        self.last = time.monotonic()


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
    keep = ("files_rejected", "scans_seen", "scans_ingested", "scans_skipped", "scans_rejected", "slices_written", "levels_rejected", "errors", "errors_by_reason", "seconds")
    return {k: getattr(summary, k) for k in keep}


def _finish_quietly(st: Store, run_id: str, errors: _ErrorSink, summary: IngestSummary) -> None:
    # The run is failing already; keep what it learned, but let its own exception be the one shown.
    try:
        errors.flush()
        catalog.finish_run(st, run_id, summary.status, _counts(summary))
    except Exception:
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
        ("files rejected (no scan)", s.files_rejected), ("scans seen", s.scans_seen), ("scans ingested", s.scans_ingested), ("scans skipped (already stored)", s.scans_skipped),
        ("scans rejected", s.scans_rejected), ("slices written", s.slices_written), ("vertebrae rejected", s.levels_rejected),
        ("error records", s.errors),
    ]:  # fmt: skip
        table.add_row(label, str(value))
    for reason, n in list(s.errors_by_reason.items())[:12]:
        table.add_row(f"  {reason}", str(n), style="red")
    return Group(table, Text(f"run {s.run_id}: {s.status}, {s.seconds:.1f} s", style="dim"))
